package node

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/ring"
)

// poolShard is one shard's ring and pipeline. Everything a writer has taken
// from the ring and not yet handed to the proposer lives here, not on the
// writer's stack, so that a writer restarted after a panic proposes it again.
type poolShard struct {
	id   uint32
	ring *ring.Ring[poolItem]
	// chain starts the shard's dispatcher, completer and redirector, on
	// the first batch handed over or when the shard is let go (startChain):
	// a shard this node never writes (a follower's, an idle one) costs no
	// goroutines.
	chain sync.Once
	// owner is the writer that drains the ring; moveTo, when set, the
	// writer it is to be handed to (pool_scale.go). Only the owner touches
	// the fields below marked so; a handoff happens in the owner's
	// goroutine, between two services of the shard, under Pool.mu.
	owner  atomic.Pointer[poolWriter]
	moveTo atomic.Pointer[poolWriter]

	// Owned by the owner: only its goroutine touches these.
	items      []poolItem // taken from the ring, not yet proposed; cap BatchSize
	itemsAt    time.Time  // when the first of items was taken
	itemsTries int        // proposals of items that panicked
	proposing  proposingWhat

	dispatch  chan *proposal // batches in log order, to the dispatcher; cap MaxInflight
	redirects redirectQueue  // batches to redirect, in log order
	inflight  chan *proposal // proposals in log order, to the completer; cap MaxInflight
	inflightN atomic.Int32   // batches handed to the dispatcher and not yet resolved

	// outstanding counts the events accepted into the ring and not yet
	// resolved (see Pool.Outstanding).
	outstanding atomic.Int64
	// perEvent is a moving average of the time the shard's queue takes
	// per event, from acceptance to apply (admission control: Pool.admit).
	perEvent perEventTime

	removing atomic.Bool
	released chan struct{} // closed once w has let go of the shard

	mu       sync.Mutex
	retries  []*proposal // failed batches to propose again, oldest first
	noRetry  bool        // released or aborted: fail instead of retrying
	proposed uint64      // batches handed to the dispatcher so far (the last one's seq)
}

// proposingWhat records which batch a writer was proposing when it panicked.
type proposingWhat uint8

const (
	proposingNone proposingWhat = iota
	proposingItems
	proposingRetry
)

// proposal is one batch handed to the Proposer.
type proposal struct {
	events   []correlate.Event
	runs     []ticketRun
	attempts int       // Propose calls made for this batch, panics included
	seq      uint64    // its place among the shard's proposals (poolShard.proposed)
	at       time.Time // last Propose call
	due      time.Time // retry not before
	f        ProposalFuture
	cause    error // why it is being redirected
}

// poolWriter drains the rings of the shards it owns. Its wake channel is the
// rings' notify channel and is also poked by the shards' completers and by
// the pool (add, remove, close).
type poolWriter struct {
	id   int
	p    *Pool
	wake chan struct{}

	// retiring: the scaler is moving this writer's shards away; it exits
	// once it owns none (pool_scale.go).
	retiring atomic.Bool
	// busyNs accumulates the time the writer spent working rather than
	// asleep, read and reset by the scaler.
	busyNs atomic.Int64

	mu     sync.Mutex
	shards []*poolShard
}

func (w *poolWriter) wakeUp() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *poolWriter) load() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.shards)
}

func (w *poolWriter) owned() []*poolShard {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*poolShard(nil), w.shards...)
}

// run is the writer goroutine: it restarts the loop after a panic.
func (w *poolWriter) run() {
	defer w.p.writersWG.Done()
	for !w.runGuarded() {
		w.p.restarts.Add(1)
		w.p.m.WriterRestart(w.id)
	}
}

func (w *poolWriter) runGuarded() (exited bool) {
	defer func() {
		if r := recover(); r != nil {
			w.p.log.Error("writer panicked; restarting it", "writer", w.id, "panic", r,
				"stack", string(debug.Stack()))
			w.afterPanic(r)
		}
	}()
	w.loop()
	return true
}

// afterPanic charges the interrupted proposal an attempt and fails it back
// once it has used them all, so that a batch that always panics cannot
// wedge its shard.
func (w *poolWriter) afterPanic(r any) {
	max := w.p.cfg.Retry.MaxAttempts
	for _, sh := range w.owned() {
		what := sh.proposing
		sh.proposing = proposingNone
		switch what {
		case proposingItems:
			sh.itemsTries++
			if sh.itemsTries >= max {
				w.failItems(sh, fmt.Errorf("%w: shard %d: %d attempts: %v", ErrProposerPanic, sh.id, max, r))
			}
		case proposingRetry:
			sh.mu.Lock()
			var pr *proposal
			if len(sh.retries) > 0 && sh.retries[0].attempts >= max {
				pr, sh.retries = sh.retries[0], sh.retries[1:]
			}
			sh.mu.Unlock()
			if pr != nil {
				w.failProposal(sh, pr, fmt.Errorf("%w: shard %d: %d attempts: %v", ErrProposerPanic, sh.id, max, r))
			}
		}
	}
}

type serviceResult struct {
	busy    bool      // made progress: loop again before sleeping
	canTake bool      // room in the staged batch: arm the ring before sleeping
	idle    bool      // (closing) nothing left to do for the shard
	next    time.Time // a flush or retry is due then
}

func (w *poolWriter) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	awake := time.Now()
	for {
		now := time.Now()
		w.busyNs.Add(int64(now.Sub(awake)))
		awake = now
		closing := w.p.closing.Load()
		var next time.Time
		busy, live := false, 0
		shards := w.owned()
		if len(shards) == 0 && w.retiring.Load() {
			w.p.writerExited(w)
			return
		}
		take := shards[:0:0]
		for _, sh := range shards {
			res := w.service(sh, now, closing)
			busy = busy || res.busy
			if !res.idle {
				live++
			}
			if res.canTake {
				take = append(take, sh)
			}
			if !res.next.IsZero() && (next.IsZero() || res.next.Before(next)) {
				next = res.next
			}
		}
		if closing && live == 0 {
			w.finish()
			return
		}
		if busy {
			continue
		}
		ready := false
		for _, sh := range take {
			if sh.ring.Arm() && !sh.ring.Drained() {
				ready = true
			}
		}
		if ready {
			continue
		}
		var due <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			due = timer.C
		}
		w.busyNs.Add(int64(time.Since(awake)))
		select {
		case <-w.wake:
		case <-due:
		}
		awake = time.Now()
	}
}

// service does one step of work on sh.
func (w *poolWriter) service(sh *poolShard, now time.Time, closing bool) (res serviceResult) {
	p := w.p
	if to := sh.moveTo.Load(); to != nil && w.handOff(sh, to) {
		// busy: the loop runs again, and a retiring writer that owns
		// nothing now exits.
		res.idle, res.busy = true, true
		return res
	}
	if sh.removing.Load() {
		res.busy = w.release(sh, fmt.Errorf("%w: shard %d", ErrShardClosed, sh.id))
		res.idle, res.canTake = true, !res.busy
		return res
	}
	if p.abort.Load() {
		w.failAll(sh, fmt.Errorf("%w: shard %d: close deadline passed before the events were proposed",
			ErrPoolClosed, sh.id))
		res.idle = sh.ring.Drained()
		res.canTake = !res.idle
		return res
	}

	if sh.items == nil && sh.ring.Len() > 0 {
		// The staging buffer is allocated by the first events: a shard
		// whose ring nobody writes to (a follower's) holds none.
		sh.items = make([]poolItem, 0, p.cfg.BatchSize)
	}
	if n0 := len(sh.items); n0 < cap(sh.items) {
		if n := sh.ring.Read(sh.items[n0:cap(sh.items)]); n > 0 {
			sh.items = sh.items[:n0+n]
			if n0 == 0 {
				sh.itemsAt = now
			}
			res.busy = true
			p.m.RingFill(sh.id, sh.ring.Len(), sh.ring.Cap())
			p.callHook("taken", sh.id)
		}
	}
	windowOpen := int(sh.inflightN.Load()) < p.cfg.MaxInflight

	// An older failed batch goes before anything newer.
	sh.mu.Lock()
	var retry *proposal
	if len(sh.retries) > 0 {
		retry = sh.retries[0]
	}
	sh.mu.Unlock()
	switch {
	case retry != nil && now.Before(retry.due):
		res.next = retry.due
	case retry != nil:
		if windowOpen {
			w.proposeRetry(sh, retry, now)
			res.busy = true
		}
	case len(sh.items) > 0:
		due := sh.itemsAt.Add(p.cfg.FlushInterval)
		if len(sh.items) < cap(sh.items) && now.Before(due) && !closing {
			res.next = due
		} else if windowOpen {
			w.proposeItems(sh, now)
			res.busy = true
		}
	}
	res.canTake = sh.items == nil || len(sh.items) < cap(sh.items)
	if closing && len(sh.items) == 0 && sh.ring.Drained() && sh.inflightN.Load() == 0 {
		// inflightN before retries: a completer queues a retry before it
		// decrements inflightN, so a zero count means the retry is visible.
		sh.mu.Lock()
		res.idle = len(sh.retries) == 0
		sh.mu.Unlock()
	}
	return res
}

func (w *poolWriter) proposeItems(sh *poolShard, now time.Time) {
	sh.proposing = proposingItems
	w.p.callHook("propose", sh.id)
	sh.proposing = proposingNone
	sh.mu.Lock()
	if len(sh.retries) > 0 {
		// A completer queued a retry since service looked: it goes first
		// (the next round proposes it).
		sh.mu.Unlock()
		return
	}
	sh.proposed++
	seq := sh.proposed
	sh.mu.Unlock()
	pr := &proposal{
		events:   make([]correlate.Event, len(sh.items)),
		runs:     runsOf(sh.items),
		attempts: sh.itemsTries + 1,
		seq:      seq,
		at:       now,
	}
	for i := range sh.items {
		pr.events[i] = sh.items[i].ev
	}
	// Handed over: from here on the batch belongs to the pipeline.
	clear(sh.items)
	sh.items = sh.items[:0]
	sh.itemsTries = 0
	w.enqueue(sh, pr)
}

func (w *poolWriter) proposeRetry(sh *poolShard, pr *proposal, now time.Time) {
	pr.attempts++
	pr.at = now
	sh.proposing = proposingRetry
	w.p.callHook("propose", sh.id)
	sh.proposing = proposingNone
	sh.mu.Lock()
	sh.retries = sh.retries[1:]
	sh.proposed++
	pr.seq = sh.proposed
	sh.mu.Unlock()
	w.enqueue(sh, pr)
}

// enqueue hands a batch to the shard's dispatcher, which proposes it. The
// send never blocks: the writer hands over only while inflightN <
// MaxInflight, the channel's capacity. The writer itself never calls
// Propose, so a shard whose raft queue is full (Propose blocking) delays
// only its own dispatcher, never the other shards the writer owns.
func (w *poolWriter) enqueue(sh *poolShard, pr *proposal) {
	w.p.m.Batch(sh.id, len(pr.events))
	sh.inflightN.Add(1)
	w.p.startChain(sh)
	sh.dispatch <- pr
}

// startChain starts sh's dispatcher, completer and redirector once. It is
// called by the shard's writer only (before its first hand-over, and before
// closing dispatch when the shard is let go, so that the chain's closes run
// in order), so always before the pool waits for complWG.
func (p *Pool) startChain(sh *poolShard) {
	sh.chain.Do(func() {
		p.complWG.Add(3)
		go p.dispatch(sh)
		go p.complete(sh)
		go p.redirector(sh)
	})
}

// failItems fails the staged batch.
func (w *poolWriter) failItems(sh *poolShard, err error) {
	if len(sh.items) == 0 {
		return
	}
	w.p.m.EventsFailed(sh.id, len(sh.items))
	sh.resolve(runsOf(sh.items), err)
	clear(sh.items)
	sh.items = sh.items[:0]
	sh.itemsTries = 0
}

func (w *poolWriter) failProposal(sh *poolShard, pr *proposal, err error) {
	w.p.m.EventsFailed(sh.id, len(pr.events))
	sh.resolve(pr.runs, err)
}

// failAll fails everything sh holds that is not in flight: the staged batch,
// the ring's contents and the queued retries; later failures of in-flight
// proposals are failed rather than retried.
func (w *poolWriter) failAll(sh *poolShard, err error) {
	w.failItems(sh, err)
	if sh.items == nil {
		sh.items = make([]poolItem, 0, w.p.cfg.BatchSize)
	}
	for {
		n := sh.ring.Read(sh.items[:cap(sh.items)])
		if n == 0 {
			break
		}
		sh.items = sh.items[:n]
		w.failItems(sh, err)
	}
	sh.mu.Lock()
	retries := sh.retries
	sh.retries, sh.noRetry = nil, true
	sh.mu.Unlock()
	for _, pr := range retries {
		w.failProposal(sh, pr, err)
	}
}

// release fails what sh holds and, once its ring is drained, lets go of it.
// It reports false while a producer that claimed ring slots before the ring
// closed has not yet published them (its publication wakes the writer).
func (w *poolWriter) release(sh *poolShard, err error) bool {
	w.failAll(sh, err)
	if !sh.ring.Drained() {
		return false
	}
	w.mu.Lock()
	for i, o := range w.shards {
		if o == sh {
			w.shards = append(w.shards[:i], w.shards[i+1:]...)
			break
		}
	}
	w.mu.Unlock()
	w.p.startChain(sh)
	close(sh.dispatch)
	close(sh.released)
	return true
}

// finish runs when the pool is closing and every owned shard is idle.
func (w *poolWriter) finish() {
	w.mu.Lock()
	shards := w.shards
	w.shards = nil
	w.mu.Unlock()
	for _, sh := range shards {
		w.p.startChain(sh)
		close(sh.dispatch)
		close(sh.released)
	}
}

// dispatch proposes sh's batches in the order the writer handed them over,
// one at a time, then passes each to the completer. One goroutine per
// shard: Propose may block (a full raft queue) without delaying any other
// shard.
func (p *Pool) dispatch(sh *poolShard) {
	defer p.complWG.Done()
	defer close(sh.inflight)
	for pr := range sh.dispatch {
		pr.at = time.Now()
		pr.f = p.propose(sh, pr)
		sh.inflight <- pr // never blocks: both channels hold at most inflightN
	}
}

// propose calls the Proposer. A Propose that panics did not propose the
// batch: it is proposed again at once, in place, so that nothing newer
// overtakes it, until it has used Retry.MaxAttempts; then it is failed
// back with ErrProposerPanic.
func (p *Pool) propose(sh *poolShard, pr *proposal) ProposalFuture {
	for {
		f, r := p.proposeOnce(sh, pr)
		if r == nil {
			return f
		}
		p.log.Error("Propose panicked", "shard", sh.id, "attempt", pr.attempts, "panic", r,
			"stack", string(debug.Stack()))
		err := fmt.Errorf("%w: shard %d: %d attempts: %v", ErrProposerPanic, sh.id, pr.attempts, r)
		p.m.ProposalError(sh.id, err)
		if pr.attempts >= p.cfg.Retry.MaxAttempts {
			return ResolvedFuture(err)
		}
		pr.attempts++
	}
}

func (p *Pool) proposeOnce(sh *poolShard, pr *proposal) (f ProposalFuture, panicked any) {
	defer func() {
		if r := recover(); r != nil {
			f, panicked = nil, r
		}
	}()
	return p.prop.Propose(sh.id, pr.events), nil
}

// complete resolves sh's proposals in log order, schedules retries,
// redirects what this node's log refused because it lost the shard's
// leadership, and fails back what cannot be retried. One goroutine per
// shard, so that a slow commit on one shard never delays another's
// acknowledgements.
func (p *Pool) complete(sh *poolShard) {
	defer p.complWG.Done()
	defer sh.redirects.close()
	for pr := range sh.inflight {
		err := waitFuture(pr.f)
		p.m.ApplyLatency(sh.id, time.Since(pr.at))
		n := len(pr.events)
		if err != nil {
			p.m.ProposalError(sh.id, err)
		}
		if err != nil && p.redirect != nil && (errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost)) {
			// To the shard's redirector, in log order. The completer does
			// not wait for the redirect, nor for room in its queue: a
			// redirect waits for the new leader's commit, and that leader
			// may be redirecting to this node in turn (leadership moving
			// back and forth) while its forwarded parts queue here.
			var back []ticketRun
			if pr, back = splitRedirect(pr); len(back) > 0 {
				n := 0
				for _, r := range back {
					n += r.n
				}
				p.m.EventsFailed(sh.id, n)
				sh.resolve(back, fmt.Errorf("node: shard %d: %w", sh.id, err))
			}
			if pr == nil {
				sh.inflightN.Add(-1)
				sh.owner.Load().wakeUp()
				continue
			}
			pr.cause = err
			p.m.RedirectBacklog(sh.id, sh.redirects.push(pr)) // never waits: see redirectQueue
			sh.inflightN.Add(-1)
			sh.owner.Load().wakeUp()
			continue
		}
		switch {
		case err == nil:
			p.m.EventsCommitted(sh.id, n) // metrics first: a resolved ticket's events are counted
			for _, r := range pr.runs {
				d := time.Since(r.t.accepted)
				p.m.AcceptedToApplied(sh.id, d)
				if queue := r.t.ahead + int64(r.t.n); queue >= p.admissionSample() {
					sh.perEvent.observe(d, queue)
				}
			}
			if dr, ok := pr.f.(DuplicateReporter); ok {
				attributeDuplicates(pr.runs, dr.Duplicates())
			}
			if rr, ok := pr.f.(RerouteReporter); ok && p.reroute != nil {
				if away := splitRerouted(pr, rr.Rerouted()); away != nil {
					// The shard split: the events of processes it gave away
					// go to their owner, behind its redirects, in log order;
					// their submitters wait for that outcome.
					away.cause = errRerouted
					p.m.RedirectBacklog(sh.id, sh.redirects.push(away))
				}
			}
			sh.resolve(pr.runs, nil)
		case !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrLeadershipLost) &&
			pr.attempts < p.cfg.Retry.MaxAttempts &&
			sh.scheduleRetry(pr, time.Now().Add(p.cfg.Retry.backoff(pr.attempts))):
			p.m.Retry(sh.id)
		default:
			p.m.EventsFailed(sh.id, n)
			sh.resolve(pr.runs, fmt.Errorf("node: shard %d: batch of %d events failed after %d attempt(s): %w",
				sh.id, n, pr.attempts, err))
		}
		sh.inflightN.Add(-1)
		sh.owner.Load().wakeUp()
	}
}

// scheduleRetry queues pr to be proposed again, unless the shard is being
// released or a later batch was proposed after it: a retry would then land
// in the log behind that batch and could put a process's events out of
// order, so pr is failed back instead (the submitter retries, in its own
// order).
func (sh *poolShard) scheduleRetry(pr *proposal, due time.Time) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.noRetry || pr.seq != sh.proposed {
		return false
	}
	pr.due = due
	pr.f = nil
	sh.retries = append(sh.retries, pr)
	return true
}

// resolve settles the runs' tickets and the shard's outstanding count.
func (sh *poolShard) resolve(runs []ticketRun, err error) {
	n := 0
	for _, r := range runs {
		n += r.n
	}
	resolveRuns(runs, err)
	sh.outstanding.Add(-int64(n))
}

// waitFuture waits for f, turning a panic in Wait into an error.
func waitFuture(f ProposalFuture) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: future's Wait panicked: %v", ErrProposerPanic, r)
		}
	}()
	return f.Wait()
}

func (p *Pool) callHook(point string, shard uint32) {
	if p.hook != nil {
		p.hook(point, shard)
	}
}

// releaseInline releases sh when no writer runs (RemoveShard before Start).
func (w *poolWriter) releaseInline(sh *poolShard, err error) {
	for !w.release(sh, err) {
		runtime.Gosched() // a producer is between its claim and its publish
	}
}
