package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
)

// countingMetrics counts what the pool reports.
type countingMetrics struct {
	in, refused, committed, failed, batches, errs, retries, restarts atomic.Int64
	redirected                                                       atomic.Int64
	ups, downs, moves, active, applied                               atomic.Int64
	shed                                                             atomic.Int64
}

func (m *countingMetrics) WritersActive(n int) { m.active.Store(int64(n)) }
func (m *countingMetrics) WritersScaled(up bool) {
	if up {
		m.ups.Add(1)
	} else {
		m.downs.Add(1)
	}
}
func (m *countingMetrics) ShardAdded(uint32)                       {}
func (m *countingMetrics) WriterUtilisation(float64)               {}
func (m *countingMetrics) ShardMoved(uint32)                       { m.moves.Add(1) }
func (m *countingMetrics) AcceptedToApplied(uint32, time.Duration) { m.applied.Add(1) }

func (m *countingMetrics) EventsIn(_ uint32, n int)              { m.in.Add(int64(n)) }
func (m *countingMetrics) EventsRefused(_ uint32, n int)         { m.refused.Add(int64(n)) }
func (m *countingMetrics) EventsShed(_ uint32, n int)            { m.shed.Add(int64(n)) }
func (m *countingMetrics) EventsCommitted(_ uint32, n int)       { m.committed.Add(int64(n)) }
func (m *countingMetrics) EventsFailed(_ uint32, n int)          { m.failed.Add(int64(n)) }
func (m *countingMetrics) Batch(uint32, int)                     { m.batches.Add(1) }
func (m *countingMetrics) ApplyLatency(uint32, time.Duration)    {}
func (m *countingMetrics) ProposalError(uint32, error)           { m.errs.Add(1) }
func (m *countingMetrics) Retry(uint32)                          { m.retries.Add(1) }
func (m *countingMetrics) WriterRestart(int)                     { m.restarts.Add(1) }
func (m *countingMetrics) Redirected(_ uint32, n int, _ error)   { m.redirected.Add(int64(n)) }
func (m *countingMetrics) Rerouted(uint32, int, error)           {}
func (m *countingMetrics) RingFill(_ uint32, used, capacity int) {}
func (m *countingMetrics) RedirectBacklog(uint32, int)           {}

func testConfig(shards int) PoolConfig {
	cfg := DefaultPoolConfig()
	for s := range shards {
		cfg.Shards = append(cfg.Shards, uint32(s))
	}
	cfg.RingCapacity = 64
	cfg.BatchSize = 16
	cfg.FlushInterval = 200 * time.Microsecond
	cfg.Writers = 3
	cfg.MaxInflight = 4
	cfg.Retry = RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

func newTestPool(t *testing.T, cfg PoolConfig, p Proposer, m PoolMetrics) *Pool {
	t.Helper()
	pool, err := NewPool(cfg, p, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := pool.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return pool
}

// events returns n events of producer prod numbered from seq.
func events(prod string, seq, n int) []correlate.Event {
	evs := make([]correlate.Event, n)
	for i := range evs {
		evs[i] = correlate.Event{Origin: "test", PID: prod, Kind: correlate.KindCall, Seq: uint64(seq + i)}
	}
	return evs
}

func waitTicket(t *testing.T, tk *Ticket) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := tk.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("ticket did not resolve")
	}
	return err
}

// checkLog verifies that each producer's events appear in shard's log
// exactly once and in order, want[producer] of them.
func checkLog(t *testing.T, log []correlate.Event, want map[string]int) {
	t.Helper()
	next := map[string]uint64{}
	for _, e := range log {
		if e.Seq != next[e.PID] {
			t.Fatalf("producer %s: got seq %d, want %d (loss, duplicate or reorder)", e.PID, e.Seq, next[e.PID])
		}
		next[e.PID]++
	}
	for prod, n := range want {
		if next[prod] != uint64(n) {
			t.Fatalf("producer %s: %d events committed, want %d", prod, next[prod], n)
		}
	}
}

// exclusiveProposer fails the test if two goroutines ever propose for the
// same shard at once, then delegates.
type exclusiveProposer struct {
	t      *testing.T
	next   Proposer
	active sync.Map // shard -> *atomic.Int32
}

func (e *exclusiveProposer) Propose(shard uint32, evs []correlate.Event) ProposalFuture {
	c, _ := e.active.LoadOrStore(shard, new(atomic.Int32))
	n := c.(*atomic.Int32)
	if n.Add(1) != 1 {
		e.t.Errorf("shard %d: two writers proposing at once", shard)
	}
	defer n.Add(-1)
	return e.next.Propose(shard, evs)
}

func TestPoolConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*PoolConfig)
	}{
		{"MaxShards", func(c *PoolConfig) { c.MaxShards = 0 }},
		{"len(Shards)", func(c *PoolConfig) { c.MaxShards = 1; c.Shards = []uint32{1, 2} }},
		{"RingCapacity", func(c *PoolConfig) { c.RingCapacity = 1000 }},
		{"RingCapacity", func(c *PoolConfig) { c.RingCapacity = 1 << 30 }},
		{"BatchSize", func(c *PoolConfig) { c.BatchSize = 0 }},
		{"BatchSize", func(c *PoolConfig) { c.BatchSize = c.RingCapacity + 1 }},
		{"FlushInterval", func(c *PoolConfig) { c.FlushInterval = -1 }},
		{"Writers", func(c *PoolConfig) { c.Writers = 0 }},
		{"MaxInflight", func(c *PoolConfig) { c.MaxInflight = 0 }},
		{"Retry.MaxAttempts", func(c *PoolConfig) { c.Retry.MaxAttempts = 0 }},
		{"Retry.InitialBackoff", func(c *PoolConfig) { c.Retry.InitialBackoff = 0 }},
		{"Retry.MaxBackoff", func(c *PoolConfig) { c.Retry.MaxBackoff = c.Retry.InitialBackoff / 2 }},
		{"Shards", func(c *PoolConfig) { c.Shards = []uint32{3, 3} }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			cfg := DefaultPoolConfig()
			tc.edit(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, ErrPoolConfig) || !strings.Contains(err.Error(), tc.field+" = ") {
				t.Fatalf("Validate = %v, want ErrPoolConfig naming %s", err, tc.field)
			}
		})
	}
	cfg := DefaultPoolConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if _, err := NewPool(cfg, nil, nil); !errors.Is(err, ErrPoolConfig) {
		t.Fatalf("nil proposer accepted: %v", err)
	}
}

func TestRetryBackoff(t *testing.T) {
	r := RetryPolicy{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 35 * time.Millisecond}
	for attempts, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond,
		3: 35 * time.Millisecond, 9: 35 * time.Millisecond} {
		if got := r.backoff(attempts); got != want {
			t.Errorf("backoff(%d) = %v, want %v", attempts, got, want)
		}
	}
}

// runProducers has producers per shard submit perProducer numbered events
// each in random-sized requests, waiting for room, and waits for all tickets.
func runProducers(t *testing.T, pool *Pool, shards, producers, perProducer int) {
	t.Helper()
	runProducersFrom(t, pool, shards, producers, 0, perProducer)
}

func wantAll(producers, perProducer int) map[string]int {
	want := map[string]int{}
	for p := range producers {
		want[strconv.Itoa(p)] = perProducer
	}
	return want
}

func TestPoolCommitsEverythingInShardOrder(t *testing.T) {
	const shards, producers, perProducer = 16, 3, 300
	mem := NewMemProposer(50*time.Microsecond, true)
	m := &countingMetrics{}
	pool := newTestPool(t, testConfig(shards), &exclusiveProposer{t: t, next: mem}, m)
	pool.Start()
	runProducers(t, pool, shards, producers, perProducer)
	for s := range shards {
		checkLog(t, mem.Committed(uint32(s)), wantAll(producers, perProducer))
		for _, b := range mem.Batches(uint32(s)) {
			if b < 1 || b > 16 {
				t.Fatalf("shard %d: batch of %d events, BatchSize 16", s, b)
			}
		}
	}
	total := int64(shards * producers * perProducer)
	if m.in.Load() != total || m.committed.Load() != total || m.failed.Load() != 0 {
		t.Fatalf("metrics in %d committed %d failed %d, want %d/%d/0",
			m.in.Load(), m.committed.Load(), m.failed.Load(), total, total)
	}
}

// A writer panicking mid-batch (after taking events, before and inside
// Propose) is restarted and loses and duplicates nothing.
func TestPoolWriterPanicLosesNothing(t *testing.T) {
	const shards, producers = 6, 2
	perProducer := 400
	if os.Getenv("SCOPE_SOAK") != "" {
		perProducer = 50_000
	}
	mem := NewMemProposer(0, true)
	var calls [shards]atomic.Int64
	// Panics inside Propose on every 3rd call per shard, before the batch is
	// accepted: a batch never panics twice in a row, so MaxAttempts 3 always
	// suffices and every event must commit exactly once.
	prop := ProposerFunc(func(shard uint32, evs []correlate.Event) ProposalFuture {
		if calls[shard].Add(1)%3 == 1 {
			panic("injected proposer panic")
		}
		return mem.Propose(shard, evs)
	})
	m := &countingMetrics{}
	pool := newTestPool(t, testConfig(shards), &exclusiveProposer{t: t, next: prop}, m)
	var taken atomic.Int64
	pool.hook = func(point string, shard uint32) {
		if point == "taken" && taken.Add(1)%5 == 0 {
			panic("injected writer panic after take")
		}
	}
	pool.Start()
	runProducers(t, pool, shards, producers, perProducer)
	for s := range shards {
		checkLog(t, mem.Committed(uint32(s)), wantAll(producers, perProducer))
	}
	if m.restarts.Load() == 0 || pool.Stats().Restarts != uint64(m.restarts.Load()) {
		t.Fatalf("restarts: metrics %d, stats %d; want equal and > 0", m.restarts.Load(), pool.Stats().Restarts)
	}
}

func TestPoolPoisonBatchFailsBack(t *testing.T) {
	var calls atomic.Int64
	prop := ProposerFunc(func(uint32, []correlate.Event) ProposalFuture {
		calls.Add(1)
		panic("always")
	})
	cfg := testConfig(1)
	pool := newTestPool(t, cfg, prop, nil)
	pool.Start()
	tk, err := pool.Submit(context.Background(), 0, events("p", 0, 5), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitTicket(t, tk); !errors.Is(err, ErrProposerPanic) {
		t.Fatalf("ticket = %v, want ErrProposerPanic", err)
	}
	if calls.Load() != int64(cfg.Retry.MaxAttempts) {
		t.Fatalf("%d Propose calls, want MaxAttempts = %d", calls.Load(), cfg.Retry.MaxAttempts)
	}
}

func TestPoolFailingProposer(t *testing.T) {
	transient := errors.New("disk on fire")
	for _, tc := range []struct {
		name      string
		err       error
		wantCalls int // per batch
	}{
		{"retried then failed", transient, 3},
		{"not leader is not retried", fmt.Errorf("%w: leader is n2", ErrNotLeader), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := &FailingProposer{Err: tc.err}
			m := &countingMetrics{}
			cfg := testConfig(1)
			cfg.BatchSize = 64 // the whole submission is one batch
			cfg.FlushInterval = 0
			pool := newTestPool(t, cfg, fp, m)
			tk, err := pool.Submit(context.Background(), 0, events("p", 0, 10), false)
			if err != nil {
				t.Fatal(err)
			}
			pool.Start()
			err = waitTicket(t, tk)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), "shard 0") {
				t.Fatalf("ticket = %v, want the proposer's reason naming the shard", err)
			}
			if fp.Calls() != uint64(tc.wantCalls) {
				t.Fatalf("%d proposals, want %d", fp.Calls(), tc.wantCalls)
			}
			if m.failed.Load() != 10 || m.retries.Load() != int64(tc.wantCalls-1) {
				t.Fatalf("failed %d retries %d", m.failed.Load(), m.retries.Load())
			}
		})
	}
}

// Failed proposals are retried until they commit: nothing is lost,
// duplicated or reordered (one proposal in flight per shard: every failed
// batch is the last one proposed, so it may be retried).
func TestPoolRetrySucceeds(t *testing.T) {
	mem := NewMemProposer(0, true)
	var calls [2]atomic.Int64
	prop := ProposerFunc(func(shard uint32, evs []correlate.Event) ProposalFuture {
		if n := calls[shard].Add(1); n <= 6 && n%2 == 0 {
			return ResolvedFuture(errors.New("transient"))
		}
		return mem.Propose(shard, evs)
	})
	cfg := testConfig(2)
	cfg.Retry.MaxAttempts = 10
	cfg.MaxInflight = 1
	m := &countingMetrics{}
	pool := newTestPool(t, cfg, prop, m)
	pool.Start()
	runProducers(t, pool, 2, 2, 100)
	for s := range 2 {
		checkLog(t, mem.Committed(uint32(s)), wantAll(2, 100))
	}
	if m.retries.Load() != 6 {
		t.Fatalf("%d retries, want 6", m.retries.Load())
	}
}

// With a deep pipeline, a failed batch is retried only if no later batch of
// its shard was proposed after it; otherwise it is failed back. So a retry
// never lands behind a later batch: each producer's committed events stay
// in order (possibly with gaps that were failed back), no event is
// committed twice, and every event of a ticket that succeeded is committed.
func TestPoolRetryNeverReorders(t *testing.T) {
	mem := NewMemProposer(200*time.Microsecond, true)
	var calls atomic.Int64
	prop := ProposerFunc(func(shard uint32, evs []correlate.Event) ProposalFuture {
		if calls.Add(1)%3 == 0 {
			return ResolvedFuture(errors.New("transient"))
		}
		return mem.Propose(shard, evs)
	})
	cfg := testConfig(1)
	cfg.Retry.MaxAttempts = 10
	cfg.MaxInflight = 4
	cfg.BatchSize = 4
	cfg.FlushInterval = 0
	pool := newTestPool(t, cfg, prop, nil)
	pool.Start()
	const producers, perProducer = 2, 300
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := map[string][]int{} // producer -> first seq of each successful ticket
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tickets []*Ticket
			for seq := 0; seq < perProducer; seq += 3 {
				tk, err := pool.Submit(context.Background(), 0, events(strconv.Itoa(p), seq, 3), true)
				if err != nil {
					t.Errorf("Submit: %v", err)
					return
				}
				tickets = append(tickets, tk)
			}
			for i, tk := range tickets {
				if err := waitTicket(t, tk); err == nil {
					mu.Lock()
					ok[strconv.Itoa(p)] = append(ok[strconv.Itoa(p)], 3*i)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	last := map[string]int64{"0": -1, "1": -1}
	stored := map[string]bool{}
	for _, e := range mem.Committed(0) {
		if int64(e.Seq) <= last[e.PID] {
			t.Fatalf("producer %s: seq %d committed after seq %d (a retry landed behind a later batch)",
				e.PID, e.Seq, last[e.PID])
		}
		last[e.PID] = int64(e.Seq)
		stored[e.PID+"/"+strconv.Itoa(int(e.Seq))] = true
	}
	for prod, firsts := range ok {
		for _, f := range firsts {
			for seq := f; seq < f+3; seq++ {
				if !stored[prod+"/"+strconv.Itoa(seq)] {
					t.Fatalf("producer %s: seq %d of a successful ticket not committed", prod, seq)
				}
			}
		}
	}
}

// checkExactlyOnce verifies that each producer's events were committed once
// each, and in order within every batch.
func checkExactlyOnce(t *testing.T, mem *MemProposer, shard uint32, want map[string]int) {
	t.Helper()
	seen := map[string]map[uint64]bool{}
	mem.mu.Lock()
	batches := mem.batches[shard]
	mem.mu.Unlock()
	for _, b := range batches {
		last := map[string]uint64{}
		for _, e := range b {
			if prev, ok := last[e.PID]; ok && e.Seq != prev+1 {
				t.Fatalf("producer %s: seq %d after %d within one batch", e.PID, e.Seq, prev)
			}
			last[e.PID] = e.Seq
			if seen[e.PID] == nil {
				seen[e.PID] = map[uint64]bool{}
			}
			if seen[e.PID][e.Seq] {
				t.Fatalf("producer %s: seq %d committed twice", e.PID, e.Seq)
			}
			seen[e.PID][e.Seq] = true
		}
	}
	for prod, n := range want {
		if len(seen[prod]) != n {
			t.Fatalf("producer %s: %d distinct events committed, want %d", prod, len(seen[prod]), n)
		}
	}
}

func TestPoolSubmitRefusals(t *testing.T) {
	m := &countingMetrics{}
	cfg := testConfig(1)
	cfg.RingCapacity = 8
	cfg.BatchSize = 8
	pool := newTestPool(t, cfg, NewMemProposer(0, false), m) // not started: the ring fills
	if _, err := pool.Submit(context.Background(), 0, events("p", 0, 6), false); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Submit(context.Background(), 0, events("p", 6, 3), false)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "shard 0") {
		t.Fatalf("Submit into a full ring = %v, want ErrFull naming shard 0", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = pool.Submit(ctx, 0, events("p", 6, 3), true)
	if !errors.Is(err, ErrFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting Submit past its deadline = %v, want ErrFull and DeadlineExceeded", err)
	}
	if _, err = pool.Submit(context.Background(), 0, events("p", 0, 9), true); !errors.Is(err, ErrBatchTooLarge) {
		t.Fatalf("Submit larger than the ring = %v", err)
	}
	if _, err = pool.Submit(context.Background(), 7, events("p", 0, 1), true); !errors.Is(err, ErrUnknownShard) {
		t.Fatalf("Submit to unknown shard = %v", err)
	}
	if m.refused.Load() != 3+3+9 || m.in.Load() != 6 {
		t.Fatalf("refused %d in %d, want 15 and 6", m.refused.Load(), m.in.Load())
	}
	if st := pool.Stats(); len(st.Shards) != 1 || st.Shards[0].Ring.Refused != 15 || st.Shards[0].Ring.Len != 6 {
		t.Fatalf("stats %+v", st)
	}
	// A waiting submitter proceeds once the writers make room.
	done := make(chan error, 1)
	go func() {
		tk, err := pool.Submit(context.Background(), 0, events("p", 6, 3), true)
		if err == nil {
			err = tk.Wait(context.Background())
		}
		done <- err
	}()
	pool.Start()
	if err := <-done; err != nil {
		t.Fatalf("waiting Submit: %v", err)
	}
}

// gatedProposer commits in memory, but its futures resolve only when the
// gate is opened.
type gatedProposer struct {
	mem  *MemProposer
	gate chan struct{}
}

type gatedFuture struct{ gate chan struct{} }

func (f gatedFuture) Wait() error { <-f.gate; return nil }

func (g *gatedProposer) Propose(shard uint32, evs []correlate.Event) ProposalFuture {
	g.mem.Propose(shard, evs)
	return gatedFuture{g.gate}
}

func TestPoolRemoveShard(t *testing.T) {
	g := &gatedProposer{mem: NewMemProposer(0, true), gate: make(chan struct{})}
	cfg := testConfig(2)
	cfg.MaxInflight = 1
	cfg.BatchSize = 4
	cfg.FlushInterval = 0
	pool := newTestPool(t, cfg, g, nil)
	pool.Start()
	var tickets []*Ticket
	for i := range 8 {
		tk, err := pool.Submit(context.Background(), 0, events("p", i*4, 4), false)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	// One batch is in flight (gated); the writer then stages the next one
	// and waits for the window.
	testwait.For(t, "first proposal", 10*time.Second, func() bool { p, _ := g.mem.Counts(); return p == 1 })
	if err := pool.RemoveShard(0); err != nil {
		t.Fatal(err)
	}
	if err := pool.RemoveShard(0); !errors.Is(err, ErrUnknownShard) {
		t.Fatalf("second RemoveShard = %v", err)
	}
	if _, err := pool.Submit(context.Background(), 0, events("p", 0, 1), false); !errors.Is(err, ErrUnknownShard) {
		t.Fatalf("Submit to removed shard = %v", err)
	}
	for i, tk := range tickets[1:] {
		if err := waitTicket(t, tk); !errors.Is(err, ErrShardClosed) {
			t.Fatalf("ticket %d = %v, want ErrShardClosed", i+1, err)
		}
	}
	close(g.gate)
	if err := waitTicket(t, tickets[0]); err != nil {
		t.Fatalf("in-flight ticket = %v, want committed", err)
	}
	// The other shard is unaffected, and the removed one can come back.
	if err := pool.AddShard(0); err != nil {
		t.Fatal(err)
	}
	if err := pool.AddShard(1); !errors.Is(err, ErrShardExists) {
		t.Fatalf("AddShard of a hosted shard = %v", err)
	}
	for _, s := range []uint32{0, 1} {
		tk, err := pool.Submit(context.Background(), s, events("q", 0, 3), true)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitTicket(t, tk); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPoolCloseDrainsAndRefuses(t *testing.T) {
	mem := NewMemProposer(0, true)
	cfg := testConfig(4)
	cfg.FlushInterval = 10 * time.Second // only Close flushes partial batches
	cfg.BatchSize = 64
	pool, err := NewPool(cfg, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	var tickets []*Ticket
	for s := range 4 {
		tk, err := pool.Submit(context.Background(), uint32(s), events("p", 0, 5), true)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	if err := pool.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for s, tk := range tickets {
		select {
		case <-tk.Done():
		default:
			t.Fatalf("shard %d: ticket unresolved after Close", s)
		}
		if tk.Err() != nil {
			t.Fatal(tk.Err())
		}
		checkLog(t, mem.Committed(uint32(s)), map[string]int{"p": 5})
	}
	if _, err := pool.Submit(context.Background(), 0, events("p", 5, 1), false); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Submit after Close = %v", err)
	}
	if err := pool.AddShard(9); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("AddShard after Close = %v", err)
	}
	if err := pool.Close(context.Background()); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestPoolCloseDeadline(t *testing.T) {
	g := &gatedProposer{mem: NewMemProposer(0, true), gate: make(chan struct{})}
	cfg := testConfig(1)
	cfg.MaxInflight = 1
	cfg.BatchSize = 4
	pool, err := NewPool(cfg, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	var tickets []*Ticket
	for i := range 4 {
		tk, err := pool.Submit(context.Background(), 0, events("p", i*4, 4), false)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := pool.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	for i, tk := range tickets[1:] {
		if err := waitTicket(t, tk); !errors.Is(err, ErrPoolClosed) {
			t.Fatalf("unproposed ticket %d = %v, want ErrPoolClosed", i+1, err)
		}
	}
	close(g.gate) // the in-flight proposal resolves; its completer exits
	if err := waitTicket(t, tickets[0]); err != nil {
		t.Fatal(err)
	}
	<-pool.closed
}

func TestPoolBatchesUpToBatchSize(t *testing.T) {
	mem := NewMemProposer(0, true)
	cfg := testConfig(1)
	cfg.BatchSize = 10
	cfg.FlushInterval = 10 * time.Second
	pool := newTestPool(t, cfg, mem, nil)
	var tickets []*Ticket
	for i := range 25 {
		tk, err := pool.Submit(context.Background(), 0, events("p", i, 1), false)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	pool.Start()
	for _, tk := range tickets[:20] {
		if err := waitTicket(t, tk); err != nil {
			t.Fatal(err)
		}
	}
	if got := mem.Batches(0); len(got) != 2 || got[0] != 10 || got[1] != 10 {
		t.Fatalf("batches %v, want [10 10] with the last 5 held for the flush interval", got)
	}
	select {
	case <-tickets[24].Done():
		t.Fatal("a partial batch was proposed before FlushInterval")
	default:
	}
}

// TestIdleShardsStartNoGoroutines: a shard's dispatcher, completer and
// redirector start with its first batch; a pool of 256 shards nobody
// writes to runs only its writers (3 goroutines per shard before).
func TestIdleShardsStartNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := testConfig(256)
	pool := newTestPool(t, cfg, NewMemProposer(0, true), nil)
	pool.Start()
	idle := runtime.NumGoroutine() - before
	if idle > cfg.Writers+4 {
		t.Fatalf("%d goroutines for an idle pool of 256 shards (%d writers)", idle, cfg.Writers)
	}
	tk, err := pool.Submit(context.Background(), 7, events("p", 0, 5), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitTicket(t, tk); err != nil {
		t.Fatal(err)
	}
	if busy := runtime.NumGoroutine() - before; busy != idle+3 {
		t.Errorf("%d goroutines after one shard's first batch, want %d (its dispatcher, completer, redirector)", busy, idle+3)
	}
}
