package node

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// stallingProposer models a shard whose raft queue is full: Propose of a
// stalled shard blocks (as raft.Apply blocks up to its enqueue timeout)
// until the stall is lifted; other shards commit in memory.
type stallingProposer struct {
	mem     *MemProposer
	stalled uint32
	entered chan struct{} // closed when the stalled shard's first Propose blocks
	lift    chan struct{}
	once    sync.Once
}

func (s *stallingProposer) Propose(shard uint32, evs []correlate.Event) ProposalFuture {
	if shard == s.stalled {
		s.once.Do(func() { close(s.entered) })
		<-s.lift
	}
	return s.mem.Propose(shard, evs)
}

// One writer owns two shards; one shard's raft queue stalls. The other
// shard keeps committing with low latency, and the stalled shard's events
// commit once it recovers.
func TestPoolStalledShardDoesNotBlockOthers(t *testing.T) {
	sp := &stallingProposer{mem: NewMemProposer(0, true), stalled: 0,
		entered: make(chan struct{}), lift: make(chan struct{})}
	cfg := testConfig(2)
	cfg.Writers = 1 // both shards owned by the same writer
	cfg.FlushInterval = 0
	pool := newTestPool(t, cfg, sp, nil)
	pool.Start()
	lifted := false
	lift := func() {
		if !lifted {
			lifted = true
			close(sp.lift)
		}
	}
	defer lift()

	stuck, err := pool.Submit(context.Background(), 0, events("a", 0, 4), true)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sp.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled shard's batch was never proposed")
	}
	// The other shard: 20 sequential submissions, each must commit quickly.
	const bound = 2 * time.Second // generous for -race on 2 cores; a stall is unbounded
	var worst time.Duration
	for i := range 20 {
		start := time.Now()
		tk, err := pool.Submit(context.Background(), 1, events("b", i*3, 3), true)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		err = tk.Wait(ctx)
		cancel()
		if err != nil {
			t.Fatalf("shard 1 submission %d while shard 0 is stalled: %v (blocked behind the stalled shard)", i, err)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("shard 1: worst commit latency %v while shard 0 stalled", worst)
	select {
	case <-stuck.Done():
		t.Fatal("the stalled shard's ticket resolved while its raft queue was stalled")
	default:
	}
	lift()
	if err := waitTicket(t, stuck); err != nil {
		t.Fatalf("stalled shard after recovery: %v", err)
	}
	checkLog(t, sp.mem.Committed(0), map[string]int{"a": 4})
	checkLog(t, sp.mem.Committed(1), map[string]int{"b": 60})
}
