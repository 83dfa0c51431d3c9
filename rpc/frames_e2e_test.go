package rpc_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// CallStackAt and CallTree over the API, on a node whose correlator keeps
// one frame per process and one process: an orphan RETURN and a CALL
// refused by the depth bound leave the stack as it was, and the frame of
// a process evicted by the process bound ends as ABANDONED.
func TestCallFramesThatTellTheTruth(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 1, EditNode: func(c *node.Config) {
		c.Correlator.MaxStackDepth, c.Correlator.MaxProcesses = 1, 1
	}})
	ctx := context.Background()
	a := correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	b := correlate.Process{Origin: "app@h", PID: "<0.2.0>"}
	f := ev(a, scopev1.Kind_KIND_CALL, 1000)
	f.Module, f.Function = "m", "f"
	g := ev(a, scopev1.Kind_KIND_CALL, 1100) // refused: the stack holds one frame
	g.Module, g.Function = "m", "g"
	ret := ev(a, scopev1.Kind_KIND_RETURN, 1200) // consumes the refused frame: orphan
	orphan := ev(a, scopev1.Kind_KIND_RETURN, 1300)
	orphan.CallId = "no-such-call"
	ingest := func(evs ...*scopev1.Event) {
		t.Helper()
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: evs})); err != nil {
			t.Fatal(err)
		}
	}
	stackAt := func(at int64) []string {
		t.Helper()
		r, err := n.Query.CallStackAt(ctx, connect.NewRequest(&scopev1.CallStackAtRequest{Origin: a.Origin, Pid: a.PID, AtNs: at}))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, fr := range r.Msg.GetFrames() {
			got = append(got, fr.GetCall().GetFunction())
		}
		return got
	}
	ingest(f, g, ret, orphan)
	for _, at := range []int64{1050, 1150, 1250, 1350} {
		if got := stackAt(at); !slices.Equal(got, []string{"f"}) {
			t.Errorf("stack at %d = %v, want [f]", at, got)
		}
	}

	ingest(ev(b, scopev1.Kind_KIND_STATE_CHANGE, 1400)) // evicts a, with f open
	var root *scopev1.CallFrame
	rpctest.WaitFor(t, "f abandoned", 10*time.Second, func() bool {
		r, err := n.Query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: f.EventId}))
		if err != nil {
			t.Fatal(err)
		}
		root = r.Msg.GetRoot()
		return !root.GetOpen()
	})
	if root.GetOutcome() != scopev1.Outcome_OUTCOME_ABANDONED ||
		root.GetAbandonReason() != scopev1.AbandonReason_ABANDON_REASON_PROCESS_BOUND || root.GetEnd() != nil {
		t.Fatalf("frame of the evicted process: %v", root)
	}
	if got := stackAt(time.Now().Add(time.Hour).UnixNano()); got != nil {
		t.Fatalf("stack after the eviction = %v, want none", got)
	}
}

// TestCallTreeSummary: a summary tree has the same frames, outcomes,
// durations, names, payloads and reasons as the full one, the process on
// the root's CALL only, and none of the fields it leaves out.
func TestCallTreeSummary(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{})
	ctx := context.Background()
	a := correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	named := func(kind scopev1.Kind, ts int64, fn, payload string) *scopev1.Event {
		e := ev(a, kind, ts)
		e.Module, e.Function, e.Arity, e.Payload = "m", fn, 1, payload
		e.Attributes = map[string]string{"k": "v"}
		return e
	}
	f := named(scopev1.Kind_KIND_CALL, 1000, "f", "[1]")
	g := named(scopev1.Kind_KIND_CALL, 1100, "g", "[2]")
	gx := named(scopev1.Kind_KIND_EXCEPTION, 1200, "g", "")
	gx.Reason = "badarg"
	h := named(scopev1.Kind_KIND_CALL, 1300, "h", "[3]")
	fr := named(scopev1.Kind_KIND_RETURN, 1400, "f", "ok")
	if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{f, g, gx, h, fr}})); err != nil {
		t.Fatal(err)
	}
	tree := func(summary bool) *scopev1.CallFrame {
		t.Helper()
		r, err := n.Query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: f.EventId, Summary: summary}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetRoot()
	}
	full, sum := tree(false), tree(true)
	if full.GetCall().GetRootId() == "" || len(full.GetEnd().GetLinks()) == 0 {
		t.Fatalf("the full tree lacks the fields a summary leaves out: %v", full)
	}
	var walk func(full, sum *scopev1.CallFrame, root bool)
	walk = func(full, sum *scopev1.CallFrame, root bool) {
		if full.GetOutcome() != sum.GetOutcome() || full.GetDurationNs() != sum.GetDurationNs() || full.GetOpen() != sum.GetOpen() ||
			len(full.GetChildren()) != len(sum.GetChildren()) {
			t.Fatalf("frame %s differs: full %v, summary %v", full.GetCall().GetEventId(), full, sum)
		}
		for _, p := range [][2]*scopev1.Event{{full.GetCall(), sum.GetCall()}, {full.GetEnd(), sum.GetEnd()}} {
			fe, se := p[0], p[1]
			if (fe == nil) != (se == nil) {
				t.Fatalf("frame %s: end event in one tree only", full.GetCall().GetEventId())
			}
			if fe == nil {
				continue
			}
			if se.GetEventId() != fe.GetEventId() || se.GetKind() != fe.GetKind() || se.GetTimestampNs() != fe.GetTimestampNs() ||
				se.GetFunction() != fe.GetFunction() || se.GetPayload() != fe.GetPayload() || se.GetReason() != fe.GetReason() ||
				se.GetOutcome() != fe.GetOutcome() || se.GetDurationNs() != fe.GetDurationNs() {
				t.Errorf("event %s: summary %v, full %v", fe.GetEventId(), se, fe)
			}
			if se.GetRootId() != "" || se.GetParentId() != "" || se.GetCorrelationId() != "" || len(se.GetLinks()) != 0 ||
				se.GetShard() != 0 || se.GetSeq() != 0 || len(se.GetAttributes()) != 0 {
				t.Errorf("summary event %s keeps a field it leaves out: %v", se.GetEventId(), se)
			}
			wantProcess := root && se == sum.GetCall()
			if (se.GetOrigin() != "") != wantProcess || (se.GetPid() != "") != wantProcess {
				t.Errorf("summary event %s: process %q %q, want it on the root's CALL only", se.GetEventId(), se.GetOrigin(), se.GetPid())
			}
		}
		for i := range full.GetChildren() {
			walk(full.GetChildren()[i], sum.GetChildren()[i], false)
		}
	}
	walk(full, sum, true)
}
