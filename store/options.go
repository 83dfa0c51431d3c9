package store

import (
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Options configures a Store. Start from DefaultOptions.
type Options struct {
	// FS is the filesystem; nil means vfs.Default. Tests pass vfs.NewMem,
	// vfs.NewCrashableMem or an errorfs wrapper.
	FS vfs.FS
	// Logger receives pebble's log lines; nil means slog.Default().
	Logger *slog.Logger

	// BucketShift sets the time-bucket width to 2^BucketShift ns. It is
	// fixed when the store is created (persisted; reopening with another
	// value fails with ErrIncompatible). Wider buckets make queries touch
	// fewer buckets; narrower buckets make the one bucket that retention
	// cuts through (deleted event by event) smaller. Default 38 (~4.6 min).
	BucketShift uint8
	// Sync makes every Apply fsync the WAL. Off by default: the Raft log is
	// the durable record and a replica replays it after a crash; Sync() is
	// called before a Raft snapshot lets the log be truncated.
	Sync bool

	// MaxLimit bounds Query.Limit (and the limit of MessageFlow).
	MaxLimit int
	// MaxScan bounds the index keys one query call examines. A call that
	// reaches it returns a partial page with More=true and Next set to the
	// position reached.
	MaxScan int
	// MaxTreeFrames bounds CallTree's maxFrames.
	MaxTreeFrames int

	// Pebble tuning for ingest.
	MemTableSize          uint64
	L0CompactionThreshold int
	L0StopWritesThreshold int
	CacheSize             int64
}

// DefaultOptions returns the options used by a node.
func DefaultOptions() Options {
	return Options{
		BucketShift:           38,
		MaxLimit:              10_000,
		MaxScan:               100_000,
		MaxTreeFrames:         100_000,
		MemTableSize:          64 << 20,
		L0CompactionThreshold: 4,
		L0StopWritesThreshold: 24,
		CacheSize:             128 << 20,
	}
}

// Validate reports the first option that is out of range.
func (o Options) Validate() error {
	switch {
	case o.BucketShift < 20 || o.BucketShift > 56:
		return fmt.Errorf("%w: BucketShift %d: must be within [20, 56]", ErrInvalidOptions, o.BucketShift)
	case o.MaxLimit < 1:
		return fmt.Errorf("%w: MaxLimit %d: must be at least 1", ErrInvalidOptions, o.MaxLimit)
	case o.MaxScan < o.MaxLimit:
		return fmt.Errorf("%w: MaxScan %d: must be at least MaxLimit (%d)", ErrInvalidOptions, o.MaxScan, o.MaxLimit)
	case o.MaxTreeFrames < 1:
		return fmt.Errorf("%w: MaxTreeFrames %d: must be at least 1", ErrInvalidOptions, o.MaxTreeFrames)
	case o.MemTableSize < 1<<20 || o.MemTableSize >= 4<<30:
		return fmt.Errorf("%w: MemTableSize %d: must be within [1 MiB, 4 GiB)", ErrInvalidOptions, o.MemTableSize)
	case o.L0CompactionThreshold < 1:
		return fmt.Errorf("%w: L0CompactionThreshold %d: must be at least 1", ErrInvalidOptions, o.L0CompactionThreshold)
	case o.L0StopWritesThreshold < o.L0CompactionThreshold:
		return fmt.Errorf("%w: L0StopWritesThreshold %d: must be at least L0CompactionThreshold (%d)",
			ErrInvalidOptions, o.L0StopWritesThreshold, o.L0CompactionThreshold)
	case o.CacheSize < 0:
		return fmt.Errorf("%w: CacheSize %d: must not be negative", ErrInvalidOptions, o.CacheSize)
	}
	return nil
}

// formatVersion is the explicit pebble format: it must support virtual
// sstables for ImportShard's IngestAndExcise. Raising it is a one-way
// upgrade of the files on disk; do it deliberately.
const formatVersion = pebble.FormatValueSeparation

func (o Options) pebbleOptions() *pebble.Options {
	po := &pebble.Options{
		FS:                    o.FS,
		FormatMajorVersion:    formatVersion,
		MemTableSize:          o.MemTableSize,
		L0CompactionThreshold: o.L0CompactionThreshold,
		L0StopWritesThreshold: o.L0StopWritesThreshold,
		Logger:                slogAdapter{o.Logger},
	}
	// Whole-key bloom filters make the point probes of Get (one per time
	// bucket) cheap when they miss. Apply's duplicate check does not use
	// them: it seeks sorted keys through one iterator (DESIGN.md).
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return po
}

// slogAdapter adapts *slog.Logger to pebble.Logger.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Infof(format string, args ...any) {
	a.l.Info(fmt.Sprintf(format, args...), "component", "pebble")
}

func (a slogAdapter) Errorf(format string, args ...any) {
	a.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called by pebble on unrecoverable errors (it must not return).
// A panic, unlike os.Exit, lets the node log and shut the rest down.
func (a slogAdapter) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	a.l.Error(msg, "component", "pebble", "fatal", true)
	panic(fatalError(msg))
}

// fatalError is the panic value of slogAdapter.Fatalf.
type fatalError string
