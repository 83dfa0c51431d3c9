package rpc

import (
	"context"
	"fmt"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

// ShardReader answers one shard's part of a query. The planner uses one
// per shard; this file holds the local one (the node's own replica over
// its store); the cluster layer adds readers that ask a remote replica.
//
// Every method may be called concurrently. Returned events and frames are
// owned by the caller. A method must return promptly once ctx is done
// (a local store call is bounded by the store's MaxScan; a remote call by
// ctx). Errors are classified by errors.Is against the node's and the
// store's sentinels (see codeOf).
type ShardReader interface {
	Get(ctx context.Context, shard uint32, id correlate.EventID) (correlate.Event, error)
	Events(ctx context.Context, shard uint32, q store.Query) (store.Page, error)
	// EdgesMany returns, for every ids[i], the links stored on shard whose
	// source is ids[i] (the source may live on another shard), in out[i],
	// all read at one point of the shard: one call, whatever len(ids), up to
	// store.MaxEdgesMany ids.
	EdgesMany(ctx context.Context, shard uint32, ids []correlate.EventID) ([][]correlate.Link, error)
	CallTree(ctx context.Context, shard uint32, root correlate.EventID, maxFrames int) (*store.CallTree, error)
	CallStackAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) ([]store.Frame, error)
	MessageFlow(ctx context.Context, shard uint32, a, b correlate.Process, fromNs, toNs int64, limit int) (store.Page, error)
	StateAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) (correlate.Event, bool, error)
	Stats(ctx context.Context, shard uint32) (store.ShardStats, error)
}

// Consistency is which replica may answer a shard read.
type Consistency uint8

const (
	// ConsistencyLeader: only the shard's leader answers.
	ConsistencyLeader Consistency = iota
	// ConsistencyAny: any replica answers.
	ConsistencyAny
)

// Resolver picks the readers for a shard. On one node every shard is local;
// the cluster layer returns remote readers for shards hosted elsewhere.
type Resolver interface {
	// Readers returns the candidate readers for shard at consistency c,
	// best first (for ConsistencyAny: this node's replica, then the
	// leader's, then other replicas'), or an error classified like a
	// ShardReader's (no replica, no leader, ...). At ConsistencyLeader it
	// returns exactly one: only the leader may answer. The planner asks the
	// first and, for a hedged read, the second. The slice is the caller's.
	// Safe for concurrent use; must not block.
	Readers(shard uint32, c Consistency) ([]ShardReader, error)
}

// LocalResolver serves every shard from n's own replicas; the cluster
// layer wraps it to reach shards hosted elsewhere.
func LocalResolver(n *node.Node) Resolver { return localResolver{n: n} }

// localResolver serves every shard from the node's own replicas.
type localResolver struct{ n *node.Node }

func (l localResolver) Readers(shard uint32, c Consistency) ([]ShardReader, error) {
	r, err := l.reader(shard, c)
	if err != nil {
		return nil, err
	}
	return []ShardReader{r}, nil
}

func (l localResolver) reader(shard uint32, c Consistency) (ShardReader, error) {
	r := l.n.Replica(shard)
	if r == nil {
		return nil, fmt.Errorf("%w: shard %d", node.ErrNoShard, shard)
	}
	if _, failed := r.Progress(); failed != nil {
		return nil, fmt.Errorf("%w: shard %d: %w", node.ErrReplicaFailed, shard, failed)
	}
	leader := c == ConsistencyLeader && !weakLeaderReads
	if leader && !r.IsLeader() {
		addr, id := r.Leader()
		return nil, &node.NotLeaderError{Shard: shard, LeaderID: string(id), LeaderAddr: string(addr)}
	}
	return localReader{st: l.n.Store(), rep: r, name: l.n.ID(), linearizable: leader}, nil
}

// localReader reads this node's store. Store calls are synchronous and
// bounded by the store's scan limit, so ctx is only checked before each
// call: a cancelled query does not start more shard reads. Each call
// reports the replica's lag (ReportLag) as of the read.
type localReader struct {
	st   *store.Store
	rep  *node.Replica
	name string
	// linearizable: every call first confirms the leadership and waits
	// for the store to apply what was committed (Replica.ReadIndex).
	linearizable bool
}

// begin checks ctx, confirms a linearizable read, and reports the
// replica's lag.
func (l localReader) begin(ctx context.Context, shard uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.linearizable {
		if err := l.rep.ReadIndex(ctx); err != nil {
			return err
		}
	}
	ReportLag(ctx, shard, l.name, l.rep.Lag())
	return nil
}

func (l localReader) Get(ctx context.Context, shard uint32, id correlate.EventID) (correlate.Event, error) {
	if err := l.begin(ctx, shard); err != nil {
		return correlate.Event{}, err
	}
	return l.st.Get(shard, id)
}

func (l localReader) Events(ctx context.Context, shard uint32, q store.Query) (store.Page, error) {
	if err := l.begin(ctx, shard); err != nil {
		return store.Page{}, err
	}
	return l.st.Events(shard, q)
}

func (l localReader) EdgesMany(ctx context.Context, shard uint32, ids []correlate.EventID) ([][]correlate.Link, error) {
	if err := l.begin(ctx, shard); err != nil {
		return nil, err
	}
	return l.st.EdgesMany(shard, ids)
}

func (l localReader) CallTree(ctx context.Context, shard uint32, root correlate.EventID, maxFrames int) (*store.CallTree, error) {
	if err := l.begin(ctx, shard); err != nil {
		return nil, err
	}
	return l.st.CallTree(shard, root, maxFrames)
}

func (l localReader) CallStackAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) ([]store.Frame, error) {
	if err := l.begin(ctx, shard); err != nil {
		return nil, err
	}
	return l.st.CallStackAt(shard, p, atNs)
}

func (l localReader) MessageFlow(ctx context.Context, shard uint32, a, b correlate.Process, fromNs, toNs int64, limit int) (store.Page, error) {
	if err := l.begin(ctx, shard); err != nil {
		return store.Page{}, err
	}
	return l.st.MessageFlow(shard, a, b, fromNs, toNs, limit)
}

func (l localReader) StateAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) (correlate.Event, bool, error) {
	if err := l.begin(ctx, shard); err != nil {
		return correlate.Event{}, false, err
	}
	return l.st.StateAt(shard, p, atNs)
}

func (l localReader) Stats(ctx context.Context, shard uint32) (store.ShardStats, error) {
	if err := l.begin(ctx, shard); err != nil {
		return store.ShardStats{}, err
	}
	return l.st.Stats(shard)
}
