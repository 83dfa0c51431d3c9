package rpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Tail streams events applied on this node's replicas that match the
// filter. It subscribes before reading the backfill, so no event falls
// between the two (one may be sent twice; the API says so). It ends when
// the client cancels, the server closes, or the node closes (UNAVAILABLE).
func (q queryService) Tail(ctx context.Context, req *connect.Request[scopev1.TailRequest], stream *connect.ServerStream[scopev1.TailResponse]) error {
	const proc = scopev1connect.QueryServiceTailProcedure
	m := req.Msg
	f, err := parseFilter(filterFields{origin: m.GetOrigin(), pid: m.GetPid(), kinds: m.GetKinds(),
		module: m.GetModule(), function: m.GetFunction(), arity: m.Arity,
		correlationID: m.GetCorrelationId(), rootID: m.GetRootId()})
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
	sub, err := q.s.node.Subscribe(f.match, q.s.cfg.TailBuffer)
	if err != nil {
		return q.s.fail(proc, err)
	}
	defer sub.Close()
	q.s.tails.Inc()
	defer q.s.tails.Dec()

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
	for {
		select {
		case <-ctx.Done():
			return q.s.fail(proc, ctx.Err())
		case <-q.s.done:
			return connect.NewError(connect.CodeUnavailable, errors.New("server shutting down"))
		case e, ok := <-sub.C():
			if !ok {
				return connect.NewError(connect.CodeUnavailable, errors.New("node closing"))
			}
			// Lagged counts drops since the last call; they happened before
			// this event was received, so report them first.
			if n := sub.Lagged(); n > 0 {
				if err := stream.Send(&scopev1.TailResponse{Item: &scopev1.TailResponse_Lagged{
					Lagged: &scopev1.Lagged{Dropped: n}}}); err != nil {
					return err
				}
			}
			if err := sendEvent(stream, &e); err != nil {
				return err
			}
		}
	}
}

func sendEvent(stream *connect.ServerStream[scopev1.TailResponse], e *correlate.Event) error {
	return stream.Send(&scopev1.TailResponse{Item: &scopev1.TailResponse_Event{Event: EventToProto(e)}})
}
