package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	metrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/raft"
)

// Metric names, emitted through go-metrics like raft's own (and like
// raft-boltdb's raft.boltdb.* for replicas that still use it): a node
// exports them as scope_raft_raftlog_*.
var (
	metricStoreLogs    = []string{"raft", "raftlog", "storeLogs"}
	metricLogsPerBatch = []string{"raft", "raftlog", "logsPerBatch"}
	metricBatchBytes   = []string{"raft", "raftlog", "logBatchSize"}
	metricGetLog       = []string{"raft", "raftlog", "getLog"}
)

// RaftLogShard is one shard's view of a RaftLog: the raft.LogStore and
// raft.StableStore of the shard's group. Behaviour matches raft-boltdb's
// BoltStore (checked by a differential test): FirstIndex/LastIndex are the
// smallest/largest index stored (0 when empty, gaps allowed), GetLog of a
// missing index is raft.ErrLogNotFound, StoreLogs is atomic, DeleteRange
// is inclusive, a missing stable key is an error whose text is
// "not found".
//
// hashicorp/raft calls the write methods from its main goroutine and reads
// (GetLog, FirstIndex) from replication and metrics goroutines too.
type RaftLogShard struct {
	log   *RaftLog
	shard uint32

	// wmu serializes the shard's writes and holds across the commit, so
	// the cached bounds always describe the last committed state.
	wmu sync.Mutex
	// bmu guards first/last; readers never wait for a commit's fsync.
	bmu         sync.Mutex
	first, last uint64

	// leading reports whether the replica using the view leads its group
	// (SetLeading); nil: it does not (WriteGate applies).
	leading atomic.Pointer[func() bool]
}

// SetLeading tells the view how to know whether its replica leads the
// group: RaftLogOptions.WriteGate is asked only for a follower's appends.
func (s *RaftLogShard) SetLeading(f func() bool) { s.leading.Store(&f) }

func (s *RaftLogShard) isLeading() bool {
	f := s.leading.Load()
	return f != nil && (*f)()
}

var _ interface {
	raft.LogStore
	raft.StableStore
} = (*RaftLogShard)(nil)

// Shard is the view's shard id.
func (s *RaftLogShard) Shard() uint32 { return s.shard }

// FirstIndex returns the first index stored, 0 if none (no I/O).
func (s *RaftLogShard) FirstIndex() (uint64, error) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	return s.first, nil
}

// LastIndex returns the last index stored, 0 if none (no I/O).
func (s *RaftLogShard) LastIndex() (uint64, error) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	return s.last, nil
}

func (s *RaftLogShard) setBounds(first, last uint64) {
	s.bmu.Lock()
	s.first, s.last = first, last
	s.bmu.Unlock()
}

// GetLog reads the entry at index into l; raft.ErrLogNotFound if absent.
func (s *RaftLogShard) GetLog(index uint64, l *raft.Log) error {
	if s.log.closed.Load() {
		return ErrRaftLogClosed
	}
	defer metrics.MeasureSince(metricGetLog, time.Now())
	var kb [raftLogKeyLen]byte
	v, closer, err := s.log.db.Get(appendLogKey(kb[:0], s.shard, index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("node: raft log: shard %d: get index %d: %w", s.shard, index, err)
	}
	defer closer.Close()
	if err := decodeLog(v, l); err != nil {
		return fmt.Errorf("shard %d index %d: %w", s.shard, index, err)
	}
	if l.Index != index {
		return fmt.Errorf("%w: shard %d: key index %d holds entry index %d", ErrRaftLogCorrupt, s.shard, index, l.Index)
	}
	return nil
}

// StoreLog stores one entry.
func (s *RaftLogShard) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores logs in one synced batch: all or none of them are
// durable. The fsync is shared with every other shard's commit that is in
// Pebble's commit pipeline at the same time.
func (s *RaftLogShard) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	if s.log.closed.Load() {
		return ErrRaftLogClosed
	}
	if g := s.log.opts.WriteGate; g != nil && !s.isLeading() {
		if err := g(); err != nil {
			return fmt.Errorf("node: raft log: shard %d: append refused: %w", s.shard, err)
		}
	}
	start := time.Now()
	b := s.log.db.NewBatch()
	defer b.Close()
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, l := range logs {
		op := b.SetDeferred(raftLogKeyLen, encodedLogLen(l))
		appendLogKey(op.Key[:0], s.shard, l.Index)
		encodeLog(op.Value, l)
		if err := op.Finish(); err != nil {
			return fmt.Errorf("node: raft log: shard %d: batch index %d: %w", s.shard, l.Index, err)
		}
		lo, hi = min(lo, l.Index), max(hi, l.Index)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("node: raft log: shard %d: store %d entries [%d, %d]: %w", s.shard, len(logs), lo, hi, err)
	}
	// The stored set grew by [lo, hi]'s members: its bounds are exact
	// without reading anything back.
	s.bmu.Lock()
	if s.first == 0 || lo < s.first {
		s.first = lo
	}
	s.last = max(s.last, hi)
	s.bmu.Unlock()
	metrics.AddSample(metricLogsPerBatch, float32(len(logs)))
	metrics.AddSample(metricBatchBytes, float32(b.Len()))
	metrics.MeasureSince(metricStoreLogs, start)
	return nil
}

// DeleteRange deletes the entries with index in [lo, hi] (inclusive) with
// one synced range deletion, then reloads the bounds from the DB (raft
// calls it after snapshots and on log conflicts: rarely).
func (s *RaftLogShard) DeleteRange(lo, hi uint64) error {
	if lo > hi {
		return nil
	}
	if s.log.closed.Load() {
		return ErrRaftLogClosed
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if g := s.log.opts.WriteGate; g != nil {
		// Raft truncates a conflicting tail and then appends in its place;
		// if the append is going to be refused, refuse the truncation too,
		// or raft's idea of its last entry would outlive the entry (it
		// updates it only after a successful append). Deleting a prefix
		// (compaction after a snapshot) only frees space and goes on.
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		if lo > first && hi >= last {
			if err := g(); err != nil {
				return fmt.Errorf("node: raft log: shard %d: truncation [%d, %d] refused: %w", s.shard, lo, hi, err)
			}
		}
	}
	start := appendLogKey(nil, s.shard, lo)
	var end []byte
	if hi == math.MaxUint64 {
		_, end = logSectionBounds(s.shard)
	} else {
		end = appendLogKey(nil, s.shard, hi+1)
	}
	if err := s.log.db.DeleteRange(start, end, pebble.Sync); err != nil {
		return fmt.Errorf("node: raft log: shard %d: delete range [%d, %d]: %w", s.shard, lo, hi, err)
	}
	return s.loadBounds()
}

// loadBounds reads the first and last index from the DB. Called when the
// view is created and after a range deletion, with wmu held (or before the
// view is shared).
func (s *RaftLogShard) loadBounds() error {
	lower, upper := logSectionBounds(s.shard)
	it, err := s.log.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("node: raft log: shard %d: bounds: %w", s.shard, err)
	}
	var first, last uint64
	if it.First() {
		first = binary.BigEndian.Uint64(it.Key()[5:])
		if !it.Last() {
			_ = it.Close()
			return fmt.Errorf("%w: shard %d: first index %d but no last", ErrRaftLogCorrupt, s.shard, first)
		}
		last = binary.BigEndian.Uint64(it.Key()[5:])
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("node: raft log: shard %d: bounds: %w", s.shard, err)
	}
	s.setBounds(first, last)
	return nil
}

// Set stores a stable key (term, vote), synced before it returns.
func (s *RaftLogShard) Set(key, val []byte) error {
	if s.log.closed.Load() {
		return ErrRaftLogClosed
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.log.db.Set(stableKey(s.shard, key), val, pebble.Sync); err != nil {
		return fmt.Errorf("node: raft log: shard %d: set %q: %w", s.shard, key, err)
	}
	return nil
}

// Get returns a copy of a stable key's value, or ErrRaftKeyNotFound.
func (s *RaftLogShard) Get(key []byte) ([]byte, error) {
	if s.log.closed.Load() {
		return nil, ErrRaftLogClosed
	}
	v, closer, err := s.log.db.Get(stableKey(s.shard, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrRaftKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("node: raft log: shard %d: get %q: %w", s.shard, key, err)
	}
	defer closer.Close()
	// raft-boltdb's copy: a set but empty value reads back as nil, no error.
	return append([]byte(nil), v...), nil
}

// SetUint64 stores val big-endian, as raft-boltdb does.
func (s *RaftLogShard) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns a key set by SetUint64; 0 and ErrRaftKeyNotFound if it
// was never set (raft treats that as 0).
func (s *RaftLogShard) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: shard %d: stable key %q holds %d bytes, want 8 for a uint64", ErrRaftLogCorrupt, s.shard, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
