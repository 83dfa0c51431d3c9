package store

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/elixirscope/scope/correlate"
)

func benchStore(b *testing.B) (*Store, string) {
	dir := b.TempDir()
	s := openBenchStore(b, dir)
	b.Cleanup(func() { _ = s.Close() })
	return s, dir
}

// openBenchStore opens a store with the default options on disk in dir.
func openBenchStore(b *testing.B, dir string) *Store {
	o := DefaultOptions()
	o.FS = vfs.Default
	o.Logger = testOptions(nil).Logger
	s, err := Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// benchBatches pre-generates batches whose timestamps advance like a live
// trace (1 µs apart): generation is not measured.
func benchBatches(n, size int) []*correlate.Result {
	g := newGen(42, 64)
	out := make([]*correlate.Result, n)
	for i := range out {
		res := &correlate.Result{Index: uint64(i + 1)}
		for range size {
			e := g.event()
			e.Payload = "some payload of a typical size: {:ok, %{user: 42, items: [1, 2, 3]}}"
			res.Events = append(res.Events, e)
		}
		out[i] = res
	}
	return out
}

// BenchmarkApply measures Apply with all indexes beside a baseline writing
// the same keys and values to raw Pebble (no reads, no bookkeeping).
func BenchmarkApply(b *testing.B) {
	const size = 512
	batches := benchBatches(64, size)
	b.Run("store/batch=512", func(b *testing.B) {
		s, _ := benchStore(b)
		b.ReportAllocs()
		idx := uint64(0)
		for i := 0; b.Loop(); i++ {
			res := *batches[i%len(batches)]
			idx++
			res.Index = idx
			res.Events = shifted(res.Events, int64(i/len(batches))*int64(time.Hour))
			if err := s.Apply(0, &res); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("raw-pebble/batch=512", func(b *testing.B) {
		s, _ := benchStore(b)
		b.ReportAllocs()
		var buf, arena []byte
		for i := 0; b.Loop(); i++ {
			res := *batches[i%len(batches)]
			events := shifted(res.Events, int64(i/len(batches))*int64(time.Hour))
			wb := s.db.NewBatch()
			for j := range events {
				e := &events[j]
				arena = encodeEvent(arena[:0], e, 0)
				bk := bucketOf(e.TimestampNs, s.shift)
				buf = eventKeys(buf, 0, bk, e, func(k, v []byte) {
					if k[shardLen] == secEvent {
						v = arena
					}
					_ = wb.Set(k, v, nil)
				})
				for _, l := range e.Links {
					buf = edgeKey(buf[:0], 0, bk, correlate.Edge{From: e.ID, Type: l.Type, To: l.Target})
					_ = wb.Set(buf, nil, nil)
				}
			}
			_ = wb.Set(appliedKey(0), buf[:8], nil)
			if err := wb.Commit(pebble.NoSync); err != nil {
				b.Fatal(err)
			}
			_ = wb.Close()
		}
		b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
	})
}

func shifted(es []correlate.Event, by int64) []correlate.Event {
	if by == 0 {
		return es
	}
	out := slices.Clone(es)
	for i := range out {
		out[i].TimestampNs += by
		out[i].ID[15] ^= byte(by >> 32)
		out[i].ID[14] ^= byte(by >> 40)
	}
	return out
}

// BenchmarkQueries loads SCOPE_BENCH_EVENTS events (default 1M) across 16
// shards, compacts, reports bytes/event on disk, then measures query
// latency percentiles.
func BenchmarkQueries(b *testing.B) {
	total := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("SCOPE_BENCH_EVENTS")); err == nil && v > 0 {
		total = v
	}
	const shards = 16
	s, _ := benchStore(b)
	gens := make([]*gen, shards)
	var procs [shards][]correlate.Process
	var roots [shards][]correlate.EventID
	for sh := range gens {
		gens[sh] = newGen(uint64(sh), 64)
		procs[sh] = gens[sh].procs
	}
	idx := make([]uint64, shards)
	for n := 0; n < total; n += 512 {
		sh := (n / 512) % shards
		idx[sh]++
		res := &correlate.Result{Index: idx[sh]}
		for range 512 {
			e := gens[sh].event()
			e.Payload = "some payload of a typical size: {:ok, %{user: 42, items: [1, 2, 3]}}"
			if e.Kind == correlate.KindCall && e.ParentID == (correlate.EventID{}) && len(roots[sh]) < 1000 {
				roots[sh] = append(roots[sh], e.ID)
			}
			res.Events = append(res.Events, e)
		}
		if err := s.Apply(uint32(sh), res); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Compact(b.Context(), []byte{0}, []byte{0xff}, true); err != nil {
		b.Fatal(err)
	}
	m := s.Metrics()
	b.Logf("%d events, %d bytes on disk after compaction: %.0f bytes/event", total, m.DiskSpaceUsage(), float64(m.DiskSpaceUsage())/float64(total))

	run := func(name string, q func(i int) (int, error)) {
		b.Run(name, func(b *testing.B) {
			var lat []time.Duration
			for i := 0; b.Loop(); i++ {
				t0 := time.Now()
				if _, err := q(i); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
	run(fmt.Sprintf("events=%d/by-pid-limit=100", total), func(i int) (int, error) {
		sh := uint32(i % shards)
		p := procs[sh][i%len(procs[sh])]
		q := Unbounded(100)
		q.Process, q.Descending = &p, i%2 == 0
		pg, err := s.Events(sh, q)
		return len(pg.Events), err
	})
	run(fmt.Sprintf("events=%d/time-range-limit=1000", total), func(i int) (int, error) {
		q := Unbounded(1000)
		q.Descending = i%2 == 0
		pg, err := s.Events(uint32(i%shards), q)
		return len(pg.Events), err
	})
	run(fmt.Sprintf("events=%d/call-tree", total), func(i int) (int, error) {
		sh := i % shards
		tr, err := s.CallTree(uint32(sh), roots[sh][i%len(roots[sh])], 1000)
		if err != nil {
			return 0, err
		}
		return tr.Frames, nil
	})
	_ = math.MaxInt64
}

// BenchmarkApplyRemoteEdges applies batches of 256 RECEIVEs and the 256
// DELIVERED_TO edges of their SENDs, stored on other shards, into a shard
// with 600 live buckets: "probed" looks for each source among the buckets
// (how every such edge was stored before Edge.FromOtherShard), "flagged"
// trusts the correlator's flag, "local" is the baseline of sources stored in
// the batch's own bucket.
func BenchmarkApplyRemoteEdges(b *testing.B) {
	const buckets, size = 600, 256
	for _, mode := range []string{"probed", "flagged", "local"} {
		b.Run(mode, func(b *testing.B) {
			s, _ := benchStore(b)
			g := newGen(7, 64)
			width := int64(1) << s.shift
			old := &correlate.Result{Index: 1}
			for i := range buckets {
				e := g.event()
				e.TimestampNs = int64(i) * width
				old.Events = append(old.Events, e)
			}
			if err := s.Apply(0, old); err != nil {
				b.Fatal(err)
			}
			ts := int64(buckets) * width
			idx := uint64(1)
			b.ReportAllocs()
			for b.Loop() {
				idx++
				res := &correlate.Result{Index: idx}
				for range size {
					ts++
					recv := correlate.Event{ID: g.id(ts), Origin: "app@h", PID: "<0.1.0>", Kind: correlate.KindReceive,
						TimestampNs: ts, MessageHash: 1}
					res.Events = append(res.Events, recv)
					from := g.id(ts) // a SEND of another shard
					if mode == "local" {
						send := correlate.Event{ID: from, Origin: "app@h", PID: "<0.2.0>", Kind: correlate.KindSend,
							TimestampNs: ts, PeerOrigin: "app@h", PeerPID: "<0.1.0>", MessageHash: 1}
						res.Events = append(res.Events, send)
					}
					res.Edges = append(res.Edges, correlate.Edge{From: from, Type: correlate.LinkDeliveredTo, To: recv.ID,
						FromOtherShard: mode == "flagged"})
				}
				if err := s.Apply(0, res); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/edge")
		})
	}
}

// BenchmarkRetentionCountCut applies a count rule that cuts inside one
// bucket holding 20,000 events with an edge each: half of them go, event by
// event (the cut's bucket cannot be deleted by range).
func BenchmarkRetentionCountCut(b *testing.B) {
	const n = 20_000
	for b.Loop() {
		b.StopTimer()
		s := openBenchStore(b, b.TempDir())
		g := newGen(11, 64)
		idx := uint64(0)
		for start := 0; start < n; start += 1000 {
			idx++
			res := &correlate.Result{Index: idx}
			for i := range 1000 {
				e := g.event()
				e.TimestampNs = int64(start + i + 1) // one bucket (2^38 ns wide)
				e.Links = []correlate.Link{{Type: correlate.LinkDeliveredTo, Target: g.id(e.TimestampNs)}}
				res.Events = append(res.Events, e)
			}
			if err := s.Apply(0, res); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if err := s.Apply(0, &correlate.Result{Index: idx + 1, Retention: &correlate.Retention{MaxEvents: n / 2}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if st, err := s.Stats(0); err != nil || st.Events != n/2 {
			b.Fatalf("after the cut: %+v, %v; want %d events", st, err, n/2)
		}
		_ = s.Close()
		b.StartTimer()
	}
}
