package clustertest

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// BenchmarkRemoteEvents times one process's Events page (100 events)
// asked of a node that does not hold the process's shard (remote: one
// NodeService.ShardRead hop) and of the node that does (local), through
// the public Connect API in both cases. The difference is the cost of a
// remote shard read.
//
//	go test -run '^$' -bench RemoteEvents -benchtime 2000x ./cluster/clustertest/
func BenchmarkRemoteEvents(b *testing.B) {
	const shards = 2
	c := Start(b, Options{Nodes: 2, Shards: shards, Replicas: 1})
	var pid string
	var holder, other *Node
	for i := 0; holder == nil; i++ {
		pid = fmt.Sprintf("<0.%d.0>", i)
		holder = c.ShardLeader(correlate.ShardOf("app@host", pid, shards))
	}
	for _, n := range c.Nodes {
		if n != holder {
			other = n
		}
	}
	events := make([]*scopev1.Event, 100)
	for i := range events {
		events[i] = &scopev1.Event{Origin: "app@host", Pid: pid, Kind: scopev1.Kind_KIND_STATE_CHANGE,
			TimestampNs: int64(1000 + i), Payload: "state"}
	}
	ctx := context.Background()
	if _, err := holder.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events})); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		n    *Node
	}{{"remote", other}, {"local", holder}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			req := &scopev1.EventsRequest{Origin: "app@host", Pid: pid, Limit: 100}
			for b.Loop() {
				resp, err := tc.n.Query.Events(ctx, connect.NewRequest(req))
				if err != nil {
					b.Fatal(err)
				}
				if len(resp.Msg.GetEvents()) != len(events) {
					b.Fatalf("%d events", len(resp.Msg.GetEvents()))
				}
			}
		})
	}
}
