package rpc

import (
	"context"
	"slices"
	"strings"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// Bounds of StatsRequest.top_n.
const (
	defaultTopN = 10
	maxTopN     = 1000
)

// Stats reads every shard's summary and per-bucket aggregates (their cost
// grows with time buckets and distinct functions, never with events) and
// merges them: events and kinds summed, functions summed across shards and
// the top_n by calls kept, one entry per shard naming the node whose
// replica answered, one per cluster member.
func (q queryService) Stats(ctx context.Context, req *connect.Request[scopev1.StatsRequest]) (*connect.Response[scopev1.StatsResponse], error) {
	const proc = scopev1connect.QueryServiceStatsProcedure
	m := req.Msg
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	topN := int(m.GetTopN())
	switch {
	case topN == 0:
		topN = defaultTopN
	case topN > maxTopN:
		return nil, q.s.fail(proc, invalid("top_n", topN, "must be at most 1000"))
	}
	shards := q.s.planner.allShards()
	stats := make([]*store.ShardStats, len(shards))
	failures := q.s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		st, err := r.Stats(ctx, shard)
		if err != nil {
			return err
		}
		if st.Node == "" { // answered by this node's own store
			st.Node = q.s.node.ID()
		}
		stats[shard] = &st
		return nil
	})
	missing, err := q.s.planner.settle(proc, failures, m.GetAllowPartial())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	resp := mergeStats(stats, topN)
	resp.Missing = missing
	resp.Lag = lag.proto()
	resp.Nodes = q.s.allNodeStats()
	return connect.NewResponse(resp), nil
}

// mergeStats combines per-shard stats (nil: the shard did not answer) into
// one response. Functions are summed across shards before the top n are
// taken, so the ranking is exact whatever the shard count.
func mergeStats(stats []*store.ShardStats, topN int) *scopev1.StatsResponse {
	resp := &scopev1.StatsResponse{}
	var kinds [correlate.KindStateChange + 1]uint64
	type fn struct {
		module, function string
		arity            uint32
	}
	fns := map[fn]*store.FunctionStats{}
	for shard, st := range stats {
		if st == nil {
			continue
		}
		resp.Events += st.Events
		for k, n := range st.Kinds {
			kinds[k] += n
		}
		for _, f := range st.Functions {
			key := fn{f.Module, f.Function, f.Arity}
			sum := fns[key]
			if sum == nil {
				sum = &store.FunctionStats{Module: f.Module, Function: f.Function, Arity: f.Arity}
				fns[key] = sum
			}
			sum.Calls += f.Calls
			sum.Exceptions += f.Exceptions
			sum.DurationNs += f.DurationNs
		}
		resp.Shards = append(resp.Shards, &scopev1.ShardStats{Shard: uint32(shard), Events: st.Events,
			Node: st.Node, AppliedIndex: st.AppliedIndex})
	}
	for k := correlate.KindCall; k <= correlate.KindStateChange; k++ {
		if kinds[k] > 0 {
			resp.Kinds = append(resp.Kinds, &scopev1.KindCount{Kind: scopev1.Kind(k), Events: kinds[k]})
		}
	}
	all := make([]store.FunctionStats, 0, len(fns))
	for _, f := range fns {
		all = append(all, *f)
	}
	store.SortFunctionsByCalls(all)
	for _, f := range all[:min(topN, len(all))] {
		resp.TopFunctions = append(resp.TopFunctions, &scopev1.FunctionStats{Module: f.Module, Function: f.Function,
			Arity: f.Arity, Calls: f.Calls, TotalDurationNs: f.DurationNs, Exceptions: f.Exceptions})
	}
	return resp
}

// allNodeStats describes every member: this node in full, the others with
// what gossip says of them (name, version, shards led); their replicas,
// store size and counters are only known to themselves.
func (s *Server) allNodeStats() []*scopev1.NodeStats {
	self := s.nodeStats()
	out := []*scopev1.NodeStats{self}
	if s.cluster != nil {
		for _, m := range s.cluster.Members() {
			if m.GetName() == self.GetName() || m.GetStatus() == scopev1.MemberStatus_MEMBER_STATUS_LEFT {
				continue
			}
			out = append(out, &scopev1.NodeStats{Name: m.GetName(), Version: m.GetVersion(),
				Leaders: uint32(len(m.GetShardsLed()))})
		}
	}
	slices.SortFunc(out, func(a, b *scopev1.NodeStats) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}
