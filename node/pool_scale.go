package node

import (
	"slices"
	"time"
)

// A self-scaling writer pool (docs/DECISIONS.md D33). With
// PoolConfig.MaxWriters > 0 the pool runs between MinWriters and MaxWriters
// writers. A scaler samples, every ScaleInterval, the fullest ring (its
// fill: events waiting over capacity) and the writers' utilisation (time
// awake over time). Hysteresis keeps it from flapping:
//
//   - a writer is added when a ring was at least ScaleUpFill full, or the
//     writers were busy at least scaleUpBusy of the time, on two samples
//     in a row; the new writer takes shards from the writers that own the
//     most, the fullest rings first, until the counts are even;
//   - a writer is removed when every ring stayed under ScaleUpFill/8 and
//     the writers under scaleDownBusy for ScaleDownAfter: the writer that
//     owns the fewest shards hands them to the others and exits;
//   - one change at a time: nothing is decided while a handoff or a
//     retiring writer is pending.
//
// A shard changes writer only between two services of it by its owner,
// with nothing staged (no batch taken from its ring and not yet handed to
// its dispatcher) and no retry queued, under Pool.mu (handOff): its ring's
// single consumer changes hands cleanly, and the shard's order is kept by
// its own dispatcher and completer, which do not change. Proposals already
// handed to the dispatcher stay in flight across the move: they belong to
// the shard's pipeline, not to a writer.

// Utilisation thresholds of the scaler.
const (
	scaleUpBusy   = 0.75
	scaleDownBusy = 0.25
)

// scaleState is the scaler's memory between samples (guarded by Pool.mu).
type scaleState struct {
	hot       int       // consecutive samples that call for a writer more
	coldSince time.Time // start of the quiet period; zero: not quiet
	last      time.Time // the last sample
}

// scaling reports whether the number of writers follows the backlog.
func (c *PoolConfig) scaling() bool { return c.MaxWriters > 0 }

// initialWriters is the number of writers a pool starts with.
func (c *PoolConfig) initialWriters() int {
	if c.scaling() {
		return c.MinWriters
	}
	return c.Writers
}

// newWriterLocked adds a writer, running if the pool is started. p.mu held
// (or the pool not yet shared).
func (p *Pool) newWriterLocked() *poolWriter {
	w := &poolWriter{id: p.nextWriter, p: p, wake: make(chan struct{}, 1)}
	p.nextWriter++
	p.writers = append(p.writers, w)
	if p.started {
		p.writersWG.Add(1)
		go w.run()
	}
	return w
}

// leastLoadedLocked is the writer, not retiring and not except, that owns
// or is about to receive (incoming, from incomingLocked) the fewest shards.
// p.mu held.
func (p *Pool) leastLoadedLocked(except *poolWriter, incoming map[*poolWriter]int) *poolWriter {
	var best *poolWriter
	bestLoad := 0
	for _, w := range p.writers {
		if w == except || w.retiring.Load() {
			continue
		}
		if l := w.load() + incoming[w]; best == nil || l < bestLoad {
			best, bestLoad = w, l
		}
	}
	return best
}

// incomingLocked counts, per writer, the shards being handed to it.
func (p *Pool) incomingLocked() map[*poolWriter]int {
	in := make(map[*poolWriter]int)
	for _, sh := range *p.shards.Load() {
		if to := sh.moveTo.Load(); to != nil {
			in[to]++
		}
	}
	return in
}

// activeLocked counts the writers that are not retiring.
func (p *Pool) activeLocked() int {
	n := 0
	for _, w := range p.writers {
		if !w.retiring.Load() {
			n++
		}
	}
	return n
}

// handOff moves sh from w, its owner, to `to`, if nothing is staged for it
// and no retry is queued; it reports whether it did. Called by w's
// goroutine between services of sh. A move that can no longer happen (the
// shard is being removed, the pool closes, the target retires) is
// cancelled.
func (w *poolWriter) handOff(sh *poolShard, to *poolWriter) bool {
	if len(sh.items) > 0 {
		return false
	}
	sh.mu.Lock()
	queued := len(sh.retries) > 0
	sh.mu.Unlock()
	if queued {
		return false
	}
	p := w.p
	p.callHook("handoff", sh.id)
	p.mu.Lock()
	defer p.mu.Unlock()
	if sh.removing.Load() || p.closing.Load() || to.retiring.Load() || to == w {
		sh.moveTo.Store(nil)
		return false
	}
	w.mu.Lock()
	if i := slices.Index(w.shards, sh); i >= 0 {
		w.shards = slices.Delete(w.shards, i, i+1)
	}
	w.mu.Unlock()
	to.mu.Lock()
	to.shards = append(to.shards, sh)
	to.mu.Unlock()
	sh.owner.Store(to)
	sh.moveTo.Store(nil)
	// The ring's tokens go to the new owner from now on, and one is sent
	// at once: it services the shard before it sleeps again.
	_ = sh.ring.SetNotify(to.wake)
	p.m.ShardMoved(sh.id)
	return true
}

// writerExited forgets a retired writer that owns nothing.
func (p *Pool) writerExited(w *poolWriter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.writers, w); i >= 0 {
		p.writers = slices.Delete(p.writers, i, i+1)
	}
	p.log.Debug("writer retired", "writer", w.id, "writers", len(p.writers))
}

// scaler samples the pool every ScaleInterval until Close.
func (p *Pool) scaler() {
	defer p.complWG.Done()
	t := time.NewTicker(p.cfg.ScaleInterval)
	defer t.Stop()
	p.mu.Lock()
	p.scale.last = time.Now()
	p.mu.Unlock()
	for {
		select {
		case <-p.stopScale:
			return
		case now := <-t.C:
			p.scaleStep(now)
		}
	}
}

// scaleSample is what the scaler measured.
type scaleSample struct {
	fill float64 // the fullest ring's occupancy, 0..1
	busy float64 // the writers' mean utilisation since the last sample, 0..1
}

// scaleStep takes one sample and makes at most one scaling decision.
func (p *Pool) scaleStep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing.Load() {
		return
	}
	var s scaleSample
	for _, sh := range *p.shards.Load() {
		s.fill = max(s.fill, float64(sh.ring.Len())/float64(sh.ring.Cap()))
	}
	elapsed := now.Sub(p.scale.last)
	p.scale.last = now
	var busy time.Duration
	for _, w := range p.writers {
		busy += time.Duration(w.busyNs.Swap(0))
	}
	if elapsed > 0 && len(p.writers) > 0 {
		s.busy = min(1, float64(busy)/float64(elapsed)/float64(len(p.writers)))
	}
	p.m.WriterUtilisation(s.busy)

	hot := s.fill >= p.cfg.ScaleUpFill || s.busy >= scaleUpBusy
	cold := s.fill < p.cfg.ScaleUpFill/8 && s.busy < scaleDownBusy
	if hot {
		p.scale.hot++
	} else {
		p.scale.hot = 0
	}
	switch {
	case !cold:
		p.scale.coldSince = time.Time{}
	case p.scale.coldSince.IsZero():
		p.scale.coldSince = now
	}
	if p.changePendingLocked() {
		return
	}
	active := p.activeLocked()
	switch {
	case p.scale.hot >= 2 && active < p.cfg.MaxWriters:
		p.growLocked(s)
		p.scale.hot = 0
	case cold && now.Sub(p.scale.coldSince) >= p.cfg.ScaleDownAfter && active > p.cfg.MinWriters:
		p.shrinkLocked(s)
		p.scale.coldSince = now
	}
}

// changePendingLocked reports whether a handoff or a retirement is under
// way.
func (p *Pool) changePendingLocked() bool {
	for _, w := range p.writers {
		if w.retiring.Load() {
			return true
		}
	}
	return len(p.incomingLocked()) > 0
}

// growLocked starts a writer and hands it shards from the writers that own
// the most, the fullest rings first, until the counts are even.
func (p *Pool) growLocked(s scaleSample) {
	nw := p.newWriterLocked()
	shards := make([]*poolShard, 0, len(*p.shards.Load()))
	for _, sh := range *p.shards.Load() {
		if !sh.removing.Load() {
			shards = append(shards, sh)
		}
	}
	slices.SortFunc(shards, func(a, b *poolShard) int { return b.ring.Len() - a.ring.Len() })
	active := p.activeLocked()
	share := len(shards) / active // what the new writer should own
	load := make(map[*poolWriter]int)
	for _, w := range p.writers {
		load[w] = w.load()
	}
	moved := 0
	for _, sh := range shards {
		if moved >= share {
			break
		}
		from := sh.owner.Load()
		if from == nw || load[from] <= share {
			continue
		}
		sh.moveTo.Store(nw)
		load[from]--
		moved++
		from.wakeUp()
	}
	p.m.WritersScaled(true)
	p.m.WritersActive(active)
	p.log.Debug("writer pool grew", "writer", nw.id, "writers", active, "shards_moving", moved,
		"fullest_ring", s.fill, "writers_busy", s.busy)
}

// shrinkLocked retires the writer that owns the fewest shards: its shards
// go to the others, and it exits once it owns none.
func (p *Pool) shrinkLocked(s scaleSample) {
	var v *poolWriter
	for _, w := range p.writers {
		if !w.retiring.Load() && (v == nil || w.load() < v.load()) {
			v = w
		}
	}
	if v == nil {
		return
	}
	owned := v.owned()
	v.retiring.Store(true)
	incoming := p.incomingLocked() // counted once, kept up to date below
	for _, sh := range owned {
		if to := p.leastLoadedLocked(v, incoming); to != nil {
			sh.moveTo.Store(to)
			incoming[to]++
		}
	}
	v.wakeUp()
	active := p.activeLocked()
	p.m.WritersScaled(false)
	p.m.WritersActive(active)
	p.log.Debug("writer pool shrank", "writer", v.id, "writers", active, "shards_moving", len(owned),
		"fullest_ring", s.fill, "writers_busy", s.busy)
}

// Writers reports the writers running and, of them, those retiring.
func (p *Pool) Writers() (running, retiring int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.writers {
		running++
		if w.retiring.Load() {
			retiring++
		}
	}
	return running, retiring
}
