package node_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
)

// BenchmarkNodeIngest measures COMMITTED ingest through a whole one-node
// Node: Ingest → rings → writer pool → raft (the node's shared RaftLog, group-committed
// fsyncs, over the loopback raft mux) → FSM → correlator → store, on a
// temporary directory. Four submitters each own their processes and send
// requests of `batch` events (which spread over every shard), waiting for
// each acknowledgement, like `scope bench` without the RPC layer. ns/op is
// per event; events/s and the request latency percentiles are reported.
//
//	go test -run '^$' -bench NodeIngest -benchtime 200000x ./node/
func BenchmarkNodeIngest(b *testing.B) {
	for _, batch := range []int{512} {
		b.Run(fmt.Sprintf("shards=16/batch=%d", batch), func(b *testing.B) {
			benchNodeIngest(b, 16, batch)
		})
	}
}

// BenchmarkNodeIngestTails is BenchmarkNodeIngest with 200 Tail
// subscriptions of the whole node, each filtering on a module: stalled
// (never read: their buffers fill and every later event is dropped and
// counted) or reading (a goroutine each, reading as fast as it can). A
// reader must cost only itself: ingest with them should stay near the
// figure without.
//
//	go test -run '^$' -bench NodeIngestTails -benchtime 100000x ./node/
func BenchmarkNodeIngestTails(b *testing.B) {
	for _, mode := range []string{"none", "stalled", "reading"} {
		b.Run("tails="+mode, func(b *testing.B) {
			benchNodeIngestWith(b, 16, 512, func(tn *node.Node) func() {
				if mode == "none" {
					return func() {}
				}
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				var subs []*node.Subscription
				for i := range 200 {
					module := benchFuncs[i%len(benchFuncs)].m
					sub, err := tn.Subscribe(node.TailSpec{Match: func(e *correlate.Event) bool { return e.Module == module }})
					if err != nil {
						b.Fatal(err)
					}
					subs = append(subs, sub)
					if mode == "reading" {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								if _, err := sub.Next(ctx); err != nil {
									return
								}
							}
						}()
					}
				}
				return func() {
					cancel()
					for _, s := range subs {
						s.Close()
					}
					wg.Wait()
				}
			})
		})
	}
}

func benchNodeIngest(b *testing.B, shards uint32, batch int) {
	benchNodeIngestWith(b, shards, batch, func(*node.Node) func() { return func() {} })
}

// benchNodeIngestWith runs the ingest benchmark after setup(node), and
// calls what setup returns once the measurement ends.
func benchNodeIngestWith(b *testing.B, shards uint32, batch int, setup func(*node.Node) func()) {
	const submitters = 4
	tn := bootstrapped(b, "bench", b.TempDir(), shards)
	defer setup(tn.Node)()
	reqs := make([][][]correlate.Event, submitters)
	for g := range reqs {
		gen := newBenchGen(uint64(g), 250)
		share := b.N / submitters
		if g < b.N%submitters {
			share++
		}
		for n := 0; n < share; n += batch {
			reqs[g] = append(reqs[g], gen.next(min(batch, share-n)))
		}
	}
	var (
		mu  sync.Mutex
		lat []time.Duration
		wg  sync.WaitGroup
	)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for g := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, req := range reqs[g] {
				t0 := time.Now()
				res := tn.Ingest(context.Background(), req, node.Committed)
				d := time.Since(t0)
				if acc, refused := res.Accepted(); refused != 0 {
					for _, s := range res.Shards {
						if s.Err != nil {
							b.Errorf("shard %d: %v", s.Shard, s.Err)
							return
						}
					}
					b.Errorf("%d accepted, %d refused", acc, refused)
					return
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// benchGen produces a trace like `scope bench`'s: nested CALL/RETURN on
// many processes, with SEND/RECEIVE pairs between them (mostly across
// shards) and a few STATE_CHANGEs. Deterministic per seed.
type benchGen struct {
	rng   *rand.Rand
	procs []benchProc
	now   int64
	owed  []correlate.Event
}

type benchProc struct {
	origin, pid string
	depth       int
	seq         uint64
}

var benchFuncs = [...]struct {
	m, f string
	a    uint32
}{
	{"Elixir.Shop.Cart", "add_item", 3}, {"Elixir.Shop.Repo", "insert", 2},
	{"Elixir.Shop.Pricing", "apply_discount", 2}, {"gen_server", "handle_call", 3},
	{"Elixir.Ecto.Adapters.SQL", "query", 4}, {"Elixir.Logger", "info", 2},
}

func newBenchGen(seed uint64, procs int) *benchGen {
	g := &benchGen{rng: rand.New(rand.NewPCG(seed, 7)), now: time.Now().UnixNano()}
	for i := range procs {
		g.procs = append(g.procs, benchProc{origin: fmt.Sprintf("app%d@host", i%8), pid: fmt.Sprintf("<%d.%d.0>", seed, i)})
	}
	return g
}

func (g *benchGen) next(n int) []correlate.Event {
	out := make([]correlate.Event, 0, n)
	for len(out) < n {
		if len(g.owed) > 0 {
			out = append(out, g.stamp(g.owed[0]))
			g.owed = g.owed[1:]
			continue
		}
		p := &g.procs[g.rng.IntN(len(g.procs))]
		e := correlate.Event{Origin: p.origin, PID: p.pid}
		p.seq++
		e.Seq = p.seq
		switch r := g.rng.IntN(100); {
		case r < 8:
			q := &g.procs[g.rng.IntN(len(g.procs))]
			for q == p {
				q = &g.procs[g.rng.IntN(len(g.procs))]
			}
			e.Kind, e.PeerOrigin, e.PeerPID = correlate.KindSend, q.origin, q.pid
			e.Payload = fmt.Sprintf("{:order, %d}", g.rng.IntN(1_000_000))
			q.seq++
			g.owed = append(g.owed, correlate.Event{Origin: q.origin, PID: q.pid, Seq: q.seq,
				Kind: correlate.KindReceive, PeerOrigin: p.origin, PeerPID: p.pid, Payload: e.Payload})
		case r < 11:
			e.Kind, e.Payload = correlate.KindStateChange, "%{items: 3}"
		case p.depth == 0 || (p.depth < 8 && r%2 == 0):
			f := benchFuncs[g.rng.IntN(len(benchFuncs))]
			e.Kind, e.Module, e.Function, e.Arity, e.Payload = correlate.KindCall, f.m, f.f, f.a, "[:arg]"
			p.depth++
		default:
			e.Kind, e.Payload = correlate.KindReturn, ":ok"
			p.depth--
		}
		out = append(out, g.stamp(e))
	}
	return out
}

func (g *benchGen) stamp(e correlate.Event) correlate.Event {
	g.now += 1 + g.rng.Int64N(20_000)
	e.TimestampNs = g.now
	e.ID = ulid.MustNew(uint64(g.now/1e6), g)
	return e
}

// Read implements io.Reader as ULID entropy.
func (g *benchGen) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(g.rng.Uint32())
	}
	return len(p), nil
}
