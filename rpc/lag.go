package rpc

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Replica lag reporting. A query response says how far behind the replicas
// that answered it were (ReadLag on every QueryService response that takes
// a consistency). The facts come from the replica that answered, which may
// be on another node, so they travel back the way the answer does: a
// ShardReader reports the answering replica's lag with ReportLag on the ctx
// of the call, and the planner collects one report per shard. A hedged
// read gives each attempt its own slot and keeps only the winner's.

// lagKey is the ctx key of a lagSink.
type lagKey struct{}

// lagSink receives the lag of the replica answering a shard read.
type lagSink interface {
	report(shard uint32, nodeName string, lag node.Lag)
}

// ReportLag records that the replica of shard on nodeName, which answered
// the read running under ctx, was lag behind. ShardReaders call it once per
// answered call; it is a no-op when ctx carries no collector. Safe for
// concurrent use.
func ReportLag(ctx context.Context, shard uint32, nodeName string, lag node.Lag) {
	if s, ok := ctx.Value(lagKey{}).(lagSink); ok {
		s.report(shard, nodeName, lag)
	}
}

// lagCollector gathers the lag of one query's answering replicas: the
// worst report per shard, only for shards that were behind. It holds at
// most one entry per shard.
type lagCollector struct {
	mu      sync.Mutex
	byShard map[uint32]*scopev1.ShardLag
}

// withLag returns ctx carrying a new collector for one query.
func withLag(ctx context.Context) (context.Context, *lagCollector) {
	c := &lagCollector{}
	return context.WithValue(ctx, lagKey{}, lagSink(c)), c
}

func (c *lagCollector) report(shard uint32, nodeName string, lag node.Lag) {
	if lag.Entries == 0 && lag.SinceContact <= 0 {
		return
	}
	sl := &scopev1.ShardLag{Shard: shard, Node: nodeName, Entries: lag.Entries,
		SinceLeaderContactMs: uint64(lag.SinceContact.Milliseconds())}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byShard == nil {
		c.byShard = make(map[uint32]*scopev1.ShardLag)
	}
	if old, ok := c.byShard[shard]; ok && (old.Entries > sl.Entries ||
		old.Entries == sl.Entries && old.SinceLeaderContactMs >= sl.SinceLeaderContactMs) {
		return
	}
	c.byShard[shard] = sl
}

// proto returns the collected lag, nil when no answering replica was
// behind (or c is nil).
func (c *lagCollector) proto() *scopev1.ReadLag {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byShard) == 0 {
		return nil
	}
	out := &scopev1.ReadLag{Shards: make([]*scopev1.ShardLag, 0, len(c.byShard))}
	for _, sl := range c.byShard {
		out.MaxEntries = max(out.MaxEntries, sl.Entries)
		out.MaxSinceLeaderContactMs = max(out.MaxSinceLeaderContactMs, sl.SinceLeaderContactMs)
		out.Shards = append(out.Shards, sl)
	}
	slices.SortFunc(out.Shards, func(a, b *scopev1.ShardLag) int { return cmp.Compare(a.Shard, b.Shard) })
	return out
}

// pendingLag holds one hedge attempt's report until the attempt is known
// to have won; only then does it reach the query's collector.
type pendingLag struct {
	mu   sync.Mutex
	set  bool
	node string
	lag  node.Lag
}

func (p *pendingLag) report(_ uint32, nodeName string, lag node.Lag) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.set, p.node, p.lag = true, nodeName, lag
}

// forward passes the held report, if any, to ctx's collector.
func (p *pendingLag) forward(ctx context.Context, shard uint32) {
	p.mu.Lock()
	set, nodeName, lag := p.set, p.node, p.lag
	p.mu.Unlock()
	if set {
		ReportLag(ctx, shard, nodeName, lag)
	}
}
