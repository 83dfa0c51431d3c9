package rpc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

// fixedLayout is a planner's layout of shards that never reshards.
func fixedLayout(shards uint32) func() correlate.Layout {
	return func() correlate.Layout { return correlate.Layout{Base: shards, Shards: shards} }
}

// fakeShards serves sorted in-memory events per shard and answers at most
// scan events per call, like the store's MaxScan: pages may come back
// partial (More with fewer than Limit events, even none).
type fakeShards struct {
	events map[uint32][]correlate.Event // ascending (timestamp, id)
	scan   int
	down   map[uint32]bool
	served atomic.Int64 // events returned by Events, all shards
	bytes  atomic.Int64 // their MemSize
}

func (f *fakeShards) Readers(shard uint32, _ Consistency) ([]ShardReader, error) {
	if f.down[shard] {
		return nil, fmt.Errorf("%w: shard %d", node.ErrNoShard, shard)
	}
	return []ShardReader{fakeReader{f}}, nil
}

type fakeReader struct{ f *fakeShards }

func (r fakeReader) Events(_ context.Context, shard uint32, q store.Query) (store.Page, error) {
	es := slices.Clone(r.f.events[shard])
	if q.Descending {
		slices.Reverse(es)
	}
	var page store.Page
	scanned, bytes := 0, 0
	for i := range es {
		p := posOf(&es[i])
		if q.After != nil && !posLess(*q.After, p, q.Descending) {
			continue
		}
		if scanned == r.f.scan {
			page.More = true
			return page, nil
		}
		scanned++
		page.Next = p
		if es[i].Kind != correlate.KindCall && len(q.Kinds) > 0 { // a residual filter in the store
			continue
		}
		page.Events = append(page.Events, es[i])
		bytes += es[i].MemSize()
		if len(page.Events) == q.Limit || q.MaxBytes > 0 && bytes >= q.MaxBytes {
			page.More = i < len(es)-1
			break
		}
	}
	r.f.served.Add(int64(len(page.Events)))
	r.f.bytes.Add(int64(bytes))
	return page, nil
}

func (fakeReader) Get(context.Context, uint32, correlate.EventID) (correlate.Event, error) {
	return correlate.Event{}, store.ErrNotFound
}
func (fakeReader) EdgesMany(_ context.Context, _ uint32, ids []correlate.EventID) ([][]correlate.Link, error) {
	return make([][]correlate.Link, len(ids)), nil
}
func (fakeReader) CallTree(context.Context, uint32, correlate.EventID, int) (*store.CallTree, error) {
	return nil, store.ErrNotFound
}
func (fakeReader) CallStackAt(context.Context, uint32, correlate.Process, int64) ([]store.Frame, error) {
	return nil, nil
}
func (fakeReader) MessageFlow(context.Context, uint32, correlate.Process, correlate.Process, int64, int64, int) (store.Page, error) {
	return store.Page{}, nil
}
func (fakeReader) StateAt(context.Context, uint32, correlate.Process, int64) (correlate.Event, bool, error) {
	return correlate.Event{}, false, nil
}
func (fakeReader) Stats(context.Context, uint32) (store.ShardStats, error) {
	return store.ShardStats{}, nil
}

// TestMergePagesAreExact pages through shards that answer partial pages
// (scan limit, residual filters) with every page size, both orders and
// tight merge-round bounds: the concatenated pages are exactly the
// matching events in order, with no duplicate and no gap.
func TestMergePagesAreExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 40 {
		const shards = 5
		f := &fakeShards{events: map[uint32][]correlate.Event{}, scan: 1 + rng.IntN(6)}
		var all []correlate.Event
		for i := range 60 + rng.IntN(60) {
			var e correlate.Event
			e.TimestampNs = int64(rng.IntN(40)) // many equal timestamps
			e.ID[0], e.ID[15] = byte(i>>8), byte(i)
			e.Kind = correlate.KindCall
			if rng.IntN(3) == 0 {
				e.Kind = correlate.KindExit
			}
			s := uint32(rng.IntN(shards))
			f.events[s] = append(f.events[s], e)
			all = append(all, e)
		}
		cmp := func(a, b correlate.Event) int {
			if posLess(posOf(&a), posOf(&b), false) {
				return -1
			}
			return 1
		}
		for s := range f.events {
			slices.SortFunc(f.events[s], cmp)
		}
		slices.SortFunc(all, cmp)
		filtered := iter%2 == 0
		want := all
		if filtered {
			want = slices.DeleteFunc(slices.Clone(all), func(e correlate.Event) bool { return e.Kind != correlate.KindCall })
		}
		for _, desc := range []bool{false, true} {
			cfg := DefaultConfig()
			cfg.MaxMergeRounds = 1 + rng.IntN(4)
			p := &planner{res: f, layout: fixedLayout(shards), cfg: &cfg, logger: cfg.Logger}
			limit := 1 + rng.IntN(10)
			q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: limit, Descending: desc}
			if filtered {
				q.Kinds = []correlate.Kind{correlate.KindCall}
			}
			var got []correlate.Event
			for page := 0; ; page++ {
				if page > 1000 {
					t.Fatalf("no progress: iter %d desc=%v limit=%d scan=%d rounds=%d after=%v", iter, desc, limit, f.scan, cfg.MaxMergeRounds, q.After)
				}
				res, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: p.allShards()})
				if err != nil {
					t.Fatal(err)
				}
				if len(res.events) > limit {
					t.Fatalf("page of %d > limit %d", len(res.events), limit)
				}
				got = append(got, res.events...)
				if res.next == nil {
					break
				}
				q.After = res.next
			}
			w := slices.Clone(want)
			if desc {
				slices.Reverse(w)
			}
			if !slices.EqualFunc(got, w, func(a, b correlate.Event) bool { return a.ID == b.ID }) {
				t.Fatalf("iter %d desc=%v limit=%d scan=%d rounds=%d: got %d events, want %d",
					iter, desc, limit, f.scan, cfg.MaxMergeRounds, len(got), len(w))
			}
		}
	}
}

// TestMergeFirstRoundShare checks the first round's share of the page: on
// events spread evenly over 16 shards a page of 1,000 reads far fewer than
// 16,000 events; on skewed ones (all of the range on a few shards) the
// merge reads on. Either way each page is exactly the next events in
// order.
func TestMergeFirstRoundShare(t *testing.T) {
	const shards, n, limit = 16, 8000, 1000
	for _, tc := range []struct {
		name    string
		shardOf func(i int) uint32
		maxRead int64 // bound on events read for the first page
	}{
		{"even", func(i int) uint32 { return uint32(i*7919) % shards }, shards * int64(firstRoundLimit(limit, shards))},
		{"one-shard", func(int) uint32 { return 3 }, shards*int64(firstRoundLimit(limit, shards)) + limit},
		{"runs", func(i int) uint32 { return uint32(i/500) % shards }, shards * limit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeShards{events: map[uint32][]correlate.Event{}, scan: 100_000}
			var all []correlate.Event
			for i := range n {
				e := correlate.Event{TimestampNs: int64(i / 3), Kind: correlate.KindCall}
				e.ID[14], e.ID[15] = byte(i>>8), byte(i)
				s := tc.shardOf(i)
				f.events[s] = append(f.events[s], e)
				all = append(all, e)
			}
			cfg := DefaultConfig()
			p := &planner{res: f, layout: fixedLayout(shards), cfg: &cfg, logger: cfg.Logger}
			for _, desc := range []bool{false, true} {
				want := slices.Clone(all)
				if desc {
					slices.Reverse(want)
				}
				q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: limit, Descending: desc}
				for page := 0; len(want) > 0; page++ {
					f.served.Store(0)
					res, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: p.allShards()})
					if err != nil {
						t.Fatal(err)
					}
					size := min(limit, len(want))
					if !slices.EqualFunc(res.events, want[:size], func(a, b correlate.Event) bool { return a.ID == b.ID }) {
						t.Fatalf("desc=%v page %d: %d events, not the next %d in order", desc, page, len(res.events), size)
					}
					if page == 0 && f.served.Load() > tc.maxRead {
						t.Errorf("desc=%v: first page read %d events, want at most %d", desc, f.served.Load(), tc.maxRead)
					}
					want = want[size:]
					if res.next == nil {
						break
					}
					q.After = res.next
				}
				if len(want) > 0 {
					t.Fatalf("desc=%v: %d events never paged", desc, len(want))
				}
			}
		})
	}
}

// TestMergeMemoryBudget pages through events far larger in total than
// the query memory budget: no merge reads more than the budget and one
// event per shard beyond it, pages are cut where it runs out (and counted),
// and the pages together are exactly the events in order, both ways.
func TestMergeMemoryBudget(t *testing.T) {
	const shards, n, limit, budget, maxPayload = 8, 600, 200, 40_000, 3000
	rng := rand.New(rand.NewPCG(3, 4))
	f := &fakeShards{events: map[uint32][]correlate.Event{}, scan: 100_000}
	var all []correlate.Event
	for i := range n {
		e := correlate.Event{TimestampNs: int64(i / 2), Kind: correlate.KindCall}
		e.Payload = string(make([]byte, 100+rng.IntN(maxPayload-100)))
		e.ID[14], e.ID[15] = byte(i>>8), byte(i)
		s := uint32(rng.IntN(shards))
		f.events[s] = append(f.events[s], e)
		all = append(all, e)
	}
	cfg := DefaultConfig()
	cfg.QueryMemory = budget
	cuts := prometheus.NewCounter(prometheus.CounterOpts{Name: "cuts"})
	p := &planner{res: f, layout: fixedLayout(shards), cfg: &cfg, logger: cfg.Logger, memoryCuts: cuts}
	maxEvent := (&correlate.Event{Payload: string(make([]byte, maxPayload))}).MemSize()
	for _, desc := range []bool{false, true} {
		want := slices.Clone(all)
		if desc {
			slices.Reverse(want)
		}
		q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: limit, Descending: desc}
		var got []correlate.Event
		for page := 0; ; page++ {
			if page > n {
				t.Fatalf("desc=%v: no progress", desc)
			}
			f.bytes.Store(0)
			res, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: p.allShards()})
			if err != nil {
				t.Fatal(err)
			}
			if read := f.bytes.Load(); read > budget+shards*int64(maxEvent) {
				t.Fatalf("desc=%v page %d: the merge read %d bytes of events, budget %d", desc, page, read, budget)
			}
			if res.next != nil && len(res.events) == 0 {
				t.Fatalf("desc=%v page %d: empty page with a cursor", desc, page)
			}
			got = append(got, res.events...)
			if res.next == nil {
				break
			}
			q.After = res.next
		}
		if !slices.EqualFunc(got, want, func(a, b correlate.Event) bool { return a.ID == b.ID }) {
			t.Fatalf("desc=%v: paged %d events, want %d in order", desc, len(got), len(want))
		}
	}
	var m dto.Metric
	if err := cuts.Write(&m); err != nil || m.GetCounter().GetValue() == 0 {
		t.Fatal("no page was counted as cut by the budget")
	}
}

func TestMergeMissingShards(t *testing.T) {
	f := &fakeShards{events: map[uint32][]correlate.Event{0: {{TimestampNs: 1, ID: correlate.EventID{1}}}},
		scan: 100, down: map[uint32]bool{1: true}}
	cfg := DefaultConfig()
	p := &planner{res: f, layout: fixedLayout(2), cfg: &cfg, logger: cfg.Logger}
	q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: 10}
	_, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: p.allShards()})
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable {
		t.Fatalf("without allow_partial: %v", err)
	}
	res, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: p.allShards(), allowPartial: true})
	if err != nil || len(res.events) != 1 || len(res.missing) != 1 || res.missing[0].GetShard() != 1 ||
		res.missing[0].GetCode() != "unavailable" {
		t.Fatalf("with allow_partial: %v %v", res, err)
	}
}
