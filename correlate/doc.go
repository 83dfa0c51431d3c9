// Package correlate holds Scope's event model and the per-shard correlator:
// the pure, deterministic state machine that turns a stream of trace events
// into linked events (call ↔ return, caller → callee, send → receive,
// spawn → child), as docs/ARCHITECTURE.md describes.
//
// # Model
//
// A Correlator serves one shard. Its only input is Apply(Batch): the events,
// cross-shard notices and outbox acknowledgements of one committed Raft
// entry, stamped with the leader's log time. Its only output is the Result:
// the events with their Scope-set fields (correlation, parent and root ids,
// links, duration, outcome, orphan, shard), edge records for links whose
// source event is already stored, frames closed without an event of their
// own (Closed: UNWOUND, PROCESS_EXIT, ABANDONED), new outbox notices,
// counters, and the state mutations as key/value records. There is no
// clock, randomness that reaches the output, goroutine or I/O inside, so
// every replica applying the same log produces byte-identical Results; all
// expiry is measured against log time (the max LogTime seen), evaluated at
// the start of each Apply.
//
// Per process the correlator keeps a stack of open frames. CALL pushes;
// RETURN/EXCEPTION close the frame named by call_id, else the nearest frame
// matching module/function(/arity, 0 = any), else the top one; frames above
// the closed one end as UNWOUND; a RETURN that matches nothing is stored as
// an orphan and leaves the stack alone. EXIT closes all frames. CALLs beyond
// MaxStackDepth are counted and not pushed; returns consume those refused
// frames first (as orphans), so a return is never given the wrong CALL.
//
// Every CALL ends exactly once: by the RETURN/EXCEPTION that completes it,
// or in Closed, or it is still open on its process's tracked stack. Frames
// the correlator stops tracking are closed as ABANDONED with a reason, so
// that the store never shows them open forever: the open frames of a
// process dropped after ProcessTTL (INACTIVITY) or evicted by MaxProcesses
// (PROCESS_BOUND), top first, at the log time of the drop; and a CALL
// refused by MaxStackDepth (DEPTH_BOUND) at once, at its own timestamp.
// A refused frame has to be closed when it is refused: only the number of
// refused frames is kept (their ids are the memory the bound limits), so no
// later RETURN, EXIT or drop could name it. Being decided by the log alone,
// these frame ends are the same on every replica.
//
// Messages pair by (receiver, message hash) and by time, with the sender
// compared when both sides name one (a BEAM receive names no sender). A
// SEND fits a RECEIVE when it is stamped no later than the RECEIVE: as is
// when both are on one origin (one clock), up to MaxClockSkew later across
// origins. A RECEIVE pairs with the oldest fitting send by send time (not
// the first to arrive: senders' events come through different tracers,
// batches and shards); an arriving send notice pairs with the first
// waiting RECEIVE it fits (the receiver's own order); a RECEIVE with no
// fitting send waits, never taking one from its future. Links are written
// once, so this is the pairing of time order whenever colliding messages
// (same receiver and hash) are not in flight together; when two were (both
// sent before either was received), the RECEIVE takes the oldest fitting
// send present when it arrives, which the trace cannot contradict: the
// mailbox may have got either first (pairing_test.go states the property
// over real traces). A SEND or SPAWN produces a Notice for
// the shard that owns the receiver/child (ShardOf): delivered in place when
// that is this shard, otherwise kept in the replicated outbox until a later
// Batch acks it. On the receiving shard, notices and receives wait for each
// other in bounded pending tables; the pair is linked RECEIVED_FROM and
// DELIVERED_TO, both stored on the receiver's shard. A spawn notice links
// the child's first event (remembered while the child is tracked), or, if
// the child has no event yet, its next one (SPAWNED_BY on the child's event,
// SPAWNED from the SPAWN). Notices are deduplicated by event id in the same
// window as events, so redelivery after a leader change is harmless.
//
// Within a batch, events of one process that carry a seq are reordered by
// seq (stably, in the positions that process's seq-carrying events occupy);
// events without seq and other processes' events keep their places.
// Out-of-order arrivals are counted.
//
// # Bounds and state
//
// Every table has a bound in Config (processes, stack depth, pending
// entries and outbox by count and by bytes, dedup window by count and TTL,
// interned names) and every hit is counted in Counters. What a table keeps
// across batches never points into a batch: DecodeBatch cuts every string
// of a raft entry from one copy of it, so a kept substring would pin the
// whole entry; tables copy (or intern) the names they keep, map keys
// included. The state is persisted incrementally: each
// Result.State holds one record per process, pending entry or outbox
// notice changed by the batch, one dedup chunk per batch and a meta record;
// Restore of all live records reproduces the correlator exactly, and
// Snapshot returns the same records. See state.go for the key layout.
//
// The msgpack codec (AppendEvent/DecodeEvent, AppendBatch/DecodeBatch) is
// hand-written positional MessagePack with a format version, canonical
// (sorted attributes) and safe on untrusted input; see codec.go.
package correlate
