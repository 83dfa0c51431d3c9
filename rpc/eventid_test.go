package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// An event id names one event: these tests drive the real RPC (Connect on
// loopback, real raft and Pebble) and check that a repeated id is never
// stored twice and that the counts say exactly what was stored.

func ingest(t *testing.T, n *rpctest.Node, events ...*scopev1.Event) *scopev1.IngestResponse {
	t.Helper()
	r, err := n.Ingest.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{Events: events}))
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	return r.Msg
}

// counts is what an ingest response says about the request as a whole and
// about its one shard.
type counts struct{ accepted, duplicates, committed, shardDuplicates uint32 }

func countsOf(t *testing.T, r *scopev1.IngestResponse) counts {
	t.Helper()
	if len(r.GetShards()) != 1 {
		t.Fatalf("response has %d shard results, want 1: %v", len(r.GetShards()), r)
	}
	sr := r.GetShards()[0]
	return counts{r.GetAccepted(), r.GetDuplicates(), sr.GetCommitted(), sr.GetDuplicates()}
}

func TestIngestRepeatedIDInOneRequest(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2})
	a, _, _ := procs(t)

	// The same event twice: stored once, reported as one stored and one
	// duplicate.
	e := ev(a, scopev1.Kind_KIND_STATE_CHANGE, 100)
	r := ingest(t, n, e, e)
	if got, want := countsOf(t, r), (counts{accepted: 1, duplicates: 1, committed: 1, shardDuplicates: 1}); got != want {
		t.Fatalf("same event twice in one request: counts %+v, want %+v (%v)", got, want, r)
	}
	if ids := r.GetEventIds(); len(ids) != 2 || ids[0] != e.EventId || ids[1] != e.EventId {
		t.Fatalf("event_ids %v, want the id twice", ids)
	}
	if got := storedEvents(t, n); got != 1 {
		t.Fatalf("stored %d events, want 1", got)
	}

	// The same id for another event: the request is refused, nothing stored.
	other := ev(a, scopev1.Kind_KIND_STATE_CHANGE, 200)
	other.Payload = "other"
	clash := ev(a, scopev1.Kind_KIND_STATE_CHANGE, 300)
	clash.EventId = other.EventId
	_, err := n.Ingest.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{
		Events: []*scopev1.Event{other, clash}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "events[1].event_id") {
		t.Fatalf("same id, other content: %v, want INVALID_ARGUMENT naming events[1].event_id", err)
	}
	if got := storedEvents(t, n); got != 1 {
		t.Fatalf("stored %d events after the refused request, want 1", got)
	}
}

func TestIngestResendIsReportedAsDuplicate(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2})
	a, _, _ := procs(t)
	events := []*scopev1.Event{ev(a, scopev1.Kind_KIND_STATE_CHANGE, 100), ev(a, scopev1.Kind_KIND_STATE_CHANGE, 200)}
	if got, want := countsOf(t, ingest(t, n, events...)), (counts{accepted: 2, committed: 2}); got != want {
		t.Fatalf("first send: counts %+v, want %+v", got, want)
	}
	// A resend of both plus one new event: one stored, two duplicates.
	events = append(events, ev(a, scopev1.Kind_KIND_STATE_CHANGE, 300))
	if got, want := countsOf(t, ingest(t, n, events...)), (counts{accepted: 1, duplicates: 2, committed: 1, shardDuplicates: 2}); got != want {
		t.Fatalf("resend: counts %+v, want %+v", got, want)
	}
	if got := storedEvents(t, n); got != 3 {
		t.Fatalf("stored %d events, want 3", got)
	}
}

func TestIngestResendWithoutIDIsStoredOnce(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2})
	a, _, _ := procs(t)
	e := ev(a, scopev1.Kind_KIND_CALL, 100)
	e.EventId, e.Module, e.Function, e.Payload = "", "m", "f", "[1, 2]"
	first := ingest(t, n, e)
	again := ingest(t, n, e)
	if first.GetEventIds()[0] == "" || again.GetEventIds()[0] != first.GetEventIds()[0] {
		t.Fatalf("assigned ids %v then %v, want one id derived from the content", first.GetEventIds(), again.GetEventIds())
	}
	if got, want := countsOf(t, again), (counts{duplicates: 1, shardDuplicates: 1}); got != want {
		t.Fatalf("resend: counts %+v, want %+v", got, want)
	}
	if got := storedEvents(t, n); got != 1 {
		t.Fatalf("stored %d events, want 1", got)
	}
	// The all-zero id is "no id" on the wire too.
	zero := proto.Clone(e).(*scopev1.Event)
	zero.EventId = "00000000000000000000000000"
	if got := ingest(t, n, zero).GetEventIds()[0]; got != first.GetEventIds()[0] {
		t.Fatalf("all-zero id assigned %s, want the content id %s", got, first.GetEventIds()[0])
	}
	if got := storedEvents(t, n); got != 1 {
		t.Fatalf("stored %d events after the all-zero resend, want 1", got)
	}
	// Another event (here: another timestamp) gets another id.
	later := proto.Clone(e).(*scopev1.Event)
	later.TimestampNs++
	if got := ingest(t, n, later).GetEventIds()[0]; got == first.GetEventIds()[0] {
		t.Fatalf("another event got the same derived id %s", got)
	}
}

func TestGetEventReportsAnIDStoredOnTwoShards(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: shards})
	a, b, _ := procs(t) // on different shards
	ea := ev(a, scopev1.Kind_KIND_STATE_CHANGE, 100)
	eb := ev(b, scopev1.Kind_KIND_STATE_CHANGE, 200)
	eb.EventId = ea.EventId
	ingest(t, n, ea)
	ingest(t, n, eb)

	ctx := context.Background()
	_, err := n.Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: ea.EventId}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), a.PID) ||
		!strings.Contains(err.Error(), b.PID) {
		t.Fatalf("GetEvent of an id stored on two shards: %v, want FAILED_PRECONDITION naming both processes", err)
	}
	// Naming the process chooses.
	for _, p := range []*scopev1.Event{ea, eb} {
		r, err := n.Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: ea.EventId,
			Origin: p.Origin, Pid: p.Pid}))
		if err != nil || r.Msg.GetEvent().GetPid() != p.Pid || r.Msg.GetEvent().GetTimestampNs() != p.TimestampNs {
			t.Fatalf("GetEvent with process %s: %v %v", p.Pid, r, err)
		}
	}
	// A process on a's shard that has no event with the id: not found,
	// rather than a's event.
	for i := 2; ; i++ {
		c := correlate.Process{Origin: a.Origin, PID: fmt.Sprintf("<0.%d.1>", i)}
		if correlate.ShardOf(c.Origin, c.PID, shards) != correlate.ShardOf(a.Origin, a.PID, shards) {
			continue
		}
		_, err := n.Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: ea.EventId,
			Origin: c.Origin, Pid: c.PID}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("GetEvent with a process that has no event with the id: %v, want NOT_FOUND", err)
		}
		break
	}
	if got := metricValue(t, n, "scope_rpc_event_id_conflicts_total"); got != 1 {
		t.Fatalf("scope_rpc_event_id_conflicts_total = %v, want 1", got)
	}
}

// metricValue sums the samples of the named counter on the node's registry.
func metricValue(t *testing.T, n *rpctest.Node, name string) float64 {
	t.Helper()
	mfs, err := n.Node.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
