package clustertest

import (
	"fmt"
	"testing"
	"time"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// counterValue is the value of n's counter name (0 if absent).
func counterValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.Node.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// TestWipedNodeRejoinsAsNewReplica: a node whose data directory was lost
// comes back under its name with its old flags, -bootstrap-expect
// included. It must not bootstrap the groups again (it would be a voter
// that forgot its votes and its log: the way Raft loses acknowledged
// writes); it joins, every group it was a voter of replaces it with a new
// replica (removed, added as a non-voter, caught up, promoted), the groups
// return to three voters, and every acknowledged event is still stored.
func TestWipedNodeRejoinsAsNewReplica(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	var ids []string
	for i := range 16 {
		ids = append(ids, ingest(t, c.Nodes[i%3], ev(scopev1.Kind_KIND_CALL, fmt.Sprintf("<0.%d.0>", i), int64(i+1)))...)
	}
	// The cluster counts as formed once its founders have held their
	// replicas for the formation window.
	WaitFor(t, "every member formed", 60*time.Second, func() bool {
		for _, n := range c.Nodes {
			if m, ok := c.Nodes[0].Members.Member(n.Name); !ok || !m.Meta.Formed {
				return false
			}
		}
		return true
	})
	victim := c.Nodes[1]
	hosted := len(victim.Node.Replicas())
	if hosted == 0 {
		t.Fatalf("%s hosts no replica: nothing to lose", victim.Name)
	}
	c.Stop(victim)
	victim = c.RestartWiped(victim, 3)

	// Every group it was a voter of takes it back as a new replica: three
	// voters again, all of them holding the shard.
	c.WaitPlacement([]string{"n1", "n2", "n3"}, 90*time.Second)
	c.WaitReplicasIdentical(3, 90*time.Second)
	if got := counterValue(t, victim, "scope_cluster_bootstrap_declined_total"); got != 1 {
		t.Fatalf("%s came back with an empty data directory and -bootstrap-expect 3: declined %v bootstraps, want 1 (it must join, not bootstrap the groups again)",
			victim.Name, got)
	}
	stored := make(map[string]bool)
	for _, id := range ScanIDs(t, victim) {
		stored[id] = true
	}
	for _, id := range ids {
		if !stored[id] {
			t.Fatalf("acknowledged event %s lost", id)
		}
	}
}
