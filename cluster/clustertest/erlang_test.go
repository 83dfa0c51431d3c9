package clustertest

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// loadErlangFixture reads a trace captured from a real Erlang VM by
// tools/erlang. The capture leaves event ids empty; they are set here
// (time-ordered, from the line number) so that a retried batch is
// deduplicated instead of stored twice.
func loadErlangFixture(t *testing.T, path string) []*scopev1.Event {
	t.Helper()
	evs := rpctest.LoadJSONL(t, path)
	for i, ev := range evs {
		ev.EventId = erlangEventID(ev.GetTimestampNs(), i+1)
	}
	return evs
}

// erlangEventID is a ULID whose time part is the event's millisecond and
// whose entropy is the line number: unique, and time-ordered like ids a
// node would assign.
func erlangEventID(tsNs int64, line int) string {
	var id correlate.EventID
	_ = id.SetTime(uint64(tsNs / int64(time.Millisecond)))
	binary.BigEndian.PutUint64(id[8:], uint64(line))
	return id.String()
}

// ingestErlang sends evs in order, batch events per request, rotating over
// the nodes. COMMITTED: a batch is applied before the next is sent, so each
// process's events stay in order. A batch refused as UNAVAILABLE (a shard
// between leaders) is sent again; its ids are fixed, so a retry never
// stores an event twice.
func ingestErlang(t *testing.T, c *Cluster, evs []*scopev1.Event, batch int) {
	t.Helper()
	live := c.Live()
	for i := 0; i < len(evs); i += batch {
		end := min(i+batch, len(evs))
		n := live[(i/batch)%len(live)]
		WaitFor(t, fmt.Sprintf("events %d..%d ingested via %s", i, end, n.Name), 60*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: evs[i:end]}))
			if err != nil && Code(err) != connect.CodeUnavailable {
				t.Fatalf("ingest events %d..%d via %s: %v", i, end, n.Name, err)
			}
			return err == nil
		})
	}
}

// TestErlangTraceInCluster stores a real BEAM trace in a 3-node cluster,
// ingesting through every node in turn, and asks the questions a user would:
// the call tree of the deepest recursion, the messages between a worker and
// the echo process, and a receive's link to its send.
func TestErlangTraceInCluster(t *testing.T) {
	evs := loadErlangFixture(t, "../../correlate/testdata/erlang/small.jsonl")
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	ingestErlang(t, c, evs, 100)
	ctx := context.Background()
	q := c.Nodes[1].Query

	// The workload recurses descend/1 Depth deep (returning) and
	// descend_fail/2 Depth deep under guarded/1 → attempt/1 (raising at the
	// bottom, caught in guarded). Depth is descend's first argument.
	var descend, guarded *scopev1.Event
	for _, e := range evs {
		if e.GetKind() == scopev1.Kind_KIND_CALL && descend == nil && e.GetFunction() == "descend" {
			descend = e
		}
		if e.GetKind() == scopev1.Kind_KIND_CALL && guarded == nil && e.GetFunction() == "guarded" {
			guarded = e
		}
	}
	if descend == nil || guarded == nil {
		t.Fatal("fixture has no descend/guarded call")
	}
	depth, err := strconv.Atoi(strings.Trim(descend.GetPayload(), "[]"))
	if err != nil || depth < 10 {
		t.Fatalf("descend payload %q: depth %d, %v", descend.GetPayload(), depth, err)
	}
	tree := func(call *scopev1.Event) *scopev1.CallFrame {
		resp, err := q.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: call.GetEventId(),
			Origin: call.GetOrigin(), Pid: call.GetPid()}))
		if err != nil {
			t.Fatalf("CallTree(%s %s): %v", call.GetFunction(), call.GetEventId(), err)
		}
		// The answer is the whole tree call belongs to; find call's frame.
		var find func(f *scopev1.CallFrame) *scopev1.CallFrame
		find = func(f *scopev1.CallFrame) *scopev1.CallFrame {
			if f.GetCall().GetEventId() == call.GetEventId() {
				return f
			}
			for _, ch := range f.GetChildren() {
				if x := find(ch); x != nil {
					return x
				}
			}
			return nil
		}
		f := find(resp.Msg.GetRoot())
		if f == nil || resp.Msg.GetTruncated() {
			t.Fatalf("CallTree(%s): frame not in the tree (truncated %v)", call.GetFunction(), resp.Msg.GetTruncated())
		}
		return f
	}
	// chain follows single-child frames down, checking each frame's function
	// and outcome, and returns how many it saw.
	chain := func(f *scopev1.CallFrame, function string, outcome scopev1.Outcome) (n int, last *scopev1.CallFrame) {
		for ; f != nil; n++ {
			if f.GetCall().GetFunction() != function || f.GetOutcome() != outcome || f.GetOpen() {
				t.Fatalf("frame %d: %s %s (open %v), want %s %s", n, f.GetCall().GetFunction(), f.GetOutcome(),
					f.GetOpen(), function, outcome)
			}
			last = f
			switch len(f.GetChildren()) {
			case 0:
				return n + 1, last
			case 1:
				f = f.GetChildren()[0]
			default:
				t.Fatalf("frame %d of %s has %d children", n, function, len(f.GetChildren()))
			}
		}
		return n, last
	}
	if n, leaf := chain(tree(descend), "descend", scopev1.Outcome_OUTCOME_OK); n != depth+1 || leaf.GetEnd().GetPayload() != "0" {
		t.Fatalf("descend(%d): %d nested frames, leaf returned %q; want %d frames, leaf 0", depth, n, leaf.GetEnd().GetPayload(), depth+1)
	}
	g := tree(guarded)
	if g.GetOutcome() != scopev1.Outcome_OUTCOME_OK || g.GetEnd().GetPayload() != "{caught,"+strconv.Itoa(depth)+"}" ||
		len(g.GetChildren()) != 1 {
		t.Fatalf("guarded: outcome %s, returned %q, %d children", g.GetOutcome(), g.GetEnd().GetPayload(), len(g.GetChildren()))
	}
	att := g.GetChildren()[0]
	if att.GetCall().GetFunction() != "attempt" || att.GetOutcome() != scopev1.Outcome_OUTCOME_EXCEPTION || len(att.GetChildren()) != 1 {
		t.Fatalf("attempt: %s %s, %d children", att.GetCall().GetFunction(), att.GetOutcome(), len(att.GetChildren()))
	}
	n, leaf := chain(att.GetChildren()[0], "descend_fail", scopev1.Outcome_OUTCOME_EXCEPTION)
	if n != depth+1 || !strings.Contains(leaf.GetEnd().GetReason(), "too_deep") {
		t.Fatalf("descend_fail: %d frames, leaf reason %q; want %d frames raising too_deep", n, leaf.GetEnd().GetReason(), depth+1)
	}

	// A worker pings the echo process (by pid) with identical messages and
	// receives as many identical pongs: every one must come back paired.
	var ping *scopev1.Event
	for _, e := range evs {
		if e.GetKind() == scopev1.Kind_KIND_SEND && strings.HasPrefix(e.GetPayload(), "{ping,") {
			ping = e
			break
		}
	}
	if ping == nil {
		t.Fatal("fixture has no ping")
	}
	worker := &scopev1.Process{Origin: ping.GetOrigin(), Pid: ping.GetPid()}
	echo := &scopev1.Process{Origin: ping.GetPeerOrigin(), Pid: ping.GetPeerPid()}
	want := map[string]int{} // payload → messages expected between the two
	for _, e := range evs {
		if e.GetKind() == scopev1.Kind_KIND_SEND && ((e.GetPid() == worker.Pid && e.GetPeerPid() == echo.Pid) ||
			(e.GetPid() == echo.Pid && e.GetPeerPid() == worker.Pid)) {
			want[e.GetPayload()]++
		}
	}
	if want["pong"] < 2 || want[ping.GetPayload()] != want["pong"] {
		t.Fatalf("fixture: %v between %s and %s; want repeated identical pings and pongs", want, worker.Pid, echo.Pid)
	}
	var flow []*scopev1.Message
	WaitFor(t, "worker/echo messages all paired", 30*time.Second, func() bool {
		resp, err := q.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{A: worker, B: echo, Limit: 1000}))
		if err != nil {
			t.Fatalf("MessageFlow: %v", err)
		}
		flow = resp.Msg.GetMessages()
		for _, m := range flow {
			if m.GetSend() == nil || m.GetReceive() == nil {
				return false
			}
		}
		return true
	})
	got := map[string]int{}
	for _, m := range flow {
		s, r := m.GetSend(), m.GetReceive()
		if s.GetPayload() != r.GetPayload() || s.GetMessageHash() != r.GetMessageHash() || r.GetTimestampNs() < s.GetTimestampNs() {
			t.Fatalf("message %q → %q: hashes %d/%d, sent %d received %d", s.GetPayload(), r.GetPayload(),
				s.GetMessageHash(), r.GetMessageHash(), s.GetTimestampNs(), r.GetTimestampNs())
		}
		if r.GetPid() != s.GetPeerPid() {
			t.Fatalf("message %q sent to %s received by %s", s.GetPayload(), s.GetPeerPid(), r.GetPid())
		}
		got[s.GetPayload()]++
	}
	if len(got) != len(want) || got["pong"] != want["pong"] || got[ping.GetPayload()] != want[ping.GetPayload()] {
		t.Fatalf("flow: %v, want %v", got, want)
	}

	// GetEvent on the worker's first pong RECEIVE, through another node:
	// its RECEIVED_FROM link names the echo's first pong SEND (FIFO).
	var firstPongSend, firstPongRecv *scopev1.Event
	for _, e := range evs {
		if e.GetPayload() != "pong" {
			continue
		}
		if e.GetKind() == scopev1.Kind_KIND_SEND && e.GetPeerPid() == worker.Pid && firstPongSend == nil {
			firstPongSend = e
		}
		if e.GetKind() == scopev1.Kind_KIND_RECEIVE && e.GetPid() == worker.Pid && firstPongRecv == nil {
			firstPongRecv = e
		}
	}
	resp, err := c.Nodes[2].Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: firstPongRecv.GetEventId()}))
	if err != nil {
		t.Fatalf("GetEvent(%s): %v", firstPongRecv.GetEventId(), err)
	}
	var from []string
	for _, l := range resp.Msg.GetEvent().GetLinks() {
		if l.GetType() == scopev1.LinkType_LINK_TYPE_RECEIVED_FROM {
			from = append(from, l.GetTargetEventId())
		}
	}
	if len(from) != 1 || from[0] != firstPongSend.GetEventId() {
		t.Fatalf("first pong receive: RECEIVED_FROM %v, want [%s]", from, firstPongSend.GetEventId())
	}
}
