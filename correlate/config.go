package correlate

import (
	"fmt"
	"time"
)

// Config bounds and tunes one shard's correlator. Every table the
// correlator keeps has a bound here; hitting it is deterministic (the
// oldest entry goes first) and counted in Counters. TTLs are measured in
// log time (Batch.LogTime), never against a local clock.
type Config struct {
	Shard uint32 // the shard this correlator serves
	// Shards is the cluster's shard count at bootstrap: the base of its
	// layout (see Layout). A Shard at or above it is a split child: it
	// applies nothing until it has adopted its parent's handoff, which
	// carries the layout it then routes by.
	Shards uint32
	Limits Limits // per-event bounds, enforced again as a guard in Apply

	MaxStackDepth int // open frames per process; deeper CALLs are counted, not pushed
	MaxProcesses  int // processes tracked; the least recently active is evicted
	MaxPending    int // entries per pending table (send notices, receives, spawn notices)
	MaxOutbox     int // undelivered outbox notices; the oldest is dropped
	DedupWindow   int // event/notice ids remembered for duplicate detection
	MaxInterned   int // distinct module/function names shared between frames

	// MaxPendingBytes bounds each pending table by the bytes its entries
	// hold (a fixed charge per entry plus its names; see pendingSize), so
	// that long origins and pids cannot make MaxPending entries costly.
	// Hitting it evicts the oldest entries, counted as PendingEvictions.
	MaxPendingBytes int
	// MaxOutboxBytes bounds the outbox the same way (each notice charged
	// like a pending entry); hitting it drops the oldest notices, counted
	// as OutboxDropped.
	MaxOutboxBytes int

	DedupTTL   time.Duration // how long an applied id is remembered
	NoticeTTL  time.Duration // how long a notice or receive waits for its partner
	ProcessTTL time.Duration // how long an idle process (open frames or not) is kept
	OutboxTTL  time.Duration // how long an unacknowledged notice is kept for delivery

	// MaxClockSkew is how far apart the clocks of two origins may be. A
	// RECEIVE pairs only with a SEND stamped no later than itself: on one
	// clock when both are on one origin, else up to MaxClockSkew later.
	MaxClockSkew time.Duration
}

// DefaultConfig returns the defaults for shard shard of shards.
func DefaultConfig(shard, shards uint32) Config {
	return Config{
		Shard:         shard,
		Shards:        shards,
		Limits:        DefaultLimits(),
		MaxStackDepth: 1024,
		MaxProcesses:  200_000,
		MaxPending:    65_536,
		MaxOutbox:     65_536,
		DedupWindow:   131_072,
		MaxInterned:   65_536,
		DedupTTL:      10 * time.Minute,
		NoticeTTL:     5 * time.Minute,
		ProcessTTL:    time.Hour,
		OutboxTTL:     time.Hour,

		// Typical names (20-byte origins, 12-byte pids) cost ~320 bytes an
		// entry, so a full table of MaxPending entries is ~20 MiB and meets
		// the entry bound first; entries with maximal names meet this one.
		MaxPendingBytes: 32 << 20,
		MaxOutboxBytes:  32 << 20,

		// NTP keeps a LAN's clocks within a millisecond; 100 ms tolerates
		// hosts far worse than that while still refusing a pairing that
		// needs a message to arrive well before it was sent.
		MaxClockSkew: 100 * time.Millisecond,
	}
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	if c.Shards == 0 {
		return fmt.Errorf("%w: Shards = 0, must be >= 1", ErrConfig)
	}
	if c.Shards > MaxLayoutShards {
		return fmt.Errorf("%w: Shards = %d, must be <= %d", ErrConfig, c.Shards, MaxLayoutShards)
	}
	if most := MaxShardsFrom(c.Shards); c.Shard >= most {
		return fmt.Errorf("%w: Shard = %d, must be < %d (Shards %d doubled up to MaxLayoutShards)", ErrConfig, c.Shard, most, c.Shards)
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	if c.MaxClockSkew < 0 {
		return fmt.Errorf("%w: MaxClockSkew = %d, must be >= 0", ErrConfig, c.MaxClockSkew)
	}
	most := pendingEntryBytes + 4*c.Limits.MaxNameBytes // one entry with names of Limits.MaxNameBytes
	if c.MaxPendingBytes < most {
		return fmt.Errorf("%w: MaxPendingBytes = %d, must be >= %d (one pending entry with names of Limits.MaxNameBytes)",
			ErrConfig, c.MaxPendingBytes, most)
	}
	if c.MaxOutboxBytes < most {
		return fmt.Errorf("%w: MaxOutboxBytes = %d, must be >= %d (one notice with names of Limits.MaxNameBytes)",
			ErrConfig, c.MaxOutboxBytes, most)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxStackDepth", int64(c.MaxStackDepth)}, {"MaxProcesses", int64(c.MaxProcesses)},
		{"MaxPending", int64(c.MaxPending)}, {"MaxOutbox", int64(c.MaxOutbox)},
		{"DedupWindow", int64(c.DedupWindow)}, {"MaxInterned", int64(c.MaxInterned)},
		{"DedupTTL", int64(c.DedupTTL)}, {"NoticeTTL", int64(c.NoticeTTL)},
		{"ProcessTTL", int64(c.ProcessTTL)}, {"OutboxTTL", int64(c.OutboxTTL)},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%w: %s = %d, must be > 0", ErrConfig, f.name, f.v)
		}
	}
	return nil
}
