package rpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// TestTailFollowsShardsAReshardCreates: a tail started before a reshard
// delivers the events of the processes the split moved to the new shards,
// from the new shards, with no gap reported (the children stored no event
// before the tail followed them).
func TestTailFollowsShardsAReshardCreates(t *testing.T) {
	const base = 2
	n := rpctest.Start(t, rpctest.Options{Shards: base})
	openChildShards(t, n, base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := n.Query.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: "moved@h"}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	if st := stream.Msg().GetStarted(); len(st.GetShards()) != base {
		t.Fatalf("first item %v, want started on the %d shards of the layout", stream.Msg(), base)
	}

	splitAll(t, n, base)
	rpctest.WaitFor(t, "the tail follows the new shards", 10*time.Second, func() bool {
		return metricValue(t, n, "scope_rpc_tail_shards_followed_total") == base
	})

	layout := n.Node.Layout()
	want := map[string]bool{}
	for i := 0; len(want) < 8; i++ {
		p := correlate.Process{Origin: "moved@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		if layout.ShardOf(p.Origin, p.PID) < base {
			continue
		}
		e := ev(p, scopev1.Kind_KIND_STATE_CHANGE, int64(i+1))
		want[e.EventId] = true
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}})); err != nil {
			t.Fatal(err)
		}
	}
	for len(want) > 0 && stream.Receive() {
		m := stream.Msg()
		if l := m.GetLagged(); l != nil {
			t.Fatalf("lagged on shard %d (%s): the new shard had stored no event before the tail followed it", l.GetShard(), l.GetReason())
		}
		delete(want, m.GetEvent().GetEventId())
	}
	if len(want) > 0 {
		t.Fatalf("%d events of moved processes never tailed: %v", len(want), stream.Err())
	}
}
