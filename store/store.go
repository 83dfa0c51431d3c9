// Package store keeps Scope's correlated events durably in Pebble, indexed
// for the queries of docs/API.md: one Pebble DB per node, one contiguous
// key span per shard (DESIGN.md describes the layout and why).
//
// Concurrency: Apply, ImportShard and DeleteShard of one shard are
// serialized by a per-shard lock; different shards apply concurrently.
// Queries never block writers: each reads one consistent Pebble view.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Store is a node's event store. It is safe for concurrent use.
type Store struct {
	db     *pebble.DB
	stalls *atomic.Uint64 // write stalls Pebble began (PebbleMetrics)
	po     *pebble.Options
	opts   Options
	fs     vfs.FS
	dir    string
	shift  uint8
	closed atomic.Bool
	failed atomic.Bool // a fatal pebble error: no more writes (see commit)

	// locks serializes writers of one shard (Apply reads the applied index,
	// the bucket directory and the boundary bucket before it writes). A
	// fixed stripe keeps the set bounded for any number of shards.
	locks [64]sync.Mutex

	counters counters
}

// counters count events the store chose not to write; they surface bugs or
// races upstream without failing the replicated Apply.
type counters struct {
	duplicates   atomic.Uint64 // events whose id was already stored at the same time bucket
	edgesDropped atomic.Uint64 // edges with neither endpoint stored on the shard
	framesLost   atomic.Uint64 // closed-frame records whose CALL is not stored
}

// Counters is a snapshot of the store's own counters.
type Counters struct {
	Duplicates   uint64
	EdgesDropped uint64
	FramesLost   uint64
}

// metaKey holds "scope-store/1" followed by the bucket shift.
var metaKey = append(appendShard(nil, metaShard), 0x01)

// metaMagic names the layout version: 2 added the per-bucket aggregates
// (sections 1B, 1C), which a store written by version 1 lacks.
const metaMagic = "scope-store/2"

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	po := opts.pebbleOptions()
	if opts.CacheSize > 0 {
		c := pebble.NewCache(opts.CacheSize)
		defer c.Unref()
		po.Cache = c
	}
	stalls := new(atomic.Uint64)
	po.EventListener = StallListener(stalls)
	po.EnsureDefaults() // ImportShard derives its sstable writer options from po
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	s := &Store{db: db, po: po, opts: opts, fs: opts.FS, dir: dir, shift: opts.BucketShift, stalls: stalls}
	if err := s.checkMeta(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// checkMeta records the layout parameters on first open and refuses a store
// created with different ones: the bucket width is part of every key.
func (s *Store) checkMeta() error {
	want := append([]byte(metaMagic), s.shift)
	v, closer, err := s.db.Get(metaKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return s.db.Set(metaKey, want, pebble.Sync)
	case err != nil:
		return fmt.Errorf("store: read metadata: %w", err)
	}
	defer closer.Close()
	if len(v) == len(want) && string(v[:len(metaMagic)-1]) == metaMagic[:len(metaMagic)-1] && v[len(metaMagic)-1] != metaMagic[len(metaMagic)-1] {
		return fmt.Errorf("%w: layout %q: this build reads %q", ErrIncompatible, v[:len(metaMagic)], metaMagic)
	}
	if len(v) != len(want) || string(v[:len(metaMagic)]) != metaMagic {
		return fmt.Errorf("%w: metadata %q is not %q", ErrCorrupt, v, metaMagic)
	}
	if v[len(metaMagic)] != s.shift {
		return fmt.Errorf("%w: BucketShift %d: the store was created with %d", ErrIncompatible, s.shift, v[len(metaMagic)])
	}
	return nil
}

// Close closes the store. Applied but unsynced writes are not made durable
// (call Sync first when that matters).
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	return s.db.Close()
}

// Sync makes every write applied so far durable.
func (s *Store) Sync() error {
	if s.closed.Load() {
		return ErrClosed
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.LogData(nil, nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// Metrics returns pebble's metrics, for the node to export.
func (s *Store) Metrics() *pebble.Metrics { return s.db.Metrics() }

// Counters returns the store's own counters.
func (s *Store) Counters() Counters {
	return Counters{
		Duplicates:   s.counters.duplicates.Load(),
		EdgesDropped: s.counters.edgesDropped.Load(),
		FramesLost:   s.counters.framesLost.Load(),
	}
}

func (s *Store) lock(shard uint32) *sync.Mutex { return &s.locks[shard%uint32(len(s.locks))] }

func (s *Store) check(shard uint32) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if shard == metaShard {
		return fmt.Errorf("%w: shard %d is reserved", ErrInvalidShard, shard)
	}
	return nil
}

// AppliedIndex returns the last log index applied to the shard (0: none).
func (s *Store) AppliedIndex(shard uint32) (uint64, error) {
	if err := s.check(shard); err != nil {
		return 0, err
	}
	return readApplied(s.db, shard)
}

func readApplied(r pebble.Reader, shard uint32) (uint64, error) {
	k := appliedKey(shard)
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, corruptKey(k, "applied index of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func corruptKey(k []byte, format string, args ...any) error {
	return fmt.Errorf("%w: key %x: %s", ErrCorrupt, k, fmt.Sprintf(format, args...))
}

// StallListener is a Pebble event listener that counts write stalls (Pebble
// delaying writes while compactions catch up) in n.
func StallListener(n *atomic.Uint64) *pebble.EventListener {
	return &pebble.EventListener{WriteStallBegin: func(pebble.WriteStallBeginInfo) { n.Add(1) }}
}

// PebbleMetrics returns the store's Pebble metrics and the write stalls
// counted since it opened.
func (s *Store) PebbleMetrics() (*pebble.Metrics, uint64) { return s.db.Metrics(), s.stalls.Load() }
