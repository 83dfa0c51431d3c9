package main

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// runBaseline is `scope bench -baseline`: the events the agent run sent
// (same seed, same workers, same batches), correlated and applied straight
// to a store in a temporary directory, with no RPC, no ring buffer and no
// Raft. It is the ceiling the agent's ingest path is measured against.
//
// It runs in rounds: each round takes one batch from every worker's
// generator, splits the events by shard and applies every shard's part
// (correlate.Apply then store.Apply, like a replica's FSM) with up to
// GOMAXPROCS shards at once. Notices placed in outboxes during a round are
// delivered to their shards in the next round, which also removes them
// from their source's outbox (the node acknowledges only after the
// destination committed; here both applies are local and cannot fail
// independently).
func runBaseline(b *benchFlags, startNs int64, shards uint32) (*benchResult, error) {
	dir, err := os.MkdirTemp("", "scope-bench-baseline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts := store.DefaultOptions()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	defer st.Close()

	type shardState struct {
		corr    *correlate.Correlator
		index   uint64
		notices []correlate.Notice
		acked   []correlate.EventID
	}
	state := make([]*shardState, shards)
	for s := range shards {
		corr, err := correlate.New(correlate.DefaultConfig(s, shards))
		if err != nil {
			return nil, err
		}
		state[s] = &shardState{corr: corr}
	}
	gens := make([]*generator, b.concurrency)
	quota := make([]int, b.concurrency)
	for w := range gens {
		if gens[w], err = newGenerator(genConfig{Seed: b.seed, Procs: b.procs / b.concurrency, Part: w,
			Origins: 8, MaxDepth: 8, StartNs: startNs, PayloadBytes: b.payload}); err != nil {
			return nil, err
		}
		quota[w] = b.events / b.concurrency
	}
	quota[0] += b.events % b.concurrency

	res := &benchResult{Name: "baseline"}
	lat := &latencies{rng: rand.New(rand.NewPCG(b.seed, 98))}
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	byShard := make([][]correlate.Event, shards)
	start := time.Now()
	for {
		// One batch per worker, as the agent run sent them.
		var round int
		for w, g := range gens {
			k := min(b.batch, quota[w])
			quota[w] -= k
			round += k
			for _, e := range g.next(nil, k) {
				s := correlate.ShardOf(e.Origin, e.PID, shards)
				correlate.Normalize(&e, correlate.DefaultLimits())
				e.Shard = s
				byShard[s] = append(byShard[s], e)
			}
		}
		if round == 0 && !pendingNotices(state, func(s *shardState) bool { return len(s.notices)+len(s.acked) > 0 }) {
			break
		}
		began := time.Now()
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		outbox := make([]correlate.Notice, 0)
		for s := range shards {
			st0 := state[s]
			if len(byShard[s]) == 0 && len(st0.notices) == 0 && len(st0.acked) == 0 {
				continue
			}
			events, notices, acked := byShard[s], st0.notices, st0.acked
			byShard[s], st0.notices, st0.acked = nil, nil, nil
			st0.index++
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				r := st0.corr.Apply(correlate.Batch{Index: st0.index, LogTime: time.Now().UnixNano(),
					Events: events, Notices: notices, Acked: acked})
				err := st.Apply(s, &r)
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("scope bench: baseline apply shard %d: %w", s, err)
				}
				outbox = append(outbox, r.Outbox...)
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return nil, firstErr
		}
		for _, n := range outbox {
			state[n.ToShard].notices = append(state[n.ToShard].notices, n)
			state[n.FromShard].acked = append(state[n.FromShard].acked, n.EventID)
		}
		if round > 0 {
			res.Events += uint64(round)
			res.Accepted += uint64(round)
			lat.add(time.Since(began))
		}
	}
	res.Elapsed = time.Since(start)
	res.finish(lat)
	return res, nil
}

func pendingNotices[T any](states []T, has func(T) bool) bool {
	for _, s := range states {
		if has(s) {
			return true
		}
	}
	return false
}
