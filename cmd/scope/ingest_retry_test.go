package main

import (
	"context"
	"errors"
	"testing"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// fakeIngester answers with the errors it is given, then with success.
type fakeIngester struct {
	errs  []error
	calls int
}

func (f *fakeIngester) Ingest(context.Context, *connect.Request[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error) {
	f.calls++
	if f.calls <= len(f.errs) {
		return nil, f.errs[f.calls-1]
	}
	return connect.NewResponse(&scopev1.IngestResponse{Accepted: 1}), nil
}

// A leadership changing hands answers UNAVAILABLE, which the API tells
// clients to retry: `scope ingest` used to give up on the first one (the
// cause of TestClusterFailover failing when balancing moved a leadership
// right after the cluster formed). So is a shard's backpressure
// (RESOURCE_EXHAUSTED with the per-shard counts: a full buffer, a part
// shed by admission control); other errors, a request too large among
// them, are not, and the retries are bounded.
func TestIngestRetriesUnavailable(t *testing.T) {
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("shard 2: not the leader"))
	invalid := connect.NewError(connect.CodeInvalidArgument, errors.New("events[0].pid: required"))
	shed := connect.NewError(connect.CodeResourceExhausted, errors.New("shard 3: shard saturated: retry after 2s"))
	detail, err := connect.NewErrorDetail(&scopev1.IngestResponse{Refused: 1})
	if err != nil {
		t.Fatal(err)
	}
	shed.AddDetail(detail)
	tooLarge := connect.NewError(connect.CodeResourceExhausted, errors.New("request of 9 MB is larger than the maximum request size"))
	for _, tc := range []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   connect.Code
	}{
		{"success", nil, 1, 0},
		{"unavailable twice, then success", []error{unavailable, unavailable}, 3, 0},
		{"invalid argument is not retried", []error{invalid}, 1, connect.CodeInvalidArgument},
		{"a shard's backpressure is retried", []error{shed, shed}, 3, 0},
		{"a request too large is not retried", []error{tooLarge}, 1, connect.CodeResourceExhausted},
		{"unavailable for good: bounded", []error{unavailable, unavailable, unavailable, unavailable, unavailable, unavailable, unavailable},
			ingestAttempts, connect.CodeUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeIngester{errs: tc.errs}
			_, retries, err := ingestRetrying(context.Background(), f, &scopev1.IngestRequest{}, 0)
			if f.calls != tc.wantCalls || retries != tc.wantCalls-1 {
				t.Fatalf("calls %d, retries %d; want %d calls", f.calls, retries, tc.wantCalls)
			}
			if got := connect.CodeOf(err); (err == nil) != (tc.wantErr == 0) || err != nil && got != tc.wantErr {
				t.Fatalf("err %v, want code %v", err, tc.wantErr)
			}
		})
	}
}
