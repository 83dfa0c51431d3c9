package node_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

func TestEachShard(t *testing.T) {
	shards := make([]uint32, 1000)
	for i := range shards {
		shards[i] = uint32(i)
	}
	var calls [1000]atomic.Int32
	var running, most atomic.Int32
	err := node.EachShard(shards, func(s uint32) error {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		calls[s].Add(1)
		running.Add(-1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for s := range calls {
		if n := calls[s].Load(); n != 1 {
			t.Fatalf("shard %d called %d times", s, n)
		}
	}
	if m := most.Load(); m > 32 {
		t.Errorf("%d calls at once, want at most 32", m)
	}

	// The lowest failing shard's error; nothing starts after a failure.
	var after atomic.Int32
	var failedAt atomic.Bool
	err = node.EachShard(shards, func(s uint32) error {
		if failedAt.Load() {
			after.Add(1)
		}
		if s == 7 || s == 9 {
			failedAt.Store(true)
			return fmt.Errorf("shard %d broke", s)
		}
		return nil
	})
	if err == nil || (err.Error() != "shard 7 broke" && err.Error() != "shard 9 broke") {
		t.Fatalf("error %v, want shard 7's (or 9's, if 7 never started)", err)
	}
	if n := after.Load(); n > 32 {
		t.Errorf("%d calls started after the failure, want at most the workers already past the check", n)
	}
	if err := node.EachShard(nil, func(uint32) error { return errors.New("called") }); err != nil {
		t.Fatalf("no shards: %v", err)
	}
}

// TestBootstrapOpensInParallelAndCloseWaits: Bootstrap opens many shards
// at once (their fsyncs shared), every one gets a leader; a Close racing
// opens of other shards closes every replica an open published (goleak
// checks that no raft group is left running).
func TestBootstrapOpensInParallelAndCloseWaits(t *testing.T) {
	n := openTestNode(t, "a", t.TempDir(), 64, nil)
	if err := n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	if got := len(n.Replicas()); got != 64 {
		t.Fatalf("%d replicas after Bootstrap, want 64", got)
	}
	testwait.For(t, "every shard has a leader", 20*time.Second, func() bool {
		for _, r := range n.Replicas() {
			if !r.IsLeader() {
				return false
			}
		}
		return true
	})

	m := openTestNode(t, "b", t.TempDir(), 64, nil)
	var wg sync.WaitGroup
	results := make([]error, 64)
	for s := range uint32(64) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[s] = m.OpenReplica(s)
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for s, err := range results {
		if err != nil && !errors.Is(err, node.ErrClosed) && !errors.Is(err, node.ErrPoolClosed) {
			t.Errorf("shard %d: %v", s, err)
		}
	}
}
