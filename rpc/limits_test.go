package rpc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// TestOversizeRequest: a request larger than MaxRequestBytes is refused
// with RESOURCE_EXHAUSTED naming the limit — over Connect (its size known
// from Content-Length, refused before the body is read), over gRPC (no
// Content-Length: Connect cuts the message) and as an IngestStream message
// — each refusal is counted, and the node stays healthy: probes answer
// and a normal request succeeds.
func TestOversizeRequest(t *testing.T) {
	const limit = 64 << 10
	n := startAuthNode(t, func(c *rpc.Config) { c.MaxRequestBytes = limit })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	big := &scopev1.IngestRequest{}
	for i := range 64 {
		e := ev(correlate.Process{Origin: "big@h", PID: "<0.1.0>"}, scopev1.Kind_KIND_STATE_CHANGE, int64(i+1))
		e.Payload = strings.Repeat("x", 2048)
		big.Events = append(big.Events, e)
	}
	for _, c := range []struct {
		name string
		send func() error
	}{
		{"connect", func() error {
			_, err := scopev1connect.NewIngestServiceClient(withToken(n.HTTP1, n.ingest), n.URL).Ingest(ctx, connect.NewRequest(big))
			return err
		}},
		{"grpc", func() error {
			_, err := scopev1connect.NewIngestServiceClient(withToken(n.H2C, n.ingest), n.URL, connect.WithGRPC()).Ingest(ctx, connect.NewRequest(big))
			return err
		}},
		{"stream", func() error {
			s := scopev1connect.NewIngestServiceClient(withToken(n.H2C, n.ingest), n.URL, connect.WithGRPC()).IngestStream(ctx)
			_ = s.Send(big)
			_, err := s.CloseAndReceive()
			return err
		}},
	} {
		before := refusals(t, n, "request_bytes")
		err := c.send()
		if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(errMessage(err), "65536") {
			t.Errorf("%s: oversize request: %v, want RESOURCE_EXHAUSTED naming the limit 65536", c.name, err)
		}
		if got := refusals(t, n, "request_bytes"); got != before+1 {
			t.Errorf("%s: request_bytes refusals %d -> %d, want one more", c.name, before, got)
		}
	}
	if code := httpStatus(t, n.HTTP1, n.URL+"/readyz", ""); code != http.StatusOK {
		t.Fatalf("/readyz after oversize requests: %d", code)
	}
	if _, err := scopev1connect.NewIngestServiceClient(withToken(n.HTTP1, n.ingest), n.URL).Ingest(ctx, connect.NewRequest(oneEvent())); err != nil {
		t.Fatalf("a normal request after oversize ones: %v", err)
	}
}

// TestEventsPerRequestCounted: more events than MaxEventsPerRequest is
// INVALID_ARGUMENT naming the flag, counted.
func TestEventsPerRequestCounted(t *testing.T) {
	n := startAuthNode(t, func(c *rpc.Config) { c.MaxEventsPerRequest = 2 })
	req := &scopev1.IngestRequest{}
	for i := range 3 {
		req.Events = append(req.Events, ev(correlate.Process{Origin: "n@h", PID: "<0.1.0>"}, scopev1.Kind_KIND_EXIT, int64(i+1)))
	}
	_, err := scopev1connect.NewIngestServiceClient(withToken(n.HTTP1, n.ingest), n.URL).Ingest(context.Background(), connect.NewRequest(req))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(errMessage(err), "-max-events-per-request") {
		t.Fatalf("3 events over a limit of 2: %v", err)
	}
	if got := refusals(t, n, "events_per_request"); got != 1 {
		t.Fatalf("events_per_request refusals %d, want 1", got)
	}
}

// TestTailLimits: Tail streams are bounded per caller (the token's name)
// and in total; a refusal names the flag and is counted; a closed stream
// frees its slot.
func TestTailLimits(t *testing.T) {
	n := startAuthNode(t, func(c *rpc.Config) { c.MaxTails, c.MaxTailsPerCaller = 2, 1 })
	// A second query token for another caller.
	tok2, line2, _ := rpc.NewToken(rpc.RoleQuery, "dave")
	lines := []string{line2, "query " + rpc.HashToken(n.query) + " bob", "admin " + rpc.HashToken(n.admin) + " root",
		"ingest " + rpc.HashToken(n.ingest) + " alice"}
	set, err := rpc.ParseTokens(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	n.auth.SetTokens(set)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(token string) (*connect.ServerStreamForClient[scopev1.TailResponse], error) {
		s, err := scopev1connect.NewQueryServiceClient(withToken(n.H2C, token), n.URL, connect.WithGRPC()).
			Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: "lim@h"}))
		if err != nil {
			return nil, err
		}
		if !s.Receive() {
			err := s.Err()
			s.Close()
			return nil, err
		}
		return s, nil
	}
	bob1, err := open(n.query)
	if err != nil {
		t.Fatalf("first Tail: %v", err)
	}
	if _, err := open(n.query); connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(errMessage(err), "(scope agent -max-tails-per-caller 1)") {
		t.Fatalf("bob's second Tail: %v, want RESOURCE_EXHAUSTED naming -max-tails-per-caller", err)
	}
	dave, err := open(tok2)
	if err != nil {
		t.Fatalf("another caller's Tail: %v", err)
	}
	defer dave.Close()
	if _, err := open(n.admin); connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(errMessage(err), "(scope agent -max-tails 2)") {
		t.Fatalf("a third Tail: %v, want RESOURCE_EXHAUSTED naming -max-tails", err)
	}
	if refusals(t, n, "tails_per_caller") != 1 || refusals(t, n, "tails_total") != 1 {
		t.Fatalf("refusals: per caller %d, total %d; want 1 and 1", refusals(t, n, "tails_per_caller"), refusals(t, n, "tails_total"))
	}
	// Closing bob's stream frees his slot (once the server sees it end).
	bob1.Close()
	var again *connect.ServerStreamForClient[scopev1.TailResponse]
	deadline := time.Now().Add(10 * time.Second)
	for again == nil {
		s, err := open(n.query)
		switch {
		case err == nil:
			again = s
		case connect.CodeOf(err) != connect.CodeResourceExhausted || time.Now().After(deadline):
			t.Fatalf("bob's Tail after closing his first: %v", err)
		default:
			time.Sleep(10 * time.Millisecond)
		}
	}
	again.Close()
}

// TestQueryDeadline: the server bounds every query by QueryTimeout; a
// query cut by it is DEADLINE_EXCEEDED naming the flag, counted.
func TestQueryDeadline(t *testing.T) {
	n := startAuthNode(t, func(c *rpc.Config) { c.QueryTimeout = time.Nanosecond })
	_, err := scopev1connect.NewQueryServiceClient(withToken(n.HTTP1, n.query), n.URL).
		Events(context.Background(), connect.NewRequest(&scopev1.EventsRequest{Origin: "d@h"}))
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded || !strings.Contains(errMessage(err), "-query-timeout") {
		t.Fatalf("query under a 1 ns server deadline: %v", err)
	}
	if got := refusals(t, n, "query_deadline"); got != 1 {
		t.Fatalf("query_deadline refusals %d, want 1", got)
	}
}

// TestQueryMemoryBudget: with a 1 MiB query memory budget and 2 MiB of
// events in one call tree, Events pages are cut short but page through
// every event exactly once; the whole CallTree is refused with
// RESOURCE_EXHAUSTED naming -query-memory and max_frames (counted), and a
// smaller one is answered.
func TestQueryMemoryBudget(t *testing.T) {
	n := startAuthNode(t, func(c *rpc.Config) { c.QueryMemory = 1 << 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := correlate.Process{Origin: "mem@h", PID: "<0.1.0>"}
	payload := strings.Repeat("p", 4000)
	mk := func(kind scopev1.Kind, ts int64, fn string) *scopev1.Event {
		e := ev(p, kind, ts)
		e.Module, e.Function, e.Payload = "m", fn, payload
		return e
	}
	root := mk(scopev1.Kind_KIND_CALL, 1, "root")
	events := []*scopev1.Event{root}
	for i := range 250 {
		events = append(events, mk(scopev1.Kind_KIND_CALL, int64(2+2*i), "child"), mk(scopev1.Kind_KIND_RETURN, int64(3+2*i), "child"))
	}
	events = append(events, mk(scopev1.Kind_KIND_RETURN, 1000, "root"))
	ingestClient := scopev1connect.NewIngestServiceClient(withToken(n.HTTP1, n.ingest), n.URL)
	if _, err := ingestClient.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events,
		Durability: scopev1.Durability_DURABILITY_COMMITTED})); err != nil {
		t.Fatal(err)
	}
	query := scopev1connect.NewQueryServiceClient(withToken(n.HTTP1, n.query), n.URL)

	seen := make(map[string]bool)
	cursor, pages, short := "", 0, false
	for {
		resp, err := query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: p.Origin, Pid: p.PID,
			Limit: 10_000, Cursor: cursor}))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if resp.Msg.GetNextCursor() != "" && len(resp.Msg.GetEvents()) < len(events) {
			short = true
		}
		for _, e := range resp.Msg.GetEvents() {
			if seen[e.GetEventId()] {
				t.Fatalf("event %s on two pages", e.GetEventId())
			}
			seen[e.GetEventId()] = true
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			break
		}
	}
	if len(seen) != len(events) || !short {
		t.Fatalf("paged %d of %d events in %d pages (a page cut by the budget: %v)", len(seen), len(events), pages, short)
	}

	before := refusals(t, n, "query_memory")
	_, err := query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: root.GetEventId()}))
	if msg := errMessage(err); connect.CodeOf(err) != connect.CodeResourceExhausted ||
		!strings.Contains(msg, "-query-memory") || !strings.Contains(msg, "max_frames") {
		t.Fatalf("the whole call tree: %v, want RESOURCE_EXHAUSTED naming -query-memory and max_frames", err)
	}
	if got := refusals(t, n, "query_memory"); got != before+1 {
		t.Fatalf("query_memory refusals %d -> %d, want one more", before, got)
	}
	resp, err := query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: root.GetEventId(), MaxFrames: 100}))
	if err != nil {
		t.Fatalf("a call tree of 100 frames: %v", err)
	}
	if !resp.Msg.GetTruncated() {
		t.Fatal("a call tree of 100 frames of 251: not marked truncated")
	}
}
