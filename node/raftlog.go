package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/elixirscope/scope/store"
)

// RaftLog is the raft log and stable store of every shard replica of a node,
// kept in one Pebble DB (<data-dir>/raftlog). For returns a shard's view,
// which implements raft.LogStore and raft.StableStore with raft-boltdb's
// semantics.
//
// Why one DB: with a bolt file per shard, a client request that touches all
// 16 shards costs 16 separate commits, each with its own fsyncs, and 16
// fsyncs in parallel cost ~8x one alone on a small disk
// (docs/bench/perf.md). Every StoreLogs here commits a Pebble batch with
// pebble.Sync; Pebble's commit pipeline queues concurrent synced batches
// into one WAL write and one fsync, so appends of all shards that arrive
// together are group-committed (docs/DECISIONS.md D12).
//
// Keys: shard (4 bytes, big-endian) | section | rest. Section raftLogSection
// is followed by the entry's index (8 bytes, big-endian: log order is key
// order), section raftStableSection by raft's stable key. A shard is one
// contiguous span, so DeleteShard is one range deletion.
//
// Concurrency: safe for concurrent use. Writes of one shard are serialized
// by that shard's lock; writes of different shards commit concurrently (and
// share fsyncs). Reads take no lock beyond the cached first/last index.
type RaftLog struct {
	db     *pebble.DB
	stalls *atomic.Uint64 // write stalls (PebbleMetrics)
	opts   RaftLogOptions
	closed atomic.Bool

	mu     sync.Mutex
	shards map[uint32]*RaftLogShard // bounded by opts.MaxShards
}

// RaftLogOptions configures a RaftLog. Start from DefaultRaftLogOptions.
type RaftLogOptions struct {
	// FS is the filesystem; nil means vfs.Default. Tests use
	// vfs.NewCrashableMem.
	FS vfs.FS
	// Logger receives pebble's log lines; nil means slog.Default().
	Logger *slog.Logger
	// MaxShards bounds the shard ids For accepts (ids 0..MaxShards-1), and
	// so the per-shard views kept in memory.
	MaxShards uint32
	// WriteGate, if set, is asked before every append (StoreLogs) of a
	// shard whose replica does not lead its group (see
	// RaftLogShard.SetLeading), and before every truncation of a log's
	// tail (a DeleteRange reaching its last entry); a non-nil error
	// refuses the write with that error, before anything changes. The
	// node's disk guard refuses them while free space is critical: Pebble
	// cannot survive a write that meets a full disk. Raft treats a refused
	// append as a failed one: the follower rejects the AppendEntries, and
	// its leader retries with backoff. A leader's own appends are what
	// the node admitted before it started refusing ingest, and the few
	// entries a leader makes itself (the no-op of a new term,
	// configuration changes, notices); refusing them would make every
	// election fail and leave the node without a leader to read from.
	// Stable-store writes (term, vote) are never refused either: they
	// are tiny, and elections must go on.
	WriteGate func() error
	// MemTableSize is pebble's memtable size. Entries live in the log only
	// until a raft snapshot truncates it, so most never leave the memtable
	// and its first flushes.
	MemTableSize uint64
}

// DefaultRaftLogOptions returns the options a node uses for shards shards.
func DefaultRaftLogOptions(shards uint32) RaftLogOptions {
	return RaftLogOptions{MaxShards: shards, MemTableSize: 32 << 20}
}

// Validate reports the first option out of range.
func (o RaftLogOptions) Validate() error {
	switch {
	case o.MaxShards == 0:
		return fmt.Errorf("%w: MaxShards 0: must be at least 1", ErrRaftLogOptions)
	case o.MemTableSize < 1<<20 || o.MemTableSize >= 4<<30:
		return fmt.Errorf("%w: MemTableSize %d: must be within [1 MiB, 4 GiB)", ErrRaftLogOptions, o.MemTableSize)
	}
	return nil
}

// Errors of the RaftLog.
var (
	ErrRaftLogOptions = errors.New("node: raft log: invalid options")
	ErrRaftLogClosed  = errors.New("node: raft log: closed")
	ErrRaftLogCorrupt = errors.New("node: raft log: corrupt")
	ErrRaftLogShard   = errors.New("node: raft log: shard out of range")
	// ErrRaftKeyNotFound is what Get and GetUint64 return for a stable key
	// never set. Its text must be exactly "not found": hashicorp/raft
	// recognizes a missing key by err.Error() == "not found" (raft-boltdb's
	// ErrKeyNotFound), not by a sentinel it could import.
	ErrRaftKeyNotFound = errors.New("not found")
)

const (
	raftLogSection    byte = 0x01
	raftStableSection byte = 0x02
	raftLogKeyLen          = 4 + 1 + 8
)

// OpenRaftLog opens (creating if needed) the RaftLog in dir.
func OpenRaftLog(dir string, opts RaftLogOptions) (*RaftLog, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	po := &pebble.Options{
		FS: opts.FS,
		// Pinned, like the store's: raising it is a one-way upgrade of the
		// files on disk.
		FormatMajorVersion: pebble.FormatValueSeparation,
		MemTableSize:       opts.MemTableSize,
		Logger:             raftLogPebbleLogger{opts.Logger},
	}
	stalls := new(atomic.Uint64)
	po.EventListener = store.StallListener(stalls)
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("node: raft log: open %s: %w", dir, err)
	}
	return &RaftLog{db: db, opts: opts, stalls: stalls, shards: make(map[uint32]*RaftLogShard)}, nil
}

// PebbleMetrics returns the raft log's Pebble metrics and the write stalls
// counted since it opened.
func (l *RaftLog) PebbleMetrics() (*pebble.Metrics, uint64) { return l.db.Metrics(), l.stalls.Load() }

// Close closes the DB. Every write it acknowledged is already durable. The
// caller stops every raft group using a view first.
func (l *RaftLog) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return ErrRaftLogClosed
	}
	return l.db.Close()
}

// For returns shard's view: the raft.LogStore and raft.StableStore of the
// shard's raft group on this node. It is the same view on every call, and
// at most one raft group may use it at a time.
func (l *RaftLog) For(shard uint32) (*RaftLogShard, error) {
	if shard >= l.opts.MaxShards {
		return nil, fmt.Errorf("%w: shard %d: must be below %d", ErrRaftLogShard, shard, l.opts.MaxShards)
	}
	if l.closed.Load() {
		return nil, ErrRaftLogClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.shards[shard]; ok {
		return s, nil
	}
	s := &RaftLogShard{log: l, shard: shard}
	if err := s.loadBounds(); err != nil {
		return nil, err
	}
	l.shards[shard] = s
	return s, nil
}

// DeleteShard removes shard's whole span (log entries and stable keys) with
// one synced range deletion, and resets its view to empty. The raft group
// of the shard must be shut down.
func (l *RaftLog) DeleteShard(shard uint32) error {
	s, err := l.For(shard)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	start, end := shardSpan(shard)
	// A new replica's span is almost always empty: a synced range deletion
	// of nothing would cost an fsync per shard when a node creates
	// thousands (Node.Bootstrap).
	if empty, err := l.spanEmpty(start, end); err != nil {
		return fmt.Errorf("node: raft log: shard %d: delete span: %w", shard, err)
	} else if empty {
		s.setBounds(0, 0)
		return nil
	}
	if err := l.db.DeleteRange(start, end, pebble.Sync); err != nil {
		return fmt.Errorf("node: raft log: shard %d: delete span: %w", shard, err)
	}
	s.setBounds(0, 0)
	return nil
}

// spanEmpty reports whether no key lies in [start, end).
func (l *RaftLog) spanEmpty(start, end []byte) (bool, error) {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return false, err
	}
	empty := !it.First()
	return empty, errors.Join(it.Error(), it.Close())
}

// shardSpan is [shard|0x00, shard|0xff): both sections and nothing else.
func shardSpan(shard uint32) (start, end []byte) {
	start = binary.BigEndian.AppendUint32(make([]byte, 0, 5), shard)
	end = append(start[:4:4], 0xff)
	return append(start, 0x00), end
}

func appendLogKey(dst []byte, shard uint32, index uint64) []byte {
	dst = binary.BigEndian.AppendUint32(dst, shard)
	dst = append(dst, raftLogSection)
	return binary.BigEndian.AppendUint64(dst, index)
}

// logSectionBounds are the iterator bounds of shard's log entries.
func logSectionBounds(shard uint32) (lower, upper []byte) {
	lower = appendLogKey(nil, shard, 0)
	upper = binary.BigEndian.AppendUint32(nil, shard)
	return lower, append(upper, raftLogSection+1)
}

func stableKey(shard uint32, key []byte) []byte {
	k := binary.BigEndian.AppendUint32(make([]byte, 0, 5+len(key)), shard)
	k = append(k, raftStableSection)
	return append(k, key...)
}

// raftLogPebbleLogger routes pebble's log lines into slog.
type raftLogPebbleLogger struct{ l *slog.Logger }

func (a raftLogPebbleLogger) Infof(format string, args ...any) {
	a.l.Info(fmt.Sprintf(format, args...), "component", "raftlog")
}

func (a raftLogPebbleLogger) Errorf(format string, args ...any) {
	a.l.Error(fmt.Sprintf(format, args...), "component", "raftlog")
}

// Fatalf must not return (pebble's contract). A panic rather than os.Exit
// lets the process log it and run deferred shutdown.
func (a raftLogPebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	a.l.Error(msg, "component", "raftlog", "fatal", true)
	panic("node: raft log: pebble fatal: " + msg)
}
