package rpc

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// Config bounds what one request may cost the server. Every bound a request
// can hit is either refused with INVALID_ARGUMENT naming the limit (ingest)
// or clamped to the maximum and reported in the response (queries), as the
// API contract says.
type Config struct {
	// MaxRequestBytes bounds one request message (one stream message for
	// IngestStream) as read from the wire (connect.WithReadMaxBytes).
	MaxRequestBytes int
	// MaxEventsPerRequest bounds the events of one IngestRequest.
	MaxEventsPerRequest int
	// Limits are the per-event limits ingest validates against. They must
	// equal the node's correlator limits (node.Config.Correlator.Limits):
	// the correlator enforces them again as a guard.
	Limits correlate.Limits

	// DefaultQueryLimit is Events' page size when the request leaves limit
	// 0; MaxQueryLimit caps it. MaxQueryLimit must not exceed the store's
	// Options.MaxLimit.
	DefaultQueryLimit int
	MaxQueryLimit     int
	// QueryShardTimeout bounds each shard's part of a query.
	QueryShardTimeout time.Duration
	// MaxMergeRounds bounds how many times Events asks the shards again to
	// fill a page when shards return partial pages (scan limit) or the
	// residual filter drops events. A page cut by this bound is still exact:
	// its cursor is the position every shard has been read up to.
	MaxMergeRounds int
	// MaxFanout bounds the shard calls one query runs at once.
	MaxFanout int
	// QueryMemory bounds the bytes of events one query buffers
	// (correlate.Event.MemSize): an Events page (and a Tail backfill) is
	// cut where the budget runs out, its cursor exact; a CallTree, Trace
	// or MessageFlow that would hold more is refused (RESOURCE_EXHAUSTED).
	QueryMemory int
	// HedgeDelay is how long an ANY shard read waits for its first replica
	// before asking a second one too (hedge.go); 0 disables hedging. The
	// default, 50 ms, is well above a healthy remote read on a LAN (a few
	// ms, docs/BENCHMARKS.md) so hedges fire only for the slow tail, and
	// well below QueryShardTimeout so a stalled replica costs one delay,
	// not the deadline. Each hedge adds one read on another replica.
	HedgeDelay time.Duration

	// TailBuffer is the per-subscriber buffer of Tail; beyond it events are
	// dropped and reported to the client as Lagged.
	TailBuffer int
	// MaxTailBackfill caps TailRequest.backfill.
	MaxTailBackfill int
	// TailReplanTimeout bounds how long a Tail keeps trying to find a
	// replica for a shard whose source was lost before it ends with
	// UNAVAILABLE naming the shard.
	TailReplanTimeout time.Duration

	// QueryTimeout is the server's deadline on every QueryService unary
	// call; a client's shorter deadline wins.
	QueryTimeout time.Duration
	// MaxQueries bounds QueryService unary calls in flight on this node,
	// MaxQueriesPerCaller those of one caller (a token's name, or the
	// remote IP when tokens are off). MaxTails and MaxTailsPerCaller bound
	// Tail streams the same way.
	MaxQueries          int
	MaxQueriesPerCaller int
	MaxTails            int
	MaxTailsPerCaller   int
	// Auth checks tokens and node credentials (auth.go); nil lets every
	// caller in.
	Auth *Auth

	// Version is reported in Members and Stats.
	Version string
	Logger  *slog.Logger
}

// DefaultConfig returns the configuration of `scope agent`.
func DefaultConfig() Config {
	return Config{
		MaxRequestBytes:     16 << 20,
		MaxEventsPerRequest: 10_000,
		Limits:              correlate.DefaultLimits(),
		DefaultQueryLimit:   100,
		MaxQueryLimit:       10_000,
		QueryShardTimeout:   5 * time.Second,
		MaxMergeRounds:      16,
		MaxFanout:           16,
		QueryMemory:         64 << 20,
		HedgeDelay:          50 * time.Millisecond,
		TailBuffer:          4096,
		MaxTailBackfill:     10_000,
		TailReplanTimeout:   30 * time.Second,
		QueryTimeout:        60 * time.Second,
		MaxQueries:          256,
		MaxQueriesPerCaller: 64,
		MaxTails:            256,
		MaxTailsPerCaller:   16,
		Version:             "dev",
		Logger:              slog.Default(),
	}
}

// Validate reports the first field out of range.
func (c *Config) Validate() error {
	switch {
	case c.MaxRequestBytes < 1<<10:
		return fmt.Errorf("%w: MaxRequestBytes %d: must be at least 1024", ErrConfig, c.MaxRequestBytes)
	case c.MaxEventsPerRequest < 1:
		return fmt.Errorf("%w: MaxEventsPerRequest %d: must be at least 1", ErrConfig, c.MaxEventsPerRequest)
	case c.MaxQueryLimit < 1:
		return fmt.Errorf("%w: MaxQueryLimit %d: must be at least 1", ErrConfig, c.MaxQueryLimit)
	case c.DefaultQueryLimit < 1 || c.DefaultQueryLimit > c.MaxQueryLimit:
		return fmt.Errorf("%w: DefaultQueryLimit %d: must be within [1, MaxQueryLimit %d]",
			ErrConfig, c.DefaultQueryLimit, c.MaxQueryLimit)
	case c.QueryShardTimeout <= 0:
		return fmt.Errorf("%w: QueryShardTimeout %v: must be positive", ErrConfig, c.QueryShardTimeout)
	case c.MaxMergeRounds < 1:
		return fmt.Errorf("%w: MaxMergeRounds %d: must be at least 1", ErrConfig, c.MaxMergeRounds)
	case c.MaxFanout < 1:
		return fmt.Errorf("%w: MaxFanout %d: must be at least 1", ErrConfig, c.MaxFanout)
	case c.QueryMemory < 1<<20:
		return fmt.Errorf("%w: QueryMemory %d: must be at least 1 MiB", ErrConfig, c.QueryMemory)
	case c.HedgeDelay < 0 || c.HedgeDelay >= c.QueryShardTimeout:
		return fmt.Errorf("%w: HedgeDelay %v: must be within [0, QueryShardTimeout %v)",
			ErrConfig, c.HedgeDelay, c.QueryShardTimeout)
	case c.TailBuffer < 2:
		return fmt.Errorf("%w: TailBuffer %d: must be at least 2", ErrConfig, c.TailBuffer)
	case c.TailReplanTimeout <= 0:
		return fmt.Errorf("%w: TailReplanTimeout %v: must be positive", ErrConfig, c.TailReplanTimeout)
	case c.QueryTimeout <= 0:
		return fmt.Errorf("%w: QueryTimeout %v: must be positive", ErrConfig, c.QueryTimeout)
	case c.MaxQueries < 1 || c.MaxQueriesPerCaller < 1 || c.MaxQueriesPerCaller > c.MaxQueries:
		return fmt.Errorf("%w: MaxQueriesPerCaller %d, MaxQueries %d: want 1 <= MaxQueriesPerCaller <= MaxQueries",
			ErrConfig, c.MaxQueriesPerCaller, c.MaxQueries)
	case c.MaxTails < 1 || c.MaxTailsPerCaller < 1 || c.MaxTailsPerCaller > c.MaxTails:
		return fmt.Errorf("%w: MaxTailsPerCaller %d, MaxTails %d: want 1 <= MaxTailsPerCaller <= MaxTails",
			ErrConfig, c.MaxTailsPerCaller, c.MaxTails)
	case c.MaxTailBackfill < 0 || c.MaxTailBackfill > c.MaxQueryLimit:
		return fmt.Errorf("%w: MaxTailBackfill %d: must be within [0, MaxQueryLimit %d]",
			ErrConfig, c.MaxTailBackfill, c.MaxQueryLimit)
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("%w: Limits: %w", ErrConfig, err)
	}
	return nil
}
