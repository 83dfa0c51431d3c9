package clustertest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

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

// TestSplitChildVoterWithoutReplicaIsReplaced: a voter of a split child's
// group that holds no replica of it (a parent's voter that caught up from a
// snapshot past the preparation entry never creates it; here the replica
// is dropped behind the group's back) is removed by the child's leader and
// added back as a new replica. Without that the group ran on two voters
// for good. The check runs once per leadership term, so the test moves the
// child's leadership after the drop.
func TestSplitChildVoterWithoutReplicaIsReplaced(t *testing.T) {
	const base, target = 2, 4
	c := Start(t, Options{Nodes: 3, Shards: base, Replicas: 3})
	// Founders are suspected of having lost their data for a while after
	// the cluster forms (identity.go), and that path replaces a voter
	// without a replica too. A node restarted on replicas it held is
	// formed at once and clears the suspicion: restart each, so that only
	// the split child's check can find the voter.
	WaitFor(t, "every founder formed", 30*time.Second, func() bool {
		for _, n := range c.Live() {
			if !n.Members.Meta().Formed {
				return false
			}
		}
		return true
	})
	for i := range c.Nodes {
		c.Stop(c.Nodes[i])
		c.Restart(c.Nodes[i])
		c.WaitReady(60 * time.Second)
	}
	for i := range 20 {
		ingest(t, c.Nodes[i%3], ev(scopev1.Kind_KIND_CALL, fmt.Sprintf("<0.%d.0>", i), int64(i+1)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Nodes[0].Admin.Reshard(ctx, connect.NewRequest(&scopev1.ReshardRequest{Shards: target})); err != nil {
		t.Fatal(err)
	}
	const child = base // the first child
	leader := c.WaitShardLeader(child)
	victim := c.Nodes[0]
	if victim == leader {
		victim = c.Nodes[1]
	}
	if err := victim.Node.DropReplica(child); err != nil {
		t.Fatal(err)
	}
	// A term after the drop: the leader hands its leadership to the other
	// voter that holds the replica (a balancing transfer meanwhile starts
	// one as well).
	leaderNow := func() (*Node, uint64) {
		for _, n := range c.Live() {
			if r := n.Node.Replica(child); r != nil && r.IsLeader() {
				return n, r.Raft().CurrentTerm()
			}
		}
		return nil, 0
	}
	var dropTerm uint64
	WaitFor(t, "a leader after the drop", 30*time.Second, func() bool {
		var l *Node
		l, dropTerm = leaderNow()
		return l != nil
	})
	var asked time.Time
	WaitForWhy(t, "a term after the drop", 90*time.Second, func() string {
		l, term := leaderNow()
		switch {
		case l == nil:
			return "no leader"
		case term > dropTerm:
			return ""
		case time.Since(asked) < 2*time.Second:
			return fmt.Sprintf("%s leads in term %d; a transfer was asked", l.Name, term)
		}
		asked = time.Now()
		for _, n := range c.Live() {
			if n != victim && n != l {
				// A transfer that fails (or finds the target leading) is
				// asked again later.
				if _, err := l.Admin.TransferLeadership(ctx, connect.NewRequest(&scopev1.TransferLeadershipRequest{Shard: child, To: n.Name})); err != nil {
					t.Logf("transfer of shard %d from %s to %s: %v", child, l.Name, n.Name, err)
				}
			}
		}
		return fmt.Sprintf("%s leads in term %d", l.Name, term)
	})
	WaitForWhy(t, victim.Name+" holds shard 2 again, as a voter", 90*time.Second, func() string {
		l := c.ShardLeader(child)
		if l == nil {
			return "no leader"
		}
		f := l.Node.Replica(child).Raft().GetConfiguration()
		if f.Error() != nil {
			return f.Error().Error()
		}
		voter := slices.ContainsFunc(f.Configuration().Servers, func(s raft.Server) bool {
			return string(s.ID) == victim.Name && s.Suffrage == raft.Voter
		})
		if !voter || victim.Node.Replica(child) == nil {
			return fmt.Sprintf("configuration %v; replica on %s: %v", f.Configuration().Servers, victim.Name, victim.Node.Replica(child) != nil)
		}
		return ""
	})
	replaced := 0.0
	for _, n := range c.Live() {
		replaced += counterValue(t, n, "scope_cluster_lost_voters_replaced_total")
	}
	if replaced < 1 {
		t.Fatalf("the voter came back without a replacement counted (%v)", replaced)
	}
	c.WaitReplicasIdentical(3, 60*time.Second)
}
