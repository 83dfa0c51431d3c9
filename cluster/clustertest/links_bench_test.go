package clustertest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// BenchmarkTimeRangePeerLinks times a 1,000-event time-range Events page
// on a 3-node cluster (6 shards, one replica each) whose events are 10%
// SENDs to processes on other shards: completing the answer's SENDs with
// their DELIVERED_TO links reads every peer shard, most of them remote.
//
//	go test -run '^$' -bench TimeRangePeerLinks -benchtime 200x ./cluster/clustertest/
func BenchmarkTimeRangePeerLinks(b *testing.B) {
	const shards, total = 6, 1000
	c := Start(b, Options{Nodes: 3, Shards: shards, Replicas: 1})
	procs := make([]string, 24)
	for i := range procs {
		procs[i] = fmt.Sprintf("<0.%d.0>", i)
	}
	var events []*scopev1.Event
	sends := 0
	ts := int64(1_000_000)
	add := func(e *scopev1.Event) {
		ts += 1000
		e.Origin, e.TimestampNs = "app@host", ts
		events = append(events, e)
	}
	for i := 0; len(events) < total; i++ {
		p := procs[i%len(procs)]
		if i%20 != 0 {
			add(&scopev1.Event{Pid: p, Kind: scopev1.Kind_KIND_STATE_CHANGE, Payload: "state"})
			continue
		}
		q := procs[(i*7+5)%len(procs)]
		if correlate.ShardOf("app@host", p, shards) == correlate.ShardOf("app@host", q, shards) {
			continue
		}
		msg := fmt.Sprintf("m%d", i)
		add(&scopev1.Event{Pid: p, Kind: scopev1.Kind_KIND_SEND, PeerOrigin: "app@host", PeerPid: q, Payload: msg})
		add(&scopev1.Event{Pid: q, Kind: scopev1.Kind_KIND_RECEIVE, PeerOrigin: "app@host", PeerPid: p, Payload: msg})
		sends++
	}
	ctx := context.Background()
	n := c.Nodes[0]
	for batch := range slices.Chunk(events, 500) {
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: batch})); err != nil {
			b.Fatal(err)
		}
	}
	req := &scopev1.EventsRequest{FromNs: 0, ToNs: ts, Limit: total}
	linked := func() int {
		resp, err := n.Query.Events(ctx, connect.NewRequest(req))
		if err != nil {
			b.Fatal(err)
		}
		k := 0
		for _, e := range resp.Msg.GetEvents() {
			if e.GetKind() == scopev1.Kind_KIND_SEND && len(e.GetLinks()) > 0 {
				k++
			}
		}
		return k
	}
	WaitFor(b, "every SEND delivered", 30*time.Second, func() bool { return linked() == sends })
	b.Logf("%d events, %d SENDs to another shard", len(events), sends)
	b.ReportAllocs()
	for b.Loop() {
		if k := linked(); k != sends {
			b.Fatalf("%d of %d SENDs linked", k, sends)
		}
	}
}
