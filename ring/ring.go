package ring

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

var (
	// ErrClosed: the ring was closed; producers are refused, and for the
	// consumer everything published has been read.
	ErrClosed = errors.New("ring: closed")
	// ErrFull: an all-or-nothing call found too little free space.
	ErrFull = errors.New("ring: full")
	// ErrTooLarge: an all-or-nothing batch is longer than the ring's capacity
	// and can never be accepted.
	ErrTooLarge = errors.New("ring: batch larger than capacity")
	// ErrCapacity: New was given a capacity that is not a power of two in
	// [MinCapacity, MaxCapacity].
	ErrCapacity = errors.New("ring: invalid capacity")
)

const (
	// MinCapacity and MaxCapacity bound the number of slots.
	MinCapacity = 2
	MaxCapacity = 1 << 30

	closedBit = uint64(1) << 63
	cacheLine = 64
)

// slot holds one element and its publication sequence number (position+1).
type slot[T any] struct {
	seq atomic.Uint64
	val T
}

// Ring is a bounded lock-free MPSC ring buffer. See the package doc for the
// protocol and the contract of each method group. The zero value is not
// usable; construct with New or NewWithNotify.
type Ring[T any] struct {
	// Read-mostly fields, shared by everyone.
	// slots is allocated by the first write (allocSlots): a ring nobody
	// writes to — a follower's, an idle shard's — costs no slot memory.
	// Once set it never changes.
	slots  atomic.Pointer[[]slot[T]]
	size   uint64 // number of slots
	mask   uint64
	notify atomic.Pointer[chan struct{}] // consumer wake-up tokens (capacity >= 1); SetNotify replaces it
	_      [cacheLine]byte

	head atomic.Uint64 // positions claimed | closedBit
	_    [cacheLine - 8]byte
	tail atomic.Uint64 // positions consumed; written by the consumer only
	_    [cacheLine - 8]byte

	armed atomic.Uint32 // 1: the consumer is (about to be) asleep on notify
	_     [cacheLine - 4]byte

	waiters atomic.Int32 // producers registered to sleep for space
	_       [cacheLine - 4]byte

	refused   atomic.Uint64
	highWater atomic.Uint64

	mu    sync.Mutex
	space chan struct{} // closed and replaced when the consumer frees space
}

// Stats is a point-in-time view of a ring's counters.
type Stats struct {
	Len       int    // items claimed and not yet consumed
	Cap       int    // slots
	Accepted  uint64 // items ever accepted (claimed) by producers
	Refused   uint64 // items ever refused: full, deadline, closed, too large
	HighWater uint64 // the largest occupancy observed by a producer's claim
	Closed    bool
}

// New returns a ring with capacity slots (a power of two in
// [MinCapacity, MaxCapacity]) and its own consumer notification channel.
func New[T any](capacity int) (*Ring[T], error) {
	return NewWithNotify[T](capacity, make(chan struct{}, 1))
}

// NewWithNotify is New with a caller-supplied consumer notification channel
// (capacity >= 1). A consumer that owns several rings passes them all the same
// channel: after Arm returns false on every ring, it sleeps on the channel,
// and any publication on any of them wakes it. A token means "re-check",
// never "this ring has data"; a consumer sharing the channel must not use
// Wait, which would swallow tokens meant for other rings.
func NewWithNotify[T any](capacity int, notify chan struct{}) (*Ring[T], error) {
	if capacity < MinCapacity || capacity > MaxCapacity || bits.OnesCount(uint(capacity)) != 1 {
		return nil, fmt.Errorf("%w: capacity %d, want a power of two in [%d, %d]",
			ErrCapacity, capacity, MinCapacity, MaxCapacity)
	}
	if notify == nil || cap(notify) < 1 {
		return nil, fmt.Errorf("%w: notify channel must be buffered (capacity >= 1)", ErrCapacity)
	}
	r := &Ring[T]{
		size:  uint64(capacity),
		mask:  uint64(capacity - 1),
		space: make(chan struct{}),
	}
	r.notify.Store(&notify)
	return r, nil
}

// SetNotify hands the ring to a consumer that sleeps on notify (capacity >=
// 1): later publications send their tokens there, and a token is sent at
// once so that the new consumer looks. The caller must ensure that the old
// consumer has stopped using the ring before the new one starts (one
// consumer at a time); a token racing with the change may still reach the
// old channel, where it means "re-check" to a consumer with nothing to do.
func (r *Ring[T]) SetNotify(notify chan struct{}) error {
	if notify == nil || cap(notify) < 1 {
		return fmt.Errorf("%w: notify channel must be buffered (capacity >= 1)", ErrCapacity)
	}
	r.notify.Store(&notify)
	r.signal()
	return nil
}

// Cap returns the number of slots.
func (r *Ring[T]) Cap() int { return int(r.size) }

// Len returns the number of items claimed and not yet consumed (published or
// about to be). It is a snapshot and may be stale by the time it returns.
func (r *Ring[T]) Len() int {
	t := r.tail.Load()
	h := r.head.Load() &^ closedBit
	return int(h - t)
}

// Stats returns the ring's counters.
func (r *Ring[T]) Stats() Stats {
	t := r.tail.Load()
	h := r.head.Load()
	return Stats{
		Len:       int(h&^closedBit - t),
		Cap:       int(r.size),
		Accepted:  h &^ closedBit,
		Refused:   r.refused.Load(),
		HighWater: r.highWater.Load(),
		Closed:    h&closedBit != 0,
	}
}

// Offer writes as many of items as fit right now, without waiting, and
// returns how many it wrote (a prefix of items). The rest are counted as
// refused. After Close it writes nothing.
func (r *Ring[T]) Offer(items []T) int {
	pos, k, err := r.claim(len(items), false)
	if err == nil && k > 0 {
		r.write(pos, items[:k])
	}
	if k < len(items) {
		r.refused.Add(uint64(len(items) - k))
	}
	return k
}

// TryPutAll writes all of items or none of them, without waiting. It returns
// nil, ErrFull, ErrTooLarge or ErrClosed; on error every item is counted as
// refused.
func (r *Ring[T]) TryPutAll(items []T) error {
	if len(items) > int(r.size) {
		r.refused.Add(uint64(len(items)))
		return ErrTooLarge
	}
	pos, k, err := r.claim(len(items), true)
	if err != nil {
		r.refused.Add(uint64(len(items)))
		return err
	}
	if k < len(items) {
		r.refused.Add(uint64(len(items)))
		return ErrFull
	}
	r.write(pos, items)
	return nil
}

// Put writes items, waiting for space until ctx is done. It may write the
// batch in several parts as space frees; it returns how many items (a
// prefix) it wrote and, if not all, ctx.Err() or ErrClosed. Unwritten items
// are counted as refused.
func (r *Ring[T]) Put(ctx context.Context, items []T) (int, error) {
	n, err := r.put(ctx, items, false)
	if n < len(items) {
		r.refused.Add(uint64(len(items) - n))
	}
	return n, err
}

// PutAll writes all of items in one claim or none of them, waiting for
// enough free space until ctx is done. It returns nil, ctx.Err(),
// ErrTooLarge or ErrClosed; on error every item is counted as refused.
func (r *Ring[T]) PutAll(ctx context.Context, items []T) error {
	if len(items) > int(r.size) {
		r.refused.Add(uint64(len(items)))
		return ErrTooLarge
	}
	_, err := r.put(ctx, items, true)
	if err != nil {
		r.refused.Add(uint64(len(items)))
	}
	return err
}

func (r *Ring[T]) put(ctx context.Context, items []T, all bool) (int, error) {
	done := 0
	var wake chan struct{} // non-nil: registered as a waiter
	defer func() {
		if wake != nil {
			r.waiters.Add(-1)
		}
	}()
	for done < len(items) {
		pos, k, err := r.claim(len(items)-done, all)
		if err != nil {
			return done, err
		}
		if k > 0 {
			r.write(pos, items[done:done+k])
			done += k
			continue
		}
		if wake == nil {
			// Register, then loop to retry the claim once more: see the
			// package doc ("Producer sleep") for why this cannot miss a wake.
			r.mu.Lock()
			wake = r.space
			r.waiters.Add(1)
			r.mu.Unlock()
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return done, ctx.Err()
		}
		r.mu.Lock()
		wake = r.space
		r.mu.Unlock()
	}
	return done, nil
}

// claim reserves up to n positions (exactly n or none when all is set) and
// returns the first position and the count reserved.
func (r *Ring[T]) claim(n int, all bool) (uint64, int, error) {
	if n == 0 {
		return 0, 0, nil
	}
	size := r.size
	want := uint64(n)
	for {
		t := r.tail.Load() // before head: guarantees h >= t
		h := r.head.Load()
		if h&closedBit != 0 {
			return 0, 0, ErrClosed
		}
		used := h - t
		if used > size {
			// t was loaded before head moved on by more than a lap: it is
			// stale (the real tail is >= h-size). Reload both.
			continue
		}
		free := size - used
		k := want
		if free < k {
			if all || free == 0 {
				return h, 0, nil
			}
			k = free
		}
		if r.head.CompareAndSwap(h, h+k) {
			r.noteFill(h + k)
			return h, int(k), nil
		}
	}
}

// noteFill raises the high-water mark to the occupancy at claim end. The
// value is claimed-minus-consumed at one instant, so it never exceeds the true
// peak.
func (r *Ring[T]) noteFill(claimedEnd uint64) {
	fill := claimedEnd - r.tail.Load()
	if fill > r.size { // tail moved past our claim end: nothing to note
		return
	}
	for {
		hw := r.highWater.Load()
		if fill <= hw || r.highWater.CompareAndSwap(hw, fill) {
			return
		}
	}
}

// write publishes items at positions [pos, pos+len(items)).
func (r *Ring[T]) write(pos uint64, items []T) {
	slots := r.slots.Load()
	if slots == nil {
		slots = r.allocSlots()
	}
	for i := range items {
		p := pos + uint64(i)
		s := &(*slots)[p&r.mask]
		s.val = items[i]
		s.seq.Store(p + 1)
	}
	if r.armed.Load() != 0 && r.armed.Swap(0) != 0 {
		r.signal()
	}
}

// allocSlots allocates the slots once, for the first writer; the others
// wait for it on mu and find them allocated.
func (r *Ring[T]) allocSlots() *[]slot[T] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sp := r.slots.Load(); sp != nil {
		return sp
	}
	slots := make([]slot[T], r.size)
	r.slots.Store(&slots)
	return &slots
}

func (r *Ring[T]) signal() {
	select {
	case *r.notify.Load() <- struct{}{}:
	default: // a token is already pending
	}
}

// Read copies up to len(dst) published items into dst, in claim order, frees
// their slots and returns how many it copied. It never blocks. Consumer only.
func (r *Ring[T]) Read(dst []T) int {
	slots := r.slots.Load()
	if slots == nil {
		return 0 // nothing was ever written
	}
	t := r.tail.Load()
	var zero T
	n := 0
	for n < len(dst) {
		p := t + uint64(n)
		s := &(*slots)[p&r.mask]
		if s.seq.Load() != p+1 {
			break
		}
		dst[n] = s.val
		s.val = zero
		n++
	}
	if n > 0 {
		r.tail.Store(t + uint64(n))
		if r.waiters.Load() > 0 {
			r.wakeProducers()
		}
	}
	return n
}

func (r *Ring[T]) wakeProducers() {
	r.mu.Lock()
	close(r.space)
	r.space = make(chan struct{})
	r.mu.Unlock()
}

// readable reports whether the item at tail is published.
func (r *Ring[T]) readable() bool {
	slots := r.slots.Load()
	if slots == nil {
		return false
	}
	t := r.tail.Load()
	return (*slots)[t&r.mask].seq.Load() == t+1
}

// Arm prepares the consumer to sleep on the notify channel. It returns true
// if there is something to do now (an item is readable, or the ring is
// closed and drained); otherwise it returns false and guarantees that the
// next publication sends a token on the notify channel. Consumer only.
func (r *Ring[T]) Arm() bool {
	r.armed.Store(1)
	if r.readable() || r.Drained() {
		r.armed.Store(0)
		return true
	}
	return false
}

// Wait blocks until an item is readable (nil), the ring is closed and
// drained (ErrClosed), or ctx is done (ctx.Err()). Consumer only; not for
// rings sharing a notify channel.
func (r *Ring[T]) Wait(ctx context.Context) error {
	for {
		if r.Arm() {
			if r.readable() {
				return nil
			}
			return ErrClosed
		}
		select {
		case <-*r.notify.Load():
		case <-ctx.Done():
			r.armed.Store(0)
			return ctx.Err()
		}
	}
}

// Close stops accepting items; producers waiting for space return ErrClosed.
// Items already claimed remain readable. Close is idempotent.
func (r *Ring[T]) Close() {
	if r.head.Or(closedBit)&closedBit != 0 {
		return
	}
	r.wakeProducers()
	r.armed.Store(0)
	r.signal()
}

// Closed reports whether Close was called.
func (r *Ring[T]) Closed() bool { return r.head.Load()&closedBit != 0 }

// Drained reports whether the ring is closed and every claimed item has been
// consumed: nothing more will ever be readable.
func (r *Ring[T]) Drained() bool {
	h := r.head.Load()
	return h&closedBit != 0 && r.tail.Load() == h&^closedBit
}
