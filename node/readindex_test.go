package node_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// Reads that arrive while a leadership confirmation runs share the next
// one: with the first round stuck behind a held apply (its barrier waits
// for the FSM), every later read joins one second round, and all of them
// answer once the apply goes through.
func TestReadIndexBatchesConcurrentReads(t *testing.T) {
	var gate atomic.Pointer[chan struct{}] // set: applies wait until it is closed
	entered := make(chan struct{}, 1)
	a := openTestNode(t, "a", t.TempDir(), 1, func(c *node.Config) {
		c.BeforeApply = func(uint32) {
			if g := gate.Load(); g != nil {
				entered <- struct{}{}
				<-*g
			}
		}
	})
	if err := a.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	r := a.Replica(0)
	testwait.For(t, "a leads", 10*time.Second, r.IsLeader)

	held := make(chan struct{})
	gate.Store(&held)
	f := r.Propose(&correlate.Batch{Events: []correlate.Event{call("app@h", "<0.1.0>", "m", "f", 1)}}, time.Second)
	<-entered // the FSM waits in the middle of applying it

	// The term's first read waits for a barrier, behind the held apply.
	ctx := context.Background()
	const readers = 32
	errs := make(chan error, readers)
	go func() { errs <- r.ReadIndex(ctx) }()
	testwait.For(t, "the first round to run", 10*time.Second, func() bool { running, _ := node.ReadsWaiting(r); return running })
	for range readers - 1 {
		go func() { errs <- r.ReadIndex(ctx) }()
	}
	testwait.For(t, "every later read to wait for the next round", 10*time.Second, func() bool {
		_, next := node.ReadsWaiting(r)
		return next == readers-1
	})
	gate.Store(nil)
	close(held)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	for range readers {
		if err := <-errs; err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if got := node.ReadRounds(r); got != 2 {
		t.Fatalf("%d concurrent reads ran %d leadership confirmations, want 2", readers, got)
	}
}

// A follower never confirms a read: it answers with who leads.
func TestReadIndexOnFollower(t *testing.T) {
	a := bootstrapped(t, "a", t.TempDir(), 1)
	b := openTestNode(t, "b", t.TempDir(), 1, nil)
	rb, err := b.OpenReplica(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Replica(0).Raft().AddVoter("b", raft.ServerAddress(b.mux.Addr().String()), 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b knows the leader", 10*time.Second, func() bool { _, id := rb.Leader(); return id == "a" })
	err = rb.ReadIndex(context.Background())
	var nl *node.NotLeaderError
	if !errors.As(err, &nl) || nl.LeaderID != "a" {
		t.Fatalf("read on a follower: %v; want a NotLeaderError naming a", err)
	}
}
