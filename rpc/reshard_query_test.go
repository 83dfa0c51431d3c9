package rpc_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// reshardWorkload is a trace of five processes in two parts, the second
// ingested after a split on the server that reshards: calls nested three
// deep and open across the split (closed after it on the child, with
// children of their own there, one of them unwound there), sends before
// the split received after it (by moved processes and by one that stayed),
// sends after it, a spawn before it whose child starts after it, state
// changes on both sides, an exit. And what the child records about events
// the parent stored, which it forwards to the parent (docs/DECISIONS.md
// D41): frames opened before the split and closed after it without an
// event of their own (UNWOUND, PROCESS_EXIT), a RECEIVE applied before the
// split that pairs after it with a SEND whose event arrives late, and a
// SPAWN, arriving late too, of a process whose first event is on the
// parent.
type reshardWorkload struct {
	a, b, c, d, e, f correlate.Process // a, c, e, f move to the child; b, d stay
	before, after    []*scopev1.Event
	receives         [2]uint64 // RECEIVEs paired after each part
	spawns           [2]uint64 // spawns linked after each part
	procs            []correlate.Process
	firstNs, endNs   int64
}

// processFor returns a process of origin "app@h", not in skip (then added
// to it), that the doubling of base shards moves to the child (moved) or
// keeps on its shard.
func processFor(base uint32, moved bool, skip map[correlate.Process]bool) correlate.Process {
	next := correlate.Layout{Base: base, Shards: 2 * base}
	for i := 100; ; i++ {
		p := correlate.Process{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		if skip[p] {
			continue
		}
		if (next.ShardOf(p.Origin, p.PID) >= base) == moved {
			skip[p] = true
			return p
		}
	}
}

func newReshardWorkload(base uint32) *reshardWorkload {
	w := &reshardWorkload{}
	skip := map[correlate.Process]bool{}
	w.a, w.b = processFor(base, true, skip), processFor(base, false, skip)
	w.c, w.d = processFor(base, true, skip), processFor(base, false, skip)
	w.e, w.f = processFor(base, true, skip), processFor(base, true, skip)
	w.procs = []correlate.Process{w.a, w.b, w.c, w.d, w.e, w.f}

	ts, n := int64(1_000_000_000), 0
	w.firstNs = ts + 1000
	var part *[]*scopev1.Event
	add := func(p correlate.Process, kind scopev1.Kind, set func(*scopev1.Event)) *scopev1.Event {
		ts += 1000
		n++
		var id ulid.ULID
		_ = id.SetTime(uint64(ts / 1_000_000))
		binary.BigEndian.PutUint64(id[8:], uint64(n))
		e := &scopev1.Event{EventId: id.String(), Origin: p.Origin, Pid: p.PID, Kind: kind, TimestampNs: ts}
		if set != nil {
			set(e)
		}
		*part = append(*part, e)
		return e
	}
	call := func(p correlate.Process, f string) {
		add(p, scopev1.Kind_KIND_CALL, func(e *scopev1.Event) { e.Module, e.Function, e.Arity = "m", f, 1 })
	}
	ret := func(p correlate.Process, f string) {
		add(p, scopev1.Kind_KIND_RETURN, func(e *scopev1.Event) { e.Module, e.Function, e.Arity = "m", f, 1 })
	}
	send := func(from, to correlate.Process, msg string) {
		add(from, scopev1.Kind_KIND_SEND, func(e *scopev1.Event) { e.PeerOrigin, e.PeerPid, e.Payload = to.Origin, to.PID, msg })
	}
	recv := func(p correlate.Process, msg string) {
		add(p, scopev1.Kind_KIND_RECEIVE, func(e *scopev1.Event) { e.Payload = msg })
	}
	state := func(p correlate.Process, s string) {
		add(p, scopev1.Kind_KIND_STATE_CHANGE, func(e *scopev1.Event) { e.Payload = s })
	}

	part = &w.before
	call(w.a, "outer")
	call(w.a, "middle")
	state(w.a, "%{a: 1}")
	call(w.a, "inner")
	send(w.a, w.b, "m1") // received before the split
	send(w.a, w.c, "m2") // received after it, by a moved process
	ret(w.a, "inner")
	add(w.a, scopev1.Kind_KIND_SPAWN, func(e *scopev1.Event) { e.PeerOrigin, e.PeerPid = w.e.Origin, w.e.PID })
	call(w.b, "loop")
	state(w.b, "%{b: 1}")
	send(w.b, w.a, "m3") // received after the split, by a moved process
	recv(w.b, "m1")
	call(w.c, "init")
	send(w.c, w.d, "m4")
	ret(w.c, "init")
	send(w.c, w.d, "m8") // received after the split, by a process that stayed
	state(w.c, "%{c: 1}")
	call(w.c, "held")
	call(w.c, "held_inner") // unwound after the split
	recv(w.d, "m4")
	call(w.d, "serve")
	state(w.d, "%{d: 1}")
	waiting := add(w.f, scopev1.Kind_KIND_RECEIVE, func(e *scopev1.Event) { e.Payload = "m9" }) // f's first event; paired after the split
	call(w.f, "wait")                                                                           // closed by f's exit after the split
	w.receives[0], w.spawns[0] = 2, 0

	part = &w.after
	recv(w.a, "m3")
	call(w.a, "child") // a child of middle, which the parent shard holds
	call(w.a, "grandchild")
	ret(w.a, "grandchild")
	call(w.a, "deep")
	call(w.a, "deeper")
	ret(w.a, "deep") // deeper is unwound: its frame record is on the child
	ret(w.a, "child")
	state(w.a, "%{a: 2}")
	ret(w.a, "middle") // opened before the split
	send(w.a, w.b, "m5")
	send(w.a, w.d, "m6")
	ret(w.a, "outer")
	call(w.a, "next") // open at the end
	recv(w.c, "m2")
	call(w.c, "work")
	send(w.c, w.a, "m7")
	state(w.c, "%{c: 2}")
	call(w.e, "start") // the spawned child's first event
	state(w.e, "%{e: 1}")
	call(w.e, "run")
	recv(w.a, "m7")
	recv(w.b, "m5")
	ret(w.b, "loop") // opened before the split, on a process that stayed
	state(w.b, "%{b: 2}")
	recv(w.d, "m6")
	recv(w.d, "m8")
	ret(w.d, "serve")
	ret(w.c, "work")
	add(w.e, scopev1.Kind_KIND_EXIT, func(e *scopev1.Event) { e.Reason = "normal" }) // run and start end with it
	ret(w.c, "held")                                                                 // held_inner is unwound
	// Sent before f received it; the event arrives after the split.
	add(w.d, scopev1.Kind_KIND_SEND, func(e *scopev1.Event) {
		e.PeerOrigin, e.PeerPid, e.Payload, e.TimestampNs = w.f.Origin, w.f.PID, "m9", waiting.TimestampNs-1
	})
	// A SPAWN of f whose event arrives after f ran.
	add(w.d, scopev1.Kind_KIND_SPAWN, func(e *scopev1.Event) {
		e.PeerOrigin, e.PeerPid, e.TimestampNs = w.f.Origin, w.f.PID, waiting.TimestampNs-2
	})
	add(w.f, scopev1.Kind_KIND_EXIT, func(e *scopev1.Event) { e.Reason = "normal" }) // wait ends with it
	w.receives[1], w.spawns[1] = 7, 2
	w.endNs = ts + 1000
	return w
}

func (w *reshardWorkload) all() []*scopev1.Event {
	return append(append([]*scopev1.Event(nil), w.before...), w.after...)
}

// openChildShards opens and bootstraps, on a one-node server, the children
// of a doubling from base shards, and waits until they lead.
func openChildShards(t *testing.T, n *rpctest.Node, base uint32) {
	t.Helper()
	self := []raft.Server{{ID: raft.ServerID(n.Node.ID()), Address: raft.ServerAddress(n.Mux.Addr().String())}}
	for child := base; child < 2*base; child++ {
		r, err := n.Node.OpenReplica(child)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Bootstrap(self); err != nil {
			t.Fatal(err)
		}
	}
	rpctest.WaitFor(t, "child shards led", 20*time.Second, func() bool {
		for child := base; child < 2*base; child++ {
			if !n.Node.Replica(child).IsLeader() {
				return false
			}
		}
		return true
	})
}

// splitAll splits every shard of base in two and waits until every child
// has adopted its handoff.
func splitAll(t *testing.T, n *rpctest.Node, base uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for parent := range base {
		if _, err := n.Node.Split(ctx, parent, 2*base); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.Node.Layout(); got != (correlate.Layout{Base: base, Shards: 2 * base}) {
		t.Fatalf("layout after the splits: %+v", got)
	}
	rpctest.WaitFor(t, "handoffs adopted", 20*time.Second, func() bool {
		for s := range 2 * base {
			if st := n.Node.Replica(s).Reshard(); st.Awaiting || st.Handoffs > 0 {
				return false
			}
		}
		return true
	})
}

// settle waits until every replica of n has delivered its notices and
// the RECEIVEs and spawns paired add up to what the workload holds.
func settle(t *testing.T, n *rpctest.Node, receives, spawns uint64) {
	t.Helper()
	rpctest.WaitFor(t, "notices delivered and paired", 20*time.Second, func() bool {
		var totals correlate.Counters
		for _, r := range n.Node.Replicas() {
			_, c, failed := r.Status()
			if failed != nil {
				t.Fatalf("shard %d: %v", r.Shard(), failed)
			}
			if len(r.Outbox()) > 0 {
				return false
			}
			totals.Add(c)
		}
		return totals.Matched == receives && totals.SpawnsLinked == spawns
	})
}

func ingestPart(t *testing.T, n *rpctest.Node, events []*scopev1.Event) {
	t.Helper()
	resp, err := n.Ingest.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{Events: events}))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Msg.GetAccepted(); got != uint32(len(events)) {
		t.Fatalf("accepted %d of %d events: %v", got, len(events), resp.Msg)
	}
}

// normalized is m without what depends on the shard layout by design: the
// shard an event is stored on (Event.shard) and replica lag.
func normalized(m proto.Message) proto.Message {
	m = proto.Clone(m)
	var walk func(protoreflect.Message)
	walk = func(r protoreflect.Message) {
		fields := r.Descriptor().Fields()
		if r.Descriptor().FullName() == "scope.v1.Event" {
			r.Clear(fields.ByName("shard"))
		}
		if lag := fields.ByName("lag"); lag != nil {
			r.Clear(lag)
		}
		r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap() || fd.Message() == nil:
			case fd.IsList():
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			default:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return m
}

// Queries through the public QueryService answer the same after every
// shard split in two mid-trace as on a server that never resharded: the
// same workload goes into both (a metamorphic test), the second part after
// the split, and every answer is compared but for the shard field of
// events. What a process did before the split stays on the parent shard,
// what it did after goes to the child: Events of a process, GetEvent and
// the links of every event, CallTree (frames opened on the parent, closed
// and given children on the child), CallStackAt at every time of the trace,
// StateAt, MessageFlow and Trace must read both.
func TestQueriesAcrossReshardMatchUnsplit(t *testing.T) {
	const base = 4
	w := newReshardWorkload(base)
	plain := rpctest.Start(t, rpctest.Options{Shards: base})
	split := rpctest.Start(t, rpctest.Options{Shards: base})
	openChildShards(t, split, base)
	for _, n := range []*rpctest.Node{plain, split} {
		ingestPart(t, n, w.before)
		settle(t, n, w.receives[0], w.spawns[0])
	}
	splitAll(t, split, base)
	for _, n := range []*rpctest.Node{plain, split} {
		ingestPart(t, n, w.after)
		settle(t, n, w.receives[0]+w.receives[1], w.spawns[0]+w.spawns[1])
	}
	layout := split.Node.Layout()
	for _, p := range []correlate.Process{w.a, w.c, w.e, w.f} {
		if h := layout.History(p.Origin, p.PID); len(h) != 2 {
			t.Fatalf("%s did not move: history %v", p, h)
		}
	}

	ctx := context.Background()
	failures := 0
	// same compares one query's answers; an error must be the same too.
	same := func(what string, want, got proto.Message, werr, gerr error) {
		t.Helper()
		if failures >= 10 {
			return
		}
		switch {
		case werr != nil || gerr != nil:
			if connect.CodeOf(werr) != connect.CodeOf(gerr) || werr == nil || gerr == nil {
				failures++
				t.Errorf("%s: without the reshard: %v; with it: %v", what, werr, gerr)
			}
		case !proto.Equal(normalized(want), normalized(got)):
			failures++
			t.Errorf("%s differs after the reshard:\nwithout: %s\nwith:    %s", what,
				protojson.Format(normalized(want)), protojson.Format(normalized(got)))
		}
	}
	// Every event read by id, with and without its process, links included.
	for _, e := range w.all() {
		for _, hint := range []bool{false, true} {
			req := &scopev1.GetEventRequest{EventId: e.EventId}
			if hint {
				req.Origin, req.Pid = e.Origin, e.Pid
			}
			want, werr := plain.Query.GetEvent(ctx, connect.NewRequest(req))
			got, gerr := split.Query.GetEvent(ctx, connect.NewRequest(req))
			same(fmt.Sprintf("GetEvent %s %s (hint %v)", e.Kind, e.EventId, hint), msgOf(want), msgOf(got), werr, gerr)
		}
	}

	// Events: of each process (and of all), both orders, paged small so
	// that pages end on either side of the split.
	events := func(n *rpctest.Node, req *scopev1.EventsRequest) ([]proto.Message, error) {
		var pages []proto.Message
		for {
			resp, err := n.Query.Events(ctx, connect.NewRequest(proto.Clone(req).(*scopev1.EventsRequest)))
			if err != nil {
				return pages, err
			}
			pages = append(pages, resp.Msg)
			if resp.Msg.GetNextCursor() == "" || len(pages) > 100 {
				return pages, nil
			}
			req.Cursor = resp.Msg.GetNextCursor()
		}
	}
	var eventsReqs []*scopev1.EventsRequest
	for _, p := range append([]correlate.Process{{}}, w.procs...) {
		for _, desc := range []bool{false, true} {
			for _, limit := range []uint32{3, 100} {
				eventsReqs = append(eventsReqs, &scopev1.EventsRequest{Origin: p.Origin, Pid: p.PID, Descending: desc, Limit: limit})
			}
		}
		eventsReqs = append(eventsReqs, &scopev1.EventsRequest{Origin: p.Origin, Pid: p.PID, Limit: 2,
			Kinds: []scopev1.Kind{scopev1.Kind_KIND_SEND, scopev1.Kind_KIND_RECEIVE}})
	}
	for _, req := range eventsReqs {
		want, werr := events(plain, proto.Clone(req).(*scopev1.EventsRequest))
		got, gerr := events(split, proto.Clone(req).(*scopev1.EventsRequest))
		if len(want) != len(got) {
			t.Errorf("Events %v: %d pages without the reshard, %d with it", req, len(want), len(got))
			continue
		}
		for i := range want {
			same(fmt.Sprintf("Events %v page %d", req, i), want[i], got[i], werr, gerr)
		}
	}

	// CallTree of every event that has one, whole, cut short and summarized.
	for _, e := range w.all() {
		for _, max := range []uint32{0, 2, 4} {
			for _, summary := range []bool{false, true} {
				req := &scopev1.CallTreeRequest{EventId: e.EventId, MaxFrames: max, Summary: summary, Origin: e.Origin, Pid: e.Pid}
				want, werr := plain.Query.CallTree(ctx, connect.NewRequest(req))
				got, gerr := split.Query.CallTree(ctx, connect.NewRequest(req))
				same(fmt.Sprintf("CallTree of %s %s (max_frames %d, summary %v)", e.Kind, e.EventId, max, summary),
					msgOf(want), msgOf(got), werr, gerr)
			}
		}
	}

	// CallStackAt and StateAt of every process at every time of the trace.
	for _, p := range w.procs {
		for at := w.firstNs - 500; at <= w.endNs; at += 500 {
			sreq := &scopev1.CallStackAtRequest{Origin: p.Origin, Pid: p.PID, AtNs: at}
			want, werr := plain.Query.CallStackAt(ctx, connect.NewRequest(sreq))
			got, gerr := split.Query.CallStackAt(ctx, connect.NewRequest(sreq))
			same(fmt.Sprintf("CallStackAt %s at %d", p, at), msgOf(want), msgOf(got), werr, gerr)
			streq := &scopev1.StateAtRequest{Origin: p.Origin, Pid: p.PID, AtNs: at}
			wantSt, werr := plain.Query.StateAt(ctx, connect.NewRequest(streq))
			gotSt, gerr := split.Query.StateAt(ctx, connect.NewRequest(streq))
			same(fmt.Sprintf("StateAt %s at %d", p, at), msgOf(wantSt), msgOf(gotSt), werr, gerr)
		}
	}

	// MessageFlow between every two processes.
	for _, a := range w.procs {
		for _, b := range w.procs {
			if a == b {
				continue
			}
			req := &scopev1.MessageFlowRequest{A: &scopev1.Process{Origin: a.Origin, Pid: a.PID}, B: &scopev1.Process{Origin: b.Origin, Pid: b.PID}}
			want, werr := plain.Query.MessageFlow(ctx, connect.NewRequest(req))
			got, gerr := split.Query.MessageFlow(ctx, connect.NewRequest(req))
			same(fmt.Sprintf("MessageFlow %s %s", a, b), msgOf(want), msgOf(got), werr, gerr)
		}
	}

	// Trace from every event, every way.
	for _, e := range w.all() {
		for _, dir := range []scopev1.TraceDirection{scopev1.TraceDirection_TRACE_DIRECTION_BOTH,
			scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD, scopev1.TraceDirection_TRACE_DIRECTION_FORWARD} {
			for _, order := range []bool{false, true} {
				req := &scopev1.TraceRequest{EventId: e.EventId, Direction: dir, ProcessOrder: order}
				want, werr := plain.Query.Trace(ctx, connect.NewRequest(req))
				got, gerr := split.Query.Trace(ctx, connect.NewRequest(req))
				same(fmt.Sprintf("Trace from %s %s (%s, process order %v)", e.Kind, e.EventId, dir, order),
					msgOf(want), msgOf(got), werr, gerr)
			}
		}
	}

	// No store dropped a record for want of its event: the child
	// forwarded what was about the parent's events.
	if c := split.Node.Store().Counters(); c.FramesLost != 0 || c.EdgesDropped != 0 {
		t.Errorf("after the reshard the store lost %d frame ends and dropped %d links", c.FramesLost, c.EdgesDropped)
	}
}

// msgOf is a response's message (nil when the call failed).
func msgOf[T any](r *connect.Response[T]) proto.Message {
	if r == nil {
		return nil
	}
	m, _ := any(r.Msg).(proto.Message)
	return m
}
