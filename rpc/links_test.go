package rpc_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// TestQueryPeerLinks: a time-range answer's SENDs and SPAWNs carry
// exactly the links an event-by-event read of the store gives: its own
// shard's links, then those of its kind stored on the peer's shard (what
// the batched peer-link read must reproduce).
func TestQueryPeerLinks(t *testing.T) {
	const shards = 8
	n := rpctest.Start(t, rpctest.Options{Shards: shards})
	ctx := context.Background()
	d := genQueryData(3000)
	for batch := range slices.Chunk(d.events, 1000) {
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: batch})); err != nil {
			t.Fatal(err)
		}
	}
	st := n.Node.Store()
	// want is the links of e read one event at a time from the store.
	want := func(e *correlate.Event) []correlate.Link {
		t.Helper()
		own := correlate.ShardOf(e.Origin, e.PID, shards)
		stored, err := st.Get(own, e.ID)
		if err != nil {
			t.Fatalf("store Get %s: %v", e.ID, err)
		}
		links := stored.Links
		typ := map[correlate.Kind]correlate.LinkType{correlate.KindSend: correlate.LinkDeliveredTo, correlate.KindSpawn: correlate.LinkSpawned}[e.Kind]
		if peer := correlate.ShardOf(e.PeerOrigin, e.PeerPID, shards); typ != 0 && e.PeerPID != "" && peer != own {
			peerLinks, err := st.Edges(peer, e.ID)
			if err != nil {
				t.Fatalf("store Edges %s: %v", e.ID, err)
			}
			for _, l := range peerLinks {
				if l.Type == typ && !slices.Contains(links, l) {
					links = append(links, l)
				}
			}
		}
		return links
	}
	query := func(from int64) []correlate.Event {
		t.Helper()
		resp, err := n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{FromNs: from, ToNs: d.endNs, Limit: 1000}))
		if err != nil {
			t.Fatal(err)
		}
		es, err := rpc.EventsFromProto(resp.Msg.GetEvents())
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range resp.Msg.GetEvents() { // EventsFromProto reads what a client may send: no links
			for _, l := range p.GetLinks() {
				to, err := ulid.ParseStrict(l.GetTargetEventId())
				if err != nil {
					t.Fatal(err)
				}
				es[i].Links = append(es[i].Links, correlate.Link{Type: linkType(t, l.GetType()), Target: to})
			}
		}
		return es
	}
	// Notices pair SENDs and SPAWNs asynchronously: wait until every one
	// in the data has its peer link, so the store no longer changes.
	froms := []int64{d.startNs, (d.startNs + d.endNs) / 2}
	rpctest.WaitFor(t, "every SEND and SPAWN paired", 30*time.Second, func() bool {
		for _, from := range froms {
			for _, e := range query(from) {
				if (e.Kind == correlate.KindSend || e.Kind == correlate.KindSpawn) && len(want(&e)) == 0 {
					return false
				}
			}
		}
		return true
	})
	remote := 0
	for _, from := range froms {
		es := query(from)
		if len(es) == 0 {
			t.Fatalf("no events from %d", from)
		}
		for i := range es {
			e := &es[i]
			w := want(e)
			if !slices.Equal(e.Links, w) {
				t.Fatalf("%s %s links %v, want %v", e.Kind, e.ID, e.Links, w)
			}
			if (e.Kind == correlate.KindSend || e.Kind == correlate.KindSpawn) &&
				correlate.ShardOf(e.PeerOrigin, e.PeerPID, shards) != correlate.ShardOf(e.Origin, e.PID, shards) {
				remote++
			}
		}
	}
	if remote < 20 {
		t.Fatalf("only %d SENDs/SPAWNs with a peer on another shard: the test checks too little", remote)
	}
}

// linkType maps a public link type back to the model's.
func linkType(t *testing.T, p scopev1.LinkType) correlate.LinkType {
	t.Helper()
	for typ := correlate.LinkType(1); typ.Valid(); typ++ {
		if rpc.LinkTypeToProto(typ) == p {
			return typ
		}
	}
	t.Fatalf("unknown link type %v", p)
	return 0
}
