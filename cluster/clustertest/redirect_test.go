package clustertest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestAcceptedSurvivesLeadershipTransfers ingests ACCEPTED while every
// shard's leadership is handed to another node twice. An ACCEPTED event
// may be lost with a node that dies holding it, and with nothing else: a
// leader that hands over its shard redirects what its ring and its
// in-flight proposals still hold to the new leader (same ids), so every
// acknowledged event must be stored once the cluster has settled.
func TestAcceptedSurvivesLeadershipTransfers(t *testing.T) {
	const shards = 2
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	l := startLoader(t, LoaderOptions{Via: slices.Clone(c.Nodes), Workers: 4, PairsPerRequest: 16,
		MaxEvents: 100_000, Durability: scopev1.Durability_DURABILITY_ACCEPTED})
	waitAcked(t, l, loadTarget(1000), "before the first transfer")
	for round := range 6 * faultRounds() {
		for s := range uint32(shards) {
			var from *Node
			WaitFor(t, fmt.Sprintf("shard %d has a leader", s), 60*time.Second, func() bool {
				from = c.ShardLeader(s)
				return from != nil
			})
			// The transfer may fail if leadership moved on its own
			// meanwhile (an election on a loaded machine): the ingest
			// meets a leadership change either way.
			if err := from.Node.Replica(s).Raft().LeadershipTransfer().Error(); err != nil {
				t.Logf("round %d: shard %d: transfer from %s: %v", round, s, from.Name, err)
			}
		}
		waitAcked(t, l, l.Acked()+loadTarget(1000), fmt.Sprintf("after transfer round %d", round))
	}
	res := l.Stop()

	c.WaitReady(60 * time.Second)
	// ACCEPTED events are stored some time after their acknowledgement:
	// wait until the last of them is, and say how many never were.
	var missing int
	deadline := time.Now().Add(60 * time.Second)
	for {
		stored := make(map[string]bool)
		for _, id := range ScanIDs(t, c.Nodes[0]) {
			stored[id] = true
		}
		missing = 0
		for id := range res.Acked {
			if !stored[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events acknowledged ACCEPTED were never stored", missing, len(res.Acked))
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.WaitReplicasIdentical(3, 90*time.Second)
	stored := c.CheckLoad(c.Nodes[0], res)
	t.Logf("transfers: %d acknowledged ACCEPTED, %d stored, %d sent, %d requests, %d failed",
		len(res.Acked), stored, len(res.Sent), res.Requests, res.Failures)
}
