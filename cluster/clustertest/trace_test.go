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

// TestTraceAcrossThreeProcesses follows a causal chain through three
// processes whose shards are led by three different nodes: P1 calls and
// sends to P2; P2 receives, calls and sends to P3; P3 receives, calls and
// crashes (EXCEPTION, then EXIT). From every node, and at both
// consistencies, Trace(crash, BACKWARD) reaches P1's call and
// Trace(P1's call, FORWARD) reaches the crash — across shards, through the
// message links (RECEIVED_FROM / DELIVERED_TO, paired by cross-shard
// notices) and each process's own order.
func TestTraceAcrossThreeProcesses(t *testing.T) {
	const shards = 6
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})

	// Three pids on three shards led by three different nodes. Leadership
	// is balanced across voters; wait for it to spread.
	var pids []string
	WaitFor(t, "three shards led by three different nodes", 30*time.Second, func() bool {
		pids = pids[:0]
		leaders := map[string]bool{}
		usedShard := map[uint32]bool{}
		for i := 0; i < 500 && len(pids) < 3; i++ {
			pid := fmt.Sprintf("<0.%d.0>", 100+i)
			s := correlate.ShardOf("app@host", pid, shards)
			l := c.ShardLeader(s)
			if l == nil || usedShard[s] || leaders[l.Name] {
				continue
			}
			usedShard[s], leaders[l.Name] = true, true
			pids = append(pids, pid)
		}
		return len(pids) == 3
	})
	p1, p2, p3 := pids[0], pids[1], pids[2]

	call := func(pid string, ts int64, fn string) *scopev1.Event {
		return &scopev1.Event{Origin: "app@host", Pid: pid, Kind: scopev1.Kind_KIND_CALL, TimestampNs: ts,
			Module: "svc", Function: fn, Arity: 1}
	}
	msg := func(kind scopev1.Kind, pid, peer string, ts int64, payload string) *scopev1.Event {
		return &scopev1.Event{Origin: "app@host", Pid: pid, Kind: kind, TimestampNs: ts,
			PeerOrigin: "app@host", PeerPid: peer, Payload: payload}
	}
	// Each process's events go through a node that does not lead its
	// shard, so ingest is forwarded too.
	via := func(pid string) *Node {
		leader := c.ShardLeader(correlate.ShardOf("app@host", pid, shards))
		for _, n := range c.Live() {
			if n != leader {
				return n
			}
		}
		return leader
	}
	const t0 = int64(1_700_000_000_000_000_000)
	ids1 := ingest(t, via(p1), call(p1, t0+1, "start"), msg(scopev1.Kind_KIND_SEND, p1, p2, t0+2, "req-1"))
	ids2 := ingest(t, via(p2),
		msg(scopev1.Kind_KIND_RECEIVE, p2, p1, t0+3, "req-1"), call(p2, t0+4, "handle"),
		msg(scopev1.Kind_KIND_SEND, p2, p3, t0+5, "req-2"))
	ids3 := ingest(t, via(p3),
		msg(scopev1.Kind_KIND_RECEIVE, p3, p2, t0+6, "req-2"), call(p3, t0+7, "work"),
		&scopev1.Event{Origin: "app@host", Pid: p3, Kind: scopev1.Kind_KIND_EXCEPTION, TimestampNs: t0 + 8,
			Module: "svc", Function: "work", Arity: 1, Reason: "badarg"},
		&scopev1.Event{Origin: "app@host", Pid: p3, Kind: scopev1.Kind_KIND_EXIT, TimestampNs: t0 + 9, Reason: "badarg"})
	p1Call, p1Send := ids1[0], ids1[1]
	p2Recv, p2Call, p2Send := ids2[0], ids2[1], ids2[2]
	p3Recv, p3Call, p3Exc, p3Exit := ids3[0], ids3[1], ids3[2], ids3[3]

	trace := func(n *Node, id string, dir scopev1.TraceDirection, cons scopev1.Consistency) (*scopev1.TraceResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := n.Query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: id, Direction: dir,
			ProcessOrder: true, Consistency: cons}))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
	nodeIDs := func(r *scopev1.TraceResponse) []string {
		var out []string
		for _, e := range r.GetNodes() {
			out = append(out, e.GetEventId())
		}
		return out
	}
	back := []string{p1Call, p1Send, p2Recv, p2Call, p2Send, p3Recv, p3Call, p3Exc, p3Exit}
	fwd := back

	// The message links need the cross-shard notices delivered: wait for
	// the whole chain once, then every node and consistency must agree.
	WaitFor(t, "the chain linked end to end", 30*time.Second, func() bool {
		r, err := trace(c.Nodes[0], p3Exit, scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD, scopev1.Consistency_CONSISTENCY_LEADER)
		return err == nil && slices.Equal(nodeIDs(r), back)
	})
	for _, n := range c.Nodes {
		for _, cons := range []scopev1.Consistency{scopev1.Consistency_CONSISTENCY_LEADER, scopev1.Consistency_CONSISTENCY_ANY} {
			// A follower may still be applying the last entries: ANY
			// answers converge.
			WaitFor(t, fmt.Sprintf("%s %v backward and forward traces", n.Name, cons), 20*time.Second, func() bool {
				rb, err := trace(n, p3Exit, scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD, cons)
				if err != nil {
					t.Fatalf("%s %v: Trace(crash, BACKWARD): %v", n.Name, cons, err)
				}
				rf, err := trace(n, p1Call, scopev1.TraceDirection_TRACE_DIRECTION_FORWARD, cons)
				if err != nil {
					t.Fatalf("%s %v: Trace(P1 call, FORWARD): %v", n.Name, cons, err)
				}
				if cons == scopev1.Consistency_CONSISTENCY_LEADER &&
					(!slices.Equal(nodeIDs(rb), back) || !slices.Equal(nodeIDs(rf), fwd)) {
					t.Fatalf("%s LEADER: backward %v, forward %v; want both %v", n.Name, nodeIDs(rb), nodeIDs(rf), back)
				}
				return slices.Equal(nodeIDs(rb), back) && slices.Equal(nodeIDs(rf), fwd)
			})
		}
	}

	// The message edges: each RECEIVE names its SEND, each SEND its RECEIVE.
	r, err := trace(c.Nodes[2], p3Exit, scopev1.TraceDirection_TRACE_DIRECTION_BOTH, scopev1.Consistency_CONSISTENCY_LEADER)
	if err != nil {
		t.Fatal(err)
	}
	has := func(from string, typ scopev1.LinkType, to string) bool {
		return slices.ContainsFunc(r.GetEdges(), func(e *scopev1.Edge) bool {
			return e.GetFromEventId() == from && e.GetType() == typ && e.GetToEventId() == to
		})
	}
	for _, e := range []struct {
		from string
		typ  scopev1.LinkType
		to   string
	}{
		{p2Recv, scopev1.LinkType_LINK_TYPE_RECEIVED_FROM, p1Send},
		{p1Send, scopev1.LinkType_LINK_TYPE_DELIVERED_TO, p2Recv},
		{p3Recv, scopev1.LinkType_LINK_TYPE_RECEIVED_FROM, p2Send},
		{p2Send, scopev1.LinkType_LINK_TYPE_DELIVERED_TO, p3Recv},
		{p3Exc, scopev1.LinkType_LINK_TYPE_COMPLETES, p3Call},
		{p2Call, scopev1.LinkType_LINK_TYPE_FOLLOWS, p2Recv},
	} {
		if !has(e.from, e.typ, e.to) {
			t.Errorf("edge %s -%v-> %s missing from %v", e.from, e.typ, e.to, r.GetEdges())
		}
	}

	// Without process_order, Trace follows stored links only: the crash
	// reaches its CALL and no further.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain, err := c.Nodes[1].Query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: p3Exc,
		Direction: scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD}))
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeIDs(plain.Msg); !slices.Equal(got, []string{p3Call, p3Exc}) {
		t.Fatalf("link-only backward trace from the EXCEPTION: %v, want [CALL EXCEPTION]", got)
	}
}
