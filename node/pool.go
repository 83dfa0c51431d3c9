package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/ring"
)

// Errors of the writer pool.

// itemBufs recycles Submit's staging buffers, up to maxPooledItems items.
var itemBufs = sync.Pool{New: func() any { return new([]poolItem) }}

const maxPooledItems = 4096

// Pool is the writer pool: one lock-free ring per shard, drained by a fixed
// set of writer goroutines that batch events into proposals. See doc.go.
type Pool struct {
	cfg      PoolConfig
	prop     Proposer
	redirect Redirector // prop, if it implements it; else nil
	reroute  Rerouter   // prop, if it implements it; else nil
	m        PoolMetrics
	log      *slog.Logger

	// ctx bounds redirects; cancelled when Close's deadline passes.
	ctx    context.Context
	cancel context.CancelFunc

	// shards is an immutable map replaced on every change (copy on write),
	// so Submit looks a shard up with one atomic load.
	shards atomic.Pointer[map[uint32]*poolShard]

	closing  atomic.Bool // no new submissions; writers flush and exit when idle
	abort    atomic.Bool // Close's deadline passed: fail what is left
	restarts atomic.Uint64

	mu sync.Mutex // serialises Start, Close, AddShard, RemoveShard, scaling and handoffs
	// writers are the running writers (guarded by mu); nextWriter numbers
	// the next one started.
	writers    []*poolWriter
	nextWriter int
	scale      scaleState    // the scaler's own state (pool_scale.go)
	stopScale  chan struct{} // closed by Close: the scaler exits
	started    bool
	closed     chan struct{} // closed when writers and completers have exited
	writersWG  sync.WaitGroup
	complWG    sync.WaitGroup

	// hook, when set (tests only), is called at named points of a writer's
	// work; it may panic to simulate a writer crash.
	hook func(point string, shard uint32)
}

// NewPool validates cfg and creates a pool with a ring for each of
// cfg.Shards. Writers start with Start. m may be nil (no metrics).
func NewPool(cfg PoolConfig, p Proposer, m PoolMetrics) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("%w: Proposer is nil", ErrPoolConfig)
	}
	if m == nil {
		m = NopPoolMetrics{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	pool := &Pool{cfg: cfg, prop: p, m: m, log: logger.With("component", "writer-pool"),
		closed: make(chan struct{}), stopScale: make(chan struct{})}
	pool.redirect, _ = p.(Redirector)
	pool.reroute, _ = p.(Rerouter)
	pool.ctx, pool.cancel = context.WithCancel(context.Background())
	empty := map[uint32]*poolShard{}
	pool.shards.Store(&empty)
	for range cfg.initialWriters() {
		pool.newWriterLocked()
	}
	m.WritersActive(len(pool.writers))
	for _, s := range cfg.Shards {
		if err := pool.AddShard(s); err != nil {
			pool.abort.Store(true)
			_ = pool.Close(context.Background())
			return nil, err
		}
	}
	return pool, nil
}

// Start launches the writers. Submissions made before Start wait in the
// rings. Start is idempotent.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startLocked()
}

func (p *Pool) startLocked() {
	if p.started {
		return
	}
	p.started = true
	for _, w := range p.writers {
		p.writersWG.Add(1)
		go w.run()
	}
	if p.cfg.scaling() {
		p.complWG.Add(1)
		go p.scaler()
	}
	go func() {
		p.writersWG.Wait()
		p.complWG.Wait()
		p.cancel()
		close(p.closed)
	}()
}

// Submit hands events for shard to its ring, all or nothing: either every
// event is in the ring and a Ticket is returned, or none is and the error
// says why: ErrFull (naming the shard; with wait, also ctx's error, or
// ErrOverloaded: see admit),
// ErrBatchTooLarge, ErrUnknownShard, ErrShardClosed or ErrPoolClosed.
// Refusals are counted. With wait the call waits for room until ctx is
// done; without, it refuses at once. The pool copies events; the caller may
// reuse the slice when Submit returns. Safe for concurrent use.
func (p *Pool) Submit(ctx context.Context, shard uint32, events []correlate.Event, wait bool) (*Ticket, error) {
	sh := (*p.shards.Load())[shard]
	if sh == nil {
		if p.closing.Load() {
			return nil, fmt.Errorf("%w: shard %d", ErrPoolClosed, shard)
		}
		return nil, fmt.Errorf("%w: shard %d", ErrUnknownShard, shard)
	}
	t := newTicket(len(events))
	t.wait = wait
	t.redirect = !(wait && isForwarded(ctx))
	if len(events) == 0 {
		return t, nil
	}
	if t.redirect {
		// Events that may be redirected are refused while the shard's
		// redirect backlog holds a ring's worth (see redirectQueue).
		if b := sh.redirects.backlog(); b >= sh.ring.Cap() {
			p.m.EventsRefused(shard, len(events))
			return nil, fmt.Errorf("%w: shard %d: %d events refused: %d events are waiting to be redirected to the shard's new leader",
				ErrFull, shard, len(events), b)
		}
	}
	if wait {
		if err := p.admit(ctx, sh, len(events)); err != nil {
			p.m.EventsRefused(shard, len(events))
			p.m.EventsShed(shard, len(events))
			return nil, err
		}
	}
	// Counted before the put: a writer may resolve the events before the
	// put returns.
	t.ahead = sh.outstanding.Add(int64(len(events))) - int64(len(events))
	t.accepted = time.Now()
	// The ring copies the items; the staging buffer is recycled (cleared, so
	// that it keeps no event alive) instead of allocated per call.
	bp := itemBufs.Get().(*[]poolItem)
	items := (*bp)[:0]
	for i := range events {
		items = append(items, poolItem{ev: events[i], t: t})
	}
	var err error
	if wait {
		err = sh.ring.PutAll(ctx, items)
	} else {
		err = sh.ring.TryPutAll(items)
	}
	clear(items)
	if cap(items) <= maxPooledItems {
		*bp = items[:0]
		itemBufs.Put(bp)
	}
	if err == nil {
		p.m.EventsIn(shard, len(events))
		return t, nil
	}
	sh.outstanding.Add(-int64(len(events)))
	p.m.EventsRefused(shard, len(events))
	switch {
	case errors.Is(err, ring.ErrTooLarge):
		return nil, fmt.Errorf("%w: shard %d: %d events, ring capacity %d",
			ErrBatchTooLarge, shard, len(events), sh.ring.Cap())
	case errors.Is(err, ring.ErrClosed):
		if p.closing.Load() {
			return nil, fmt.Errorf("%w: shard %d", ErrPoolClosed, shard)
		}
		return nil, fmt.Errorf("%w: shard %d", ErrShardClosed, shard)
	case errors.Is(err, ring.ErrFull):
		return nil, fmt.Errorf("%w: shard %d: %d events refused (%d of %d slots in use)",
			ErrFull, shard, len(events), sh.ring.Len(), sh.ring.Cap())
	default: // ctx done while waiting
		return nil, fmt.Errorf("%w: shard %d: %d events refused (%d of %d slots in use): %w",
			ErrFull, shard, len(events), sh.ring.Len(), sh.ring.Cap(), err)
	}
}

// AddShard gives shard a ring, owned by the writer with the fewest shards.
func (p *Pool) AddShard(shard uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing.Load() {
		return fmt.Errorf("%w: cannot add shard %d", ErrPoolClosed, shard)
	}
	cur := *p.shards.Load()
	if cur[shard] != nil {
		return fmt.Errorf("%w: shard %d", ErrShardExists, shard)
	}
	if len(cur) >= p.cfg.MaxShards {
		return fmt.Errorf("%w: MaxShards = %d reached, cannot add shard %d", ErrPoolConfig, p.cfg.MaxShards, shard)
	}
	w := p.leastLoadedLocked(nil, p.incomingLocked())
	r, err := ring.NewWithNotify[poolItem](p.cfg.RingCapacity, w.wake)
	if err != nil {
		return err
	}
	sh := &poolShard{
		id:        shard,
		ring:      r,
		dispatch:  make(chan *proposal, p.cfg.MaxInflight),
		redirects: newRedirectQueue(),
		inflight:  make(chan *proposal, p.cfg.MaxInflight),
		released:  make(chan struct{}),
	}
	sh.owner.Store(w)
	p.m.ShardAdded(shard)
	w.mu.Lock()
	w.shards = append(w.shards, sh)
	w.mu.Unlock()
	next := make(map[uint32]*poolShard, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[shard] = sh
	p.shards.Store(&next)
	w.wakeUp()
	return nil
}

// RemoveShard closes shard's ring and waits until its writer has released
// it: events in the ring or taken but not yet proposed are failed with
// ErrShardClosed, proposals already in flight resolve as their futures do.
func (p *Pool) RemoveShard(shard uint32) error {
	p.mu.Lock()
	cur := *p.shards.Load()
	sh := cur[shard]
	if sh == nil {
		p.mu.Unlock()
		return fmt.Errorf("%w: shard %d", ErrUnknownShard, shard)
	}
	next := make(map[uint32]*poolShard, len(cur))
	for k, v := range cur {
		if k != shard {
			next[k] = v
		}
	}
	p.shards.Store(&next)
	sh.removing.Store(true)
	sh.ring.Close()
	if !p.started {
		// No writer runs: release inline (p.mu keeps Start out).
		sh.owner.Load().releaseInline(sh, fmt.Errorf("%w: shard %d", ErrShardClosed, shard))
		p.mu.Unlock()
		return nil
	}
	// Under mu: no handoff is under way, and none starts (handOff checks
	// removing under mu), so the owner read here is the one that releases.
	owner := sh.owner.Load()
	p.mu.Unlock()
	owner.wakeUp()
	<-sh.released
	return nil
}

// Close stops accepting submissions, lets the writers propose everything
// already accepted (ignoring FlushInterval), waits for every proposal to
// resolve (retries included), then stops the writers. If ctx ends first, the
// writers fail what they still hold with ErrPoolClosed and exit, and Close
// returns ctx.Err() without waiting for futures still in flight (their
// completion goroutines exit when the proposer resolves them).
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closing.Store(true)
	p.startLocked()
	select {
	case <-p.stopScale:
	default:
		close(p.stopScale)
	}
	for _, sh := range *p.shards.Load() {
		sh.ring.Close()
	}
	writers := slices.Clone(p.writers)
	p.mu.Unlock()
	for _, w := range writers {
		w.wakeUp()
	}
	select {
	case <-p.closed:
		return nil
	case <-ctx.Done():
	}
	p.abort.Store(true)
	p.cancel() // redirects in progress give up
	for _, w := range writers {
		w.wakeUp()
	}
	p.writersWG.Wait()
	return ctx.Err()
}

// Outstanding is the number of events accepted into shard's ring and not
// yet resolved (committed, redirected or failed back); 0 for a shard the
// pool does not host. The node routes a shard's new events through the
// pool while it is not zero, even when it no longer leads the shard, so
// that they are redirected behind the earlier ones rather than overtake
// them.
func (p *Pool) Outstanding(shard uint32) int {
	if sh := (*p.shards.Load())[shard]; sh != nil {
		return int(sh.outstanding.Load())
	}
	return 0
}

// PoolShardStats describes one shard's ring and pipeline.
type PoolShardStats struct {
	Shard    uint32
	Ring     ring.Stats
	Inflight int // proposals made and not yet resolved
	// Redirecting is the events waiting to be redirected to the shard's
	// new leader after this node lost the leadership, or being redirected.
	Redirecting int
}

// PoolStats is a snapshot of the pool.
type PoolStats struct {
	Shards   []PoolShardStats // in shard order
	Restarts uint64           // writer restarts after panics
}

// Stats returns a snapshot of every shard's ring and pipeline.
func (p *Pool) Stats() PoolStats {
	cur := *p.shards.Load()
	st := PoolStats{Restarts: p.restarts.Load(), Shards: make([]PoolShardStats, 0, len(cur))}
	for id, sh := range cur {
		st.Shards = append(st.Shards, PoolShardStats{Shard: id, Ring: sh.ring.Stats(),
			Inflight: int(sh.inflightN.Load()), Redirecting: sh.redirects.backlog()})
	}
	sort.Slice(st.Shards, func(i, j int) bool { return st.Shards[i].Shard < st.Shards[j].Shard })
	return st
}

// Admission control (docs/DECISIONS.md D37). A submitter that waits for
// its events to commit (COMMITTED) and whose deadline passes after they
// were accepted learns nothing: the events may or may not be stored, and
// it must send them again. So a submission that would most likely not
// commit before its deadline is refused at once instead, while it is
// definitely not stored: ErrOverloaded, with the wait to expect.
//
// The expected wait is the events queued ahead, this submission's
// included, times the time the shard's queue has recently taken per event:
// each resolved submission tells how long it waited for how many events
// (those ahead of it and its own), so the estimate follows the shard's
// real drain rate, raft's commit latency and the store's apply included,
// and is not diluted by idle time.

// A submission that found a short queue says more about the fixed cost of
// a commit than about the time per event: only those that waited behind at
// least half a pipeline (admissionSample) are averaged. The estimate is
// used only for queues longer than a pipeline.

// admissionSample is the queue, in events, a submission must have waited
// behind for its wait to be averaged.
func (p *Pool) admissionSample() int64 { return max(int64(p.cfg.BatchSize*p.cfg.MaxInflight/2), 1) }

// perEventWeight is the weight of each new observation in the moving
// average of the time per event.
const perEventWeight = 0.2

// perEventTime is a moving average, in ns per event, updated by a shard's
// completion goroutine and read by submitters.
type perEventTime struct{ ns atomic.Int64 }

// observe records that a submission waited d behind and including events.
func (p *perEventTime) observe(d time.Duration, events int64) {
	if events <= 0 {
		return
	}
	per := int64(d) / events
	old := p.ns.Load()
	if old == 0 {
		p.ns.Store(max(per, 1))
		return
	}
	p.ns.Store(max(old+int64(perEventWeight*float64(per-old)), 1))
}

func (p *perEventTime) get() time.Duration { return time.Duration(p.ns.Load()) }

// admit refuses a waiting submission of n events when the shard's queue
// holds more than its pipeline carries at once (BatchSize × MaxInflight:
// below that nothing waits for long) and the expected wait is more than
// half the time ctx has left. A submission without a deadline, and a
// redirect, is always admitted.
func (p *Pool) admit(ctx context.Context, sh *poolShard, n int) error {
	deadline, ok := ctx.Deadline()
	if !ok || p.cfg.noAdmission || IsRedirect(ctx) {
		// A redirect carries events an old leader admitted (ACCEPTED ones
		// were acknowledged): they wait for room, never shed.
		return nil
	}
	queued := sh.outstanding.Load()
	if queued <= int64(p.cfg.BatchSize*p.cfg.MaxInflight) {
		return nil
	}
	wait, left := sh.perEvent.get()*time.Duration(queued+int64(n)), time.Until(deadline)
	if wait <= left/2 {
		return nil
	}
	return fmt.Errorf("%w: %w: shard %d: %d events refused at once, not stored: %d events are queued ahead, about %v of work, "+
		"more than half the %v left before the request's deadline; retry after %v",
		ErrFull, ErrOverloaded, sh.id, n, queued, wait.Round(time.Millisecond), left.Round(time.Millisecond), wait.Round(time.Millisecond))
}
