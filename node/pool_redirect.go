package node

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/elixirscope/scope/correlate"
)

// redirectQueue is a shard's batches waiting to be redirected to the
// shard's new leader, in log order: the completer pushes, the redirector
// pops. A push never waits. A redirect waits for the new leader's commit,
// and the new leader may be redirecting to this node at the same time
// (leadership moving away and back) while the parts it forwards here
// queue in this shard's pipeline: if the pipeline waited for room in the
// queue, each node would wait for the other until the redirects timed
// out, and the ACCEPTED events in them would be lost.
//
// The queue is bounded at admission instead: Submit refuses a submission
// that could join it (one that is not a forwarded part waiting for its
// commit: those are failed back, never redirected) while it holds a ring's
// worth of events or more. What it can hold beyond that was admitted
// before: the ring's contents and the batches in flight, so a shard's
// backlog stays under twice its ring capacity plus MaxInflight batches.
type redirectQueue struct {
	mu      sync.Mutex
	batches []*proposal
	closed  bool
	ready   chan struct{} // cap 1: poked on push and close
	events  atomic.Int64  // events in batches, including the one being redirected
}

func newRedirectQueue() redirectQueue {
	return redirectQueue{ready: make(chan struct{}, 1)}
}

// push appends pr and returns the backlog; it never waits.
func (q *redirectQueue) push(pr *proposal) int {
	backlog := q.events.Add(int64(len(pr.events)))
	q.mu.Lock()
	q.batches = append(q.batches, pr)
	q.mu.Unlock()
	q.poke()
	return int(backlog)
}

// close tells pop that nothing more will be pushed.
func (q *redirectQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.poke()
}

func (q *redirectQueue) poke() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the oldest batch, waiting for one; ok is false once the
// queue is closed and empty.
func (q *redirectQueue) pop() (pr *proposal, ok bool) {
	for {
		q.mu.Lock()
		if len(q.batches) > 0 {
			pr = q.batches[0]
			q.batches[0] = nil
			q.batches = q.batches[1:]
			q.mu.Unlock()
			return pr, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, false
		}
		<-q.ready
	}
}

// done records that a popped batch of n events is resolved and returns
// the backlog left.
func (q *redirectQueue) done(n int) int { return int(q.events.Add(-int64(n))) }

// backlog is the number of events queued or being redirected.
func (q *redirectQueue) backlog() int { return int(q.events.Load()) }

// splitRedirect separates the runs of pr whose submitters wait for the
// commit of a part another node forwarded here (they are failed back: that
// node retries, and a redirect from here could wait on it in turn) from
// the others, which are redirected. It returns the batch to redirect (nil
// if none) and the runs to fail back.
func splitRedirect(pr *proposal) (*proposal, []ticketRun) {
	var back []ticketRun
	for _, r := range pr.runs {
		if !r.t.redirect {
			back = append(back, r)
		}
	}
	if len(back) == 0 {
		return pr, nil
	}
	if len(back) == len(pr.runs) {
		return nil, back
	}
	keep := &proposal{attempts: pr.attempts, seq: pr.seq, at: pr.at}
	off := 0
	for _, r := range pr.runs {
		if r.t.redirect {
			keep.runs = append(keep.runs, r)
			keep.events = append(keep.events, pr.events[off:off+r.n]...)
		}
		off += r.n
	}
	return keep, back
}

// redirector redirects sh's batches that this node's log refused or may
// have dropped on a lost leadership, one at a time, in log order, and
// resolves their tickets with the outcome. One goroutine per shard; idle
// when the Proposer is not a Redirector.
func (p *Pool) redirector(sh *poolShard) {
	defer p.complWG.Done()
	for {
		pr, ok := sh.redirects.pop()
		if !ok {
			return
		}
		n := len(pr.events)
		p.redirectBatch(sh, pr)
		p.m.RedirectBacklog(sh.id, sh.redirects.done(n))
	}
}

// redirectBatch hands a batch this node's log refused (ErrNotLeader: never
// appended) or may have dropped (ErrLeadershipLost: appended, then
// leadership moved before it committed) to the shard's new leader, with
// the same event ids, and resolves its tickets with the outcome. It runs on
// the shard's redirector, so a shard's batches are redirected one at a
// time in log order, behind one another.
//
// The batch goes in parts, in order (redirectParts): the events of a
// submitter that waits for the commit alone, so that the new leader's
// count of duplicates among them is charged to its ticket exactly (the
// leader reports a count, not which events); consecutive runs of the
// other submitters together. Once a part fails, the later ones are not
// sent (they would overtake it): they fail with the batch's cause, a
// refusal after ErrNotLeader, an unknown outcome after ErrLeadershipLost.
func (p *Pool) redirectBatch(sh *poolShard, pr *proposal) {
	if pr.cause == errRerouted {
		p.rerouteBatch(sh, pr)
		return
	}
	p.sendParts(sh, pr, func(events []correlate.Event, wait bool) (int, error) {
		dups, rerr := p.redirect.Redirect(p.ctx, sh.id, events, wait)
		p.m.Redirected(sh.id, len(events), rerr) // success is counted here
		return dups, redirectOutcome(pr.cause, rerr)
	}, func(events []correlate.Event, failed error) error {
		err := fmt.Errorf("%w; not redirected behind a failed part of its batch: %v", pr.cause, failed)
		p.m.Redirected(sh.id, len(events), err) // lost for ACCEPTED submitters: counted with the others
		return err
	})
}

// sendParts hands pr on in parts, in order (redirectParts), with send, and
// resolves each part's tickets with its outcome; a part's duplicates are
// charged to its ticket when it is one submitter's alone. Once a part
// failed, the later ones are not sent (they would overtake it): their
// outcome is behind's.
func (p *Pool) sendParts(sh *poolShard, pr *proposal,
	send func(events []correlate.Event, wait bool) (dups int, err error),
	behind func(events []correlate.Event, failed error) error) {
	var failed error
	off := 0
	for _, k := range redirectParts(pr.runs) {
		runs := pr.runs[:k]
		pr.runs = pr.runs[k:]
		n := 0
		for _, r := range runs {
			n += r.n
		}
		events := pr.events[off : off+n]
		off += n
		var err error
		if failed != nil {
			err = behind(events, failed)
		} else {
			var dups int
			dups, err = send(events, runs[0].t.wait)
			if err == nil && len(runs) == 1 && dups > 0 {
				runs[0].t.dups.Add(int64(min(dups, runs[0].n)))
			}
			failed = err
		}
		if err != nil {
			p.m.EventsFailed(sh.id, n)
			err = fmt.Errorf("node: shard %d: batch of %d events: %w", sh.id, n, err)
		}
		sh.resolve(runs, err)
	}
}

// errRerouted is the cause of a batch of events a shard committed without
// applying them: their processes belong to another shard since it split.
var errRerouted = errors.New("node: the shard split: events rerouted to the shard that owns their process now")

// splitRerouted takes the events at indexes rerouted (ascending) out of the
// committed proposal pr: pr's runs keep the others (runs left empty are
// dropped), and the returned proposal holds the rerouted events with runs
// of the same tickets, in order; nil when rerouted is empty.
func splitRerouted(pr *proposal, rerouted []int) *proposal {
	if len(rerouted) == 0 {
		return nil
	}
	away := &proposal{seq: pr.seq, at: pr.at}
	keep := pr.runs[:0:0]
	start := 0
	for _, r := range pr.runs {
		k := 0
		for len(rerouted) > 0 && rerouted[0] < start+r.n {
			away.events = append(away.events, pr.events[rerouted[0]])
			rerouted = rerouted[1:]
			k++
		}
		if k > 0 {
			away.runs = append(away.runs, ticketRun{t: r.t, n: k})
		}
		if r.n > k {
			keep = append(keep, ticketRun{t: r.t, n: r.n - k})
		}
		start += r.n
	}
	pr.runs = keep
	return away
}

// rerouteBatch sends a batch of events its shard committed but gave away
// (errRerouted) to their owners, in parts as redirectBatch does, and
// resolves their tickets with the outcome. The shard stored none of them,
// so a failure is the outcome Reroute reports.
func (p *Pool) rerouteBatch(sh *poolShard, pr *proposal) {
	p.sendParts(sh, pr, func(events []correlate.Event, wait bool) (int, error) {
		dups, err := p.reroute.Reroute(p.ctx, events, wait)
		if err != nil {
			err = fmt.Errorf("%v: %w", errRerouted, err)
		}
		p.m.Rerouted(sh.id, len(events), err)
		return dups, err
	}, func(events []correlate.Event, failed error) error {
		err := fmt.Errorf("%w; not rerouted behind a failed part of its batch: %v", errRerouted, failed)
		p.m.Rerouted(sh.id, len(events), err)
		return err
	})
}

// redirectParts splits runs into the parts redirectBatch sends, as the
// number of runs of each part, in order: a run whose submitter waits for
// the commit alone, consecutive runs of the others together.
func redirectParts(runs []ticketRun) []int {
	var parts []int
	for i := 0; i < len(runs); {
		k := 1
		if !runs[i].t.wait {
			for i+k < len(runs) && !runs[i+k].t.wait {
				k++
			}
		}
		parts = append(parts, k)
		i += k
	}
	return parts
}

// redirectOutcome is the outcome of events whose proposal failed with
// cause and whose redirect returned rerr. A refusal of the redirect after
// ErrLeadershipLost is not a refusal of the events: the first proposal may
// still commit, so the outcome is unknown.
func redirectOutcome(cause, rerr error) error {
	switch {
	case rerr == nil:
		return nil
	case errors.Is(cause, ErrLeadershipLost) && Refused(rerr):
		return fmt.Errorf("%w: %w; redirecting to the new leader: %w", ErrOutcomeUnknown, cause, rerr)
	default:
		return fmt.Errorf("%v; redirecting to the new leader: %w", cause, rerr)
	}
}
