package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// entryVersion is the first byte of every Raft command entry: the encoding
// of the rest (a correlate batch). A replica refuses entries of a version it
// does not know rather than guessing.
const entryVersion byte = 1

// encodeEntry encodes b as a Raft command entry.
func encodeEntry(b *correlate.Batch) []byte {
	return correlate.AppendBatch([]byte{entryVersion}, b)
}

// decodeEntry decodes a Raft command entry.
func decodeEntry(data []byte) (correlate.Batch, error) {
	if len(data) == 0 || data[0] != entryVersion {
		return correlate.Batch{}, fmt.Errorf("%w: unknown entry version", ErrBadEntry)
	}
	return correlate.DecodeBatch(data[1:])
}

// ApplyResult is what a committed entry's ApplyFuture.Response() holds on
// the replica that proposed it.
type ApplyResult struct {
	Counters correlate.Counters
	// Duplicates are the indexes, in the entry's events, of the events the
	// shard did not store because it had applied their ids already (nil
	// when every event was stored): the ingest response counts them.
	Duplicates []int
	Err        error // the entry could not be applied (and was skipped on every replica)
}

// shardFSM is one shard's raft.BatchingFSM: committed entries go through
// the correlator and land in the store as one atomic write that also
// records the applied index, so a restart skips what was already applied
// (raft is configured with NoSnapshotRestoreOnStart).
//
// Raft calls ApplyBatch, Snapshot and Restore from one goroutine, never
// concurrently. The mutex guards the correlator against readers on other
// goroutines (Outbox for notice delivery).
type shardFSM struct {
	shard  uint32
	store  *store.Store
	logger *slog.Logger

	// onApply, if set, is called after every durable apply with the merged
	// result and where each entry's events end in it (on the FSM goroutine,
	// with mu held; it must not block).
	onApply func(*correlate.Result, []EntrySpan)
	// onFail, if set, is called once when the replica stops applying (on
	// the FSM goroutine, with mu held; it must not block).
	onFail func()

	mu      sync.Mutex
	corr    *correlate.Correlator
	applied uint64
	totals  correlate.Counters
	failed  error // a store write failed: the replica must stop

	ids []correlate.EventID // scratch: the entry's event ids before Apply
}

func newShardFSM(shard uint32, st *store.Store, cfg correlate.Config, logger *slog.Logger) (*shardFSM, error) {
	corr, err := correlate.New(cfg)
	if err != nil {
		return nil, err
	}
	f := &shardFSM{shard: shard, store: st, logger: logger, corr: corr}
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
	f.applied = applied
	return nil
}

// Apply implements raft.FSM for single entries.
func (f *shardFSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: every command entry above the
// applied index is correlated, and the whole batch is written to the store
// in one atomic write with the last index as the new applied index.
func (f *shardFSM) ApplyBatch(logs []*raft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := make([]any, len(logs))
	if f.failed != nil {
		for i := range resp {
			resp[i] = ApplyResult{Err: f.failed}
		}
		return resp
	}
	var merged correlate.Result
	var spans []EntrySpan
	for i, l := range logs {
		if l.Index <= f.applied {
			continue // replayed after a restart: already in the store
		}
		merged.Index = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		b, err := decodeEntry(l.Data)
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
		res := f.corr.Apply(b)
		mergeResult(&merged, &res)
		if len(res.Events) > 0 {
			spans = append(spans, EntrySpan{Index: l.Index, End: len(merged.Events)})
		}
		resp[i] = ApplyResult{Counters: res.Counters, Duplicates: droppedEvents(f.ids, res.Events)}
	}
	if merged.Index == 0 {
		return resp
	}
	if err := f.store.Apply(f.shard, &merged); err != nil {
		// The correlator is now ahead of the store. Nothing more may be
		// applied: the replica stops, and a restart replays from the log.
		f.failed = fmt.Errorf("%w: shard %d: %w", ErrReplicaFailed, f.shard, err)
		f.logger.Error("store apply failed; replica stops applying", "shard", f.shard, "err", err)
		if f.onFail != nil {
			f.onFail()
		}
		for i := range resp {
			resp[i] = ApplyResult{Err: f.failed}
		}
		return resp
	}
	f.applied = merged.Index
	f.totals.Add(merged.Counters)
	if f.onApply != nil {
		f.onApply(&merged, spans)
	}
	return resp
}

// droppedEvents returns the indexes in ids (an entry's event ids, in entry
// order) of the events Apply did not keep (kept: its Result.Events), nil
// when it kept them all. Ids are matched with multiplicity: of two events
// with one id, the first is taken as the kept one (the correlator keeps the
// first in its per-process seq order, which is entry order for equal events).
func droppedEvents(ids []correlate.EventID, kept []correlate.Event) []int {
	if len(kept) == len(ids) {
		return nil
	}
	left := make(map[correlate.EventID]int, len(kept)) // bounded by the entry
	for i := range kept {
		left[kept[i].ID]++
	}
	var out []int
	for i, id := range ids {
		if left[id] > 0 {
			left[id]--
			continue
		}
		out = append(out, i)
	}
	return out
}

// EntrySpan marks where one raft entry's events end in a merged Result:
// the entry at Index produced Events[previous span's End:End].
type EntrySpan struct {
	Index uint64
	End   int
}

// withApplied runs fn with the applied index and the failure that stopped
// applies (nil while the replica applies), excluding applies: an apply that
// follows sees whatever fn changed, one that precedes is in applied.
func (f *shardFSM) withApplied(fn func(applied uint64, failed error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.applied, f.failed)
}

// mergeResult appends src to dst. State records keep their order, so a put
// followed by a delete of the same key in a later entry stays a delete.
func mergeResult(dst, src *correlate.Result) {
	dst.Events = append(dst.Events, src.Events...)
	dst.Edges = append(dst.Edges, src.Edges...)
	dst.Outbox = append(dst.Outbox, src.Outbox...)
	dst.State = append(dst.State, src.State...)
	dst.Closed = append(dst.Closed, src.Closed...)
	if src.Retention != nil {
		dst.Retention = src.Retention
	}
	dst.Counters.Add(src.Counters)
}

// Snapshot implements raft.FSM. It runs on the FSM goroutine, so the store
// snapshot it takes is exactly the state at the applied index. The store is
// synced first: raft truncates its log after the snapshot, and the store's
// own state must not then depend on unsynced writes.
func (f *shardFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		return nil, f.failed
	}
	if err := f.store.Sync(); err != nil {
		return nil, fmt.Errorf("node: shard %d: sync before snapshot: %w", f.shard, err)
	}
	snap, err := f.store.SnapshotShard(f.shard)
	if err != nil {
		return nil, fmt.Errorf("node: shard %d: snapshot: %w", f.shard, err)
	}
	return &fsmSnapshot{snap: snap}, nil
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
	return f.loadLocked()
}

// Outbox returns the undelivered notices, in outbox order.
func (f *shardFSM) Outbox() []correlate.Notice {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.corr.Outbox()
}

// Status returns the applied index, the counters so far and the failure.
func (f *shardFSM) Status() (applied uint64, totals correlate.Counters, failed error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied, f.totals, f.failed
}

// fsmSnapshot streams a store snapshot of the shard span to raft.
type fsmSnapshot struct{ snap *store.ShardSnapshot }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.snap.Write(sink); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.snap.Close() }
