package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// Ticket is the completion of one Submit call. It resolves when every one of
// its events is committed or failed; the events may travel in several
// proposals (at most BatchSize events each), and the ticket fails if any
// part failed. Its error tells the outcome of the whole submission: a
// refusal (see Refused) only when none of its events can have been stored;
// if some were stored or may have been, an error wrapping
// ErrOutcomeUnknown.
type Ticket struct {
	n    int
	wait bool // the submitter waits for the commit (COMMITTED ingest)
	// redirect: on a lost leadership the events go to the new leader.
	// False for a COMMITTED part another node forwarded here: that node
	// waits and retries it itself.
	redirect  bool
	accepted  time.Time // when Submit began putting the events in the ring (AcceptedToApplied)
	ahead     int64     // events of the shard outstanding when it was submitted (admission control)
	remaining atomic.Int64
	dups      atomic.Int64 // events the shard had applied already (see Duplicates)
	done      chan struct{}

	mu      sync.Mutex
	err     error // first failure
	unknown error // first failure whose outcome is unknown
	stored  int   // events resolved as stored
}

func newTicket(n int) *Ticket {
	t := &Ticket{n: n, done: make(chan struct{})}
	t.remaining.Store(int64(n))
	if n == 0 {
		close(t.done)
	}
	return t
}

// Len is the number of events submitted with the ticket.
func (t *Ticket) Len() int { return t.n }

// Done is closed when every event of the ticket is resolved.
func (t *Ticket) Done() <-chan struct{} { return t.done }

// Err is nil while the ticket is pending and when all of its events
// committed; otherwise the first failure's reason.
func (t *Ticket) Err() error {
	select {
	case <-t.done:
	default:
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.err == nil:
		return nil
	case t.unknown != nil:
		return t.unknown
	case t.stored > 0:
		return fmt.Errorf("%w: %d of %d events stored, the others refused: %w", ErrOutcomeUnknown,
			t.stored, t.n, t.err)
	}
	return t.err
}

// Duplicates is how many of the ticket's committed events the shard did
// not store because it had applied their ids already, as reported by the
// proposals' futures (DuplicateReporter). Read it once Done is closed.
func (t *Ticket) Duplicates() int { return int(t.dups.Load()) }

// Wait blocks until the ticket resolves (its Err) or ctx is done (ctx.Err();
// the events may still commit).
func (t *Ticket) Wait(ctx context.Context) error {
	select {
	case <-t.done:
		return t.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// resolve settles n of the ticket's events with err (nil: committed).
func (t *Ticket) resolve(n int, err error) {
	t.mu.Lock()
	switch {
	case err == nil:
		t.stored += n
	case t.err == nil:
		t.err = err
	}
	if err != nil && t.unknown == nil && !Refused(err) {
		t.unknown = err
	}
	t.mu.Unlock()
	left := t.remaining.Add(int64(-n))
	switch {
	case left == 0:
		close(t.done)
	case left < 0:
		panic("node: ticket resolved more events than it holds") // a duplicate: a pool bug
	}
}

// ticketRun is n consecutive events of one ticket within a batch.
type ticketRun struct {
	t *Ticket
	n int
}

// poolItem is one ring slot: an event and the ticket it belongs to.
type poolItem struct {
	ev correlate.Event
	t  *Ticket
}

// runsOf groups consecutive items by ticket. A ticket's items are contiguous
// in its shard's ring (one all-or-nothing claim), so a batch holds at most
// one partial run at each end.
func runsOf(items []poolItem) []ticketRun {
	var runs []ticketRun
	for i := range items {
		if n := len(runs); n > 0 && runs[n-1].t == items[i].t {
			runs[n-1].n++
			continue
		}
		runs = append(runs, ticketRun{t: items[i].t, n: 1})
	}
	return runs
}

func resolveRuns(runs []ticketRun, err error) {
	for _, r := range runs {
		r.t.resolve(r.n, err)
	}
}

// attributeDuplicates charges each ticket of a committed proposal with its
// events the shard did not store: dups are indexes into the proposal's
// events, ascending. Called before the runs are resolved, so a ticket's
// count is final when it is Done.
func attributeDuplicates(runs []ticketRun, dups []int) {
	start := 0
	for _, r := range runs {
		n := 0
		for len(dups) > 0 && dups[0] < start+r.n {
			n++
			dups = dups[1:]
		}
		start += r.n
		if n > 0 {
			r.t.dups.Add(int64(n))
		}
	}
}
