package node

import (
	"fmt"
	"log/slog"
	"math/bits"
	"runtime"
	"time"

	"github.com/elixirscope/scope/ring"
)

// RetryPolicy bounds how often the writer pool proposes a batch whose
// proposal failed with a retryable error (anything but ErrNotLeader), and how
// long it waits between attempts (exponential backoff).
type RetryPolicy struct {
	// MaxAttempts is the number of times a batch is proposed, the first
	// included; a batch still failing after that is failed back to its
	// submitters. A Propose call that panics counts as an attempt.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt; each further
	// attempt doubles it, up to MaxBackoff.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// backoff returns the wait before attempt number attempt+1, given that
// attempt attempts were made.
func (r RetryPolicy) backoff(attempts int) time.Duration {
	d := r.InitialBackoff
	for i := 1; i < attempts && d < r.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.MaxBackoff)
}

// PoolConfig configures the ring buffers and the writer pool. Start from
// DefaultPoolConfig; Validate reports the first invalid field.
type PoolConfig struct {
	// Shards are the shards that have a ring from the start; more can be
	// added and removed at run time (AddShard, RemoveShard).
	Shards []uint32
	// MaxShards bounds the number of shards the pool hosts at once.
	MaxShards int
	// RingCapacity is each shard's ring size in events (a power of two).
	// It bounds the events accepted and not yet taken by a writer.
	RingCapacity int
	// BatchSize is the most events a writer puts in one proposal.
	BatchSize int
	// FlushInterval is the longest a writer holds a batch smaller than
	// BatchSize, waiting for more events, before proposing it. Zero
	// proposes whatever is available at once.
	FlushInterval time.Duration
	// Writers is the number of writer goroutines; each shard is owned by one.
	Writers int
	// MinWriters and MaxWriters, when MaxWriters > 0, make the number of
	// writers follow the backlog between them, starting at MinWriters
	// (pool_scale.go); Writers is then ignored. MaxWriters 0: Writers,
	// fixed.
	MinWriters, MaxWriters int
	// ScaleInterval is how often the scaler samples the rings and writers.
	ScaleInterval time.Duration
	// ScaleUpFill (0..1]: a ring at least this full on two samples in a row
	// adds a writer.
	ScaleUpFill float64
	// ScaleDownAfter: the pool quiet (every ring under ScaleUpFill/8, the
	// writers busy under a quarter of the time) for this long retires a
	// writer.
	ScaleDownAfter time.Duration
	// MaxInflight bounds, per shard, the proposals made and not yet resolved
	// (the depth of the pipeline).
	MaxInflight int
	// Retry bounds the re-proposal of failed batches.
	Retry RetryPolicy
	// Logger receives writer panics; nil means slog.Default().
	Logger *slog.Logger

	// noAdmission turns admission control off (tests measuring what it
	// changes).
	noAdmission bool
}

// Limits enforced by Validate.
const (
	poolMaxShards      = 1 << 16
	poolMaxWriters     = 1024
	poolMaxInflight    = 1024
	poolMaxAttempts    = 100
	poolMaxFlush       = 10 * time.Second
	poolMaxBackoff     = time.Minute
	poolMaxRingCap     = 1 << 24
	defaultRingCap     = 8192
	defaultBatchSize   = 512
	defaultFlush       = time.Millisecond
	defaultMaxInflight = 8
)

// DefaultPoolConfig returns the defaults: 8192-event rings, batches of up to
// 512 events held at most 1 ms, GOMAXPROCS writers, 8 proposals in flight
// per shard, 3 attempts per batch with 10 ms..1 s backoff.
func DefaultPoolConfig() PoolConfig {
	return PoolConfig{
		MaxShards:      1024,
		RingCapacity:   defaultRingCap,
		BatchSize:      defaultBatchSize,
		FlushInterval:  defaultFlush,
		Writers:        runtime.GOMAXPROCS(0),
		MaxInflight:    defaultMaxInflight,
		ScaleInterval:  100 * time.Millisecond,
		ScaleUpFill:    0.25,
		ScaleDownAfter: 5 * time.Second,
		Retry: RetryPolicy{
			MaxAttempts:    3,
			InitialBackoff: 10 * time.Millisecond,
			MaxBackoff:     time.Second,
		},
	}
}

// Validate checks every field and returns an error wrapping ErrPoolConfig
// that names the field, its value and what is allowed.
func (c *PoolConfig) Validate() error {
	bad := func(field string, value any, allowed string) error {
		return fmt.Errorf("%w: %s = %v, want %s", ErrPoolConfig, field, value, allowed)
	}
	switch {
	case c.MaxShards < 1 || c.MaxShards > poolMaxShards:
		return bad("MaxShards", c.MaxShards, fmt.Sprintf("1..%d", poolMaxShards))
	case len(c.Shards) > c.MaxShards:
		return bad("len(Shards)", len(c.Shards), fmt.Sprintf("at most MaxShards (%d)", c.MaxShards))
	case c.RingCapacity < ring.MinCapacity || c.RingCapacity > poolMaxRingCap ||
		bits.OnesCount(uint(c.RingCapacity)) != 1:
		return bad("RingCapacity", c.RingCapacity,
			fmt.Sprintf("a power of two in %d..%d", ring.MinCapacity, poolMaxRingCap))
	case c.BatchSize < 1 || c.BatchSize > c.RingCapacity:
		return bad("BatchSize", c.BatchSize, fmt.Sprintf("1..RingCapacity (%d)", c.RingCapacity))
	case c.FlushInterval < 0 || c.FlushInterval > poolMaxFlush:
		return bad("FlushInterval", c.FlushInterval, fmt.Sprintf("0..%v", poolMaxFlush))
	case c.MaxWriters == 0 && (c.Writers < 1 || c.Writers > poolMaxWriters):
		return bad("Writers", c.Writers, fmt.Sprintf("1..%d", poolMaxWriters))
	case c.MaxWriters < 0 || c.MaxWriters > poolMaxWriters:
		return bad("MaxWriters", c.MaxWriters, fmt.Sprintf("0 (fixed: Writers) or 1..%d", poolMaxWriters))
	case c.MaxWriters > 0 && (c.MinWriters < 1 || c.MinWriters > c.MaxWriters):
		return bad("MinWriters", c.MinWriters, fmt.Sprintf("1..MaxWriters (%d)", c.MaxWriters))
	case c.MaxWriters > 0 && (c.ScaleInterval < time.Millisecond || c.ScaleInterval > time.Minute):
		return bad("ScaleInterval", c.ScaleInterval, "1ms..1m")
	case c.MaxWriters > 0 && (c.ScaleUpFill <= 0 || c.ScaleUpFill > 1):
		return bad("ScaleUpFill", c.ScaleUpFill, "(0, 1]")
	case c.MaxWriters > 0 && c.ScaleDownAfter < c.ScaleInterval:
		return bad("ScaleDownAfter", c.ScaleDownAfter, fmt.Sprintf("at least ScaleInterval (%v)", c.ScaleInterval))
	case c.MaxInflight < 1 || c.MaxInflight > poolMaxInflight:
		return bad("MaxInflight", c.MaxInflight, fmt.Sprintf("1..%d", poolMaxInflight))
	case c.Retry.MaxAttempts < 1 || c.Retry.MaxAttempts > poolMaxAttempts:
		return bad("Retry.MaxAttempts", c.Retry.MaxAttempts, fmt.Sprintf("1..%d", poolMaxAttempts))
	case c.Retry.InitialBackoff <= 0 || c.Retry.InitialBackoff > poolMaxBackoff:
		return bad("Retry.InitialBackoff", c.Retry.InitialBackoff, fmt.Sprintf("(0, %v]", poolMaxBackoff))
	case c.Retry.MaxBackoff < c.Retry.InitialBackoff || c.Retry.MaxBackoff > poolMaxBackoff:
		return bad("Retry.MaxBackoff", c.Retry.MaxBackoff,
			fmt.Sprintf("Retry.InitialBackoff (%v)..%v", c.Retry.InitialBackoff, poolMaxBackoff))
	}
	seen := make(map[uint32]bool, len(c.Shards))
	for _, s := range c.Shards {
		if seen[s] {
			return bad("Shards", c.Shards, "no duplicate shard ids")
		}
		seen[s] = true
	}
	return nil
}
