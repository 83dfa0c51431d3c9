package node

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
)

// scalingConfig is testConfig with a pool of 1..4 writers that samples
// every 2 ms, grows when a ring is a tenth full and shrinks after 50 ms of
// quiet.
func scalingConfig(shards int) PoolConfig {
	cfg := testConfig(shards)
	cfg.MinWriters, cfg.MaxWriters = 1, 4
	cfg.ScaleInterval = 2 * time.Millisecond
	cfg.ScaleUpFill = 0.1
	cfg.ScaleDownAfter = 50 * time.Millisecond
	return cfg
}

// TestPoolScalesWithBacklog: a burst that fills the rings (the proposals'
// futures held back, so the writers cannot hand batches over) grows the
// pool; once the futures resolve and the load stops, it shrinks back to
// MinWriters. Every event commits once, in order, and each decision is
// counted.
func TestPoolScalesWithBacklog(t *testing.T) {
	const shards, producers, perProducer = 8, 2, 200
	g := &gatedProposer{mem: NewMemProposer(0, true), gate: make(chan struct{})}
	m := &countingMetrics{}
	pool := newTestPool(t, scalingConfig(shards), &exclusiveProposer{t: t, next: g}, m)
	pool.Start()
	if running, _ := pool.Writers(); running != 1 {
		t.Fatalf("%d writers at start, want MinWriters 1", running)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runProducers(t, pool, shards, producers, perProducer)
	}()
	testwait.For(t, "the pool to grow under the burst", 10*time.Second, func() bool {
		running, _ := pool.Writers()
		return running > 1 && m.ups.Load() > 0
	})
	close(g.gate)
	<-done
	testwait.For(t, "the pool to shrink back to one writer once quiet", 10*time.Second, func() bool {
		running, retiring := pool.Writers()
		return running == 1 && retiring == 0 && m.downs.Load() > 0
	})
	for s := range shards {
		checkLog(t, g.mem.Committed(uint32(s)), wantAll(producers, perProducer))
	}
	if m.moves.Load() == 0 || m.active.Load() != 1 {
		t.Fatalf("moves %d, writers active %d: want shards moved and one writer left", m.moves.Load(), m.active.Load())
	}
	if total := int64(shards * producers * perProducer); m.committed.Load() != total || m.failed.Load() != 0 {
		t.Fatalf("committed %d failed %d, want %d/0", m.committed.Load(), m.failed.Load(), total)
	}
}

// jitterProposer commits in memory; its futures resolve after a random
// delay of up to max, so the backlog comes and goes, and not before hold
// is closed (if set).
type jitterProposer struct {
	mem  *MemProposer
	max  time.Duration
	rng  atomic.Uint64
	hold chan struct{}
}

type heldFuture struct {
	hold chan struct{}
	memFuture
}

func (f heldFuture) Wait() error {
	if f.hold != nil {
		<-f.hold
	}
	return f.memFuture.Wait()
}

func (j *jitterProposer) Propose(shard uint32, evs []correlate.Event) ProposalFuture {
	j.mem.Propose(shard, evs)
	d := time.Duration(j.rng.Add(0x9e3779b97f4a7c15) % uint64(j.max))
	return heldFuture{hold: j.hold, memFuture: memFuture{at: time.Now().Add(d)}}
}

// TestPoolScalingKeepsOrderAndExactlyOnce is a property test: under
// seeded bursts and pauses that make the pool grow and shrink again and
// again, every shard's proposals hold each producer's events exactly once
// and in submission order (the exclusive proposer also checks that a shard
// is never proposed for by two writers at once).
func TestPoolScalingKeepsOrderAndExactlyOnce(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			shards, producers := 4+rng.IntN(12), 1+rng.IntN(3)
			cfg := scalingConfig(shards)
			cfg.MaxWriters = 2 + rng.IntN(5)
			cfg.ScaleDownAfter = time.Duration(10+rng.IntN(30)) * time.Millisecond
			j := &jitterProposer{mem: NewMemProposer(0, true), max: time.Duration(50+rng.IntN(400)) * time.Microsecond,
				hold: make(chan struct{})}
			m := &countingMetrics{}
			pool := newTestPool(t, cfg, &exclusiveProposer{t: t, next: j}, m)
			pool.Start()
			// The first burst's commits are held until the backlog has grown
			// the pool: whether jitter alone makes it grow depends on the
			// machine's speed (it often did not with one producer). The
			// burst is larger than what a shard holds in flight and staged
			// (MaxInflight+1 batches), so its ring fills.
			sent := (cfg.MaxInflight+1)*cfg.BatchSize + cfg.RingCapacity/2 + rng.IntN(150)
			first := make(chan struct{})
			go func() {
				defer close(first)
				runProducersFrom(t, pool, shards, producers, 0, sent)
			}()
			testwait.For(t, "the pool to grow under the held burst", 10*time.Second, func() bool { return m.ups.Load() > 0 })
			close(j.hold)
			<-first
			for burst := 1; burst < 6; burst++ {
				n := 50 + rng.IntN(150)
				runProducersFrom(t, pool, shards, producers, sent, n)
				sent += n
				if burst%2 == 1 {
					time.Sleep(cfg.ScaleDownAfter * 2) // quiet: the pool may shrink
				}
			}
			for s := range shards {
				checkLog(t, j.mem.Committed(uint32(s)), wantAll(producers, sent))
			}
			t.Logf("shards %d, producers %d, %d events each: %d up, %d down, %d moves",
				shards, producers, sent, m.ups.Load(), m.downs.Load(), m.moves.Load())
		})
	}
}

// runProducersFrom runs producers submitters on every shard, each sending
// its events numbered from seq0 (perProducer of them, in submissions of
// 1..9) and waiting for their tickets.
func runProducersFrom(t *testing.T, pool *Pool, shards, producers, seq0, perProducer int) {
	t.Helper()
	done := make(chan struct{})
	for s := range shards {
		for p := range producers {
			go func() {
				defer func() { done <- struct{}{} }()
				prod := strconv.Itoa(p)
				var tickets []*Ticket
				for seq := seq0; seq < seq0+perProducer; {
					n := min(1+(seq*7+p)%9, seq0+perProducer-seq)
					tk, err := pool.Submit(context.Background(), uint32(s), events(prod, seq, n), true)
					if err != nil {
						t.Errorf("Submit: %v", err)
						return
					}
					tickets = append(tickets, tk)
					seq += n
				}
				for _, tk := range tickets {
					if err := waitTicket(t, tk); err != nil {
						t.Errorf("shard %d producer %d: %v", s, p, err)
					}
				}
			}()
		}
	}
	for range shards * producers {
		<-done
	}
}

// TestPoolWriterPanicDuringScaleDown: the retiring writer panics as it
// hands its first shard over; it is restarted, finishes the handoffs and
// exits, and nothing is lost or duplicated.
func TestPoolWriterPanicDuringScaleDown(t *testing.T) {
	const shards, producers, perProducer = 8, 2, 200
	g := &gatedProposer{mem: NewMemProposer(0, true), gate: make(chan struct{})}
	m := &countingMetrics{}
	pool := newTestPool(t, scalingConfig(shards), &exclusiveProposer{t: t, next: g}, m)
	var panicked atomic.Bool
	pool.hook = func(point string, _ uint32) {
		if point == "handoff" && m.ups.Load() > 0 && m.downs.Load() > 0 && panicked.CompareAndSwap(false, true) {
			panic("injected writer crash during a handoff of a scale-down")
		}
	}
	pool.Start()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runProducers(t, pool, shards, producers, perProducer)
	}()
	testwait.For(t, "the pool to grow", 10*time.Second, func() bool { return m.ups.Load() > 0 })
	close(g.gate)
	<-done
	testwait.For(t, "the pool to shrink back to one writer", 10*time.Second, func() bool {
		running, retiring := pool.Writers()
		return running == 1 && retiring == 0
	})
	if !panicked.Load() || m.restarts.Load() != 1 {
		t.Fatalf("panicked %v, restarts %d: want one crash during a scale-down handoff", panicked.Load(), m.restarts.Load())
	}
	for s := range shards {
		checkLog(t, g.mem.Committed(uint32(s)), wantAll(producers, perProducer))
	}
	// The pool still takes work after it.
	tk, err := pool.Submit(context.Background(), 3, events("after", 0, 5), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitTicket(t, tk); err != nil {
		t.Fatal(err)
	}
}

func TestPoolScalingConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*PoolConfig)
		want string
	}{
		{"min above max", func(c *PoolConfig) { c.MinWriters, c.MaxWriters = 5, 4 }, "MinWriters"},
		{"min zero", func(c *PoolConfig) { c.MinWriters = 0 }, "MinWriters"},
		{"max negative", func(c *PoolConfig) { c.MaxWriters = -1 }, "MaxWriters"},
		{"fill zero", func(c *PoolConfig) { c.ScaleUpFill = 0 }, "ScaleUpFill"},
		{"fill above one", func(c *PoolConfig) { c.ScaleUpFill = 1.5 }, "ScaleUpFill"},
		{"interval", func(c *PoolConfig) { c.ScaleInterval = 0 }, "ScaleInterval"},
		{"down before a sample", func(c *PoolConfig) { c.ScaleDownAfter = time.Microsecond }, "ScaleDownAfter"},
	} {
		cfg := scalingConfig(2)
		tc.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrPoolConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrPoolConfig naming %s", tc.name, err, tc.want)
		}
	}
	cfg := scalingConfig(2)
	cfg.Writers = 0 // ignored when scaling
	if err := cfg.Validate(); err != nil {
		t.Fatalf("a scaling config with Writers 0: %v", err)
	}
}
