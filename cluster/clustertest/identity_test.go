package clustertest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/cluster"
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

// gaugeValue is the value of n's gauge name (0 if absent).
func gaugeValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.Node.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
			return sum
		}
	}
	return 0
}

// TestForeignClusterMemberRefused: a node of another cluster whose gossip
// reaches this cluster (its -join names one of our nodes) is refused:
// never given a replica of our groups, although our groups want a third
// voter and it is the only spare; each side counts the other as foreign.
func TestForeignClusterMemberRefused(t *testing.T) {
	a := Start(t, Options{Nodes: 2, Shards: 4, Replicas: 3})
	b := Start(t, Options{Nodes: 1, Shards: 4, Replicas: 1, NamePrefix: "b"})
	ida, idb := a.Nodes[0].Identity.Get().ClusterID, b.Nodes[0].Identity.Get().ClusterID
	if ida == 0 || idb == 0 || ida == idb || a.Nodes[1].Identity.Get().ClusterID != ida {
		t.Fatalf("cluster ids: a %x and %x, b %x: want one non-zero id per cluster, distinct",
			ida, a.Nodes[1].Identity.Get().ClusterID, idb)
	}
	ingestPatient(t, a.Nodes[0], "<0.1.0>", 1)
	ingestPatient(t, b.Nodes[0], "<0.1.0>", 1)

	if _, err := b.Nodes[0].Members.Join(a.seeds()); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, "cluster a sees b1 alive", 30*time.Second, func() bool {
		for _, n := range a.Nodes {
			if m, ok := n.Members.Member("b1"); !ok || m.State != cluster.MemberAlive || m.Meta.NodeID == 0 {
				return false
			}
		}
		return true
	})
	// Let a's leaders run many reconciliation rounds with b1 alive and
	// stable for far longer than the stabilization time.
	start := a.Nodes[0].Cluster.Stats().Rounds + a.Nodes[1].Cluster.Stats().Rounds
	WaitFor(t, "20 reconciliation rounds", 30*time.Second, func() bool {
		return a.Nodes[0].Cluster.Stats().Rounds+a.Nodes[1].Cluster.Stats().Rounds >= start+20
	})
	for _, n := range a.Nodes {
		if st := n.Cluster.Stats(); st.Additions != 0 {
			t.Fatalf("%s added %d replicas: the only spare is the foreign b1", n.Name, st.Additions)
		}
	}
	for s := range uint32(4) {
		var leader *Node
		WaitFor(t, fmt.Sprintf("a leader of shard %d in cluster a", s), 30*time.Second, func() bool {
			leader = a.ShardLeader(s) // a leadership balance may be under way
			return leader != nil
		})
		f := leader.Node.Replica(s).Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		for _, srv := range f.Configuration().Servers {
			if string(srv.ID) == "b1" {
				t.Fatalf("shard %d of cluster a lists b1 (of cluster %x) in its group: %v", s, idb, f.Configuration().Servers)
			}
		}
		if info := a.Nodes[0].Cluster.Info().ShardLeader(s); info == "b1" {
			t.Fatalf("cluster a routes shard %d to b1", s)
		}
	}
	WaitFor(t, "each side counts the other as foreign", 30*time.Second, func() bool {
		return gaugeValue(t, a.Nodes[0], "scope_cluster_foreign_members") == 1 &&
			gaugeValue(t, a.Nodes[1], "scope_cluster_foreign_members") == 1 &&
			gaugeValue(t, b.Nodes[0], "scope_cluster_foreign_members") == 2
	})
	// Both clusters still serve.
	ingestPatient(t, a.Nodes[1], "<0.2.0>", 2)
	ingestPatient(t, b.Nodes[0], "<0.2.0>", 2)
	if got := len(ScanIDs(t, b.Nodes[0])); got != 2 {
		t.Fatalf("cluster b stores %d events, want its own 2", got)
	}
}

// ingestPatient ingests one CALL through n as ingest does, but retries
// any failure until a minute has passed: the event carries its id, so a
// retry of an outcome unknown cannot store it twice, and a loaded machine
// (elections slowed by -race and other tests) does not fail the test. It
// returns the event's id once acknowledged.
func ingestPatient(t *testing.T, n *Node, pid string, ts int64) string {
	t.Helper()
	e := ev(scopev1.Kind_KIND_CALL, pid, ts)
	e.EventId = ulid.Make().String()
	var last error
	WaitFor(t, "event acknowledged via "+n.Name, 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, last = n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}}))
		if last != nil {
			t.Logf("ingest via %s: %v (retrying)", n.Name, last)
		}
		return last == nil
	})
	return e.EventId
}

// copyDir copies the directory tree src to dst (which must not exist).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRestoredDataDirIsResynced: a node's data directory is copied while
// the node is stopped (a backup), the node runs on and acknowledges more
// events, then it is stopped and the old copy put back. The restart is
// detected as a start from an old copy (same node id, an epoch the
// cluster has seen with another run); the node drops the replicas it
// reopened from the copy, its groups replace it as a new replica, every
// group returns to three voters and no acknowledged event is lost. The
// node id survives every restart.
func TestRestoredDataDirIsResynced(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	var ids []string
	for i := range 8 {
		ids = append(ids, ingestPatient(t, c.Nodes[i%3], fmt.Sprintf("<0.%d.0>", i), int64(i+1)))
	}
	victim := c.Nodes[1]
	first := victim.Identity.Get()
	c.Stop(victim)
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, victim.Dir, backup)
	victim = c.Restart(victim)
	if got := victim.Identity.Get(); got.NodeID != first.NodeID || got.ClusterID != first.ClusterID || got.Epoch != first.Epoch+1 {
		t.Fatalf("after a restart the identity is %+v; want node id %x, cluster id %x, epoch %d",
			got, first.NodeID, first.ClusterID, first.Epoch+1)
	}
	c.WaitReady(60 * time.Second)
	WaitFor(t, "the peers see the victim's new start", 30*time.Second, func() bool {
		for _, n := range c.Live() {
			if m, ok := n.Members.Member(victim.Name); !ok || m.Meta.Epoch != first.Epoch+1 {
				return false
			}
		}
		return true
	})
	for i := 8; i < 24; i++ {
		ids = append(ids, ingestPatient(t, c.Nodes[i%3], fmt.Sprintf("<0.%d.0>", i), int64(i+1)))
	}
	c.WaitReplicasIdentical(3, 60*time.Second)
	c.Stop(victim)
	if err := os.RemoveAll(victim.Dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, victim.Dir)
	restarted := time.Now()
	victim = c.Restart(victim)

	WaitFor(t, "the victim learns that its data directory is an old copy", 60*time.Second, func() bool {
		return counterValue(t, victim, "scope_cluster_resyncs_total") == 1
	})
	t.Logf("old copy detected %v after the restart began", time.Since(restarted).Round(time.Millisecond))
	// Having dropped its replicas it counts as a node that came back empty:
	// unformed, so that every group still listing it as a voter asks it and
	// replaces it. (Still formed, it stayed a voter with no replica of a
	// group whenever other groups gave it replicas within LostVoterGrace:
	// the placement never converged.)
	WaitFor(t, "the peers see the victim unformed", 10*time.Second, func() bool {
		for _, n := range c.Live() {
			if m, ok := n.Members.Member(victim.Name); n != victim && (!ok || m.Meta.Formed) {
				return false
			}
		}
		return true
	})
	detected := 0.0
	for _, n := range c.Live() {
		if n != victim {
			detected += counterValue(t, n, "scope_cluster_stale_runs_detected_total")
		}
	}
	if detected == 0 {
		t.Fatal("no peer counted the victim's start from an old copy")
	}
	c.WaitPlacement([]string{"n1", "n2", "n3"}, 90*time.Second)
	c.WaitReplicasIdentical(3, 90*time.Second)
	t.Logf("three identical voters per group again %v after the restart began", time.Since(restarted).Round(time.Millisecond))
	if got := victim.Identity.Get(); got.NodeID != first.NodeID || got.Resync || got.Epoch <= first.Epoch+1 {
		t.Fatalf("after the resynchronization the identity is %+v; want node id %x, no resync pending, epoch above %d",
			got, first.NodeID, first.Epoch+1)
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
	// Resynchronized once: the groups' fresh replicas are not taken for
	// old ones.
	WaitFor(t, "no member named stale any more", 30*time.Second, func() bool {
		for _, n := range c.Live() {
			if m, ok := n.Members.Member(n.Name); !ok || len(m.Meta.Stale) != 0 {
				return false
			}
		}
		return true
	})
	if got := counterValue(t, victim, "scope_cluster_resyncs_total"); got != 1 {
		t.Fatalf("%v resynchronizations, want 1", got)
	}
}
