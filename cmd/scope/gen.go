package main

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/correlate"
)

// This file is `scope bench`'s load generator: realistic traces of many
// traced processes. Each process runs nested calls (a call stack of bounded
// depth, closed by RETURN or sometimes EXCEPTION), exchanges messages with
// other processes (a SEND on the sender followed by the RECEIVE on the
// receiver), spawns short-lived children and changes state. The mix is
// about 41% CALL, 41% RETURN/EXCEPTION (2% of them EXCEPTION), 15%
// SEND+RECEIVE, 4% SPAWN, EXIT and STATE_CHANGE (gen_test.go checks it). Everything derives from the seed, so a run can be
// repeated exactly.

// genConfig configures one generator. Generators with the same Seed and
// different Part own disjoint processes, so several can feed one cluster
// concurrently while each process's events stay in order on one stream.
type genConfig struct {
	Seed     uint64
	Procs    int   // traced processes owned by this generator
	Part     int   // this generator's index among the generators of a run
	Origins  int   // distinct origins (application nodes) the processes spread over
	MaxDepth int   // deepest call stack
	StartNs  int64 // timestamp of the first event
	// PayloadBytes, if positive, pads every event's payload to this many
	// bytes (events of a stated size for comparisons; the generator's own
	// payloads are a few bytes).
	PayloadBytes int
}

// genProc is one traced process's state.
type genProc struct {
	origin, pid string
	stack       []genFrame
	seq         uint64
}

type genFrame struct {
	module, function string
	arity            uint32
}

// padding pads generated payloads (genConfig.PayloadBytes).
var padding = strings.Repeat(" ", 1<<16)

// generator produces events. It is not safe for concurrent use.
type generator struct {
	cfg      genConfig
	rng      *rand.Rand
	entropy  *rand.Rand
	procs    []genProc
	nowNs    int64
	children uint64
	pending  []owed // RECEIVEs and EXITs owed after their SEND/SPAWN
}

// owed is an event to emit next, and its process (nil: a spawned child).
type owed struct {
	e correlate.Event
	p *genProc
}

// genModules is the vocabulary of functions the processes call.
var genModules = []genFrame{
	{"Elixir.Shop.Cart", "add_item", 3}, {"Elixir.Shop.Cart", "total", 1},
	{"Elixir.Shop.Repo", "insert", 2}, {"Elixir.Shop.Repo", "get", 2},
	{"Elixir.Shop.Pricing", "apply_discount", 2}, {"Elixir.Shop.Inventory", "reserve", 3},
	{"Elixir.Phoenix.Endpoint", "call", 2}, {"Elixir.Jason", "encode", 1},
	{"gen_server", "handle_call", 3}, {"gen_server", "handle_cast", 2},
	{"Elixir.Ecto.Adapters.SQL", "query", 4}, {"Elixir.Logger", "info", 2},
}

func newGenerator(cfg genConfig) (*generator, error) {
	switch {
	case cfg.Procs < 2:
		return nil, fmt.Errorf("generator: Procs %d: need at least 2 (messages go between processes)", cfg.Procs)
	case cfg.Origins < 1:
		return nil, fmt.Errorf("generator: Origins %d: need at least 1", cfg.Origins)
	case cfg.MaxDepth < 1:
		return nil, fmt.Errorf("generator: MaxDepth %d: need at least 1", cfg.MaxDepth)
	case cfg.StartNs <= 0:
		return nil, fmt.Errorf("generator: StartNs %d: must be positive", cfg.StartNs)
	case cfg.PayloadBytes < 0:
		return nil, fmt.Errorf("generator: PayloadBytes %d: must not be negative", cfg.PayloadBytes)
	}
	g := &generator{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Part))),
		entropy: rand.New(rand.NewPCG(cfg.Seed^0x9e3779b97f4a7c15, uint64(cfg.Part))),
		procs:   make([]genProc, cfg.Procs),
		nowNs:   cfg.StartNs,
	}
	for i := range g.procs {
		origin, pid := genProcess(cfg.Part, i, cfg.Origins)
		g.procs[i] = genProc{origin: origin, pid: pid, stack: make([]genFrame, 0, cfg.MaxDepth)}
	}
	return g, nil
}

// genProcess names the i-th long-lived process of generator part: the
// query benchmark picks processes to ask for by the same rule.
func genProcess(part, i, origins int) (origin, pid string) {
	return fmt.Sprintf("app%d@host", i%origins), fmt.Sprintf("<%d.%d.0>", part, i)
}

// next appends exactly n events to dst.
func (g *generator) next(dst []correlate.Event, n int) []correlate.Event {
	for range n {
		if len(g.pending) > 0 {
			o := g.pending[0]
			g.pending = g.pending[1:]
			dst = append(dst, g.stamp(o.e, o.p))
			continue
		}
		dst = append(dst, g.one())
	}
	return dst
}

// stamp gives e the next timestamp, an id and, for a long-lived process
// p, its next seq.
func (g *generator) stamp(e correlate.Event, p *genProc) correlate.Event {
	g.nowNs += 1 + g.rng.Int64N(20_000) // events every ~10 µs on average
	e.TimestampNs = g.nowNs
	e.ID = ulid.MustNew(uint64(g.nowNs/1e6), g)
	if n := g.cfg.PayloadBytes; n > len(e.Payload) {
		e.Payload += padding[:min(n-len(e.Payload), len(padding))]
	}
	if p != nil {
		p.seq++
		e.Seq = p.seq
	}
	return e
}

// Read implements io.Reader as ULID entropy.
func (g *generator) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(g.entropy.Uint32())
	}
	return len(p), nil
}

// one produces the next event of a randomly chosen process.
func (g *generator) one() correlate.Event {
	p := &g.procs[g.rng.IntN(len(g.procs))]
	base := correlate.Event{Origin: p.origin, PID: p.pid}
	r := g.rng.IntN(100)
	switch {
	case r < 8: // a message: SEND now, its RECEIVE next
		q := &g.procs[g.rng.IntN(len(g.procs))]
		for q == p {
			q = &g.procs[g.rng.IntN(len(g.procs))]
		}
		payload := fmt.Sprintf("{:order, %d}", g.rng.IntN(1_000_000))
		send := base
		send.Kind, send.PeerOrigin, send.PeerPID, send.Payload = correlate.KindSend, q.origin, q.pid, payload
		g.pending = append(g.pending, owed{correlate.Event{Origin: q.origin, PID: q.pid, Kind: correlate.KindReceive,
			PeerOrigin: p.origin, PeerPID: p.pid, Payload: payload}, q})
		return g.stamp(send, p)
	case r < 9: // spawn a short-lived child that exits next
		g.children++
		child := fmt.Sprintf("<%d.%d.%d>", g.cfg.Part, len(g.procs)+int(g.children%1_000_000), 1+g.children/1_000_000)
		spawn := base
		spawn.Kind, spawn.PeerOrigin, spawn.PeerPID = correlate.KindSpawn, p.origin, child
		g.pending = append(g.pending, owed{correlate.Event{Origin: p.origin, PID: child, Kind: correlate.KindExit, Reason: "normal"}, nil})
		return g.stamp(spawn, p)
	case r < 11:
		st := base
		st.Kind, st.Payload = correlate.KindStateChange, fmt.Sprintf("%%{items: %d}", g.rng.IntN(100))
		return g.stamp(st, p)
	}
	// Calls and returns, 80% together: open when the stack is empty,
	// close when it is full, else a coin toss.
	open := len(p.stack) == 0 || (len(p.stack) < g.cfg.MaxDepth && g.rng.IntN(2) == 0)
	if open {
		f := genModules[g.rng.IntN(len(genModules))]
		p.stack = append(p.stack, f)
		call := base
		call.Kind, call.Module, call.Function, call.Arity = correlate.KindCall, f.module, f.function, f.arity
		call.Payload = "[:arg]"
		return g.stamp(call, p)
	}
	f := p.stack[len(p.stack)-1]
	p.stack = p.stack[:len(p.stack)-1]
	end := base
	end.Module, end.Function, end.Arity = f.module, f.function, f.arity
	if r < 13 { // ~2 in 89 closings are exceptions
		end.Kind, end.Reason = correlate.KindException, "%RuntimeError{message: \"boom\"}"
	} else {
		end.Kind, end.Payload = correlate.KindReturn, ":ok"
	}
	return g.stamp(end, p)
}
