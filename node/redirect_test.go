package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
)

// redirectingProposer fails every proposal with cause and redirects: it
// records each Redirect call and answers it with fail(call number) or, on
// success, with the count of events of the call whose Seq is odd as the
// new leader's duplicates.
type redirectingProposer struct {
	cause error
	fail  func(call int) error

	mu    sync.Mutex
	calls []redirectCall
}

type redirectCall struct {
	pids   []string
	commit bool
}

func (p *redirectingProposer) Propose(uint32, []correlate.Event) ProposalFuture {
	return ResolvedFuture(p.cause)
}

func (p *redirectingProposer) Redirect(_ context.Context, _ uint32, evs []correlate.Event, commit bool) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := redirectCall{commit: commit}
	dups := 0
	for _, e := range evs {
		if len(c.pids) == 0 || c.pids[len(c.pids)-1] != e.PID {
			c.pids = append(c.pids, e.PID)
		}
		if e.Seq%2 == 1 {
			dups++
		}
	}
	p.calls = append(p.calls, c)
	if err := p.fail(len(p.calls)); err != nil {
		return 0, err
	}
	return dups, nil
}

// A batch redirected to the new leader holds several submitters' events;
// under COMMITTED each waiting submitter must be charged exactly the
// duplicates the new leader found among its own events (D21). The
// redirector sends a waiting submitter's events alone, the others'
// together, in order; after a failed part the later parts are not sent,
// and their outcome follows the cause (refused after not-leader, unknown
// after leadership-lost).
func TestPoolRedirectChargesDuplicatesPerSubmitter(t *testing.T) {
	notLeader := fmt.Errorf("%w: shard 0", ErrNotLeader)
	lost := fmt.Errorf("%w (%w): shard 0", ErrLeadershipLost, ErrOutcomeUnknown)
	ok := func(int) error { return nil }
	failFirst := func(call int) error {
		if call == 1 {
			return fmt.Errorf("%w: shard 0 at new leader", ErrFull)
		}
		return nil
	}
	// Submissions, in ring order: a (waits, seq 0..4: 2 odd), b and c (do
	// not wait), d (waits, seq 0..2: 1 odd).
	subs := []struct {
		pid  string
		n    int
		wait bool
	}{{"a", 5, true}, {"b", 2, false}, {"c", 3, false}, {"d", 3, true}}
	for _, tc := range []struct {
		name      string
		cause     error
		fail      func(int) error
		wantCalls []redirectCall
		wantDups  []int
		// per submission: nil, "refused" or "unknown"
		wantOutcome []string
	}{
		{"leadership lost, all taken", lost, ok,
			[]redirectCall{{[]string{"a"}, true}, {[]string{"b", "c"}, false}, {[]string{"d"}, true}},
			[]int{2, 0, 0, 1}, []string{"", "", "", ""}},
		{"not leader, all taken", notLeader, ok,
			[]redirectCall{{[]string{"a"}, true}, {[]string{"b", "c"}, false}, {[]string{"d"}, true}},
			[]int{2, 0, 0, 1}, []string{"", "", "", ""}},
		{"not leader, first part refused", notLeader, failFirst,
			[]redirectCall{{[]string{"a"}, true}},
			[]int{0, 0, 0, 0}, []string{"refused", "refused", "refused", "refused"}},
		{"leadership lost, first part refused", lost, failFirst,
			[]redirectCall{{[]string{"a"}, true}},
			[]int{0, 0, 0, 0}, []string{"unknown", "unknown", "unknown", "unknown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prop := &redirectingProposer{cause: tc.cause, fail: tc.fail}
			cfg := testConfig(1)
			cfg.FlushInterval = 0
			cfg.Retry.MaxAttempts = 1
			pool := newTestPool(t, cfg, prop, nil)
			var tks []*Ticket
			for _, s := range subs { // before Start: one batch
				tk, err := pool.Submit(context.Background(), 0, events(s.pid, 0, s.n), s.wait)
				if err != nil {
					t.Fatal(err)
				}
				tks = append(tks, tk)
			}
			pool.Start()
			for i, tk := range tks {
				err := waitTicket(t, tk)
				var got string
				switch {
				case err == nil:
				case Refused(err):
					got = "refused"
				case errors.Is(err, ErrOutcomeUnknown):
					got = "unknown"
				default:
					got = "other: " + err.Error()
				}
				if got != tc.wantOutcome[i] {
					t.Errorf("submission %s: outcome %q (%v), want %q", subs[i].pid, got, err, tc.wantOutcome[i])
				}
				if subs[i].wait && tk.Duplicates() != tc.wantDups[i] {
					t.Errorf("submission %s: charged %d duplicates, want %d", subs[i].pid, tk.Duplicates(), tc.wantDups[i])
				}
			}
			prop.mu.Lock()
			defer prop.mu.Unlock()
			if !slices.EqualFunc(prop.calls, tc.wantCalls, func(a, b redirectCall) bool {
				return a.commit == b.commit && slices.Equal(a.pids, b.pids)
			}) {
				t.Errorf("redirect calls %v, want %v", prop.calls, tc.wantCalls)
			}
		})
	}
}

// stalledRedirectProposer refuses proposals as a follower until lead is
// closed, then commits them; its Redirect blocks until release is closed,
// as a redirect does whose new leader is itself waiting on this node.
type stalledRedirectProposer struct {
	lead, release chan struct{}
	redirected    atomic.Int64
}

func (p *stalledRedirectProposer) Propose(uint32, []correlate.Event) ProposalFuture {
	select {
	case <-p.lead:
		return ResolvedFuture(nil)
	default:
		return ResolvedFuture(fmt.Errorf("%w: shard 0", ErrNotLeader))
	}
}

func (p *stalledRedirectProposer) Redirect(ctx context.Context, _ uint32, evs []correlate.Event, _ bool) (int, error) {
	select {
	case <-p.release:
		p.redirected.Add(int64(len(evs)))
		return 0, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// A redirect waits for the new leader, and the new leader may be waiting
// for this node: leadership that moved away and back leaves each node
// redirecting to the other while the other's forwarded parts queue in its
// own pipeline. The pipeline must therefore never wait for the
// redirector: a part forwarded here once this node leads again commits and
// is answered while the redirects are still stuck (before the fix, the
// completer waited for room in a full redirect queue and the part waited
// behind it until the redirect timed out, and the ACCEPTED events in the
// redirect were lost). The redirect backlog stays bounded all the same:
// submissions that would join it are refused once it holds a ring's worth.
func TestPoolPipelineNeverWaitsForRedirects(t *testing.T) {
	prop := &stalledRedirectProposer{lead: make(chan struct{}), release: make(chan struct{})}
	cfg := testConfig(1)
	cfg.BatchSize = 1
	cfg.MaxInflight = 1
	cfg.FlushInterval = 0
	pool := newTestPool(t, cfg, prop, nil)
	pool.Start()
	released := false
	t.Cleanup(func() {
		if !released {
			close(prop.release)
		}
	})

	// Not leading: accepted events are redirected, one batch each, and
	// the redirect is stuck. Accept until the backlog refuses.
	var accepted []*Ticket
	var refusal error
	for i := 0; refusal == nil; i++ {
		if i > 10*cfg.RingCapacity {
			t.Fatalf("%d events accepted for redirects that cannot progress: the backlog is not bounded", i)
		}
		tk, err := pool.Submit(context.Background(), 0, events("a", i, 1), false)
		if err != nil {
			refusal = err
			break
		}
		accepted = append(accepted, tk)
		// One at a time, so that each event is its own batch.
		testwait.For(t, "the event to leave the ring", 10*time.Second, func() bool {
			st := pool.Stats().Shards[0]
			return st.Ring.Len == 0 && st.Inflight == 0
		})
	}
	if !errors.Is(refusal, ErrFull) || !strings.Contains(refusal.Error(), "redirect") {
		t.Fatalf("refusal at a full redirect backlog: %v; want ErrFull naming the redirect backlog", refusal)
	}
	if got := pool.Stats().Shards[0].Redirecting; got < cfg.RingCapacity || got > cfg.RingCapacity+cfg.MaxInflight*cfg.BatchSize {
		t.Fatalf("redirect backlog %d events at the refusal, want %d..%d", got, cfg.RingCapacity,
			cfg.RingCapacity+cfg.MaxInflight*cfg.BatchSize)
	}

	// Leading again: a part forwarded here commits although every redirect
	// is still stuck.
	close(prop.lead)
	fwd, err := pool.Submit(NoForward(context.Background()), 0, events("b", 0, 3), true)
	if err != nil {
		t.Fatalf("forwarded part refused: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fwd.Wait(ctx); err != nil {
		t.Fatalf("forwarded part behind stuck redirects: %v", err)
	}

	close(prop.release)
	released = true
	for i, tk := range accepted {
		if err := waitTicket(t, tk); err != nil {
			t.Fatalf("accepted event %d: %v", i, err)
		}
	}
	if got := prop.redirected.Load(); got != int64(len(accepted)) {
		t.Fatalf("%d events redirected, want %d", got, len(accepted))
	}
}
