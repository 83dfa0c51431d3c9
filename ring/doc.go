// Package ring is a bounded, lock-free, multi-producer single-consumer ring
// buffer, generic over its element type. It is the first stop of an ingested
// event: producers (RPC handlers) must never block on correlation or disk,
// and a single consumer (the shard's writer) drains it in batches.
//
// # Layout
//
// The ring has a power-of-two number of slots. Two monotonically growing
// 64-bit counters describe it:
//
//   - head: the number of positions ever claimed by producers. Bit 63 is the
//     closed flag, so that "closed" and "claim" are decided by the same
//     atomic word and no claim can slip in after Close.
//   - tail: the number of positions ever consumed. Only the consumer writes it.
//
// Position p lives in slot p & (cap-1). Each slot carries a sequence number:
// slot.seq == p+1 means "the value for position p is published". Free space
// is cap - (head - tail): the consumer's progress is what frees slots, and a
// full ring never overwrites an unread value.
//
// # Protocol
//
// Claim. A producer loads tail, then head, computes the free space, and
// claims k positions [h, h+k) with one CompareAndSwap of head from h to h+k.
// A batch therefore costs one contended atomic operation however long it is.
// All-or-nothing calls claim all of their items or none; partial calls claim
// min(len, free). Loading tail before head guarantees h >= t (tail never
// exceeds head and both only grow). The tail may still be stale by more than
// a lap (the producer was descheduled between the two loads while others
// claimed and the consumer consumed); then head - tail > cap, which can never
// be true of a consistent pair, and the producer reloads both instead of
// computing a wrapped-around free space.
//
// Publish. For each claimed position p the producer writes slot.val and then
// stores slot.seq = p+1.
//
// Consume. The consumer, at position t = tail, reads slot t&mask while
// slot.seq == t+1, copies the value out, zeroes the slot (so the ring does
// not keep garbage alive), and finally stores tail = t+n once per batch.
// It stops at the first unpublished position, so a slow producer holding a
// claim delays readers of later positions but nothing is ever skipped or read
// out of claim order.
//
// # Memory-ordering argument
//
// Go's sync/atomic operations are sequentially consistent, and a load that
// observes a store synchronizes with it (the Go memory model, "Atomic
// values"). Three happens-before edges make the plain (non-atomic) accesses
// to slot.val race-free:
//
//  1. Producer write → consumer read. The producer writes val, then stores
//     seq = p+1. The consumer loads seq and sees p+1, then reads val. The
//     store/load pair on seq orders the write before the read.
//  2. Consumer read → next producer write of the same slot. The consumer
//     reads and zeroes val for position p, then stores tail >= p+1. A
//     producer may claim position p+cap (same slot) only when
//     (p+cap+1) - tail <= cap, i.e. tail >= p+1, which it learns by loading
//     tail. That load observes the consumer's store, so the consumer's
//     accesses to the slot happen before the producer's write.
//  3. Laps cannot be confused. seq for position p is p+1 and for p+cap is
//     p+cap+1; a stale sequence number from an older lap (or the initial 0)
//     never equals the one the consumer expects, so a lap can neither be read
//     twice nor skipped. Counters are 63-bit positions: they do not wrap in
//     the lifetime of a process.
//
// Exclusivity of a claim follows from CompareAndSwap: two producers that read
// the same head cannot both move it, so claimed ranges are disjoint.
//
// # Waiting without spinning
//
// The consumer and the producers sleep on channels, never in a polling loop,
// and the fast paths stay free of channel operations by using the classic
// Dekker handshake on sequentially consistent atomics:
//
//   - Consumer sleep: the consumer stores armed=1, then re-checks the slot at
//     tail. A producer stores seq (publish), then loads armed. In the total
//     order of these four operations either the consumer's re-check sees the
//     publication or the producer's load sees armed=1 and sends a token on
//     the notify channel (capacity 1, so the token is never lost).
//   - Producer sleep: a producer registers itself (waiters+1) and takes the
//     current "space" channel under a mutex, then retries its claim (which
//     loads tail). The consumer stores tail, then loads waiters; if it sees a
//     waiter it closes the space channel and installs a fresh one, waking
//     every sleeping producer at once. Either the retry sees the new tail or
//     the consumer sees the waiter. Woken producers simply retry their claim;
//     an all-or-nothing batch waits until enough space is free for all of it.
//
// # Close and drain
//
// Close sets the closed bit in head. From then on every claim fails with
// ErrClosed, and sleeping producers are woken to observe it. Producers that
// claimed before Close still publish their items, and the consumer drains
// everything that was claimed: Drained reports true (and Wait returns
// ErrClosed) only when tail has reached the final head.
//
// # Contract
//
// Producer methods (Offer, Put, TryPutAll, PutAll) are safe for concurrent
// use. Consumer methods (Read, Arm, Wait) must be called by one goroutine at
// a time; a consumer may be handed from one goroutine to another only with a
// happens-before edge between them (a mutex, a channel). Len, Cap, Stats,
// Drained and Close are safe from any goroutine.
package ring
