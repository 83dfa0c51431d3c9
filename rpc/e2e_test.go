package rpc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
)

const shards = 4

// procs returns three processes of origin "app@h" where a and b live on
// different shards.
func procs(t *testing.T) (a, b, c correlate.Process) {
	a = correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	for i := 2; ; i++ {
		b = correlate.Process{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		if correlate.ShardOf(a.Origin, a.PID, shards) != correlate.ShardOf(b.Origin, b.PID, shards) {
			break
		}
	}
	return a, b, correlate.Process{Origin: "app@h", PID: "<0.999.0>"}
}

func newID() string { return ulid.Make().String() }

func ev(p correlate.Process, kind scopev1.Kind, ts int64) *scopev1.Event {
	return &scopev1.Event{EventId: newID(), Origin: p.Origin, Pid: p.PID, Kind: kind, TimestampNs: ts}
}

// scenario is one stream with nested calls, an exception, a message
// across shards, a spawn and a state change.
type scenario struct {
	a, b, c                        correlate.Process
	c1, c2, s1, r2, st, c3, x3, sp *scopev1.Event
	r1, rv, cc, cx                 *scopev1.Event
}

func newScenario(t *testing.T) *scenario {
	s := &scenario{}
	s.a, s.b, s.c = procs(t)
	call := func(p correlate.Process, ts int64, m, f string) *scopev1.Event {
		e := ev(p, scopev1.Kind_KIND_CALL, ts)
		e.Module, e.Function = m, f
		return e
	}
	s.c1 = call(s.a, 1000, "m", "f")
	s.c2 = call(s.a, 1100, "m", "g")
	s.s1 = ev(s.a, scopev1.Kind_KIND_SEND, 1200)
	s.s1.PeerOrigin, s.s1.PeerPid, s.s1.Payload = s.b.Origin, s.b.PID, "hello"
	s.r2 = ev(s.a, scopev1.Kind_KIND_RETURN, 1300)
	s.r2.Module, s.r2.Function = "m", "g"
	s.st = ev(s.a, scopev1.Kind_KIND_STATE_CHANGE, 1400)
	s.st.Payload = "%{n: 1}"
	s.c3 = call(s.a, 1500, "m", "h")
	s.x3 = ev(s.a, scopev1.Kind_KIND_EXCEPTION, 1600)
	s.x3.Module, s.x3.Function, s.x3.Reason = "m", "h", "boom"
	s.sp = ev(s.a, scopev1.Kind_KIND_SPAWN, 1700)
	s.sp.PeerOrigin, s.sp.PeerPid = s.c.Origin, s.c.PID
	s.r1 = ev(s.a, scopev1.Kind_KIND_RETURN, 1800)
	s.rv = ev(s.b, scopev1.Kind_KIND_RECEIVE, 1250)
	s.rv.Payload = "hello"
	s.cc = call(s.c, 1750, "n", "init")
	s.cx = ev(s.c, scopev1.Kind_KIND_EXIT, 1760)
	s.cx.Reason = "normal"
	return s
}

func (s *scenario) aEvents() []*scopev1.Event {
	return []*scopev1.Event{s.c1, s.c2, s.s1, s.r2, s.st, s.c3, s.x3, s.sp, s.r1}
}

func ids(es []*scopev1.Event) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.GetEventId()
	}
	return out
}

func hasLink(e *scopev1.Event, typ scopev1.LinkType, target string) bool {
	for _, l := range e.GetLinks() {
		if l.GetType() == typ && l.GetTargetEventId() == target {
			return true
		}
	}
	return false
}

// postJSON calls a unary procedure with the Connect protocol's JSON
// encoding over plain net/http.
func postJSON(t *testing.T, n *rpctest.Node, procedure string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := n.HTTP1.Post(n.URL+procedure, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

func TestEndToEnd(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: shards})
	s := newScenario(t)
	ctx := context.Background()

	// Process a over raw Connect JSON.
	body, err := protojson.Marshal(&scopev1.IngestRequest{Events: s.aEvents()})
	if err != nil {
		t.Fatal(err)
	}
	code, out := postJSON(t, n, scopev1connect.IngestServiceIngestProcedure, body)
	if code != http.StatusOK {
		t.Fatalf("JSON ingest: HTTP %d: %s", code, out)
	}
	var jr scopev1.IngestResponse
	if err := protojson.Unmarshal(out, &jr); err != nil {
		t.Fatal(err)
	}
	if jr.GetAccepted() != 9 || !slices.Equal(jr.GetEventIds(), ids(s.aEvents())) ||
		jr.GetDurability() != scopev1.Durability_DURABILITY_COMMITTED || len(jr.GetShards()) != 1 ||
		jr.GetShards()[0].GetCommitted() != 9 || jr.GetShards()[0].GetLeader() != "n1" {
		t.Fatalf("JSON ingest response: %v", &jr)
	}

	// Process b over gRPC (HTTP/2 cleartext).
	grpcIngest := scopev1connect.NewIngestServiceClient(n.H2C, n.URL, connect.WithGRPC())
	gr, err := grpcIngest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{s.rv}}))
	if err != nil {
		t.Fatalf("gRPC ingest: %v", err)
	}
	if gr.Msg.GetAccepted() != 1 {
		t.Fatalf("gRPC ingest: %v", gr.Msg)
	}

	// Process c over the Go Connect client, as a stream of two messages.
	st := n.Ingest.IngestStream(ctx)
	for _, e := range []*scopev1.Event{s.cc, s.cx} {
		if err := st.Send(&scopev1.IngestRequest{Events: []*scopev1.Event{e}}); err != nil {
			t.Fatal(err)
		}
	}
	sr, err := st.CloseAndReceive()
	if err != nil {
		t.Fatalf("IngestStream: %v", err)
	}
	if sr.Msg.GetAccepted() != 2 || len(sr.Msg.GetShards()) != 1 || sr.Msg.GetShards()[0].GetCommitted() != 2 {
		t.Fatalf("IngestStream summary: %v", sr.Msg)
	}

	q := n.Query
	get := func(id string) *scopev1.Event {
		t.Helper()
		r, err := q.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: id}))
		if err != nil {
			t.Fatalf("GetEvent %s: %v", id, err)
		}
		return r.Msg.GetEvent()
	}
	// The send notice crosses shards: wait for the pairing.
	rpctest.WaitFor(t, "SEND delivered to the RECEIVE", 10*time.Second, func() bool {
		return hasLink(get(s.s1.EventId), scopev1.LinkType_LINK_TYPE_DELIVERED_TO, s.rv.EventId)
	})
	rpctest.WaitFor(t, "SPAWN linked to the child", 10*time.Second, func() bool {
		return hasLink(get(s.sp.EventId), scopev1.LinkType_LINK_TYPE_SPAWNED, s.cc.EventId)
	})
	if e := get(s.rv.EventId); !hasLink(e, scopev1.LinkType_LINK_TYPE_RECEIVED_FROM, s.s1.EventId) {
		t.Fatalf("RECEIVE links: %v", e.GetLinks())
	}
	if e := get(s.r2.EventId); !hasLink(e, scopev1.LinkType_LINK_TYPE_COMPLETES, s.c2.EventId) ||
		e.GetParentId() != s.c1.EventId || e.GetRootId() != s.c1.EventId {
		t.Fatalf("RETURN: %v", e)
	}
	if e := get(s.x3.EventId); e.GetOutcome() != scopev1.Outcome_OUTCOME_EXCEPTION {
		t.Fatalf("EXCEPTION outcome: %v", e)
	}
	if _, err := q.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: newID()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("GetEvent of an unknown id: %v", err)
	}

	t.Run("Events", func(t *testing.T) {
		r, err := q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: s.a.Origin, Pid: s.a.PID}))
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(r.Msg.GetEvents()); !slices.Equal(got, ids(s.aEvents())) || r.Msg.GetNextCursor() != "" {
			t.Fatalf("events of a: %v (cursor %q)", got, r.Msg.GetNextCursor())
		}
		all := append(append(s.aEvents(), s.rv, s.cc, s.cx), []*scopev1.Event{}...)
		slices.SortFunc(all, func(x, y *scopev1.Event) int {
			if x.TimestampNs != y.TimestampNs {
				return int(x.TimestampNs - y.TimestampNs)
			}
			return strings.Compare(x.EventId, y.EventId)
		})
		for _, desc := range []bool{false, true} {
			for _, limit := range []uint32{1, 2, 5, 100} {
				var got []string
				cursor := ""
				for page := 0; page < 20; page++ {
					r, err := q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: "app@h",
						Descending: desc, Limit: limit, Cursor: cursor}))
					if err != nil {
						t.Fatal(err)
					}
					if len(r.Msg.GetEvents()) > int(limit) {
						t.Fatalf("page of %d > limit %d", len(r.Msg.GetEvents()), limit)
					}
					got = append(got, ids(r.Msg.GetEvents())...)
					if cursor = r.Msg.GetNextCursor(); cursor == "" {
						break
					}
				}
				want := ids(all)
				if desc {
					slices.Reverse(want)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("desc=%v limit=%d: paged\n%v\nwant\n%v", desc, limit, got, want)
				}
			}
		}
		// Filters: kinds, function, time range (to exclusive).
		r, err = q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{
			Kinds: []scopev1.Kind{scopev1.Kind_KIND_CALL}, Module: "m", FromNs: 1100, ToNs: 1500}))
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(r.Msg.GetEvents()); !slices.Equal(got, []string{s.c2.EventId}) {
			t.Fatalf("filtered events: %v", got)
		}
		// A cursor is bound to its filter.
		r, err = q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 1}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 1, Module: "m", Cursor: r.Msg.GetNextCursor()}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("cursor with another filter: %v", err)
		}
	})

	t.Run("CallTree", func(t *testing.T) {
		r, err := q.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: s.x3.EventId}))
		if err != nil {
			t.Fatal(err)
		}
		root := r.Msg.GetRoot()
		if root.GetCall().GetEventId() != s.c1.EventId || root.GetEnd().GetEventId() != s.r1.EventId ||
			root.GetOutcome() != scopev1.Outcome_OUTCOME_OK || root.GetDurationNs() != 800 || len(root.GetChildren()) != 2 {
			t.Fatalf("root frame: %v", root)
		}
		g, h := root.GetChildren()[0], root.GetChildren()[1]
		if g.GetCall().GetEventId() != s.c2.EventId || g.GetEnd().GetEventId() != s.r2.EventId ||
			h.GetCall().GetEventId() != s.c3.EventId || h.GetOutcome() != scopev1.Outcome_OUTCOME_EXCEPTION {
			t.Fatalf("children: %v", root.GetChildren())
		}
	})

	t.Run("CallStackAt", func(t *testing.T) {
		r, err := q.CallStackAt(ctx, connect.NewRequest(&scopev1.CallStackAtRequest{Origin: s.a.Origin, Pid: s.a.PID, AtNs: 1250}))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range r.Msg.GetFrames() {
			got = append(got, f.GetCall().GetEventId())
		}
		if !slices.Equal(got, []string{s.c1.EventId, s.c2.EventId}) {
			t.Fatalf("stack at 1250: %v", got)
		}
	})

	t.Run("MessageFlow", func(t *testing.T) {
		r, err := q.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{
			A: &scopev1.Process{Origin: s.a.Origin, Pid: s.a.PID}, B: &scopev1.Process{Origin: s.b.Origin, Pid: s.b.PID}}))
		if err != nil {
			t.Fatal(err)
		}
		m := r.Msg.GetMessages()
		if len(m) != 1 || m[0].GetSend().GetEventId() != s.s1.EventId || m[0].GetReceive().GetEventId() != s.rv.EventId ||
			m[0].GetLatencyNs() != 50 {
			t.Fatalf("messages: %v", m)
		}
	})

	t.Run("StateAt", func(t *testing.T) {
		r, err := q.StateAt(ctx, connect.NewRequest(&scopev1.StateAtRequest{Origin: s.a.Origin, Pid: s.a.PID, AtNs: 1500}))
		if err != nil {
			t.Fatal(err)
		}
		if r.Msg.GetEvent().GetEventId() != s.st.EventId || r.Msg.GetEvent().GetParentId() != s.c1.EventId {
			t.Fatalf("state at 1500: %v", r.Msg.GetEvent())
		}
		r, err = q.StateAt(ctx, connect.NewRequest(&scopev1.StateAtRequest{Origin: s.a.Origin, Pid: s.a.PID, AtNs: 1300}))
		if err != nil || r.Msg.GetEvent() != nil {
			t.Fatalf("state at 1300: %v, %v", r, err)
		}
	})

	t.Run("Trace", func(t *testing.T) {
		nodes := func(dir scopev1.TraceDirection, id string) []string {
			r, err := q.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: id, Direction: dir}))
			if err != nil {
				t.Fatal(err)
			}
			if r.Msg.GetTruncated() {
				t.Fatalf("trace truncated")
			}
			return ids(r.Msg.GetNodes())
		}
		// Backward from the RECEIVE: its SEND, the SEND's caller chain.
		back := nodes(scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD, s.rv.EventId)
		for _, want := range []string{s.rv.EventId, s.s1.EventId} {
			if !slices.Contains(back, want) {
				t.Fatalf("backward trace %v lacks %s", back, want)
			}
		}
		// Forward from the root CALL: callees and their ends.
		fwd := nodes(scopev1.TraceDirection_TRACE_DIRECTION_FORWARD, s.c1.EventId)
		for _, want := range []string{s.c1.EventId, s.c2.EventId, s.r2.EventId, s.c3.EventId, s.x3.EventId, s.r1.EventId} {
			if !slices.Contains(fwd, want) {
				t.Fatalf("forward trace %v lacks %s", fwd, want)
			}
		}
		// Forward from the SEND and the SPAWN crosses shards.
		if f := nodes(scopev1.TraceDirection_TRACE_DIRECTION_FORWARD, s.s1.EventId); !slices.Contains(f, s.rv.EventId) {
			t.Fatalf("forward from SEND: %v", f)
		}
		if f := nodes(scopev1.TraceDirection_TRACE_DIRECTION_FORWARD, s.sp.EventId); !slices.Contains(f, s.cc.EventId) {
			t.Fatalf("forward from SPAWN: %v", f)
		}
		// Depth bound.
		r, err := q.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: s.c1.EventId, MaxDepth: 1,
			Direction: scopev1.TraceDirection_TRACE_DIRECTION_FORWARD, MaxEvents: 2}))
		if err != nil {
			t.Fatal(err)
		}
		if !r.Msg.GetTruncated() || len(r.Msg.GetNodes()) != 2 {
			t.Fatalf("bounded trace: truncated=%v nodes=%d", r.Msg.GetTruncated(), len(r.Msg.GetNodes()))
		}
	})

	t.Run("Stats", func(t *testing.T) {
		r, err := q.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if r.Msg.GetEvents() != 12 || len(r.Msg.GetShards()) != shards || len(r.Msg.GetNodes()) != 1 ||
			r.Msg.GetNodes()[0].GetLeaders() != shards {
			t.Fatalf("stats: %v", r.Msg)
		}
		kinds := map[scopev1.Kind]uint64{}
		for _, k := range r.Msg.GetKinds() {
			kinds[k.GetKind()] = k.GetEvents()
		}
		wantKinds := map[scopev1.Kind]uint64{scopev1.Kind_KIND_CALL: 4, scopev1.Kind_KIND_RETURN: 2,
			scopev1.Kind_KIND_EXCEPTION: 1, scopev1.Kind_KIND_SEND: 1, scopev1.Kind_KIND_RECEIVE: 1,
			scopev1.Kind_KIND_SPAWN: 1, scopev1.Kind_KIND_EXIT: 1, scopev1.Kind_KIND_STATE_CHANGE: 1}
		if fmt.Sprint(kinds) != fmt.Sprint(wantKinds) || len(r.Msg.GetKinds()) != 8 ||
			r.Msg.GetKinds()[0].GetKind() != scopev1.Kind_KIND_CALL {
			t.Fatalf("kinds %v, want %v in kind order", r.Msg.GetKinds(), wantKinds)
		}
		for _, sh := range r.Msg.GetShards() {
			if sh.GetNode() != "n1" || sh.GetAppliedIndex() == 0 {
				t.Fatalf("shard %v: answered by n1", sh)
			}
		}
		// Every call counts once; ties are ordered by module, function,
		// arity. The bare RETURN r1 carries m:f's duration.
		r, err = q.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{TopN: 3}))
		if err != nil {
			t.Fatal(err)
		}
		var top []string
		for _, f := range r.Msg.GetTopFunctions() {
			top = append(top, fmt.Sprintf("%s:%s/%d calls=%d exc=%d dur=%d", f.GetModule(), f.GetFunction(), f.GetArity(),
				f.GetCalls(), f.GetExceptions(), f.GetTotalDurationNs()))
		}
		want := []string{"m:f/0 calls=1 exc=0 dur=800", "m:g/0 calls=1 exc=0 dur=200", "m:h/0 calls=1 exc=1 dur=100"}
		if !slices.Equal(top, want) {
			t.Fatalf("top functions %q, want %q", top, want)
		}
		if _, err := q.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{TopN: 1001})); connect.CodeOf(err) != connect.CodeInvalidArgument ||
			!strings.Contains(err.Error(), "top_n") {
			t.Fatalf("top_n 1001: %v", err)
		}
	})

	t.Run("Cluster", func(t *testing.T) {
		m, err := n.Cluster.Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Msg.GetMembers()) != 1 || m.Msg.GetMembers()[0].GetName() != "n1" ||
			len(m.Msg.GetMembers()[0].GetShardsLed()) != shards || m.Msg.GetMembers()[0].GetRaftAddr() == "" {
			t.Fatalf("members: %v", m.Msg)
		}
		sh, err := n.Cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var events uint64
		for _, si := range sh.Msg.GetShards() {
			events += si.GetEvents()
			if si.GetLeader() != "n1" || len(si.GetReplicas()) != 1 || si.GetReplicas()[0].GetAppliedIndex() == 0 {
				t.Fatalf("shard: %v", si)
			}
		}
		if len(sh.Msg.GetShards()) != shards || sh.Msg.GetShardCount() != shards || events != 12 ||
			sh.Msg.GetReplicationFactor() != 1 {
			t.Fatalf("shards: %v", sh.Msg)
		}
		// A dev node has no membership: Join and Leave are refused, not ignored.
		_, err = n.Cluster.Join(ctx, connect.NewRequest(&scopev1.JoinRequest{Addrs: []string{"x:1"}}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("Join: %v", err)
		}
	})

	t.Run("Operations", func(t *testing.T) {
		hc := grpchealth.NewClient(n.H2C, n.URL, connect.WithGRPC())
		hr, err := hc.Check(ctx, &grpchealth.CheckRequest{})
		if err != nil || hr.Status != grpchealth.StatusServing {
			t.Fatalf("health: %v, %v", hr, err)
		}
		rc := grpcreflect.NewClient(n.H2C, n.URL, connect.WithGRPC())
		rs := rc.NewStream(ctx)
		names, err := rs.ListServices()
		if _, cerr := rs.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("reflection: %v", err)
		}
		for _, want := range []string{scopev1connect.IngestServiceName, scopev1connect.QueryServiceName, scopev1connect.ClusterServiceName} {
			if !slices.ContainsFunc(names, func(x protoreflect.FullName) bool { return string(x) == want }) {
				t.Fatalf("reflection lists %v, lacks %s", names, want)
			}
		}
		for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready",
			"/metrics": `scope_rpc_requests_total{code="ok",procedure="/scope.v1.IngestService/Ingest"}`} {
			resp, err := n.HTTP1.Get(n.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
				t.Fatalf("%s: HTTP %d, lacks %q", path, resp.StatusCode, want)
			}
		}
	})
}

func TestTail(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: shards})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := correlate.Process{Origin: "tail@h", PID: "<0.1.0>"}
	// Backfill: one event stored before the tail starts.
	first := ev(p, scopev1.Kind_KIND_STATE_CHANGE, 10)
	if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{first}})); err != nil {
		t.Fatal(err)
	}
	stream, err := n.Query.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: p.Origin, Backfill: 10}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || len(stream.Msg().GetStarted().GetShards()) != shards {
		t.Fatalf("first item: %v %v", stream.Msg(), stream.Err())
	}
	if !stream.Receive() || stream.Msg().GetEvent().GetEventId() != first.EventId {
		t.Fatalf("backfill: %v %v", stream.Msg(), stream.Err())
	}
	// Live: a matching and a non-matching event.
	other := ev(correlate.Process{Origin: "other@h", PID: "<0.1.0>"}, scopev1.Kind_KIND_EXIT, 20)
	live := ev(p, scopev1.Kind_KIND_EXIT, 30)
	for _, e := range []*scopev1.Event{other, live} {
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}})); err != nil {
			t.Fatal(err)
		}
	}
	for stream.Receive() {
		e := stream.Msg().GetEvent()
		if e.GetEventId() == live.EventId {
			break
		}
		if e.GetEventId() != first.EventId { // the backfill may be sent twice
			t.Fatalf("tail sent %v", stream.Msg())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
}
