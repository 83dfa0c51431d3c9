package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
)

func storedEvents(t *testing.T, n *rpctest.Node) uint64 {
	t.Helper()
	r, err := n.Query.Stats(context.Background(), connect.NewRequest(&scopev1.StatsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return r.Msg.GetEvents()
}

func TestIngestRejectsInvalidInput(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2, EditRPC: func(c *rpc.Config) {
		c.MaxEventsPerRequest = 8
		c.MaxRequestBytes = 64 << 10
	}})
	ctx := context.Background()
	p := correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	valid := func() *scopev1.Event {
		e := ev(p, scopev1.Kind_KIND_CALL, 100)
		e.Module, e.Function = "m", "f"
		return e
	}
	long := strings.Repeat("x", 300)
	cases := []struct {
		name  string
		edit  func(e *scopev1.Event)
		field string // the message must name events[1].<field>
	}{
		{"missing origin", func(e *scopev1.Event) { e.Origin = "" }, "origin"},
		{"missing pid", func(e *scopev1.Event) { e.Pid = "" }, "pid"},
		{"missing kind", func(e *scopev1.Event) { e.Kind = scopev1.Kind_KIND_UNSPECIFIED }, "kind"},
		{"unknown kind", func(e *scopev1.Event) { e.Kind = scopev1.Kind(42) }, "kind"},
		{"missing timestamp", func(e *scopev1.Event) { e.TimestampNs = 0 }, "timestamp_ns"},
		{"CALL without module", func(e *scopev1.Event) { e.Module = "" }, "module"},
		{"CALL without function", func(e *scopev1.Event) { e.Function = "" }, "function"},
		{"bad event id", func(e *scopev1.Event) { e.EventId = "not-a-ulid" }, "event_id"},
		{"origin too long", func(e *scopev1.Event) { e.Origin = long }, "origin"},
		{"SPAWN without child", func(e *scopev1.Event) { e.Kind = scopev1.Kind_KIND_SPAWN }, "peer_origin"},
		{"too many attributes", func(e *scopev1.Event) {
			e.Attributes = map[string]string{}
			for i := range 40 {
				e.Attributes[strings.Repeat("k", i+1)] = "v"
			}
		}, "attributes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := valid()
			tc.edit(bad)
			_, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{valid(), bad}}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "events[1]."+tc.field) {
				t.Fatalf("got %v, want INVALID_ARGUMENT naming events[1].%s", err, tc.field)
			}
		})
	}
	t.Run("oversized batch", func(t *testing.T) {
		events := make([]*scopev1.Event, 9)
		for i := range events {
			events[i] = valid()
		}
		_, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "at most 8 events") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("oversized request", func(t *testing.T) {
		e := valid()
		e.Payload = strings.Repeat("p", 100<<10)
		_, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}}))
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("got %v", err)
		}
	})
	raw := []struct {
		name, contentType, body string
	}{
		{"invalid UTF-8 in JSON", "application/json", "{\"events\":[{\"origin\":\"a\xff\",\"pid\":\"p\",\"kind\":\"KIND_EXIT\",\"timestampNs\":\"1\"}]}"},
		{"garbage JSON", "application/json", "{\"events\": [ nope"},
		{"unknown kind name", "application/json", `{"events":[{"origin":"a","pid":"p","kind":"KIND_TELEPORT","timestampNs":"1"}]}`},
		{"garbage binary", "application/proto", "\xff\xff\xff\xff\x0f\x01"},
	}
	for _, tc := range raw {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := n.HTTP1.Post(n.URL+scopev1connect.IngestServiceIngestProcedure, tc.contentType, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "invalid_argument") {
				t.Fatalf("HTTP %d: %s", resp.StatusCode, b)
			}
		})
	}
	// Invalid UTF-8 that reaches the server (the binary encoder of a Go
	// client refuses it, so hand-encode the message) is refused too.
	t.Run("invalid UTF-8 in binary", func(t *testing.T) {
		var ev []byte
		ev = protowire.AppendTag(ev, 2, protowire.BytesType)
		ev = protowire.AppendString(ev, "app@h")
		ev = protowire.AppendTag(ev, 3, protowire.BytesType)
		ev = protowire.AppendString(ev, "<0.1.0>")
		ev = protowire.AppendTag(ev, 4, protowire.VarintType)
		ev = protowire.AppendVarint(ev, uint64(scopev1.Kind_KIND_EXIT))
		ev = protowire.AppendTag(ev, 5, protowire.VarintType)
		ev = protowire.AppendVarint(ev, 1)
		ev = protowire.AppendTag(ev, 15, protowire.BytesType)
		ev = protowire.AppendString(ev, "bad\xffreason")
		var req []byte
		req = protowire.AppendTag(req, 1, protowire.BytesType)
		req = protowire.AppendBytes(req, ev)
		resp, err := n.HTTP1.Post(n.URL+scopev1connect.IngestServiceIngestProcedure, "application/proto", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("HTTP %d: %s", resp.StatusCode, b)
		}
	})
	if got := storedEvents(t, n); got != 0 {
		t.Fatalf("invalid requests stored %d events", got)
	}
}

func TestIngestIsIdempotent(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2})
	ctx := context.Background()
	var events []*scopev1.Event
	for i := range 20 {
		p := correlate.Process{Origin: "app@h", PID: "<0." + string(rune('a'+i%5)) + ".0>"}
		events = append(events, ev(p, scopev1.Kind_KIND_STATE_CHANGE, int64(100+i)))
	}
	// The resend stores nothing and says so: every event is a duplicate.
	for i, want := range [][2]uint32{{20, 0}, {0, 20}} {
		r, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events}))
		if err != nil || r.Msg.GetAccepted() != want[0] || r.Msg.GetDuplicates() != want[1] {
			t.Fatalf("send %d: %v %v, want accepted %d, duplicates %d", i, r, err, want[0], want[1])
		}
	}
	if got := storedEvents(t, n); got != 20 {
		t.Fatalf("stored %d events, want 20", got)
	}
}

// TestBackpressure fills a tiny ring faster than raft drains it. ACCEPTED
// refusals fail the call with RESOURCE_EXHAUSTED naming the shard, and
// carry the IngestResponse with the refused counts; the node counts them.
func TestBackpressure(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 1, EditNode: func(c *node.Config) {
		c.Pool.RingCapacity = 4
		c.Pool.BatchSize = 4
		c.Pool.MaxInflight = 1
		c.Pool.Writers = 1
	}})
	p := correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		refused *scopev1.IngestResponse
		other   error
	)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				done := refused != nil || other != nil
				mu.Unlock()
				if done {
					return
				}
				batch := []*scopev1.Event{ev(p, scopev1.Kind_KIND_EXIT, 1), ev(p, scopev1.Kind_KIND_EXIT, 2),
					ev(p, scopev1.Kind_KIND_EXIT, 3), ev(p, scopev1.Kind_KIND_EXIT, 4)}
				_, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: batch,
					Durability: scopev1.Durability_DURABILITY_ACCEPTED}))
				if err == nil {
					continue
				}
				mu.Lock()
				var ce *connect.Error
				if errors.As(err, &ce) && ce.Code() == connect.CodeResourceExhausted {
					for _, d := range ce.Details() {
						if m, derr := d.Value(); derr == nil {
							if r, ok := m.(*scopev1.IngestResponse); ok {
								refused = r
							}
						}
					}
					if refused == nil || !strings.Contains(ce.Message(), "shard 0") {
						other = err
					}
				} else if ctx.Err() == nil {
					other = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if other != nil {
		t.Fatalf("unexpected error: %v", other)
	}
	if refused == nil {
		t.Fatal("no refusal within 20s")
	}
	if refused.GetRefused() != 4 || refused.GetAccepted() != 0 || len(refused.GetShards()) != 1 ||
		refused.GetShards()[0].GetErrorCode() != "resource_exhausted" {
		t.Fatalf("refusal detail: %v", refused)
	}
	resp, err := n.HTTP1.Get(n.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`scope_ring_events_refused_total{shard="0"}`,
		`scope_rpc_requests_total{code="resource_exhausted",procedure="/scope.v1.IngestService/Ingest"}`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// TestIngestPeerPidAloneIsOnTheOrigin: a SEND whose receiver is given by
// its pid alone (a BEAM pid <0.X.Y> is local to the node that printed it)
// is stored with peer_origin set to the event's own origin, and pairs with
// the receiver's RECEIVE.
func TestIngestPeerPidAloneIsOnTheOrigin(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: 2})
	a := correlate.Process{Origin: "app@h", PID: "<0.1.0>"}
	b := correlate.Process{Origin: "app@h", PID: "<0.2.0>"}
	send := ev(a, scopev1.Kind_KIND_SEND, 10)
	send.PeerPid, send.Payload = b.PID, "hello"
	recv := ev(b, scopev1.Kind_KIND_RECEIVE, 20)
	recv.PeerPid, recv.Payload = a.PID, "hello"
	ingest(t, n, send, recv)
	ctx := context.Background()
	got, err := n.Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: send.GetEventId()}))
	if err != nil {
		t.Fatal(err)
	}
	if po := got.Msg.GetEvent().GetPeerOrigin(); po != a.Origin {
		t.Fatalf("stored peer_origin %q, want the event's origin %q", po, a.Origin)
	}
	flow, err := n.Query.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{
		A: &scopev1.Process{Origin: a.Origin, Pid: a.PID}, B: &scopev1.Process{Origin: b.Origin, Pid: b.PID}}))
	if err != nil {
		t.Fatal(err)
	}
	if ms := flow.Msg.GetMessages(); len(ms) != 1 || ms[0].GetReceive() == nil {
		t.Fatalf("flow %v: want the send paired with its receive", ms)
	}
}
