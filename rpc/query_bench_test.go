package rpc_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// BenchmarkQueryKinds times the four query kinds of `scope bench queries`
// through the public Connect API of one 16-shard node: Events of one
// process (limit 100, one shard), a time range over every shard (limit
// 1000, merged), a 1,000-frame CallTree and a depth-3 Trace across four
// shards. The data set mimics the bench generator: SCOPE_BENCH_EVENTS
// events (default 40,000) of 128 processes with nested calls, messages
// between processes (4% SEND, each followed by its RECEIVE), spawns and
// state changes, plus the landmarks (the tree, 8 spawn-spawn-send chains).
//
//	go test -run '^$' -bench QueryKinds -benchtime 200x -cpuprofile cpu.out ./rpc/
func BenchmarkQueryKinds(b *testing.B) {
	total := 40_000
	if v, err := strconv.Atoi(os.Getenv("SCOPE_BENCH_EVENTS")); err == nil && v > 0 {
		total = v
	}
	cache := int64(8 << 20) // far smaller than the data, like 128 MiB for 10M events
	if v, err := strconv.ParseInt(os.Getenv("SCOPE_BENCH_CACHE"), 10, 64); err == nil && v > 0 {
		cache = v
	}
	n := rpctest.Start(b, rpctest.Options{Shards: 16, EditNode: func(c *node.Config) { c.Store.CacheSize = cache }})
	ctx := context.Background()
	d := genQueryData(total)
	for batch := range slices.Chunk(d.events, 1000) {
		if _, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: batch})); err != nil {
			b.Fatal(err)
		}
	}
	rpctest.WaitFor(b, "every chain's trace reaches 4 events", 30*time.Second, func() bool {
		for _, c := range d.chains {
			resp, err := n.Query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: c.recv, MaxDepth: 3,
				Origin: benchOrigin, Pid: c.pid}))
			if err != nil || len(resp.Msg.GetNodes()) != 4 {
				return false
			}
		}
		return true
	})

	m := n.Node.Store().Metrics()
	b.Logf("%d events; L0 %d files; block cache %d MiB, hits %d misses %d", len(d.events), m.Levels[0].TablesCount,
		cache>>20, m.BlockCache.Hits, m.BlockCache.Misses)
	run := func(name string, q func(rng *rand.Rand) error) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			rng := rand.New(rand.NewPCG(1, 2))
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := q(rng); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
	run("by-pid-limit=100", func(rng *rand.Rand) error {
		p := d.procs[rng.IntN(len(d.procs))]
		resp, err := n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: p.origin, Pid: p.pid, Limit: 100}))
		if err == nil && len(resp.Msg.GetEvents()) != 100 {
			err = fmt.Errorf("by-pid %s: %d events, want 100", p.pid, len(resp.Msg.GetEvents()))
		}
		return err
	})
	run("time-range-limit=1000", func(rng *rand.Rand) error {
		span := (d.endNs - d.startNs) * 9 / 10
		from := d.startNs + rng.Int64N(span)
		resp, err := n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{FromNs: from, ToNs: d.endNs + 1, Limit: 1000}))
		if err == nil && len(resp.Msg.GetEvents()) != 1000 {
			err = fmt.Errorf("time range from %d: %d events, want 1000", from, len(resp.Msg.GetEvents()))
		}
		return err
	})
	run("call-tree-frames=1000", func(*rand.Rand) error {
		resp, err := n.Query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: d.treeRoot,
			MaxFrames: 1000, Origin: benchOrigin, Pid: treePID}))
		if err == nil && resp.Msg.GetTruncated() {
			err = fmt.Errorf("call tree truncated")
		}
		return err
	})
	run("trace-depth=3", func(rng *rand.Rand) error {
		c := d.chains[rng.IntN(len(d.chains))]
		resp, err := n.Query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: c.recv, MaxDepth: 3,
			Origin: benchOrigin, Pid: c.pid}))
		if err == nil && len(resp.Msg.GetNodes()) != 4 {
			err = fmt.Errorf("trace from %s: %d nodes, want 4", c.recv, len(resp.Msg.GetNodes()))
		}
		return err
	})
}

const (
	benchOrigin = "bench@host"
	treePID     = "<tree.0>"
)

type benchProc struct {
	origin, pid string
	stack       []int
}

type benchChain struct{ recv, pid string }

type queryData struct {
	events         []*scopev1.Event
	procs          []*benchProc
	startNs, endNs int64
	treeRoot       string
	chains         []benchChain
}

// genQueryData generates total events of the bench generator's mix, then
// the landmarks. Deterministic.
func genQueryData(total int) *queryData {
	rng := rand.New(rand.NewPCG(7, 7))
	d := &queryData{startNs: 1_700_000_000_000_000_000}
	now := d.startNs
	add := func(e *scopev1.Event) *scopev1.Event {
		now += 1 + rng.Int64N(20_000)
		e.TimestampNs = now
		e.EventId = ulid.MustNew(uint64(now/1e6), entropy{rng}).String()
		d.events = append(d.events, e)
		return e
	}
	for i := range 128 {
		d.procs = append(d.procs, &benchProc{origin: fmt.Sprintf("app%d@host", i%8), pid: fmt.Sprintf("<0.%d.0>", i)})
	}
	modules := []string{"Elixir.Shop.Cart", "Elixir.Shop.Repo", "Elixir.Jason", "gen_server"}
	children := 0
	for len(d.events) < total {
		p := d.procs[rng.IntN(len(d.procs))]
		r := rng.IntN(100)
		switch {
		case r < 4:
			q := d.procs[rng.IntN(len(d.procs))]
			if q == p {
				continue
			}
			msg := fmt.Sprintf("{:order, %d}", rng.IntN(1_000_000))
			add(&scopev1.Event{Origin: p.origin, Pid: p.pid, Kind: scopev1.Kind_KIND_SEND, PeerOrigin: q.origin, PeerPid: q.pid, Payload: msg})
			add(&scopev1.Event{Origin: q.origin, Pid: q.pid, Kind: scopev1.Kind_KIND_RECEIVE, PeerOrigin: p.origin, PeerPid: p.pid, Payload: msg})
		case r < 5:
			children++
			child := fmt.Sprintf("<0.%d.1>", 1000+children)
			add(&scopev1.Event{Origin: p.origin, Pid: p.pid, Kind: scopev1.Kind_KIND_SPAWN, PeerOrigin: p.origin, PeerPid: child})
			add(&scopev1.Event{Origin: p.origin, Pid: child, Kind: scopev1.Kind_KIND_EXIT, Reason: "normal"})
		case r < 7:
			add(&scopev1.Event{Origin: p.origin, Pid: p.pid, Kind: scopev1.Kind_KIND_STATE_CHANGE, Payload: "%{items: 3}"})
		case len(p.stack) == 0 || len(p.stack) < 16 && rng.IntN(2) == 0:
			m := rng.IntN(len(modules))
			p.stack = append(p.stack, m)
			add(&scopev1.Event{Origin: p.origin, Pid: p.pid, Kind: scopev1.Kind_KIND_CALL, Module: modules[m],
				Function: "run", Arity: 2, Payload: "[:arg]"})
		default:
			m := p.stack[len(p.stack)-1]
			p.stack = p.stack[:len(p.stack)-1]
			add(&scopev1.Event{Origin: p.origin, Pid: p.pid, Kind: scopev1.Kind_KIND_RETURN, Module: modules[m],
				Function: "run", Arity: 2, Payload: ":ok"})
		}
	}
	d.endNs = now
	// The landmarks: a tree of 1 + 9 + 90 + 900 frames, and 8 chains.
	fanout := []int{9, 10, 10}
	var frame func(level int)
	frame = func(level int) {
		c := add(&scopev1.Event{Origin: benchOrigin, Pid: treePID, Kind: scopev1.Kind_KIND_CALL, Module: "Elixir.Bench.Tree",
			Function: "f", Arity: uint32(level)})
		if level == 0 {
			d.treeRoot = c.EventId
		}
		if level < len(fanout) {
			for range fanout[level] {
				frame(level + 1)
			}
		}
		add(&scopev1.Event{Origin: benchOrigin, Pid: treePID, Kind: scopev1.Kind_KIND_RETURN, Module: "Elixir.Bench.Tree",
			Function: "f", Arity: uint32(level)})
	}
	frame(0)
	for k := range 8 {
		pid := func(role byte) string { return fmt.Sprintf("<chain.%d.%c>", k, role) }
		add(&scopev1.Event{Origin: benchOrigin, Pid: pid('a'), Kind: scopev1.Kind_KIND_SPAWN, PeerOrigin: benchOrigin, PeerPid: pid('b')})
		add(&scopev1.Event{Origin: benchOrigin, Pid: pid('b'), Kind: scopev1.Kind_KIND_SPAWN, PeerOrigin: benchOrigin, PeerPid: pid('c')})
		msg := fmt.Sprintf("{:hop, %d}", k)
		add(&scopev1.Event{Origin: benchOrigin, Pid: pid('c'), Kind: scopev1.Kind_KIND_SEND, PeerOrigin: benchOrigin, PeerPid: pid('d'), Payload: msg})
		r := add(&scopev1.Event{Origin: benchOrigin, Pid: pid('d'), Kind: scopev1.Kind_KIND_RECEIVE, PeerOrigin: benchOrigin, PeerPid: pid('c'), Payload: msg})
		d.chains = append(d.chains, benchChain{recv: r.EventId, pid: pid('d')})
	}
	return d
}

// entropy adapts a rand.Rand to io.Reader (ULID entropy).
type entropy struct{ r *rand.Rand }

func (e entropy) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(e.r.Uint32())
	}
	return len(p), nil
}
