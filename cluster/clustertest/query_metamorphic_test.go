package clustertest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// normalise clears what legitimately differs between topologies: the
// shard an event was stored on (it depends on the shard count), and the
// read lag a response reports.
func normalise(m proto.Message) proto.Message {
	m = proto.Clone(m)
	var walk func(protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if m.Descriptor().FullName() == "scope.v1.Event" {
			m.Clear(m.Descriptor().Fields().ByName("shard"))
		}
		// ReadLag reports how far the answering replicas were behind when
		// they answered (a leader that has not yet applied entries it
		// committed): metadata of the read, not part of the answer, and it
		// differs from run to run on a loaded machine.
		if fd := m.Descriptor().Fields().ByName("lag"); fd != nil && fd.Message() != nil &&
			fd.Message().FullName() == "scope.v1.ReadLag" {
			m.Clear(fd)
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
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

// ask runs a query, again while it fails with UNAVAILABLE (a shard between
// leaders for longer than the server's per-shard deadline, as happens when
// many groups elect on a loaded machine) or DEADLINE_EXCEEDED (a shard
// read slower than that deadline: on a 2-core machine running other test
// packages, a remote read can be), as a client would. Any other error, or
// failing for a minute, fails the test.
func ask[T any](t testing.TB, what string, call func() (*connect.Response[T], error)) *T {
	t.Helper()
	var (
		resp *connect.Response[T]
		err  error
	)
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err = call()
		switch {
		case err == nil:
			return resp.Msg
		case Code(err) != connect.CodeUnavailable && Code(err) != connect.CodeDeadlineExceeded:
			t.Fatalf("%s: %v", what, err)
		case time.Now().After(deadline):
			t.Fatalf("%s: still failing after a minute: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answer is one query's normalised answer.
type answer struct {
	name string
	msg  proto.Message
}

// battery asks n every query of the battery about s and returns the
// answers in a fixed order.
func battery(t *testing.T, n *Node, s *stream, soak bool) []answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out []answer
	add := func(name string, m proto.Message) {
		out = append(out, answer{name, normalise(m)})
	}
	q := n.Query

	// Events: each filter, both orders, paged through cursors at several
	// page sizes. Every page size must give the same sequence.
	mid := s.first + (s.last-s.first)/3
	arity := uint32(1)
	p0, p1 := s.procs[0], s.procs[1]
	filters := []*scopev1.EventsRequest{
		{},
		{Origin: p0.GetOrigin(), Pid: p0.GetPid()},
		{Origin: p1.GetOrigin(), Pid: p1.GetPid(), Kinds: []scopev1.Kind{scopev1.Kind_KIND_CALL, scopev1.Kind_KIND_RETURN}},
		{Kinds: []scopev1.Kind{scopev1.Kind_KIND_SEND, scopev1.Kind_KIND_RECEIVE}},
		{Module: "worker"},
		{Module: "gen_server", Function: "handle_call", Arity: &arity},
		{FromNs: mid, ToNs: mid + (s.last-s.first)/4},
		{Origin: "db@host"}, // residual filter: no index on origin alone
		{CorrelationId: s.roots[0].GetEventId()},
		{RootId: s.roots[len(s.roots)/2].GetEventId()},
		{Kinds: []scopev1.Kind{scopev1.Kind_KIND_EXCEPTION, scopev1.Kind_KIND_SPAWN, scopev1.Kind_KIND_EXIT}, FromNs: mid},
	}
	for fi, f := range filters {
		for _, desc := range []bool{false, true} {
			var ref *scopev1.EventsResponse
			for _, size := range []uint32{100, 7, 1} {
				// A page is a read of every shard the filter spans: in the
				// short form, paging one event at a time is kept to the
				// smaller answers, seven at a time to the middle ones and
				// the whole stream ascending (test time under -race).
				if ref != nil && !soak && (size == 1 && len(ref.GetEvents()) > 10 ||
					size == 7 && len(ref.GetEvents()) > 40 && (fi > 0 || desc)) {
					continue
				}
				got := &scopev1.EventsResponse{}
				req := proto.CloneOf(f)
				req.Descending, req.Limit = desc, size
				for pages := 0; ; pages++ {
					if pages > len(s.events)+1 {
						t.Fatalf("filter %d: more pages than events", fi)
					}
					resp := ask(t, fmt.Sprintf("events filter %d desc=%v limit=%d via %s", fi, desc, size, n.Name),
						func() (*connect.Response[scopev1.EventsResponse], error) {
							return q.Events(ctx, connect.NewRequest(req))
						})
					if len(resp.GetEvents()) > int(size) {
						t.Fatalf("filter %d: page of %d events, limit %d", fi, len(resp.GetEvents()), size)
					}
					if len(resp.GetMissing()) > 0 {
						t.Fatalf("filter %d: shards missing: %v", fi, resp.GetMissing())
					}
					got.Events = append(got.Events, resp.GetEvents()...)
					if req.Cursor = resp.GetNextCursor(); req.Cursor == "" {
						break
					}
				}
				if ref == nil {
					ref = got
					add(fmt.Sprintf("events[%d] desc=%v", fi, desc), got)
				} else if !proto.Equal(normalise(ref), normalise(got)) {
					t.Fatalf("events filter %d desc=%v via %s: page size %d gives %d events, page size 100 gave %d",
						fi, desc, n.Name, size, len(got.GetEvents()), len(ref.GetEvents()))
				}
			}
		}
	}

	for i, e := range s.events {
		name := fmt.Sprintf("get[%d]", i)
		add(name, ask(t, name, func() (*connect.Response[scopev1.GetEventResponse], error) {
			return q.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: e.GetEventId()}))
		}))
	}
	for i, root := range s.roots {
		req := &scopev1.CallTreeRequest{EventId: root.GetEventId()}
		if i%2 == 0 {
			req.Origin, req.Pid = root.GetOrigin(), root.GetPid()
		}
		name := fmt.Sprintf("tree[%d]", i)
		add(name, ask(t, name, func() (*connect.Response[scopev1.CallTreeResponse], error) {
			return q.CallTree(ctx, connect.NewRequest(req))
		}))
	}
	for pi, p := range s.procs {
		for k := range int64(5) {
			at := s.first + (s.last-s.first)*k/4 + 1
			name := fmt.Sprintf("stack[%d]@%d", pi, at)
			add(name, ask(t, name, func() (*connect.Response[scopev1.CallStackAtResponse], error) {
				return q.CallStackAt(ctx, connect.NewRequest(&scopev1.CallStackAtRequest{Origin: p.GetOrigin(), Pid: p.GetPid(), AtNs: at}))
			}))
			name = fmt.Sprintf("state[%d]@%d", pi, at)
			add(name, ask(t, name, func() (*connect.Response[scopev1.StateAtResponse], error) {
				return q.StateAt(ctx, connect.NewRequest(&scopev1.StateAtRequest{Origin: p.GetOrigin(), Pid: p.GetPid(), AtNs: at}))
			}))
		}
	}
	seen := map[string]bool{}
	for _, send := range s.sends {
		key := send.GetPid() + ">" + send.GetPeerPid()
		if seen[key] {
			continue
		}
		seen[key] = true
		add("flow "+key, ask(t, "flow "+key, func() (*connect.Response[scopev1.MessageFlowResponse], error) {
			return q.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{
				A: &scopev1.Process{Origin: send.GetOrigin(), Pid: send.GetPid()},
				B: &scopev1.Process{Origin: send.GetPeerOrigin(), Pid: send.GetPeerPid()}}))
		}))
	}
	// A walk in both directions reaches most of the stream through its
	// messages (one read per event): two of them; the rest walk back.
	starts := append(append([]*scopev1.Event{}, s.crashes...), s.receives[:min(len(s.receives), 6)]...)
	for i, e := range starts {
		dirs := []scopev1.TraceDirection{scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD}
		if i < 2 {
			dirs = append(dirs, scopev1.TraceDirection_TRACE_DIRECTION_BOTH)
		}
		for _, dir := range dirs {
			name := fmt.Sprintf("trace[%d] %v", i, dir)
			add(name, ask(t, name, func() (*connect.Response[scopev1.TraceResponse], error) {
				return q.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: e.GetEventId(), Direction: dir}))
			}))
		}
	}
	return out
}

// TestQueryMetamorphic ingests one event stream into three topologies —
// one node with one shard, one node with 16 shards, three nodes with 16
// shards and three replicas — and requires identical answers to every
// query of the battery (up to the shard each event was stored on).
func TestQueryMetamorphic(t *testing.T) {
	// The short form keeps the package under a minute with -race on a
	// small shared machine; SCOPE_SOAK=1 runs a longer stream.
	size, soak := 120, os.Getenv("SCOPE_SOAK") != ""
	if soak {
		size = 400
	}
	s := buildStream(7, size)
	if len(s.sends) < 5 || len(s.spawns) < 1 || len(s.crashes) < 1 || len(s.roots) < 3 {
		t.Fatalf("stream too thin to be a test: %d sends, %d spawns, %d crashes, %d roots",
			len(s.sends), len(s.spawns), len(s.crashes), len(s.roots))
	}
	topologies := []Options{
		{Nodes: 1, Shards: 1, Replicas: 1},
		{Nodes: 1, Shards: 16, Replicas: 1},
		{Nodes: 3, Shards: 16, Replicas: 3},
	}
	var ref []answer
	for ti, opts := range topologies {
		name := fmt.Sprintf("nodes=%d/shards=%d/R=%d", opts.Nodes, opts.Shards, opts.Replicas)
		c := Start(t, opts)
		ingestStream(t, c, s, 23)
		// Ask the node that did not take the first batch, so that remote
		// reads are exercised when there is more than one node.
		asked := c.Nodes[len(c.Nodes)-1]
		waitPaired(t, asked, s)
		began := time.Now()
		got := battery(t, asked, s, soak)
		t.Logf("%s: battery of %d answers in %v", name, len(got), time.Since(began).Round(time.Millisecond))
		c.Close()
		if ti == 0 {
			ref = got
			continue
		}
		if len(got) != len(ref) {
			t.Fatalf("%s: %d answers, %s gave %d", name, len(got), "nodes=1/shards=1", len(ref))
		}
		for i := range got {
			if got[i].name != ref[i].name {
				t.Fatalf("%s: answer %d is %q, want %q", name, i, got[i].name, ref[i].name)
			}
			if !proto.Equal(got[i].msg, ref[i].msg) {
				t.Fatalf("%s: %s differs from nodes=1/shards=1:\n got  %s\n want %s", name, got[i].name,
					protojson.Format(got[i].msg), protojson.Format(ref[i].msg))
			}
		}
	}
}
