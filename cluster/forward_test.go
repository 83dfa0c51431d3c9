package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// forwardOnceTo makes one forward-shaped Ingest call over real HTTP on
// loopback and returns its error.
func forwardOnceTo(t *testing.T, url string) error {
	t.Helper()
	c := scopev1connect.NewIngestServiceClient(http.DefaultClient, url, connect.WithGRPC())
	_, err := c.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{}))
	if err == nil {
		t.Fatal("the call succeeded")
	}
	return err
}

func withDetail(code connect.Code, resp *scopev1.IngestResponse) error {
	ce := connect.NewError(code, errors.New("leader says no"))
	d, err := connect.NewErrorDetail(resp)
	if err != nil {
		panic(err)
	}
	ce.AddDetail(d)
	return ce
}

// A forward is reported refused ("not stored") only when no event can have
// been stored; a connection that breaks after the request was sent leaves
// the outcome unknown.
func TestForwardOutcome(t *testing.T) {
	// The leader reads the request, then the connection is cut.
	cut := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		panic(http.ErrAbortHandler)
	}))
	cut.EnableHTTP2 = true
	cut.Start()
	defer cut.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := "http://" + ln.Addr().String()
	_ = ln.Close() // nothing listens: the dial fails

	for _, tc := range []struct {
		name    string
		err     error
		refused bool
		is      error
	}{
		{"connection cut after the request was sent", forwardOnceTo(t, cut.URL), false, node.ErrOutcomeUnknown},
		{"dial refused: never sent", forwardOnceTo(t, closedAddr), true, node.ErrNotLeader},
		{"no client for the address", ErrUnknownPeer, true, node.ErrNotLeader},
		{"leader refused the whole part", withDetail(connect.CodeUnavailable,
			&scopev1.IngestResponse{Refused: 5, Shards: []*scopev1.ShardResult{{Shard: 2, Refused: 5, Leader: "n3"}}}),
			true, node.ErrNotLeader},
		{"leader's buffer full", withDetail(connect.CodeResourceExhausted, &scopev1.IngestResponse{Refused: 5}),
			true, node.ErrFull},
		{"leader's own outcome unknown", withDetail(connect.CodeUnavailable, &scopev1.IngestResponse{Unknown: 5}),
			false, node.ErrOutcomeUnknown},
		{"deadline", connect.NewError(connect.CodeDeadlineExceeded, errors.New("slow")), false, node.ErrTimeout},
		{"invalid at the leader", connect.NewError(connect.CodeInvalidArgument, errors.New("bad")), true, node.ErrRejected},
		{"internal", connect.NewError(connect.CodeInternal, errors.New("boom")), false, node.ErrOutcomeUnknown},
	} {
		got := forwardOutcome(2, "leader:7070", tc.err)
		if node.Refused(got) != tc.refused || !errors.Is(got, tc.is) {
			t.Errorf("%s: %v → %v: refused %v, want refused %v and errors.Is %v",
				tc.name, tc.err, got, node.Refused(got), tc.refused, tc.is)
		}
	}
}
