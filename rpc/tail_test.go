package rpc_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// TestTailStartsAtOnce: the call returns before anything matches (the
// started item carries the response headers), and every event ingested
// after started arrives — no probing for the sources to be ready.
func TestTailStartsAtOnce(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: shards})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opened := make(chan struct{})
	var stream *connect.ServerStreamForClient[scopev1.TailResponse]
	go func() {
		defer close(opened)
		var err error
		stream, err = n.Query.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: "quiet@h"}))
		if err != nil {
			t.Errorf("tail: %v", err)
		}
	}()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("Tail did not return while nothing matched")
	}
	if stream == nil {
		t.FailNow()
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	st := stream.Msg().GetStarted()
	if len(st.GetShards()) != shards || len(st.GetPending()) != 0 {
		t.Fatalf("first item %v, want started on %d shards", stream.Msg(), shards)
	}
	var want []string
	for i := range 8 {
		e := ev(correlate.Process{Origin: "quiet@h", PID: fmt.Sprintf("<0.%d.0>", i)}, scopev1.Kind_KIND_STATE_CHANGE, int64(i+1))
		want = append(want, e.EventId)
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}})); err != nil {
			t.Fatal(err)
		}
	}
	got := make(map[string]bool)
	for len(got) < len(want) && stream.Receive() {
		got[stream.Msg().GetEvent().GetEventId()] = true
	}
	for _, id := range want {
		if !got[id] {
			t.Fatalf("event %s ingested after started never tailed (%v)", id, stream.Err())
		}
	}
}

// smallWindowClient speaks HTTP/1.1 over sockets with a small receive
// buffer, so a client that does not read pushes back on the server after
// kilobytes rather than megabytes.
func smallWindowClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, ReadBufferSize: 4096}}
}

// TestTailSlowConsumer is the issue's "a slow consumer gets an explicit lag
// signal": a client that does not read while events are ingested, then
// reads, gets Lagged{shard, "slow_consumer", dropped > 0}; the events it
// gets are in order per process; and for every shard the delivered events
// plus the dropped count equal the matching events ingested. The account
// is exact because drops happen in one place only (the source node's
// bounded subscription buffer, which counts them per shard); the merge and
// the HTTP stream push back instead of dropping.
func TestTailSlowConsumer(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{Shards: shards, EditRPC: func(c *rpc.Config) { c.TailBuffer = 16 }})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	client := smallWindowClient()
	defer client.CloseIdleConnections()
	q := scopev1connect.NewQueryServiceClient(client, n.URL)
	stream, err := q.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: "slow@h"}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStarted() == nil {
		t.Fatalf("first item: %v %v", stream.Msg(), stream.Err())
	}

	// Ingest without reading: 16 processes, 2000 events of 2 KiB payload,
	// plus events the filter does not match.
	const procs, perProc = 16, 125
	payload := strings.Repeat("x", 2048)
	sent := make(map[uint32]int) // matching events per shard
	for round := range perProc {
		var batch []*scopev1.Event
		for p := range procs {
			proc := correlate.Process{Origin: "slow@h", PID: fmt.Sprintf("<0.%d.0>", p)}
			e := ev(proc, scopev1.Kind_KIND_STATE_CHANGE, int64(round+1))
			e.Payload = payload
			batch = append(batch, e, ev(correlate.Process{Origin: "other@h", PID: proc.PID}, scopev1.Kind_KIND_EXIT, int64(round+1)))
			sent[correlate.ShardOf(proc.Origin, proc.PID, shards)]++
		}
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: batch})); err != nil {
			t.Fatal(err)
		}
	}

	delivered := make(map[uint32]int)
	dropped := make(map[uint32]int)
	last := make(map[string]int64)
	total := func() (n int) {
		for s := range sent {
			n += delivered[s] + dropped[s]
		}
		return n
	}
	for total() < procs*perProc && stream.Receive() {
		switch x := stream.Msg().GetItem().(type) {
		case *scopev1.TailResponse_Event:
			e := x.Event
			if e.GetOrigin() != "slow@h" {
				t.Fatalf("tail sent a non-matching event %v", e)
			}
			if e.GetTimestampNs() <= last[e.GetPid()] {
				t.Fatalf("pid %s: event at %d after %d", e.GetPid(), e.GetTimestampNs(), last[e.GetPid()])
			}
			last[e.GetPid()] = e.GetTimestampNs()
			delivered[e.GetShard()]++
		case *scopev1.TailResponse_Lagged:
			l := x.Lagged
			if l.Shard == nil || l.GetReason() != "slow_consumer" || l.GetDropped() == 0 {
				t.Fatalf("lagged %v: want a shard, reason slow_consumer and dropped > 0", l)
			}
			dropped[l.GetShard()] += int(l.GetDropped())
		default:
			t.Fatalf("unexpected item %v", stream.Msg())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	var lost int
	for s, want := range sent {
		if delivered[s]+dropped[s] != want {
			t.Errorf("shard %d: delivered %d + dropped %d, want %d", s, delivered[s], dropped[s], want)
		}
		lost += dropped[s]
	}
	if lost == 0 {
		t.Fatalf("nothing dropped (delivered %v): the client never fell behind", delivered)
	}
	t.Logf("delivered %v, dropped %v", delivered, dropped)
}
