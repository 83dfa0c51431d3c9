package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// refusingIngest is an IngestService over real Connect that refuses its
// first refuse requests (a unary call or a whole stream; refuse < 0: all)
// with UNAVAILABLE, as a shard whose leadership is moving does, and stores
// the others by event id, an id already stored counting as a duplicate
// (the shards' dedup). A refused stream has stored its first message's
// events, as a real stream that fails part-way has.
type refusingIngest struct {
	scopev1connect.UnimplementedIngestServiceHandler
	refuse int

	mu       sync.Mutex
	requests int             // unary calls and streams, refused ones included
	stored   map[string]bool // event ids
}

var errNotLeader = connect.NewError(connect.CodeUnavailable, errors.New("shard 3: not the leader, leader unknown"))

// admit counts a request and says whether to refuse it.
func (f *refusingIngest) admit() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	return f.refuse < 0 || f.requests <= f.refuse
}

// store stores events and returns what the server would answer.
func (f *refusingIngest) store(events []*scopev1.Event, into *scopev1.IngestResponse) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range events {
		switch {
		case e.GetEventId() == "":
			return connect.NewError(connect.CodeInvalidArgument, errors.New("bench sent an event without an id"))
		case f.stored[e.GetEventId()]:
			into.Duplicates++
		default:
			f.stored[e.GetEventId()] = true
			into.Accepted++
		}
	}
	return nil
}

func (f *refusingIngest) Ingest(_ context.Context, req *connect.Request[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error) {
	if f.admit() {
		return nil, errNotLeader
	}
	resp := &scopev1.IngestResponse{Durability: req.Msg.GetDurability()}
	if err := f.store(req.Msg.GetEvents(), resp); err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (f *refusingIngest) IngestStream(_ context.Context, s *connect.ClientStream[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error) {
	refuse := f.admit()
	resp := &scopev1.IngestResponse{}
	for i := 0; s.Receive(); i++ {
		if refuse && i > 0 {
			continue // the failure comes after the first message was stored
		}
		resp.Durability = s.Msg().GetDurability()
		if err := f.store(s.Msg().GetEvents(), resp); err != nil {
			return nil, err
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if refuse {
		return nil, errNotLeader
	}
	return connect.NewResponse(resp), nil
}

func (f *refusingIngest) counts() (requests, stored int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, len(f.stored)
}

// startRefusingIngest serves f on loopback over HTTP/1.1 and unencrypted
// HTTP/2 (what `scope bench` speaks to an http:// address).
func startRefusingIngest(t *testing.T, f *refusingIngest) string {
	t.Helper()
	f.stored = map[string]bool{}
	mux := http.NewServeMux()
	mux.Handle(scopev1connect.NewIngestServiceHandler(f))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// benchFigures are the fields of `scope bench -json` the resend tests read.
type benchFigures struct {
	Events          uint64 `json:"events"`
	Accepted        uint64 `json:"accepted"`
	Errors          uint64 `json:"errors"`
	Resends         uint64 `json:"resends"`
	ResentRequests  uint64 `json:"resent_requests"`
	ResentSucceeded uint64 `json:"resent_succeeded"`
}

// runBenchJSON runs `scope bench -json` and returns its exit code, the
// agent run's figures and its stderr.
func runBenchJSON(t *testing.T, args ...string) (int, benchFigures, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(append([]string{"bench", "-json"}, args...), &out, &errOut)
	var fig benchFigures
	if err := json.NewDecoder(&out).Decode(&fig); err != nil {
		t.Fatalf("%q: exit %d, no JSON figures (%v); stderr:\n%s", args, code, err, errOut.String())
	}
	return code, fig, errOut.String()
}

// TestBenchResendsUnavailable: a request that fails with UNAVAILABLE (a
// leadership moving to a node that joined) is sent again with the same
// events, so every event is acknowledged and stored once, and the resends
// are reported; -retry=false counts it failed instead, as `scope bench`
// did before it resent (the orphan returns of docs/bench/scale.md,
// "Resharding under load"). Both request shapes: unary calls, and
// IngestStreams refused after their first message was stored (the resend
// finds it a duplicate).
func TestBenchResendsUnavailable(t *testing.T) {
	const refuse = 3
	const events = 2000
	for _, tc := range []struct {
		name  string
		args  []string
		retry bool
	}{
		{"unary, resent (the default)", []string{"-unary"}, true},
		{"stream, resent (the default)", nil, true},
		{"unary, -retry=false", []string{"-unary", "-retry=false"}, false},
		{"stream, -retry=false", []string{"-retry=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &refusingIngest{refuse: refuse}
			url := startRefusingIngest(t, f)
			args := append([]string{"-addr", url, "-events", "2000", "-batch", "100", "-stream-len", "4",
				"-concurrency", "2", "-procs", "20"}, tc.args...)
			code, fig, stderr := runBenchJSON(t, args...)
			requests, stored := f.counts()
			t.Logf("exit %d, %+v; the server saw %d requests and stored %d events", code, fig, requests, stored)
			if fig.Events != events {
				t.Fatalf("sent %d events, want %d", fig.Events, events)
			}
			if !tc.retry {
				if code != exitError || fig.Errors != refuse || fig.Resends != 0 || fig.ResentRequests != 0 {
					t.Fatalf("exit %d, %d requests failed, %d resends; want exit %d, %d failed and no resend (stderr %s)",
						code, fig.Errors, fig.Resends, exitError, refuse, stderr)
				}
				return
			}
			if code != exitOK || fig.Errors != 0 {
				t.Fatalf("exit %d, %d requests failed; want every request acknowledged on a resend (stderr %s)", code, fig.Errors, stderr)
			}
			if fig.Accepted != events || stored != events {
				t.Fatalf("acknowledged %d, stored %d of %d events: want all, once", fig.Accepted, stored, events)
			}
			if fig.Resends != refuse || fig.ResentRequests < 1 || fig.ResentRequests > refuse || fig.ResentSucceeded != fig.ResentRequests {
				t.Fatalf("%d resends of %d requests (%d succeeded on a resend); want %d resends, all requests succeeding",
					fig.Resends, fig.ResentRequests, fig.ResentSucceeded, refuse)
			}
		})
	}

	// The summary says so in words, too.
	url := startRefusingIngest(t, &refusingIngest{refuse: 1})
	var out, errOut bytes.Buffer
	if code := run([]string{"bench", "-addr", url, "-unary", "-events", "200", "-batch", "100", "-concurrency", "1", "-procs", "2"},
		&out, &errOut); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if want := "resent 1 requests, 1 resends in all (1 succeeded on a resend)"; !strings.Contains(out.String(), want) {
		t.Fatalf("summary lacks %q:\n%s", want, out.String())
	}
}

// TestBenchResendsWithinTheDeadline: resends end with the request's
// deadline (-timeout, from its first send), and the request then counts as
// failed; with -duration and no deadline they end with the run.
func TestBenchResendsWithinTheDeadline(t *testing.T) {
	f := &refusingIngest{refuse: -1}
	url := startRefusingIngest(t, f)
	base := []string{"-addr", url, "-unary", "-batch", "100", "-concurrency", "1", "-procs", "2"}

	code, fig, stderr := runBenchJSON(t, append(base, "-events", "100", "-timeout", "1s")...)
	if code != exitError || fig.Errors != 1 || fig.ResentRequests != 1 || fig.Resends < 1 || fig.ResentSucceeded != 0 {
		t.Fatalf("exit %d, %+v; want the one request resent, then failed at its deadline (stderr %s)", code, fig, stderr)
	}

	// Ended by -duration mid-resend: neither sent nor failed, as a request
	// in flight at the end always was.
	code, fig, stderr = runBenchJSON(t, append(base, "-duration", "300ms", "-timeout", "0")...)
	if code != exitOK || fig.Events != 0 || fig.Errors != 0 {
		t.Fatalf("exit %d, %+v; want the request cut short by -duration, not counted (stderr %s)", code, fig, stderr)
	}
}
