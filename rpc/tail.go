package rpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Tail streams events applied on every shard the filter can match, from
// one source replica per shard at a time (tailcoord.go). It starts the
// sources before reading the backfill, so no event falls between the two
// (one may be sent twice; the API says so). It ends when the client
// cancels, the server closes, or a shard has had no replica to follow for
// TailReplanTimeout (UNAVAILABLE).
func (q queryService) Tail(ctx context.Context, req *connect.Request[scopev1.TailRequest], stream *connect.ServerStream[scopev1.TailResponse]) error {
	const proc = scopev1connect.QueryServiceTailProcedure
	m := req.Msg
	f, err := parseTailFilter(m)
	if err != nil {
		return q.s.fail(proc, err)
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return q.s.fail(proc, err)
	}
	backfill := 0
	if m.GetBackfill() > 0 {
		backfill = clamp(m.GetBackfill(), 0, q.s.cfg.MaxTailBackfill)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := newTailRun(ctx, q.s, m, f, c)
	t.shardsNow = func() []uint32 { return f.shards(q.s.planner) }
	defer t.stop()
	if err := t.start(f.shards(q.s.planner)); err != nil {
		return q.s.fail(proc, err)
	}
	q.s.tails.Inc()
	defer q.s.tails.Dec()
	// Every source that opened is subscribed (a remote one answered its
	// first item): say so now, which also sends the response headers, so
	// the client's call returns before any event matches.
	if err := stream.Send(t.started()); err != nil {
		return err
	}

	if backfill > 0 {
		page, err := q.s.planner.merge(ctx, proc, mergeQuery{q: f.query(true, backfill),
			shards: f.shards(q.s.planner), consistency: c, keep: f.residual()})
		if err != nil {
			return q.s.fail(proc, err)
		}
		for i := len(page.events) - 1; i >= 0; i-- {
			if err := sendEvent(stream, &page.events[i]); err != nil {
				return err
			}
		}
	}
	err = t.run(stream.Send)
	switch {
	case errors.Is(err, ErrTailSource):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, errServerClosing):
		return connect.NewError(connect.CodeUnavailable, err)
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return q.s.fail(proc, err)
	}
	return err
}

func sendEvent(stream *connect.ServerStream[scopev1.TailResponse], e *correlate.Event) error {
	return stream.Send(&scopev1.TailResponse{Item: &scopev1.TailResponse_Event{Event: EventToProto(e)}})
}
