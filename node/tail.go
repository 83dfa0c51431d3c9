package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/elixirscope/scope/correlate"
)

// maxSubscribers bounds live Tail subscriptions per node.
const maxSubscribers = 1024

// DefaultTailBuffer is a subscription's buffer when TailSpec.Buffer is 0.
const DefaultTailBuffer = 1024

// maxDispatchEvents bounds the applied events published to the tail hub
// and not yet fanned out to subscriptions. Beyond it an apply's events are
// not queued: each subscription watching the shard counts them as dropped.
const maxDispatchEvents = 1 << 15

// TailKind says what a TailItem carries.
type TailKind uint8

const (
	// TailEvent: a matching event, at (Index, Offset).
	TailEvent TailKind = iota
	// TailLagged: Dropped matching events of Shard were dropped here
	// because the subscription's buffer was full (or, when the node could
	// not fan out applied events as fast as they came, events of the
	// shard that were never examined: an upper bound on the matching
	// ones). It follows every event of the shard delivered before the
	// drops and precedes every later one; Next delivers it as soon as the buffer has room, without
	// waiting for the shard's next event.
	TailLagged
	// TailStart: the shard's subscription started; Index is the replica's
	// applied index then (events of later entries follow). Every watched
	// shard gets either a TailStart or a TailGap first.
	TailStart
	// TailGap: the shard was resumed after After, but this replica had
	// already applied entries up to Index when the subscription started:
	// their events cannot be delivered.
	TailGap
	// TailGone: this node no longer has a replica of Shard that applies
	// entries (never had one, dropped it, or its replica failed). No
	// further item of the shard follows.
	TailGone
)

// TailPosition is a place in a shard's apply order: the event at Offset
// among the events of the raft entry at Index. Last says no later event
// of that entry matched the subscription's filter.
type TailPosition struct {
	Index  uint64
	Offset uint32
	Last   bool
}

// before reports whether p comes before (index, offset).
func (p TailPosition) before(index uint64, offset uint32) bool {
	return index > p.Index || (index == p.Index && offset > p.Offset)
}

// TailItem is one item of a subscription. Items of one shard arrive in
// apply order.
type TailItem struct {
	Kind  TailKind
	Shard uint32
	// TailEvent: the event's position. TailStart, TailGap: Index is the
	// applied index when the subscription started; TailGap's After is the
	// resume position.
	TailPosition
	After   uint64
	Dropped uint64 // TailLagged
	Reason  string // TailGone
	Event   correlate.Event
}

// TailSpec says what a subscription receives.
type TailSpec struct {
	// Shards to follow; nil: every shard this node hosts when subscribing.
	Shards []uint32
	// Resume positions: a shard listed here skips events at or before its
	// position and reports a TailGap when this node applied entries after
	// it before the subscription started. Other shards start with the
	// next entry applied.
	After map[uint32]TailPosition
	// Match selects events (nil: all). It runs on the node's tail
	// dispatcher goroutine, shared by every subscription: it must be fast
	// and must not block.
	Match func(*correlate.Event) bool
	// Buffer bounds the events (and lag reports) held for a slow reader;
	// 0: DefaultTailBuffer.
	Buffer int
}

// shard states in a subscription.
const (
	subUnwatched uint8 = iota
	subWatching
	subGone
)

// Subscription receives newly applied events that match its filter. Its
// buffer is bounded: when the reader falls behind, events are dropped and
// counted per shard, never silently skipped — a TailLagged item takes
// their place, ahead of the shard's next delivered event.
type Subscription struct {
	hub    *tailHub
	match  func(*correlate.Event) bool
	buffer int
	// c holds up to buffer events and lag reports, plus room reserved per
	// shard for one start or gap, one final lag report and one gone item.
	// Every send happens under mu after checking the room it needs, so
	// sends never block.
	c chan TailItem

	// Fixed at creation.
	resume []bool
	after  []TailPosition

	// mu guards what follows and orders sends to c with the lag counts:
	// the dispatcher, the reader (Next flushing lag reports), watch and
	// gone. Nothing is sent to c once closed is set (c is closed then).
	mu     sync.Mutex
	closed bool
	state  []uint8
	// start[shard]: the applied index when the shard was watched; entries
	// up to it were applied before and are not delivered (they may still
	// be queued for dispatch when the watch starts).
	start []uint64
	// lagged[shard]: matching events dropped since the shard's last
	// delivered item. Guarded by mu.
	lagged []uint64
	// lagging counts shards with lagged > 0 (written under mu): Next's
	// fast path reads it without the lock.
	lagging atomic.Int32
}

// Next returns the subscription's next item, waiting for one. A lag report
// is queued as soon as the buffer has room for it, so a reader that drains
// learns of drops without waiting for the shard's next event. Next returns
// ctx's error when ctx is done and ErrClosed once the subscription or the
// node is closed and every queued item was read. One goroutine at a time
// may call Next.
func (s *Subscription) Next(ctx context.Context) (TailItem, error) {
	if s.lagging.Load() > 0 {
		s.flushLagged()
	}
	select {
	case it, ok := <-s.c:
		if !ok {
			return TailItem{}, ErrClosed
		}
		return it, nil
	case <-ctx.Done():
		return TailItem{}, ctx.Err()
	}
}

// flushLagged queues the lag report of every lagging shard that fits in the
// buffer. Order holds: a shard's events queued before its drops are
// already in c, and a later event of the shard would have carried the
// report itself (offer), so the report lands between the two.
func (s *Subscription) flushLagged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for shard, n := range s.lagged {
		if n == 0 {
			continue
		}
		if len(s.c)+1 > s.buffer {
			return
		}
		s.sendLaggedLocked(uint32(shard))
	}
}

// sendLaggedLocked queues shard's lag report and resets its count.
func (s *Subscription) sendLaggedLocked(shard uint32) {
	s.c <- TailItem{Kind: TailLagged, Shard: shard, Dropped: s.lagged[shard]}
	s.lagged[shard] = 0
	s.lagging.Add(-1)
}

// Close ends the subscription.
func (s *Subscription) Close() { s.hub.remove(s) }

// tailHub fans applied events out to subscriptions. A replica's FSM
// goroutine only queues what it applied (one copy of the events, whatever
// the subscriptions); the hub's dispatcher goroutine runs the filters and
// fills the subscriptions' buffers, so neither many subscriptions nor slow
// readers hold up applies (BenchmarkNodeIngestTails).
type tailHub struct {
	shards uint32
	// mu guards the subscription set; each subscription's own state is
	// under its mu, so a filter that is slow holds up no one but the
	// dispatcher.
	mu     sync.RWMutex
	subs   map[*Subscription]struct{}
	closed bool
	// live counts subs: publish reads it without a lock.
	live atomic.Int32
	// fan is the dispatcher's snapshot of subs (only it uses it).
	fan []*Subscription

	// The dispatch queue, FIFO: what replicas published, and markers (a
	// shard gone, events not queued, a flush) in their place in the order.
	qmu      sync.Mutex
	queue    []dispatch
	queued   int  // events in queue, at most maxDispatchEvents
	running  bool // the dispatcher started (at the first subscription)
	wake     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	// overflow counts events not queued: the queue was full.
	overflow atomic.Uint64
}

// dispatch is one item of the hub's queue: an apply's events (a copy the
// hub owns) and entry spans, or one of the markers.
type dispatch struct {
	shard  uint32
	events []correlate.Event
	spans  []EntrySpan
	// dropped events of shard, up to entry lastIndex, were not queued.
	dropped   uint64
	lastIndex uint64
	gone      string        // the shard is gone for every subscription, for this reason
	flushed   chan struct{} // closed when everything queued before it is dispatched
}

func newTailHub(shards uint32) *tailHub {
	return &tailHub{shards: shards, subs: make(map[*Subscription]struct{}),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// enqueue adds d to the dispatch queue and wakes the dispatcher. Applies'
// events beyond maxDispatchEvents become a dropped marker, so the
// subscriptions still learn, in order, that they missed events; a shard's
// drops merge into its marker among the markers that end the queue, so
// while the queue is full (a filter that never returns) it grows by at
// most one marker per shard.
func (h *tailHub) enqueue(d dispatch) {
	h.qmu.Lock()
	if n := len(d.events); n > 0 && h.queued+n > maxDispatchEvents {
		h.overflow.Add(uint64(n))
		last := d.spans[len(d.spans)-1].Index
		merged := false
		for k := len(h.queue) - 1; k >= 0; k-- {
			q := &h.queue[k]
			if q.events != nil || q.flushed != nil || (q.gone != "" && q.shard == d.shard) {
				break
			}
			if q.dropped > 0 && q.shard == d.shard {
				q.dropped += uint64(n)
				q.lastIndex = last
				merged = true
				break
			}
		}
		if !merged {
			h.queue = append(h.queue, dispatch{shard: d.shard, dropped: uint64(n), lastIndex: last})
		}
	} else {
		h.queue = append(h.queue, d)
		h.queued += len(d.events)
	}
	h.qmu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run is the dispatcher: it takes the queue's items in order and fans each
// out, until the hub closes.
func (h *tailHub) run() {
	defer close(h.done)
	for {
		select {
		case <-h.stop:
			return
		case <-h.wake:
		}
		for {
			h.qmu.Lock()
			if len(h.queue) == 0 {
				h.qmu.Unlock()
				break
			}
			d := h.queue[0]
			h.queue[0] = dispatch{}
			h.queue = h.queue[1:]
			h.queued -= len(d.events)
			h.qmu.Unlock()
			h.fanOut(d)
		}
	}
}

// flush waits until everything queued before it has been dispatched (or
// the hub closed).
func (h *tailHub) flush() {
	h.qmu.Lock()
	running := h.running
	h.qmu.Unlock()
	if !running {
		return
	}
	c := make(chan struct{})
	h.enqueue(dispatch{flushed: c})
	select {
	case <-c:
	case <-h.done:
	}
}

// fanOut delivers one queue item to the subscriptions.
func (h *tailHub) fanOut(d dispatch) {
	switch {
	case d.flushed != nil:
		close(d.flushed)
		return
	case d.gone != "":
		h.goneNow(d.shard, d.gone, nil)
		return
	}
	h.mu.RLock()
	h.fan = h.fan[:0]
	for s := range h.subs {
		h.fan = append(h.fan, s)
	}
	h.mu.RUnlock()
	for _, s := range h.fan {
		s.mu.Lock()
		if s.closed || s.state[d.shard] != subWatching {
			s.mu.Unlock()
			continue
		}
		if d.dropped > 0 {
			if d.lastIndex > s.start[d.shard] {
				if s.lagged[d.shard] == 0 {
					s.lagging.Add(1)
				}
				s.lagged[d.shard] += d.dropped
			}
		} else {
			start := 0
			for _, sp := range d.spans {
				if sp.Index > s.start[d.shard] {
					s.publishEntry(d.shard, sp.Index, d.events[start:sp.End])
				}
				start = sp.End
			}
		}
		s.mu.Unlock()
	}
	clear(h.fan) // hold no subscription past its end
}

// Subscribe starts a subscription. Each shard is registered under its
// replica's apply lock, so the subscription receives exactly the entries
// applied after its start index, and a resumed shard's gap is exact.
// A requested shard with no replica here is reported gone at once.
func (n *Node) Subscribe(spec TailSpec) (*Subscription, error) {
	h := n.tail
	buffer := spec.Buffer
	if buffer == 0 {
		buffer = DefaultTailBuffer
	}
	if buffer < 2 {
		return nil, fmt.Errorf("%w: tail buffer %d: must be at least 2", ErrConfig, buffer)
	}
	shards := spec.Shards
	if shards == nil {
		for _, r := range n.Replicas() {
			shards = append(shards, r.Shard())
		}
	}
	for _, shard := range shards {
		if shard >= h.shards {
			return nil, fmt.Errorf("%w: tail shard %d of %d", ErrNoShard, shard, h.shards)
		}
	}
	s, err := h.add(spec, buffer, len(shards))
	if err != nil {
		return nil, err
	}
	for _, shard := range shards {
		r := n.Replica(shard)
		if r == nil {
			h.gone(shard, "no replica on this node", s)
			continue
		}
		r.fsm.withApplied(func(applied, lastEvents uint64, failed error) {
			if failed != nil {
				h.gone(shard, "replica failed", s)
				return
			}
			h.watch(s, shard, applied, lastEvents)
		})
		// DropReplica removes the replica from the node before telling the
		// hub: if it was removed before the watch above, tell it now.
		if n.Replica(shard) != r {
			h.gone(shard, "replica dropped", s)
		}
	}
	return s, nil
}

// add registers a subscription that watches no shard yet (it will watch
// watched shards: each may queue up to three markers beyond the buffer).
func (h *tailHub) add(spec TailSpec, buffer, watched int) (*Subscription, error) {
	for shard := range spec.After {
		if shard >= h.shards {
			return nil, fmt.Errorf("%w: tail resume shard %d of %d", ErrNoShard, shard, h.shards)
		}
	}
	s := &Subscription{hub: h, match: spec.Match, buffer: buffer,
		c:     make(chan TailItem, buffer+3*max(watched, len(spec.After))),
		state: make([]uint8, h.shards), resume: make([]bool, h.shards),
		after: make([]TailPosition, h.shards), start: make([]uint64, h.shards), lagged: make([]uint64, h.shards)}
	for shard, p := range spec.After {
		s.resume[shard], s.after[shard] = true, p
	}
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		return nil, ErrClosed
	case len(h.subs) >= maxSubscribers:
		h.mu.Unlock()
		return nil, ErrTooManySubscribers
	}
	h.subs[s] = struct{}{}
	h.live.Add(1)
	h.mu.Unlock()
	h.qmu.Lock()
	if !h.running {
		h.running = true
		go h.run()
	}
	h.qmu.Unlock()
	return s, nil
}

// watch starts delivering shard's entries after applied to s. It runs
// under the replica's apply lock. A resumed shard has a gap only if an
// entry after its position stored events (lastEvents): entries without
// events (configuration changes, notices, handoffs) miss nothing.
func (h *tailHub) watch(s *Subscription, shard uint32, applied, lastEvents uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.state[shard] != subUnwatched {
		return
	}
	s.state[shard] = subWatching
	s.start[shard] = applied
	if p := s.after[shard]; s.resume[shard] && (lastEvents > p.Index || (lastEvents == p.Index && lastEvents > 0 && !p.Last)) {
		// Entries after the resume position were applied before this
		// subscription: the replica's log cannot be replayed to it.
		s.c <- TailItem{Kind: TailGap, Shard: shard, TailPosition: TailPosition{Index: applied}, After: p.Index}
		return
	}
	s.c <- TailItem{Kind: TailStart, Shard: shard, TailPosition: TailPosition{Index: applied}}
}

// publish queues one apply's events for the subscriptions: it runs on the
// shard's FSM goroutine, under its apply lock, and costs one copy of the
// events when anyone subscribes (nothing otherwise), whatever the
// subscriptions and their readers do.
func (h *tailHub) publish(shard uint32, events []correlate.Event, spans []EntrySpan) {
	if len(spans) == 0 {
		return
	}
	n := spans[len(spans)-1].End
	if n == 0 || h.live.Load() == 0 {
		return
	}
	h.enqueue(dispatch{shard: shard, events: slices.Clone(events[:n]), spans: slices.Clone(spans)})
}

// publishEntry delivers the matching events of one entry, each tagged with
// whether a later event of the entry matched too. s.mu is held.
func (s *Subscription) publishEntry(shard uint32, index uint64, events []correlate.Event) {
	if s.resume[shard] && index < s.after[shard].Index {
		return
	}
	pending := -1
	for i := range events {
		if s.resume[shard] && !s.after[shard].before(index, uint32(i)) {
			continue
		}
		if s.match != nil && !s.match(&events[i]) {
			continue
		}
		if pending >= 0 {
			s.offer(shard, index, pending, &events[pending], false)
		}
		pending = i
	}
	if pending >= 0 {
		s.offer(shard, index, pending, &events[pending], true)
	}
}

// offer sends one event, preceded by the shard's lag report if events were
// dropped since its last delivered one, or counts it as dropped. s.mu is
// held.
func (s *Subscription) offer(shard uint32, index uint64, offset int, e *correlate.Event, last bool) {
	need := 1
	if s.lagged[shard] > 0 {
		need = 2
	}
	if len(s.c)+need > s.buffer {
		if s.lagged[shard] == 0 {
			s.lagging.Add(1)
		}
		s.lagged[shard]++
		return
	}
	if need == 2 {
		s.sendLaggedLocked(shard)
	}
	s.c <- TailItem{Kind: TailEvent, Shard: shard, Event: *e,
		TailPosition: TailPosition{Index: index, Offset: uint32(offset), Last: last}}
}

// gone tells subscriptions (only that one, or all when only is nil) that this
// node has no replica of shard that applies entries any more. For all, it
// is queued behind the events already published; for one (a shard it
// never watched), it is told at once.
func (h *tailHub) gone(shard uint32, reason string, only *Subscription) {
	if only == nil {
		h.qmu.Lock()
		running := h.running
		h.qmu.Unlock()
		if running {
			h.enqueue(dispatch{shard: shard, gone: reason})
			return
		}
	}
	h.goneNow(shard, reason, only)
}

// goneNow is gone, at once. Events dropped and not yet reported are
// reported first (in the room reserved for them).
func (h *tailHub) goneNow(shard uint32, reason string, only *Subscription) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		if only != nil && s != only {
			continue
		}
		s.mu.Lock()
		if !s.closed && s.state[shard] != subGone {
			s.state[shard] = subGone
			if s.lagged[shard] > 0 {
				s.sendLaggedLocked(shard)
			}
			s.c <- TailItem{Kind: TailGone, Shard: shard, Reason: reason}
		}
		s.mu.Unlock()
	}
}

// failed tells every subscription that shard's replica stopped applying. It
// runs on the shard's FSM goroutine, under its apply lock.
func (h *tailHub) failed(shard uint32) { h.gone(shard, "replica failed", nil) }

func (h *tailHub) remove(s *Subscription) {
	h.mu.Lock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		h.live.Add(-1)
	}
	h.mu.Unlock()
	s.end()
}

// end closes s's channel, once: Next returns what is queued, then ErrClosed.
func (s *Subscription) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.c)
	}
}

func (h *tailHub) close() {
	h.mu.Lock()
	h.closed = true
	ended := make([]*Subscription, 0, len(h.subs))
	for s := range h.subs {
		delete(h.subs, s)
		ended = append(ended, s)
	}
	h.live.Store(0)
	h.mu.Unlock()
	for _, s := range ended {
		s.end()
	}
	h.stopOnce.Do(func() { close(h.stop) })
	h.qmu.Lock()
	running := h.running
	h.qmu.Unlock()
	if running {
		<-h.done
	}
}
