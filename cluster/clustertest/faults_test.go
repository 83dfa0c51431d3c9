package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// soak reports whether the long variants run (SCOPE_SOAK=1).
func soak() bool { return os.Getenv("SCOPE_SOAK") == "1" }

// loadTarget is how many acknowledged events a load phase waits for.
func loadTarget(short int) int {
	if soak() {
		return 20 * short
	}
	return short
}

// waitAcked waits until l has acknowledged at least n events in all.
func waitAcked(t *testing.T, l *Loader, n int, what string) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("%d events acknowledged %s", n, what), 120*time.Second, func() bool { return l.Acked() >= n })
}

// pidOnShard returns a pid of origin app@host that lands on shard.
func pidOnShard(shard, shards uint32) string {
	for i := 0; ; i++ {
		pid := fmt.Sprintf("<0.%d.0>", 1000+i)
		if correlate.ShardOf("app@host", pid, shards) == shard {
			return pid
		}
	}
}

func others(c *Cluster, x *Node) []*Node {
	var out []*Node
	for _, n := range c.Live() {
		if n != x {
			out = append(out, n)
		}
	}
	return out
}

func names(nodes []*Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

// TestPartitionedMinorityCannotCommit cuts the raft links of the node
// leading a shard. Its groups lose leadership and it commits nothing while
// the majority keeps ingesting; ingest through it is forwarded to the
// majority or fails; after healing it catches up to identical replicas.
func TestPartitionedMinorityCannotCommit(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	x := c.ShardLeader(0)
	if x == nil {
		t.Fatal("shard 0 has no leader after WaitReady")
	}
	pid := pidOnShard(0, shards)
	baseline := ingest(t, c.Nodes[0], ev(scopev1.Kind_KIND_CALL, pid, 1))

	c.Partition(x)
	majority := others(c, x)
	WaitFor(t, x.Name+" leads no shard", 30*time.Second, func() bool {
		for _, r := range x.Node.Replicas() {
			if r.IsLeader() {
				return false
			}
		}
		return true
	})
	WaitFor(t, "the majority leads every shard", 30*time.Second, func() bool {
		for s := range uint32(shards) {
			if l := c.ShardLeader(s); l == nil || l == x {
				return false
			}
		}
		return true
	})

	l := StartLoader(LoaderOptions{Via: majority})
	waitAcked(t, l, loadTarget(200), "by the majority")

	// The isolated replica refuses a write it would have to commit itself.
	direct := x.Node.Ingest(node.NoForward(context.Background()),
		[]correlate.Event{{Origin: "app@host", PID: pid, Kind: correlate.KindStateChange, TimestampNs: 2}}, node.Committed)
	var nle *node.NotLeaderError
	if len(direct.Shards) != 1 || !errors.As(direct.Shards[0].Err, &nle) {
		t.Fatalf("unforwarded ingest on the isolated %s: %+v, want a NotLeaderError", x.Name, direct.Shards)
	}
	// Through the public API the shard's part is forwarded to the
	// majority's leader (gossip still reaches it) or fails; it never
	// commits on the isolated node.
	var forwarded []string
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	resp, err := x.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{
		Events: []*scopev1.Event{ev(scopev1.Kind_KIND_RETURN, pid, 3)}}))
	cancel()
	if err == nil {
		forwarded = resp.Msg.GetEventIds()
		id, _ := correlate.ParseEventID(forwarded[0])
		if _, err := c.ShardLeader(0).Node.Store().Get(0, id); err != nil {
			t.Fatalf("ingest via the isolated %s acknowledged, but not stored by the majority's leader: %v", x.Name, err)
		}
	} else {
		t.Logf("ingest via the isolated %s failed (allowed): %v", x.Name, err)
	}

	res := l.Stop()
	// Nothing acknowledged during the partition reached the isolated node.
	for id := range res.Acked {
		eid, err := correlate.ParseEventID(id)
		if err != nil {
			t.Fatal(err)
		}
		for s := range uint32(shards) {
			if _, err := x.Node.Store().Get(s, eid); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("event %s acknowledged during the partition is on the isolated %s (shard %d, err %v)", id, x.Name, s, err)
			}
		}
	}
	for _, id := range forwarded {
		eid, _ := correlate.ParseEventID(id)
		if _, err := x.Node.Store().Get(0, eid); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("forwarded event %s is on the isolated %s (err %v)", id, x.Name, err)
		}
	}
	st := c.LinkStats()
	if st.Cut == 0 || st.RefusedDials == 0 {
		t.Fatalf("the partition cut no connection or refused no dial: %+v", st)
	}

	c.Heal(x)
	c.WaitReplicasIdentical(3, 90*time.Second)
	c.WaitReady(60 * time.Second)
	for _, id := range append(baseline, forwarded...) {
		res.Acked[id], res.Sent[id] = true, true
	}
	stored := c.CheckLoad(x, res)
	dc, ds := c.Duplicates()
	t.Logf("partition: %d acknowledged, %d stored, %d requests, %d failed, duplicates skipped %d+%d; links %+v",
		len(res.Acked), stored, res.Requests, res.Failures, dc, ds, st)
}

// TestLeaveUnderLoad drains one of four nodes (R=3) through its
// ClusterService.Leave while a loader ingests through the other three:
// the node ends with no replica, every group converges to its placement
// over the three, and nothing acknowledged is lost or stored twice.
func TestLeaveUnderLoad(t *testing.T) {
	c := Start(t, Options{Nodes: 4, Shards: 4, Replicas: 3})
	leaver, stay := c.Nodes[3], c.Nodes[:3]
	l := StartLoader(LoaderOptions{Via: stay})
	waitAcked(t, l, loadTarget(100), "before the leave")

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	_, err := leaver.Admin.Leave(ctx, connect.NewRequest(&scopev1.LeaveRequest{Name: leaver.Name}))
	cancel()
	if err != nil {
		t.Fatalf("leave %s: %v", leaver.Name, err)
	}
	if n := len(leaver.Node.Replicas()); n != 0 {
		t.Fatalf("%s left with %d replicas", leaver.Name, n)
	}
	after := l.Acked()
	waitAcked(t, l, after+loadTarget(100), "after the leave")
	res := l.Stop()

	c.WaitPlacement(names(stay), 90*time.Second)
	c.WaitReplicasIdentical(3, 90*time.Second)
	stored := c.CheckLoad(stay[0], res)
	dc, ds := c.Duplicates()
	t.Logf("leave: %d acknowledged, %d stored, %d requests, %d failed, duplicates skipped %d+%d",
		len(res.Acked), stored, res.Requests, res.Failures, dc, ds)
}

// TestRestartRejoinsAndCatchesUp stops a node, ingests without it,
// restarts it on its data directory: it reopens its replicas, catches up
// to identical replicas and answers queries with everything acknowledged.
func TestRestartRejoinsAndCatchesUp(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	l := StartLoader(LoaderOptions{Via: c.Nodes})
	waitAcked(t, l, loadTarget(100), "before the stop")
	res := l.Stop()

	down := c.Nodes[2]
	c.Stop(down)
	l = StartLoader(LoaderOptions{Via: c.Nodes[:2]})
	waitAcked(t, l, loadTarget(100), "while a node is down")
	more := l.Stop()
	for id := range more.Sent {
		res.Sent[id] = true
	}
	for id := range more.Acked {
		res.Acked[id] = true
	}

	up := c.Restart(down)
	for s := range uint32(4) {
		if up.Node.Replica(s) == nil {
			t.Fatalf("restarted %s did not reopen its replica of shard %d", up.Name, s)
		}
	}
	c.WaitReplicasIdentical(3, 90*time.Second)
	c.WaitReady(60 * time.Second)
	stored := c.CheckLoad(up, res)
	// The restarted node answers from its own replicas, too.
	var local uint64
	for s := range uint32(4) {
		st, err := up.Node.Store().Stats(s)
		if err != nil {
			t.Fatal(err)
		}
		local += st.Events
	}
	if local != uint64(stored) {
		t.Fatalf("restarted %s holds %d events, the cluster %d", up.Name, local, stored)
	}
	dc, ds := c.Duplicates()
	t.Logf("restart: %d acknowledged, %d stored, %d requests, %d failed, duplicates skipped %d+%d", len(res.Acked), stored,
		res.Requests+more.Requests, res.Failures+more.Failures, dc, ds)
}

// TestKillDuringIngest stops a shard leader's node abruptly while a loader
// ingests through every node: every event acknowledged before or after is
// stored, none twice.
func TestKillDuringIngest(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	l := StartLoader(LoaderOptions{Via: c.Nodes, Workers: 3})
	waitAcked(t, l, loadTarget(100), "before the kill")
	victim := c.ShardLeader(0)
	if victim == nil {
		t.Fatal("shard 0 has no leader")
	}
	c.Stop(victim)
	after := l.Acked()
	waitAcked(t, l, after+loadTarget(100), "after the kill")
	res := l.Stop()

	survivors := c.Live()
	c.WaitReady(60 * time.Second)
	c.WaitReplicasIdentical(2, 90*time.Second)
	stored := c.CheckLoad(survivors[0], res)
	dc, ds := c.Duplicates()
	t.Logf("kill %s: %d acknowledged, %d stored, %d sent, %d requests, %d failed, duplicates skipped %d+%d", victim.Name,
		len(res.Acked), stored, len(res.Sent), res.Requests, res.Failures, dc, ds)
}
