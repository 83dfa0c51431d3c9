package clustertest

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestReshardUnderLoadWhileANodeJoins is issue 18's "done when", in
// process: a 3-node cluster (R=3) under load is resharded online, two
// doublings, while a fourth node joins. The reshard returns once every
// split committed and every new shard adopted its handoff; every node then
// routes by the new layout; every group converges to its placement over
// four nodes; every acknowledged event is stored exactly once; no return
// lost its call (no orphan on any shard); and all replicas of each shard,
// old and new, end identical. SCOPE_SOAK: 16 shards to 64, ten times the
// load.
func TestReshardUnderLoadWhileANodeJoins(t *testing.T) {
	base, target := uint32(4), uint32(16)
	if faultSoak() {
		base, target = 16, 64
	}
	c := Start(t, Options{Nodes: 3, Shards: base, Replicas: 3})
	// Frames open in one request and close in a later one, so a return
	// whose call's state did not move with its process is an orphan.
	l := startLoader(t, LoaderOptions{Via: slices.Clone(c.Nodes), Workers: 3, OpenFrames: true, PidsPerWorker: 24})
	waitAcked(t, l, loadTarget(100), "before the reshard")

	resharded := make(chan *scopev1.ReshardResponse, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		resp, err := c.Nodes[1].Admin.Reshard(ctx, connect.NewRequest(&scopev1.ReshardRequest{Shards: target}))
		if err != nil {
			t.Errorf("reshard: %v", err)
			resharded <- nil
			return
		}
		resharded <- resp.Msg
	}()
	n4 := c.AddNode()
	waitAcked(t, l, l.Acked()+loadTarget(100), "while resharding and 4 joins")
	resp := <-resharded
	if resp == nil {
		t.FailNow()
	}
	// A split whose answer was lost (its leader changed as it committed)
	// is found done on the retry and not counted: at most target-base.
	if resp.GetFrom() != base || resp.GetShards() != target || resp.GetSplits() == 0 || resp.GetSplits() > target-base {
		t.Fatalf("reshard answered %v, want from %d to %d with up to %d splits", resp, base, target, target-base)
	}
	WaitFor(t, "every node routes by the new layout", 30*time.Second, func() bool {
		for _, n := range c.Live() {
			if n.Node.Layout() != (correlate.Layout{Base: base, Shards: target}) {
				return false
			}
		}
		return true
	})
	waitAcked(t, l, l.Acked()+loadTarget(100), "after the reshard")
	c.WaitPlacement(nodeNames(c.Nodes), 120*time.Second)
	res := l.Stop()

	c.WaitReplicasIdentical(3, 90*time.Second)
	c.WaitReady(60 * time.Second)
	stored := c.CheckLoad(n4, res)
	var totals correlate.Counters
	for s := range target {
		leader := c.WaitShardLeader(s)
		_, tot, failed := leader.Node.Replica(s).Status()
		if failed != nil {
			t.Fatalf("shard %d failed on %s: %v", s, leader.Name, failed)
		}
		if st := leader.Node.Replica(s).Reshard(); st.Awaiting || st.Handoffs > 0 {
			t.Fatalf("shard %d on %s: %+v", s, leader.Name, st)
		}
		totals.Add(tot)
	}
	if totals.Orphans != 0 {
		t.Fatalf("%d returns lost their call", totals.Orphans)
	}
	if len(n4.Node.Replicas()) == 0 {
		t.Errorf("%s joined but hosts no replica", n4.Name)
	}
	// Calling it again changes nothing.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	again, err := c.Nodes[0].Admin.Reshard(ctx, connect.NewRequest(&scopev1.ReshardRequest{Shards: target}))
	if err != nil || again.Msg.GetSplits() != 0 {
		t.Fatalf("reshard again: %v, %v", again, err)
	}
	t.Logf("reshard %d→%d with a join: %d acknowledged, %d stored, %d requests, %d failed, %d events rerouted, %d notices forwarded; replicas per node %v",
		base, target, len(res.Acked), stored, res.Requests, res.Failures, totals.Rerouted, totals.NoticesForwarded, replicasPerNode(c))
}
