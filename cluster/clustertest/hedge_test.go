package clustertest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestHedgedAnyReads asks a node that holds no replica of a shard (R=2 of
// 3 nodes) for that shard's events while the shard's leader answers shard
// reads only after a long stall: ANY reads are hedged to the other replica
// and answer in about HedgeDelay with exactly the events a LEADER read
// returns, and the stalled calls are cancelled, not left running.
func TestHedgedAnyReads(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 2})

	// A pid whose shard has no replica on the asking node.
	var pid string
	var asker, leader *Node
	for i := 0; asker == nil; i++ {
		if i > 1000 {
			t.Fatal("every shard has a replica on every node")
		}
		pid = fmt.Sprintf("<0.%d.0>", i)
		s := correlate.ShardOf("app@host", pid, shards)
		for _, n := range c.Nodes {
			if n.Node.Replica(s) == nil {
				asker, leader = n, c.ShardLeader(s)
				break
			}
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	var events []*scopev1.Event
	for i := range 30 {
		events = append(events, ev(scopev1.Kind_KIND_STATE_CHANGE, pid, int64(1000+i)))
	}
	ingest(t, asker, events...)

	read := func(cons scopev1.Consistency) ([]string, time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		resp, err := asker.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: "app@host", Pid: pid,
			Limit: 100, Consistency: cons}))
		if err != nil {
			t.Fatalf("%v read: %v", cons, err)
		}
		var ids []string
		for _, e := range resp.Msg.GetEvents() {
			ids = append(ids, e.GetEventId())
		}
		return ids, time.Since(start)
	}
	want, _ := read(scopev1.Consistency_CONSISTENCY_LEADER)
	if len(want) != len(events) {
		t.Fatalf("LEADER read: %d events, want %d", len(want), len(events))
	}
	// The follower applies asynchronously: wait until an unhedged ANY
	// read of it agrees.
	WaitFor(t, "the follower to apply every event", 10*time.Second, func() bool {
		got, _ := read(scopev1.Consistency_CONSISTENCY_ANY)
		return slices.Equal(got, want)
	})

	// The stall is put on whichever node leads the shard before each read
	// (the balancer may move leadership during the test, and a read asks the
	// leader's node first), until five reads met a stalled first candidate.
	const stall = 10 * time.Second
	shard := correlate.ShardOf("app@host", pid, shards)
	faults := func() (delayed, cancelled uint64) {
		for _, n := range c.Nodes {
			d, cl := n.ShardReadFaults()
			delayed, cancelled = delayed+d, cancelled+cl
		}
		return delayed, cancelled
	}
	defer func() {
		for _, n := range c.Nodes {
			n.SlowShardReads(0)
		}
	}()
	for i := 0; ; i++ {
		if d, _ := faults(); d >= 5 {
			break
		}
		if i == 50 {
			t.Fatal("50 hedged reads and fewer than 5 reached a stalled leader")
		}
		var stalled *Node
		WaitFor(t, "a leader for the shard", 10*time.Second, func() bool {
			stalled = c.ShardLeader(shard)
			return stalled != nil
		})
		for _, n := range c.Nodes {
			if n == stalled {
				n.SlowShardReads(stall)
			} else {
				n.SlowShardReads(0)
			}
		}
		got, took := read(scopev1.Consistency_CONSISTENCY_ANY)
		if !slices.Equal(got, want) {
			t.Fatalf("hedged ANY read: %d events, want the LEADER read's %d", len(got), len(want))
		}
		if took > stall/4 {
			t.Fatalf("hedged ANY read took %v: it waited for the stalled leader (%v)", took, stall)
		}
	}
	// Each stalled call was cancelled by the caller once the hedge won
	// (the slow handler sees its request's context end).
	WaitFor(t, "stalled shard reads cancelled", 10*time.Second, func() bool {
		delayed, cancelled := faults()
		return delayed >= 5 && cancelled == delayed
	})
}

// TestAnyReadReportsLag cuts a follower off from its group's raft traffic:
// an ANY read it answers says so (ReadLag names the shard, the node and
// how long it has not heard from a leader), while reads answered by
// current replicas carry no lag.
func TestAnyReadReportsLag(t *testing.T) {
	const shards = 2
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	pid := "<0.42.0>"
	s := correlate.ShardOf("app@host", pid, shards)
	leader := c.WaitShardLeader(s)
	var follower *Node
	for _, n := range c.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	ingest(t, leader, ev(scopev1.Kind_KIND_STATE_CHANGE, pid, 1000))
	events := func(n *Node, cons scopev1.Consistency) *scopev1.EventsResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: "app@host", Pid: pid,
			Consistency: cons}))
		if err != nil {
			t.Fatalf("%s %v: %v", n.Name, cons, err)
		}
		return resp.Msg
	}
	WaitFor(t, "the follower to apply the event and report no lag", 10*time.Second, func() bool {
		r := events(follower, scopev1.Consistency_CONSISTENCY_ANY)
		return len(r.GetEvents()) == 1 && r.GetLag() == nil
	})

	c.Partition(follower)
	defer c.HealAll()
	ingest(t, leader, ev(scopev1.Kind_KIND_STATE_CHANGE, pid, 1001))
	var lag *scopev1.ReadLag
	WaitFor(t, "the cut-off follower to report its lag", 10*time.Second, func() bool {
		lag = events(follower, scopev1.Consistency_CONSISTENCY_ANY).GetLag()
		return lag != nil
	})
	if len(lag.GetShards()) != 1 || lag.GetShards()[0].GetShard() != s || lag.GetShards()[0].GetNode() != follower.Name ||
		lag.GetMaxSinceLeaderContactMs() == 0 || lag.GetShards()[0].GetSinceLeaderContactMs() != lag.GetMaxSinceLeaderContactMs() {
		t.Fatalf("lag of the cut-off follower: %v", lag)
	}
	if r := events(leader, scopev1.Consistency_CONSISTENCY_LEADER); r.GetLag() != nil || len(r.GetEvents()) != 2 {
		t.Fatalf("LEADER read: %d events, lag %v", len(r.GetEvents()), r.GetLag())
	}
}
