package clustertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestStatsEverywhere checks that every node of a 3-node cluster answers
// Stats identically: events and kinds summed over all shards, top functions
// over all shards, each shard answered by its leader (named), and every
// member listed.
func TestStatsEverywhere(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	for i, n := range c.Nodes {
		for j := range 2 {
			pid := fmt.Sprintf("<0.%d.0>", 100+10*i+j)
			ts := int64(1000 * (10*i + j + 1))
			ingest(t, n, ev(scopev1.Kind_KIND_CALL, pid, ts), ev(scopev1.Kind_KIND_RETURN, pid, ts+5))
		}
	}
	stats := func(n *Node) (*scopev1.StatsResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := n.Query.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{}))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	}
	want := &scopev1.StatsResponse{
		Events: 12,
		Kinds: []*scopev1.KindCount{{Kind: scopev1.Kind_KIND_CALL, Events: 6},
			{Kind: scopev1.Kind_KIND_RETURN, Events: 6}},
		TopFunctions: []*scopev1.FunctionStats{{Module: "worker", Function: "handle", Arity: 1, Calls: 6, TotalDurationNs: 30}},
	}
	var last string
	defer func() {
		if t.Failed() {
			t.Log("last answer: " + last)
		}
	}()
	WaitFor(t, "every node answers Stats identically", 20*time.Second, func() bool {
		var first *scopev1.StatsResponse
		for _, n := range c.Nodes {
			r, err := stats(n)
			if err != nil {
				last = fmt.Sprintf("%s: %v", n.Name, err)
				return false
			}
			if len(r.GetNodes()) != 3 {
				last = fmt.Sprintf("%s lists nodes %v", n.Name, r.GetNodes())
				return false
			}
			for i, m := range r.GetNodes() {
				if m.GetName() != c.Nodes[i].Name {
					last = fmt.Sprintf("%s lists nodes %v", n.Name, r.GetNodes())
					return false
				}
			}
			for _, sh := range r.GetShards() {
				if l := c.ShardLeader(sh.GetShard()); l == nil || sh.GetNode() != l.Name {
					last = fmt.Sprintf("%s: shard %d answered by %q, not its leader", n.Name, sh.GetShard(), sh.GetNode())
					return false
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			sh, err := n.Admin.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
			cancel()
			if err != nil {
				last = fmt.Sprintf("%s: Shards: %v", n.Name, err)
				return false
			}
			if r := sh.Msg.GetReplicationFactor(); r != 3 {
				last = fmt.Sprintf("%s: Shards reports replication factor %d, want the configured 3", n.Name, r)
				return false
			}
			got := &scopev1.StatsResponse{Events: r.GetEvents(), Kinds: r.GetKinds(), TopFunctions: r.GetTopFunctions()}
			if !proto.Equal(got, want) {
				last = fmt.Sprintf("%s: %v, want %v", n.Name, got, want)
				return false
			}
			r.Nodes = nil // this node's own entry is the detailed one
			if first == nil {
				first = r
			} else if !proto.Equal(r, first) {
				last = fmt.Sprintf("%s: %v, %s: %v", n.Name, r, c.Nodes[0].Name, first)
				return false
			}
		}
		return true
	})
}
