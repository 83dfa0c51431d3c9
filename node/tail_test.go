package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// nextItem reads one item of s, failing the test after a deadline.
func nextItem(t *testing.T, s *node.Subscription) node.TailItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	it, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("tail: %v", err)
	}
	return it
}

// pidOn returns a pid of origin "o" on shard.
func pidOn(t *testing.T, shard, shards uint32) string {
	t.Helper()
	for i := range 10_000 {
		pid := fmt.Sprintf("<0.%d.0>", i)
		if correlate.ShardOf("o", pid, shards) == shard {
			return pid
		}
	}
	t.Fatalf("no pid on shard %d", shard)
	return ""
}

// TestTailRealNode follows shards of a real node through raft: events in
// apply order with increasing positions, gone for an unhosted shard and
// when the replica is dropped.
func TestTailRealNode(t *testing.T) {
	const shards = 4
	n := bootstrapped(t, "n1", t.TempDir(), shards)
	sub, err := n.Subscribe(node.TailSpec{Shards: []uint32{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for range 2 {
		if it := nextItem(t, sub); it.Kind != node.TailStart {
			t.Fatalf("first items: %+v", it)
		}
	}
	pid := pidOn(t, 1, shards)
	var events []correlate.Event
	for i := range 50 {
		events = append(events, call("o", pid, "m", "f", int64(i+1)))
	}
	mustIngest(t, n.Node, node.Committed, events[:20]...)
	mustIngest(t, n.Node, node.Committed, events[20:]...)
	var prev node.TailPosition
	for i := range events {
		it := nextItem(t, sub)
		if it.Kind != node.TailEvent || it.Shard != 1 || it.Event.TimestampNs != int64(i+1) {
			t.Fatalf("item %d: %+v", i, it)
		}
		if i > 0 && !(it.Index > prev.Index || it.Index == prev.Index && it.Offset > prev.Offset && !prev.Last) {
			t.Fatalf("item %d at %+v after %+v", i, it.TailPosition, prev)
		}
		prev = it.TailPosition
	}
	if !prev.Last {
		t.Fatalf("the last event %+v is not marked last of its entry", prev)
	}

	if err := n.DropReplica(2); err != nil {
		t.Fatal(err)
	}
	if it := nextItem(t, sub); it.Kind != node.TailGone || it.Shard != 2 || it.Reason != "replica dropped" {
		t.Fatalf("after DropReplica: %+v", it)
	}
	sub2, err := n.Subscribe(node.TailSpec{Shards: []uint32{2}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if it := nextItem(t, sub2); it.Kind != node.TailGone || it.Reason != "no replica on this node" {
		t.Fatalf("unhosted shard: %+v", it)
	}
	if _, err := n.Subscribe(node.TailSpec{Shards: []uint32{n.MaxShards()}}); !errors.Is(err, node.ErrNoShard) {
		t.Fatalf("shard %d beyond every doubling of %d: %v", n.MaxShards(), shards, err)
	}
	if _, err := n.Subscribe(node.TailSpec{Buffer: 1}); !errors.Is(err, node.ErrConfig) {
		t.Fatalf("buffer 1: %v", err)
	}
}

// TestTailReplicaFailed: a replica whose store write fails stops applying;
// its subscribers get gone (reason "replica failed") instead of waiting
// forever, and a new subscription is told at once.
func TestTailReplicaFailed(t *testing.T) {
	var failWAL atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failWAL.Load() && strings.HasSuffix(op.Path, ".log") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return errorfs.ErrInjected
		}
		return nil
	})
	tn := openTestNode(t, "n1", t.TempDir(), 1, func(c *node.Config) {
		c.Store.FS = errorfs.Wrap(vfs.NewMem(), inj)
		c.Store.Sync = true
	})
	if err := tn.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "shard led", 10*time.Second, func() bool { return tn.Replica(0).IsLeader() })
	sub, err := tn.Subscribe(node.TailSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if it := nextItem(t, sub); it.Kind != node.TailStart {
		t.Fatalf("first item: %+v", it)
	}
	failWAL.Store(true)
	res := tn.Ingest(ctx, []correlate.Event{call("o", "<0.1.0>", "m", "f", 1)}, node.Committed)
	if res.Shards[0].Err == nil {
		t.Fatal("ingest succeeded on a failing store")
	}
	if it := nextItem(t, sub); it.Kind != node.TailGone || it.Reason != "replica failed" {
		t.Fatalf("after the failure: %+v", it)
	}
	sub2, err := tn.Subscribe(node.TailSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if it := nextItem(t, sub2); it.Kind != node.TailGone || it.Reason != "replica failed" {
		t.Fatalf("subscribing to a failed replica: %+v", it)
	}
	// The store refuses writes from here on: closing reports it.
	closeCtx, closeCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer closeCancel()
	_ = tn.Node.Close(closeCtx)
	_ = tn.mux.Close()
	tn.Node = nil
}
