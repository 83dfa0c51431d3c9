package node

import (
	"sync"
	"sync/atomic"

	"github.com/elixirscope/scope/correlate"
)

// maxSubscribers bounds live Tail subscriptions per node.
const maxSubscribers = 1024

// Subscription receives newly applied events that match its filter. Its
// buffer is bounded: when the subscriber falls behind, events are dropped
// and counted, never silently skipped — Lagged reports how many.
type Subscription struct {
	hub    *tailHub
	match  func(*correlate.Event) bool
	c      chan correlate.Event
	lagged atomic.Uint64
	once   sync.Once
}

// C delivers matching events in apply order per shard. It is closed when
// the subscription or the node closes.
func (s *Subscription) C() <-chan correlate.Event { return s.c }

// Lagged returns and resets the number of events dropped because the
// buffer was full.
func (s *Subscription) Lagged() uint64 { return s.lagged.Swap(0) }

// Close ends the subscription.
func (s *Subscription) Close() { s.hub.remove(s) }

// tailHub fans applied events out to subscriptions.
type tailHub struct {
	mu     sync.RWMutex
	subs   map[*Subscription]struct{}
	closed bool
}

func newTailHub() *tailHub { return &tailHub{subs: make(map[*Subscription]struct{})} }

// Subscribe returns a subscription to events matching match (nil: all),
// buffering up to buffer events.
func (n *Node) Subscribe(match func(*correlate.Event) bool, buffer int) (*Subscription, error) {
	if buffer <= 0 {
		buffer = 1024
	}
	s := &Subscription{hub: n.tail, match: match, c: make(chan correlate.Event, buffer)}
	h := n.tail
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if len(h.subs) >= maxSubscribers {
		return nil, ErrTooManySubscribers
	}
	h.subs[s] = struct{}{}
	return s, nil
}

// publish offers events to every subscription without blocking: it runs on
// a replica's FSM goroutine.
func (h *tailHub) publish(_ uint32, events []correlate.Event) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		for i := range events {
			e := &events[i]
			if s.match != nil && !s.match(e) {
				continue
			}
			select {
			case s.c <- *e:
			default:
				s.lagged.Add(1)
			}
		}
	}
}

func (h *tailHub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		s.once.Do(func() { close(s.c) })
	}
}

func (h *tailHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		delete(h.subs, s)
		s.once.Do(func() { close(s.c) })
	}
}
