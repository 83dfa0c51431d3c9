package rpc

import (
	"context"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// Stats reads every shard's summary. Per-kind totals and top functions
// need a scan of every index entry, which Stats does not do (its cost
// grows with time buckets, not events): those fields stay empty.
func (q queryService) Stats(ctx context.Context, req *connect.Request[scopev1.StatsRequest]) (*connect.Response[scopev1.StatsResponse], error) {
	const proc = scopev1connect.QueryServiceStatsProcedure
	m := req.Msg
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	shards := q.s.planner.allShards()
	stats := make([]*store.ShardStats, len(shards))
	failures := q.s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		st, err := r.Stats(ctx, shard)
		if err != nil {
			return err
		}
		stats[shard] = &st
		return nil
	})
	missing, err := q.s.planner.settle(proc, failures, m.GetAllowPartial())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	resp := &scopev1.StatsResponse{Missing: missing}
	for shard, st := range stats {
		if st == nil {
			continue
		}
		resp.Events += st.Events
		resp.Shards = append(resp.Shards, &scopev1.ShardStats{Shard: uint32(shard), Events: st.Events,
			Node: q.s.node.ID(), AppliedIndex: st.AppliedIndex})
	}
	resp.Nodes = []*scopev1.NodeStats{q.s.nodeStats()}
	return connect.NewResponse(resp), nil
}
