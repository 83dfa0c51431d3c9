package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// entryVersion is the first byte of every Raft command entry: the encoding
// of the rest (a correlate batch). A replica stops at an entry of a version
// it does not know rather than guessing (ErrEntryVersion). A batch with a
// resharding step (split, handoff) is entry version 2, so that a build
// which does not know resharding stops at it instead of skipping it
// (docs/DECISIONS.md D39); every other entry stays version 1.
const (
	entryVersion        byte = 1
	reshardEntryVersion byte = 2
)

// encodeEntry encodes b as a Raft command entry.
func encodeEntry(b *correlate.Batch) []byte {
	if correlate.IsReshard(b) {
		return correlate.AppendBatch([]byte{reshardEntryVersion}, b)
	}
	return correlate.AppendBatch([]byte{entryVersion}, b)
}

// decodeEntry decodes a Raft command entry.
func decodeEntry(data []byte) (correlate.Batch, error) {
	if len(data) == 0 {
		return correlate.Batch{}, fmt.Errorf("%w: empty", ErrBadEntry)
	}
	if data[0] != entryVersion && data[0] != reshardEntryVersion {
		return correlate.Batch{}, fmt.Errorf("%w: version %d, this build reads %d and %d", ErrEntryVersion, data[0], entryVersion, reshardEntryVersion)
	}
	b, err := correlate.DecodeBatch(data[1:])
	if err != nil {
		return b, fmt.Errorf("%w: %w", ErrBadEntry, err)
	}
	if correlate.IsReshard(&b) != (data[0] == reshardEntryVersion) {
		return correlate.Batch{}, fmt.Errorf("%w: entry version %d does not match its batch", ErrBadEntry, data[0])
	}
	return b, nil
}

// ApplyResult is what a committed entry's ApplyFuture.Response() holds on
// the replica that proposed it.
type ApplyResult struct {
	Counters correlate.Counters
	// Duplicates are the indexes, in the entry's events, of the events the
	// shard did not store because it had applied their ids already (nil
	// when every event was stored): the ingest response counts them.
	Duplicates []int
	// Rerouted are the indexes, in the entry's events, of the events the
	// shard did not apply because it does not own their process (it split,
	// docs/DECISIONS.md D39): the proposer sends them to their owner.
	Rerouted []int
	// Prepared says the entry was the first preparation of its split: the
	// child's group is being created with the voters it named.
	Prepared bool
	// Err: the entry could not be applied (and was skipped on every
	// replica), or its split, handoff or notices were refused (the same
	// way on every replica).
	Err error
}

// shardFSM is one shard's raft.BatchingFSM: committed entries go through
// the correlator and land in the store in atomic writes that also record
// the applied index, so a restart skips what was already applied (raft is
// configured with NoSnapshotRestoreOnStart).
//
// The state after a log is a pure function of the log, whatever grouping
// raft hands ApplyBatch (the leader, a follower and a replay group the same
// entries differently): every entry is screened, correlated and stored with
// exactly the effect it has when applied alone. See "Apply is a function of
// the log" in docs/ARCHITECTURE.md and TestApplyIsIndependentOfGrouping.
//
// Raft calls ApplyBatch, Snapshot and Restore from one goroutine, never
// concurrently. The mutex guards the correlator against readers on other
// goroutines (Outbox for notice delivery).
type shardFSM struct {
	shard  uint32
	store  *store.Store
	logger *slog.Logger

	// onApply, if set, is called after every durable write with the merged
	// result and where each entry's events end in it (on the FSM goroutine,
	// with mu held; it must not block).
	onApply func(*correlate.Result, []EntrySpan)
	// onFail, if set, is called once when the replica stops applying (on
	// the FSM goroutine, with mu held; it must not block).
	onFail func()
	// waitWritable, if set, blocks before a store write while the node's
	// disk is too full (on the FSM goroutine, without mu held, so readers
	// of the correlator are not stuck behind it); false: the replica is
	// closing.
	waitWritable func() bool

	// beforeApply, if set, is called at the start of every ApplyBatch,
	// before mu is taken (fault injection in tests).
	beforeApply func()

	// prog publishes applied and failed to readers, who must not wait
	// for mu: it is held for a whole ApplyBatch, store write included.
	prog progress

	// budget keeps the raft log within its size in bytes (logbudget.go);
	// nil: no byte bound.
	budget *logBudget

	// reshard publishes the correlator's resharding state to readers that
	// must not wait for mu (admission); onReshard, if set, is called when
	// it changed (on the FSM goroutine, with mu held; it must not block).
	reshard   atomic.Pointer[correlate.ReshardState]
	onReshard func(correlate.ReshardState)
	// onPrepared, if set, is called with every first preparation of a
	// split the shard applies (on the FSM goroutine, with mu held; it must
	// not block).
	onPrepared func(correlate.Prepared)

	mu      sync.Mutex
	corr    *correlate.Correlator
	applied uint64
	// lastEvents is the index of the last entry that stored events, or,
	// after a load from the store, the applied index (the store does not
	// say which entries held events). A tail resumed at a position at or
	// after it has missed no event (tail.go).
	lastEvents uint64
	totals     correlate.Counters
	failed     error // a store read or write failed: the replica must stop

	// seg is the write being built: entries correlated but not yet stored.
	seg segment
	// found and entryIDs are scratch for the duplicate screen (entryIDs:
	// the entry's events so far; bounded by one entry's events).
	found    []bool
	entryIDs map[bucketID]struct{}
	// ids is scratch: the entry's event ids as logged, before the screen
	// and the correlator drop any (ApplyResult.Duplicates).
	ids []correlate.EventID
}

// segment is consecutive entries of one ApplyBatch call merged into one
// store write. Merging is exact as long as no entry of the segment depends
// on what a later one writes, which holds by construction (see add and
// ApplyBatch): a retention entry is written alone, and an event whose id
// an earlier entry's edges or frame ends point at starts a new segment.
type segment struct {
	res   correlate.Result
	spans []EntrySpan
	// ids holds the (bucket, id) of every event the segment stores: the
	// store's duplicate check sees only committed events. ids and refs are
	// bounded by one ApplyBatch call (raft's MaxAppendEntries entries) and
	// reset at every write.
	ids map[bucketID]struct{}
	// refs holds the ids the segment's edges and frame ends point at (the
	// store resolves them against the segment's events and committed ones).
	refs map[correlate.EventID]struct{}
}

type bucketID struct {
	bucket uint64
	id     correlate.EventID
}

func (g *segment) reset() {
	g.res = correlate.Result{}
	g.spans = g.spans[:0]
	clear(g.ids)
	clear(g.refs)
}

// add merges res into the segment. State records keep their order, so a
// put followed by a delete of the same key in a later entry stays a delete.
func (g *segment) add(res *correlate.Result) {
	dst := &g.res
	dst.Events = append(dst.Events, res.Events...)
	dst.Edges = append(dst.Edges, res.Edges...)
	dst.Outbox = append(dst.Outbox, res.Outbox...)
	dst.State = append(dst.State, res.State...)
	dst.Closed = append(dst.Closed, res.Closed...)
	dst.Retention = res.Retention
	dst.Counters.Add(res.Counters)
	if len(res.Events) > 0 {
		g.spans = append(g.spans, EntrySpan{Index: res.Index, End: len(dst.Events)})
	}
	if g.refs == nil {
		g.refs = make(map[correlate.EventID]struct{})
	}
	for _, e := range res.Edges {
		g.refs[e.From], g.refs[e.To] = struct{}{}, struct{}{}
	}
	for _, c := range res.Closed {
		g.refs[c.Call] = struct{}{}
	}
}

// refersTo reports whether an entry of the segment has an edge or frame end
// pointing at one of events. Applied alone, that entry did not find the
// event (it comes later), so the event must not be in the same write.
func (g *segment) refersTo(events []correlate.Event) bool {
	if len(g.refs) == 0 {
		return false
	}
	for i := range events {
		if _, ok := g.refs[events[i].ID]; ok {
			return true
		}
	}
	return false
}

func newShardFSM(shard uint32, st *store.Store, cfg correlate.Config, logger *slog.Logger) (*shardFSM, error) {
	corr, err := correlate.New(cfg)
	if err != nil {
		return nil, err
	}
	f := &shardFSM{shard: shard, store: st, logger: logger, corr: corr, prog: progress{advanced: make(chan struct{})}}
	if err := f.loadLocked(); err != nil {
		return nil, err
	}
	return f, nil
}

// loadLocked rebuilds the correlator and applied index from the store.
func (f *shardFSM) loadLocked() error {
	records, err := f.store.State(f.shard)
	if err != nil {
		return fmt.Errorf("node: shard %d: load correlator state: %w", f.shard, err)
	}
	if err := f.corr.Restore(records); err != nil {
		return fmt.Errorf("node: shard %d: restore correlator state: %w", f.shard, err)
	}
	applied, err := f.store.AppliedIndex(f.shard)
	if err != nil {
		return fmt.Errorf("node: shard %d: applied index: %w", f.shard, err)
	}
	f.applied, f.lastEvents = applied, applied
	f.prog.set(f.applied, f.failed)
	f.publishReshard()
	return nil
}

// publishReshard publishes the correlator's resharding state if it changed.
func (f *shardFSM) publishReshard() {
	st := f.corr.Reshard()
	if old := f.reshard.Load(); old != nil && *old == st {
		return
	}
	f.reshard.Store(&st)
	if f.onReshard != nil {
		f.onReshard(st)
	}
}

// Reshard returns the shard's resharding state as of its last apply.
func (f *shardFSM) Reshard() correlate.ReshardState {
	if st := f.reshard.Load(); st != nil {
		return *st
	}
	return correlate.ReshardState{}
}

// Handoffs returns the handoff chunks the shard's child has not confirmed.
func (f *shardFSM) Handoffs() []correlate.Handoff {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.corr.Handoffs()
}

// Apply implements raft.FSM for single entries.
func (f *shardFSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM. Every command entry above the
// applied index is screened (screen), correlated and added to the current
// segment; a segment is written to the store in one atomic write with its
// last index as the new applied index. Usually the whole call is one
// segment, one write. A new segment starts
//   - before and after an entry carrying a retention rule: the rule cuts
//     what is stored when its entry applies, so the entries before it must
//     be in the store and the ones after it must not (retention is
//     proposed about once a minute per shard: a write or two more);
//   - before an entry with an event an earlier entry of the segment points
//     at (an edge or frame end), which applied alone did not see it (only
//     possible when ids repeat across shards).
//
// Content never stops a replica: undecodable entries and events no store
// can hold are skipped and counted identically everywhere. A store read or
// write failure (a local fault) does: the correlator would be ahead of the
// store, so the replica stops and a restart replays from the log.
func (f *shardFSM) ApplyBatch(logs []*raft.Log) []any {
	if f.beforeApply != nil {
		f.beforeApply()
	}
	// A full disk makes the write wait, not fail: the entries stay in the
	// log and apply once space is back. A replica closing meanwhile
	// applies nothing more (and is not failed: a restart replays).
	writable := f.waitWritable == nil || f.waitWritable()
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := make([]any, len(logs))
	if f.failed != nil {
		return f.failAll(resp)
	}
	if !writable {
		f.failed = fmt.Errorf("%w: shard %d: closed while waiting for disk space", ErrClosed, f.shard)
		f.prog.set(f.applied, f.failed)
		return f.failAll(resp)
	}
	if f.budget != nil {
		f.budget.applied(logs)
	}
	f.seg.reset()
	for i, l := range logs {
		if l.Index <= f.applied {
			continue // replayed after a restart: already in the store
		}
		f.seg.res.Index = l.Index
		if l.Type != raft.LogCommand || weakSkipEntry() {
			continue
		}
		b, err := decodeEntry(l.Data)
		if errors.Is(err, ErrEntryVersion) {
			// A leader of a newer build wrote it: the replicas that read
			// it apply it, so skipping would diverge from them. Stop; a
			// build that reads the version replays it (D34).
			return f.fail(resp, err)
		}
		if err != nil {
			// Every replica has the same bytes and skips the same entry.
			f.logger.Error("skipping undecodable raft entry", "shard", f.shard, "index", l.Index, "err", err)
			resp[i] = ApplyResult{Err: err}
			continue
		}
		b.Index = l.Index
		f.ids = f.ids[:0]
		for j := range b.Events {
			f.ids = append(f.ids, b.Events[j].ID)
		}
		screened, err := f.screen(&b)
		if err != nil {
			return f.fail(resp, err)
		}
		reshard := correlate.IsReshard(&b)
		res := f.corr.Apply(b)
		res.Counters.Add(screened)
		dups, rerouted := droppedEvents(f.ids, res.Events, res.Rerouted)
		resp[i] = ApplyResult{Counters: res.Counters, Duplicates: dups, Rerouted: rerouted}
		switch {
		case res.ReshardErr != nil:
			f.logger.Warn("resharding step refused", "shard", f.shard, "index", l.Index, "err", res.ReshardErr)
			resp[i] = ApplyResult{Counters: res.Counters, Err: res.ReshardErr}
		case res.NoticesRefused > 0:
			resp[i] = ApplyResult{Counters: res.Counters, Err: fmt.Errorf("%w: shard %d: %d notices", ErrAwaitingHandoff, f.shard, res.NoticesRefused)}
		}
		if reshard {
			f.publishReshard()
			if res.Prepared != nil {
				resp[i] = ApplyResult{Counters: res.Counters, Prepared: true}
				if f.onPrepared != nil {
					f.onPrepared(*res.Prepared)
				}
			}
		}
		if res.Retention != nil || f.seg.refersTo(res.Events) {
			// Write what precedes this entry on its own.
			f.seg.res.Index = l.Index - 1
			if err := f.write(); err != nil {
				return f.fail(resp, err)
			}
			f.seg.res.Index = l.Index
		}
		f.seg.add(&res)
		f.remember(res.Events)
		if res.Retention != nil {
			if err := f.write(); err != nil {
				return f.fail(resp, err)
			}
		}
	}
	if err := f.write(); err != nil {
		return f.fail(resp, err)
	}
	return resp
}

// write stores the current segment (if it advances the applied index) and
// starts the next one.
func (f *shardFSM) write() error {
	g := &f.seg
	if g.res.Index <= f.applied {
		return nil
	}
	if err := f.store.Apply(f.shard, &g.res); err != nil {
		return err
	}
	f.applied = g.res.Index
	start := 0
	for _, sp := range g.spans {
		if sp.End > start {
			f.lastEvents = sp.Index
		}
		start = sp.End
	}
	f.prog.set(f.applied, nil)
	f.totals.Add(g.res.Counters)
	if f.onApply != nil {
		f.onApply(&g.res, g.spans)
	}
	next := g.res.Index
	g.reset()
	g.res.Index = next
	return nil
}

// screen removes from b the events the store must not see, so that
// whatever the log holds applies the same way on every replica:
//   - malformed events, which no store can hold (kind UNSPECIFIED, the
//     all-zero id): ingest refuses them, but an older or newer node or a
//     bug may have put them in the log, and a replica that stopped on them
//     would stop on every replica, on every replay. Counted as Malformed.
//   - events whose id is already stored in the shard (in its event's
//     bucket, as the store's own check) or earlier in this segment: a
//     client retry must never change state, and the correlator's dedup
//     window is bounded (by count, ~100 s of a busy shard), so a late retry
//     would otherwise close frames and pair messages a second time before
//     the store dropped it. Counted as Duplicates, as the window counts
//     them. The id index is replicated state and the segment is the same
//     log prefix on every replica, so every replica drops the same events.
//
// It returns what it counted; an error is a store read failure.
func (f *shardFSM) screen(b *correlate.Batch) (correlate.Counters, error) {
	var c correlate.Counters
	evs := b.Events
	out := 0
	for i := range evs {
		if evs[i].ID == (correlate.EventID{}) || !evs[i].Kind.Valid() {
			c.Malformed++
			continue
		}
		evs[out] = evs[i]
		out++
	}
	evs = evs[:out]
	if len(evs) == 0 {
		clear(b.Events)
		b.Events = evs
		return c, nil
	}
	if cap(f.found) < len(evs) {
		f.found = make([]bool, len(evs))
	}
	found := f.found[:len(evs)]
	if err := f.store.Stored(f.shard, evs, found); err != nil {
		return c, fmt.Errorf("duplicate screen: %w", err)
	}
	clear(f.entryIDs)
	if f.entryIDs == nil {
		f.entryIDs = make(map[bucketID]struct{}, len(evs))
	}
	out = 0
	for i := range evs {
		k := bucketID{f.store.Bucket(evs[i].TimestampNs), evs[i].ID}
		_, inSeg := f.seg.ids[k]
		_, inEntry := f.entryIDs[k]
		if found[i] || inSeg || inEntry {
			c.Duplicates++
			continue
		}
		f.entryIDs[k] = struct{}{}
		evs[out] = evs[i]
		out++
	}
	clear(evs[out:])
	b.Events = evs[:out]
	return c, nil
}

// remember adds events (an entry's stored events) to the segment's ids.
func (f *shardFSM) remember(events []correlate.Event) {
	if f.seg.ids == nil {
		f.seg.ids = make(map[bucketID]struct{}, len(events))
	}
	for i := range events {
		f.seg.ids[bucketID{f.store.Bucket(events[i].TimestampNs), events[i].ID}] = struct{}{}
	}
}

// fail stops the replica after a store failure and fails every response.
func (f *shardFSM) fail(resp []any, err error) []any {
	// The correlator is now ahead of the store. Nothing more may be
	// applied: the replica stops, and a restart replays from the log.
	f.failed = fmt.Errorf("%w: shard %d: %w", ErrReplicaFailed, f.shard, err)
	f.prog.set(f.applied, f.failed)
	f.logger.Error("store failed; replica stops applying", "shard", f.shard, "err", err)
	f.seg.reset()
	if f.onFail != nil {
		f.onFail()
	}
	return f.failAll(resp)
}

func (f *shardFSM) failAll(resp []any) []any {
	for i := range resp {
		resp[i] = ApplyResult{Err: f.failed}
	}
	return resp
}

// droppedEvents returns the indexes in ids (an entry's event ids, in entry
// order) of the events Apply did not keep (kept: its Result.Events), nil
// when it kept them all. Ids are matched with multiplicity: of two events
// with one id, the first is taken as the kept one (the correlator keeps the
// first in its per-process seq order, which is entry order for equal events).
//
// The events the correlator rerouted (not its to keep: their process is
// another shard's) are returned apart, as rerouted, matched the same way.
func droppedEvents(ids []correlate.EventID, kept, rerouted []correlate.Event) (dups, rer []int) {
	if len(kept) == len(ids) {
		return nil, nil
	}
	left := make(map[correlate.EventID]int, len(kept)) // bounded by the entry
	for i := range kept {
		left[kept[i].ID]++
	}
	var away map[correlate.EventID]int
	if len(rerouted) > 0 {
		away = make(map[correlate.EventID]int, len(rerouted))
		for i := range rerouted {
			away[rerouted[i].ID]++
		}
	}
	for i, id := range ids {
		switch {
		case left[id] > 0:
			left[id]--
		case away[id] > 0:
			away[id]--
			rer = append(rer, i)
		default:
			dups = append(dups, i)
		}
	}
	return dups, rer
}

// EntrySpan marks where one raft entry's events end in a merged Result:
// the entry at Index produced Events[previous span's End:End].
type EntrySpan struct {
	Index uint64
	End   int
}

// withApplied runs fn with the applied index, the index of the last entry
// that stored events (lastEvents) and the failure that stopped applies
// (nil while the replica applies), excluding applies: an apply that
// follows sees whatever fn changed, one that precedes is in applied.
func (f *shardFSM) withApplied(fn func(applied, lastEvents uint64, failed error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.applied, f.lastEvents, f.failed)
}

// Snapshot implements raft.FSM. It runs on the FSM goroutine. The store
// is synced first: raft truncates its log after the snapshot, and the
// store's own state must not then depend on unsynced writes. What it
// returns is a marker of the applied index, not the shard's data: the
// store is the durable state, and the span is read only if raft sends the
// snapshot to a follower (snapshot.go).
func (f *shardFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		return nil, f.failed
	}
	if err := f.store.Sync(); err != nil {
		return nil, fmt.Errorf("node: shard %d: sync before snapshot: %w", f.shard, err)
	}
	if f.budget != nil {
		f.budget.snapshotTaken()
	}
	return lazySnapshot{shard: f.shard, applied: f.applied}, nil
}

// Restore implements raft.FSM: it replaces the shard's span with the
// snapshot (atomically, in the store) and reloads the correlator from it.
func (f *shardFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.store.ImportShard(f.shard, rc); err != nil {
		return fmt.Errorf("node: shard %d: restore snapshot: %w", f.shard, err)
	}
	f.failed = nil
	if f.budget != nil {
		f.budget.snapshotTaken() // raft cuts the log to the snapshot it installed
	}
	return f.loadLocked()
}

// Outbox returns the undelivered notices, in outbox order.
func (f *shardFSM) Outbox() []correlate.Notice {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.corr.Outbox()
}

// OutboxDests and OutboxHeads: see correlate.Correlator.
func (f *shardFSM) OutboxDests() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.corr.OutboxDests()
}

func (f *shardFSM) OutboxHeads(perDest int, dests []uint32) map[uint32][]correlate.Notice {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.corr.OutboxHeads(perDest, dests)
}

// Status returns the applied index, the counters so far and the failure.
func (f *shardFSM) Status() (applied uint64, totals correlate.Counters, failed error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied, f.totals, f.failed
}

// progress is an FSM's applied index and failure as readers see them,
// with a channel closed at every change.
type progress struct {
	mu       sync.Mutex
	applied  uint64
	failed   error
	advanced chan struct{}
}

func (p *progress) set(applied uint64, failed error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied, p.failed = applied, failed
	close(p.advanced)
	p.advanced = make(chan struct{})
}

// get returns the applied index, the failure, and a channel closed at the
// next change.
func (p *progress) get() (applied uint64, failed error, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied, p.failed, p.advanced
}
