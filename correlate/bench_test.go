package correlate

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// benchStream generates one pass of realistic traffic over procs processes:
// about 40% CALL, 40% RETURN (half bare, half with m/f/a), 15% SEND/RECEIVE
// (each SEND to a random process, its RECEIVE a few events later), 5%
// STATE_CHANGE. Every frame opened in the pass is closed in it and every
// send received, so the pass can be replayed any number of times with fresh
// ids and the correlator stays in steady state (procs live processes).
func benchStream(procs, n int) []Event {
	rng := rand.New(rand.NewPCG(21, 22))
	type pstate struct {
		origin, pid string
		stack       []int // function index of open frames
	}
	ps := make([]pstate, procs)
	for i := range ps {
		ps[i] = pstate{origin: fmt.Sprintf("app%d@host", i%4), pid: fmt.Sprintf("<0.%d.0>", 100+i)}
	}
	mods := make([]string, 64)
	for i := range mods {
		mods[i] = fmt.Sprintf("Elixir.MyApp.Module%d", i)
	}
	payload := strings.Repeat("%{id: 42, name: \"x\"} ", 5)
	var out []Event
	var receives []Event // pending receives, emitted later
	for len(out) < n {
		i := rng.IntN(procs)
		p := &ps[i]
		e := Event{Origin: p.origin, PID: p.pid, TimestampNs: int64(len(out)) * 1000, Payload: payload}
		r := rng.IntN(100)
		switch {
		case len(receives) > 0 && rng.IntN(4) == 0:
			e = receives[0]
			e.TimestampNs = int64(len(out)) * 1000 // received now, after its send
			receives = receives[1:]
		case r < 40 && len(p.stack) < 8 || r < 80 && len(p.stack) == 0:
			fi := rng.IntN(len(mods))
			e.Kind, e.Module, e.Function, e.Arity = KindCall, mods[fi], "handle", 2
			p.stack = append(p.stack, fi)
		case r < 80:
			e.Kind = KindReturn
			if rng.IntN(2) == 0 {
				e.Module, e.Function, e.Arity = mods[p.stack[len(p.stack)-1]], "handle", 2
			}
			p.stack = p.stack[:len(p.stack)-1]
		case r < 88:
			q := &ps[rng.IntN(procs)]
			e.Kind, e.PeerOrigin, e.PeerPID, e.MessageHash = KindSend, q.origin, q.pid, rng.Uint64()
			receives = append(receives, Event{Origin: q.origin, PID: q.pid, Kind: KindReceive, Payload: payload,
				PeerOrigin: p.origin, PeerPID: p.pid, MessageHash: e.MessageHash})
		default:
			e.Kind = KindStateChange
		}
		out = append(out, e)
	}
	for _, e := range receives {
		e.TimestampNs = int64(len(out)) * 1000
		out = append(out, e)
	}
	for i := range ps {
		for range ps[i].stack {
			out = append(out, Event{Origin: ps[i].origin, PID: ps[i].pid, Kind: KindReturn, TimestampNs: 1})
		}
	}
	return out
}

// BenchmarkCorrelator measures Apply on the realistic mix in batches of 256
// with 10k live processes. The copy of each batch into the input slice and
// the id refresh (needed so ids are new on every pass) are included.
func BenchmarkCorrelator(b *testing.B) {
	for _, tc := range []struct{ procs, shards int }{{10_000, 1}, {10_000, 16}} {
		b.Run(fmt.Sprintf("procs=%d/shards=%d/batch=256", tc.procs, tc.shards), func(b *testing.B) {
			const batch = 256
			stream := benchStream(tc.procs, 200_000)
			c, err := New(DefaultConfig(0, uint32(tc.shards)))
			if err != nil {
				b.Fatal(err)
			}
			in := make([]Event, batch)
			pos, pass, logTime := 0, uint64(1), int64(1)
			next := func() []Event {
				n := min(batch, len(stream)-pos)
				copy(in, stream[pos:pos+n])
				for i := range n {
					in[i].ID = testID(pass, uint64(pos+i))
				}
				if pos += n; pos == len(stream) {
					pos, pass = 0, pass+1
				}
				return in[:n]
			}
			// Warm up: one full pass brings every process and table to
			// steady state.
			for range len(stream)/batch + 1 {
				logTime++
				c.Apply(Batch{LogTime: logTime, Events: next()})
			}
			b.ReportAllocs()
			events := 0
			var acked []EventID
			for b.Loop() {
				logTime++
				evs := next()
				events += len(evs)
				res := c.Apply(Batch{LogTime: logTime, Events: evs, Acked: acked})
				acked = acked[:0]
				for _, n := range res.Outbox { // acknowledge at once: the outbox stays small
					acked = append(acked, n.EventID)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
		})
	}
}

// BenchmarkCorrelatorHotKey is the costliest shape for pending messages: a
// process sends the same message to one receiver over and over (a timer's
// tick) and the receiver's RECEIVEs are not traced, so every send notice
// waits under one key until the table's bound evicts the oldest.
func BenchmarkCorrelatorHotKey(b *testing.B) {
	const batch = 256
	cfg := DefaultConfig(0, 1)
	c, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	in := make([]Event, batch)
	seq, logTime := uint64(0), int64(1)
	next := func() []Event {
		for i := range in {
			seq++
			in[i] = Event{ID: testID(1, seq), Origin: "app@h", PID: "<0.1.0>", Kind: KindSend, TimestampNs: int64(seq),
				PeerOrigin: "app@h", PeerPID: "<0.2.0>", Payload: "tick"}
		}
		return in
	}
	// Fill the table to its bound: from then on every send evicts one.
	for range cfg.MaxPending/batch + 1 {
		logTime++
		c.Apply(Batch{LogTime: logTime, Events: next()})
	}
	b.ReportAllocs()
	events := 0
	for b.Loop() {
		logTime++
		events += batch
		c.Apply(Batch{LogTime: logTime, Events: next()})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}

// BenchmarkOrderBySeq sorts a batch of 512 events whose processes each
// sent their events in reverse seq order: the worst case, every process
// disordered.
func BenchmarkOrderBySeq(b *testing.B) {
	for _, procs := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("procs=%d", procs), func(b *testing.B) {
			c, err := New(DefaultConfig(0, 1))
			if err != nil {
				b.Fatal(err)
			}
			const batch = 512
			src := make([]Event, batch)
			for i := range src {
				p := i % procs
				src[i] = Event{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", p), Seq: uint64(batch - i)}
			}
			evs := make([]Event, batch)
			b.ReportAllocs()
			for b.Loop() {
				copy(evs, src)
				c.orderBySeq(evs)
			}
		})
	}
}
