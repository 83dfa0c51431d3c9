package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/elixirscope/scope/correlate"
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
