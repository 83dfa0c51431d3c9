package rpc

import (
	"context"
	"errors"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

// Hedged shard reads. An ANY read may be answered by any replica of the
// shard, so a slow replica (a long GC pause, a busy disk, a congested
// link) need not make the whole query slow: when the first candidate has
// not answered after Config.HedgeDelay, the same call goes to the second
// candidate too, the first answer wins and the other call is cancelled
// (its ctx; a remote read's Connect call is reset, a local store read is
// bounded by the store's scan limit and simply finishes). A LEADER read
// has exactly one replica that may answer and is never hedged.
//
// Bounds: at most one hedge per reader call, so a shard read costs at most
// two replica reads; a candidate that fails with an error another replica
// may not have (unreachable, not leader, timed out) starts the hedge at
// once instead of after the delay, still at most one. Hedges sent and
// hedges that won are counted (scope_rpc_shard_read_hedges_total,
// scope_rpc_shard_read_hedge_wins_total).

// hedgedReader is the ShardReader a shard read runs against when the
// resolver offered more than one candidate: each call is asked of cands[0]
// and, per the rules above, of cands[1].
type hedgedReader struct {
	p     *planner
	cands []ShardReader // at least 2, best first
}

// failover reports whether err says nothing about the shard's data, only
// about the replica that was asked: another replica may answer.
func failover(err error) bool {
	return retryable(err) || errors.Is(err, node.ErrTimeout) || errors.Is(err, node.ErrReplicaFailed) ||
		errors.Is(err, node.ErrShardClosed) || errors.Is(err, node.ErrClosed) || errors.Is(err, store.ErrClosed)
}

// hedged runs call against h's candidates. The result it returns, success
// or error, is from one candidate, and so is the lag it reports on ctx.
func hedged[T any](ctx context.Context, h hedgedReader, shard uint32,
	call func(context.Context, ShardReader) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
		i   int
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()                  // the loser's call
	results := make(chan result, 2) // never blocks a sender: no goroutine outlives its call
	var lags [2]pendingLag
	start := func(i int) {
		actx := context.WithValue(cctx, lagKey{}, lagSink(&lags[i]))
		go func() {
			v, err := call(actx, h.cands[i])
			results <- result{v: v, err: err, i: i}
		}()
	}
	start(0)
	timer := time.NewTimer(h.p.cfg.HedgeDelay)
	defer timer.Stop()
	hedge := func() {
		h.p.count(h.p.hedges)
		start(1)
	}
	var (
		sent    = 1
		pending = 1
		failed  [2]*result
	)
	for {
		select {
		case <-timer.C:
			if sent == 1 {
				sent, pending = 2, pending+1
				hedge()
			}
		case r := <-results:
			pending--
			if r.err == nil || !failover(r.err) {
				if r.i == 1 && r.err == nil {
					h.p.count(h.p.hedgeWins)
				}
				lags[r.i].forward(ctx, shard)
				return r.v, r.err
			}
			failed[r.i] = &r
			if sent == 1 && ctx.Err() == nil {
				sent, pending = 2, pending+1
				hedge()
			}
			if pending == 0 {
				// Every call sent failed: report the preferred replica's
				// error (cands[0] is always asked).
				lags[0].forward(ctx, shard)
				return failed[0].v, failed[0].err
			}
		}
	}
}

func (h hedgedReader) Get(ctx context.Context, shard uint32, id correlate.EventID) (correlate.Event, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (correlate.Event, error) {
		return r.Get(ctx, shard, id)
	})
}

func (h hedgedReader) Events(ctx context.Context, shard uint32, q store.Query) (store.Page, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (store.Page, error) {
		return r.Events(ctx, shard, q)
	})
}

func (h hedgedReader) EdgesMany(ctx context.Context, shard uint32, ids []correlate.EventID) ([][]correlate.Link, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) ([][]correlate.Link, error) {
		return r.EdgesMany(ctx, shard, ids)
	})
}

func (h hedgedReader) CallTree(ctx context.Context, shard uint32, root correlate.EventID, maxFrames int) (*store.CallTree, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (*store.CallTree, error) {
		return r.CallTree(ctx, shard, root, maxFrames)
	})
}

func (h hedgedReader) CallStackAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) ([]store.Frame, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) ([]store.Frame, error) {
		return r.CallStackAt(ctx, shard, p, atNs)
	})
}

func (h hedgedReader) MessageFlow(ctx context.Context, shard uint32, a, b correlate.Process, fromNs, toNs int64, limit int) (store.Page, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (store.Page, error) {
		return r.MessageFlow(ctx, shard, a, b, fromNs, toNs, limit)
	})
}

type stateAt struct {
	e     correlate.Event
	found bool
}

func (h hedgedReader) StateAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) (correlate.Event, bool, error) {
	s, err := hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (stateAt, error) {
		e, ok, err := r.StateAt(ctx, shard, p, atNs)
		return stateAt{e, ok}, err
	})
	return s.e, s.found, err
}

func (h hedgedReader) Stats(ctx context.Context, shard uint32) (store.ShardStats, error) {
	return hedged(ctx, h, shard, func(ctx context.Context, r ShardReader) (store.ShardStats, error) {
		return r.Stats(ctx, shard)
	})
}
