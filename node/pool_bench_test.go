package node

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// BenchmarkPool measures events/s through the whole pool (Submit → ring →
// writer → MemProposer → ticket resolved) for 16 shards. Four submitters
// send requests of `submit` events, round-robin over the shards, waiting for
// room; the clock stops when every ticket has resolved. ns/op is per event.
func BenchmarkPool(b *testing.B) {
	for _, submit := range []int{1, 64} {
		for _, batch := range []int{64, 512} {
			b.Run(fmt.Sprintf("shards=16/batch=%d/submit=%d", batch, submit), func(b *testing.B) {
				benchPool(b, 16, batch, submit)
			})
		}
	}
}

func benchPool(b *testing.B, shards, batch, submit int) {
	const submitters = 4
	cfg := DefaultPoolConfig()
	for s := range shards {
		cfg.Shards = append(cfg.Shards, uint32(s))
	}
	cfg.BatchSize = batch
	cfg.FlushInterval = 0
	cfg.Logger = slog.New(slog.DiscardHandler)
	mem := NewMemProposer(0, false)
	pool, err := NewPool(cfg, mem, nil)
	if err != nil {
		b.Fatal(err)
	}
	pool.Start()
	evs := events("bench", 0, submit)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range submitters {
		share := b.N / submitters
		if g < b.N%submitters {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := make([]*Ticket, shards)
			for i, shard := 0, g; i < share; i, shard = i+submit, (shard+1)%shards {
				tk, err := pool.Submit(context.Background(), uint32(shard), evs[:min(submit, share-i)], true)
				if err != nil {
					b.Error(err)
					return
				}
				last[shard] = tk // a shard resolves its tickets in order
			}
			for _, tk := range last {
				if tk != nil {
					<-tk.Done()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if err := pool.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	if _, n := mem.Counts(); n != uint64(b.N) {
		b.Fatalf("%d events proposed, want %d", n, b.N)
	}
}

// BenchmarkPoolBursty compares fixed writer counts with a scaling pool
// under a bursty load: four submitters each send bursts of 64 submissions
// of 64 events over 16 shards, then pause 2 ms. events/s counts the
// events over the whole run, pauses included; a pool that drains bursts
// faster leaves the submitters waiting on full rings less.
func BenchmarkPoolBursty(b *testing.B) {
	for _, tc := range []struct {
		name       string
		fixed      int
		minW, maxW int
	}{
		{"fixed=1", 1, 0, 0},
		{"fixed=2", 2, 0, 0},
		{"fixed=4", 4, 0, 0},
		{"scaling=1..4", 0, 1, 4},
	} {
		b.Run(tc.name, func(b *testing.B) {
			const shards, submitters, submit, burst = 16, 4, 64, 64
			cfg := DefaultPoolConfig()
			for s := range shards {
				cfg.Shards = append(cfg.Shards, uint32(s))
			}
			cfg.Writers, cfg.MinWriters, cfg.MaxWriters = tc.fixed, tc.minW, tc.maxW
			cfg.Logger = slog.New(slog.DiscardHandler)
			mem := NewMemProposer(100*time.Microsecond, false)
			pool, err := NewPool(cfg, mem, nil)
			if err != nil {
				b.Fatal(err)
			}
			pool.Start()
			evs := events("bench", 0, submit)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for g := range submitters {
				share := b.N / submitters
				wg.Add(1)
				go func() {
					defer wg.Done()
					last := make([]*Ticket, shards)
					shard := g
					for i := 0; i < share; {
						for range burst {
							if i >= share {
								break
							}
							n := min(submit, share-i)
							tk, err := pool.Submit(context.Background(), uint32(shard), evs[:n], true)
							if err != nil {
								b.Error(err)
								return
							}
							last[shard] = tk
							shard = (shard + 1) % shards
							i += n
						}
						time.Sleep(2 * time.Millisecond)
					}
					for _, tk := range last {
						if tk != nil {
							<-tk.Done()
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N/submitters*submitters)/elapsed.Seconds(), "events/s")
			if err := pool.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}
