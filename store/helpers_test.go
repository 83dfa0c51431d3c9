package store

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/elixirscope/scope/correlate"
	"github.com/oklog/ulid/v2"
)

// testOptions returns options on an in-memory filesystem with a narrow
// bucket (2^20 ns) so that small fixtures span many buckets.
func testOptions(fs vfs.FS) Options {
	o := DefaultOptions()
	o.FS = fs
	o.Logger = slog.New(slog.DiscardHandler)
	o.BucketShift = 20
	o.MemTableSize = 4 << 20
	o.CacheSize = 8 << 20
	return o
}

func openMem(t testing.TB) *Store {
	t.Helper()
	s, err := Open("db", testOptions(vfs.NewMem()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// ref is the deliberately simple reference the store is checked against:
// a slice of events, filtered and sorted by brute force.
type ref struct {
	events map[correlate.EventID]correlate.Event
	state  map[string][]byte
}

func newRef() *ref {
	return &ref{events: map[correlate.EventID]correlate.Event{}, state: map[string][]byte{}}
}

func (r *ref) apply(res *correlate.Result) {
	for _, e := range res.Events {
		if _, dup := r.events[e.ID]; !dup {
			r.events[e.ID] = e
		}
	}
	for _, ed := range res.Edges {
		if e, ok := r.events[ed.From]; ok {
			e.Links = append(slices.Clone(e.Links), correlate.Link{Type: ed.Type, Target: ed.To})
			r.events[ed.From] = e
		}
	}
	for _, s := range res.State {
		if s.Value == nil {
			delete(r.state, string(s.Key))
		} else {
			r.state[string(s.Key)] = s.Value
		}
	}
	if rt := res.Retention; rt != nil {
		all := r.sorted()
		for i, e := range all {
			if (rt.BeforeNs != 0 && e.TimestampNs < rt.BeforeNs) ||
				(rt.MaxEvents > 0 && uint64(len(all)-i) > rt.MaxEvents) {
				delete(r.events, e.ID)
			}
		}
	}
}

func cmpEvents(a, b correlate.Event) int {
	if c := cmp.Compare(a.TimestampNs, b.TimestampNs); c != 0 {
		return c
	}
	return a.ID.Compare(b.ID)
}

func (r *ref) sorted() []correlate.Event {
	out := make([]correlate.Event, 0, len(r.events))
	for _, e := range r.events {
		out = append(out, e)
	}
	slices.SortFunc(out, cmpEvents)
	return out
}

// query answers q by brute force: filter, order, resume, limit.
func (r *ref) query(q Query) []correlate.Event {
	var out []correlate.Event
	all := r.sorted()
	if q.Descending {
		slices.Reverse(all)
	}
	for _, e := range all {
		if !matches(&q, &e) {
			continue
		}
		if a := q.After; a != nil {
			c := cmpEvents(e, correlate.Event{TimestampNs: a.TimestampNs, ID: a.ID})
			if (!q.Descending && c <= 0) || (q.Descending && c >= 0) {
				continue
			}
		}
		out = append(out, e)
		if len(out) == q.Limit {
			break
		}
	}
	return out
}

// gen makes reproducible correlated-looking events.
type gen struct {
	rng   *rand.Rand
	procs []correlate.Process
	seq   uint64
	ts    int64
	open  map[correlate.Process][]correlate.EventID
	calls map[correlate.EventID]correlate.Event // open CALLs, for their function and start
}

func newGen(seed uint64, procs int) *gen {
	g := &gen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), open: map[correlate.Process][]correlate.EventID{},
		calls: map[correlate.EventID]correlate.Event{}}
	for i := range procs {
		g.procs = append(g.procs, correlate.Process{Origin: fmt.Sprintf("app%d@host", i%3), PID: fmt.Sprintf("<0.%d.0>", 100+i)})
	}
	g.procs = append(g.procs, correlate.Process{Origin: "ünï@høst", PID: "<0.1.0>\x00weird"})
	return g
}

func (g *gen) id(ts int64) correlate.EventID {
	g.seq++
	var id correlate.EventID
	ms := uint64(max(ts, 0)) / 1e6
	if err := id.SetTime(ms % ulid.MaxTime()); err != nil {
		panic(err)
	}
	for i := 6; i < 16; i++ {
		id[i] = byte(g.seq >> (8 * (15 - i)))
	}
	return id
}

var funcs = [][2]string{{"Elixir.Foo", "bar"}, {"Elixir.Foo", "baz"}, {"gen_server", "call"}}

// event returns one event; timestamps advance by small steps (with many
// equal and some negative ones).
func (g *gen) event() correlate.Event {
	g.ts += int64(g.rng.IntN(3)) * int64(g.rng.IntN(400_000))
	p := g.procs[g.rng.IntN(len(g.procs))]
	e := correlate.Event{Origin: p.Origin, PID: p.PID, TimestampNs: g.ts - 2_000_000, Seq: g.seq}
	e.ID = g.id(e.TimestampNs)
	stack := g.open[p]
	switch r := g.rng.IntN(10); {
	case r < 4:
		e.Kind = correlate.KindCall
		f := funcs[g.rng.IntN(len(funcs))]
		e.Module, e.Function, e.Arity = f[0], f[1], uint32(g.rng.IntN(3))
		e.CorrelationID = e.ID.String()
		if len(stack) > 0 {
			e.ParentID, e.RootID = stack[len(stack)-1], stack[0]
			e.Links = []correlate.Link{{Type: correlate.LinkCalledFrom, Target: e.ParentID}}
		} else {
			e.RootID = e.ID
		}
		g.open[p] = append(stack, e.ID)
		g.calls[e.ID] = e
	case r < 7 && len(stack) > 0:
		e.Kind = correlate.KindReturn
		if r == 6 {
			e.Kind = correlate.KindException
		}
		call := stack[len(stack)-1]
		g.open[p] = stack[:len(stack)-1]
		e.CorrelationID, e.RootID = call.String(), stack[0]
		if len(stack) > 1 {
			e.ParentID = stack[len(stack)-2]
		}
		e.Links = []correlate.Link{{Type: correlate.LinkCompletes, Target: call}}
		c := g.calls[call]
		delete(g.calls, call)
		e.DurationNs, e.Outcome = e.TimestampNs-c.TimestampNs, correlate.OutcomeOK
		if e.Kind == correlate.KindException {
			e.Outcome = correlate.OutcomeException
		}
		if g.rng.IntN(4) > 0 { // the correlator names the function of a bare RETURN
			e.Module, e.Function, e.Arity = c.Module, c.Function, c.Arity
		}
	case r < 8:
		e.Kind = correlate.KindSend
		q := g.procs[g.rng.IntN(len(g.procs))]
		e.PeerOrigin, e.PeerPID, e.MessageHash = q.Origin, q.PID, uint64(g.rng.IntN(5))
		e.Payload = "msg"
	case r < 9:
		e.Kind = correlate.KindStateChange
		e.Payload = fmt.Sprintf("state %d", g.seq)
		if len(stack) > 0 {
			e.ParentID = stack[len(stack)-1]
		}
	default:
		e.Kind = correlate.KindReceive
		q := g.procs[g.rng.IntN(len(g.procs))]
		e.PeerOrigin, e.PeerPID = q.Origin, q.PID
	}
	return e
}

func (g *gen) batch(index uint64, n int) *correlate.Result {
	res := &correlate.Result{Index: index}
	for range n {
		res.Events = append(res.Events, g.event())
	}
	res.State = []correlate.StateRecord{{Key: fmt.Appendf(nil, "k%03d", index%7), Value: fmt.Appendf(nil, "v%d", index)}}
	if index%5 == 0 {
		res.State = append(res.State, correlate.StateRecord{Key: fmt.Appendf(nil, "k%03d", (index+3)%7)})
	}
	return res
}

func mustApply(t testing.TB, s *Store, shard uint32, res *correlate.Result) {
	t.Helper()
	if err := s.Apply(shard, res); err != nil {
		t.Fatalf("apply index %d: %v", res.Index, err)
	}
}

// norm makes events comparable: the store sets Shard and returns Links as
// stored edges (order by key).
func norm(es []correlate.Event, shard uint32) []correlate.Event {
	out := make([]correlate.Event, len(es))
	for i, e := range es {
		e.Shard = shard
		if len(e.Links) == 0 {
			e.Links = nil
		} else {
			e.Links = slices.Clone(e.Links)
			slices.SortFunc(e.Links, func(a, b correlate.Link) int {
				if c := cmp.Compare(a.Type, b.Type); c != 0 {
					return c
				}
				return a.Target.Compare(b.Target)
			})
		}
		if len(e.Attributes) == 0 {
			e.Attributes = nil
		}
		out[i] = e
	}
	return out
}

var unbounded = [2]int64{math.MinInt64, math.MaxInt64}

// stats aggregates the reference's events by brute force: what
// ShardStats.Kinds and Functions must say.
func (r *ref) stats() ([numKinds]uint64, []FunctionStats) {
	var kinds [numKinds]uint64
	byFn := map[[3]string]*FunctionStats{}
	for _, e := range r.events {
		kinds[e.Kind]++
		if e.Module == "" && e.Function == "" {
			continue
		}
		k := [3]string{e.Module, e.Function, fmt.Sprint(e.Arity)}
		f := byFn[k]
		if f == nil {
			f = &FunctionStats{Module: e.Module, Function: e.Function, Arity: e.Arity}
		}
		switch {
		case e.Kind == correlate.KindCall:
			f.Calls++
		case e.Kind == correlate.KindReturn && e.Outcome == correlate.OutcomeOK:
			f.DurationNs += e.DurationNs
		case e.Kind == correlate.KindException && e.Outcome == correlate.OutcomeException:
			f.Exceptions++
			f.DurationNs += e.DurationNs
		default:
			continue
		}
		byFn[k] = f
	}
	var fns []FunctionStats
	for _, f := range byFn {
		fns = append(fns, *f)
	}
	slices.SortFunc(fns, compareFunction)
	return kinds, fns
}

// checkStats compares the shard's aggregates with the reference's.
func checkStats(t testing.TB, s *Store, shard uint32, r *ref) ShardStats {
	t.Helper()
	st, err := s.Stats(shard)
	if err != nil {
		t.Fatal(err)
	}
	kinds, fns := r.stats()
	if st.Kinds != kinds {
		t.Fatalf("kinds %v, want %v", st.Kinds, kinds)
	}
	if len(st.Functions) == 0 && len(fns) == 0 {
		return st
	}
	if !slices.Equal(st.Functions, fns) {
		t.Fatalf("functions\n%+v\nwant\n%+v", st.Functions, fns)
	}
	var sum uint64
	for _, n := range st.Kinds {
		sum += n
	}
	if sum != st.Events {
		t.Fatalf("kinds sum to %d, events %d", sum, st.Events)
	}
	return st
}
