package store

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// fill applies n batches of size events each to shard, mirrored in a ref.
func fill(t testing.TB, s *Store, shard uint32, g *gen, batches, size int) *ref {
	t.Helper()
	r := newRef()
	for i := 1; i <= batches; i++ {
		res := g.batch(uint64(i), size)
		mustApply(t, s, shard, res)
		r.apply(res)
	}
	return r
}

func queries(g *gen, r *ref) map[string]Query {
	all := r.sorted()
	mid := all[len(all)/2].TimestampNs
	p := g.procs[1]
	uni := g.procs[len(g.procs)-1]
	arity := uint32(1)
	var root, corr correlate.EventID
	for _, e := range all {
		if e.Kind == correlate.KindCall && e.ParentID != (correlate.EventID{}) {
			root, corr = e.RootID, e.ParentID
			break
		}
	}
	q := func(mod func(*Query)) Query {
		x := Unbounded(25)
		mod(&x)
		return x
	}
	return map[string]Query{
		"all asc":               q(func(*Query) {}),
		"all desc":              q(func(x *Query) { x.Descending = true }),
		"range inclusive":       q(func(x *Query) { x.FromNs, x.ToNs = all[10].TimestampNs, all[60].TimestampNs }),
		"range desc":            q(func(x *Query) { x.FromNs, x.ToNs, x.Descending = mid-5_000_000, mid, true }),
		"negative and zero":     q(func(x *Query) { x.FromNs, x.ToNs = math.MinInt64, 0 }),
		"empty range":           q(func(x *Query) { x.FromNs, x.ToNs = 10, 9 }),
		"process":               q(func(x *Query) { x.Process = &p }),
		"process desc to mid":   q(func(x *Query) { x.Process, x.ToNs, x.Descending = &p, mid, true }),
		"unicode process":       q(func(x *Query) { x.Process = &uni }),
		"unknown process":       q(func(x *Query) { x.Process = &correlate.Process{Origin: "nope", PID: "<0.0.0>"} }),
		"process state":         q(func(x *Query) { x.Process, x.Kinds = &p, []correlate.Kind{correlate.KindStateChange} }),
		"process kinds":         q(func(x *Query) { x.Process, x.Kinds = &p, []correlate.Kind{correlate.KindCall, correlate.KindSend} }),
		"module function":       q(func(x *Query) { x.Module, x.Function = "Elixir.Foo", "bar" }),
		"module function arity": q(func(x *Query) { x.Module, x.Function, x.Arity = "Elixir.Foo", "bar", &arity }),
		"module only":           q(func(x *Query) { x.Module = "gen_server" }),
		"kind":                  q(func(x *Query) { x.Kinds = []correlate.Kind{correlate.KindSend} }),
		"kinds":                 q(func(x *Query) { x.Kinds = []correlate.Kind{correlate.KindReturn, correlate.KindException} }),
		"root":                  q(func(x *Query) { x.RootID = root }),
		"correlation":           q(func(x *Query) { x.CorrelationID = corr.String() }),
		"correlation and kind":  q(func(x *Query) { x.CorrelationID, x.Kinds = corr.String(), []correlate.Kind{correlate.KindReturn} }),
		"process and function":  q(func(x *Query) { x.Process, x.Module, x.Function = &p, "Elixir.Foo", "baz" }),
	}
}

// TestEventsDifferential checks every query shape against the reference,
// page by page with resumed cursors, ascending and descending.
func TestEventsDifferential(t *testing.T) {
	s := openMem(t)
	g := newGen(1, 6)
	r := fill(t, s, 3, g, 30, 40)
	for name, q := range queries(g, r) {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			var got, want []correlate.Event
			for pages := 0; ; pages++ {
				if pages > 1000 {
					t.Fatal("no progress")
				}
				page, err := s.Events(3, q)
				if err != nil {
					t.Fatal(err)
				}
				wantPage := r.query(q)
				if !reflect.DeepEqual(norm(page.Events, 3), norm(wantPage, 3)) {
					t.Fatalf("page %d: got %d events, want %d\n got %v\nwant %v", pages, len(page.Events), len(wantPage), ids(page.Events), ids(wantPage))
				}
				got, want = append(got, page.Events...), append(want, wantPage...)
				if !page.More {
					rest := q
					rest.Limit = 1
					if n := len(page.Events); n > 0 {
						rest.After = &Position{TimestampNs: page.Events[n-1].TimestampNs, ID: page.Events[n-1].ID}
					}
					if len(r.query(rest)) > 0 {
						t.Fatal("More=false but results remain")
					}
					break
				}
				q.After = &page.Next
			}
			full := q
			full.After, full.Limit = nil, 10_000
			if w := r.query(full); len(w) != len(want) {
				t.Fatalf("paged total %d, want %d", len(want), len(w))
			}
		})
	}
}

func ids(es []correlate.Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%d/%s", e.TimestampNs, e.ID.String()[20:]))
	}
	return out
}

// TestIndexReadsOnlyWhatItNeeds counts the index keys a query examines: an
// indexed query reads its results and at most one key more per bucket.
func TestIndexReadsOnlyWhatItNeeds(t *testing.T) {
	s := openMem(t)
	g := newGen(2, 8)
	r := fill(t, s, 1, g, 20, 50)
	p := g.procs[2]
	for _, desc := range []bool{false, true} {
		q := Unbounded(10)
		q.Process, q.Descending = &p, desc
		page, err := s.Events(1, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) != 10 || page.Scanned != 10 {
			t.Fatalf("desc=%v: %d events, %d keys scanned; want 10 and 10", desc, len(page.Events), page.Scanned)
		}
	}
	// A residual filter on the time index reads more, but never more than
	// MaxScan, and reports where it stopped.
	s.opts.MaxScan = 30
	q := Unbounded(5)
	q.Module = "nothing-matches"
	page, err := s.Events(1, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 0 || page.Scanned != 30 || !page.More {
		t.Fatalf("bounded scan: %d events, scanned %d, more %v", len(page.Events), page.Scanned, page.More)
	}
	all := r.sorted()
	if page.Next.ID != all[29].ID {
		t.Fatalf("Next = %v, want the 30th event %v", page.Next, all[29].ID)
	}
}

func TestEqualTimestampsNeverCollide(t *testing.T) {
	s := openMem(t)
	g := newGen(3, 2)
	res := &correlate.Result{Index: 1}
	for i := range 100 {
		e := correlate.Event{Origin: "a", PID: "p", Kind: correlate.KindSend, TimestampNs: 42, Payload: fmt.Sprint(i)}
		e.ID = g.id(42)
		res.Events = append(res.Events, e)
	}
	mustApply(t, s, 0, res)
	page, err := s.Events(0, Query{FromNs: 42, ToNs: 42, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 100 {
		t.Fatalf("%d events at ts 42, want 100", len(page.Events))
	}
	st, err := s.Stats(0)
	if err != nil || st.Events != 100 || st.OldestNs != 42 || st.NewestNs != 42 || st.AppliedIndex != 1 {
		t.Fatalf("stats %+v, %v", st, err)
	}
}

func TestGetAndEdges(t *testing.T) {
	s := openMem(t)
	g := newGen(4, 3)
	r := fill(t, s, 2, g, 5, 30)
	for _, e := range r.sorted() {
		got, err := s.Get(2, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(norm([]correlate.Event{got}, 2), norm([]correlate.Event{e}, 2)) {
			t.Fatalf("Get %s:\n got %+v\nwant %+v", e.ID, got, e)
		}
	}
	if _, err := s.Get(2, g.id(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a missing id: %v", err)
	}
	if _, err := s.Get(5, r.sorted()[0].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get on another shard: %v", err)
	}
	// An edge from a remote SEND is stored with the RECEIVE it points at.
	var recv correlate.Event
	for _, e := range r.sorted() {
		if e.Kind == correlate.KindReceive {
			recv = e
		}
	}
	remote := g.id(0)
	mustApply(t, s, 2, &correlate.Result{Index: 100, Edges: []correlate.Edge{
		{From: remote, Type: correlate.LinkDeliveredTo, To: recv.ID},
		{From: g.id(0), Type: correlate.LinkDeliveredTo, To: g.id(0)}, // touches nothing here: dropped
	}})
	links, err := s.Edges(2, remote)
	if err != nil || len(links) != 1 || links[0].Target != recv.ID {
		t.Fatalf("remote edges %v, %v", links, err)
	}
	if c := s.Counters(); c.EdgesDropped != 1 {
		t.Fatalf("counters %+v", c)
	}
}

func TestApplyIsIdempotentByIndex(t *testing.T) {
	s := openMem(t)
	g := newGen(5, 3)
	res := g.batch(7, 20)
	mustApply(t, s, 1, res)
	d1, _ := s.Digest(1)
	mustApply(t, s, 1, res)
	mustApply(t, s, 1, g.batch(6, 20)) // older index: ignored
	d2, _ := s.Digest(1)
	if d1 != d2 {
		t.Fatal("re-applying an applied index changed the shard")
	}
	if ai, _ := s.AppliedIndex(1); ai != 7 {
		t.Fatalf("applied index %d", ai)
	}
	// A duplicate id in a later batch is skipped and counted, so that the
	// statistics stay exact.
	dup := &correlate.Result{Index: 8, Events: res.Events[:3]}
	mustApply(t, s, 1, dup)
	st, _ := s.Stats(1)
	if st.Events != 20 || s.Counters().Duplicates != 3 {
		t.Fatalf("stats %+v counters %+v", st, s.Counters())
	}
}

func TestStateRecords(t *testing.T) {
	s := openMem(t)
	g := newGen(6, 2)
	r := fill(t, s, 4, g, 12, 3)
	got, err := s.State(4)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(r.state) {
		t.Fatalf("%d state records, want %d", len(got), len(r.state))
	}
	for _, rec := range got {
		if string(r.state[string(rec.Key)]) != string(rec.Value) {
			t.Fatalf("state %q = %q, want %q", rec.Key, rec.Value, r.state[string(rec.Key)])
		}
	}
}

func TestInvalidInput(t *testing.T) {
	s := openMem(t)
	for name, q := range map[string]Query{
		"zero limit":    {ToNs: 1},
		"huge limit":    {Limit: 1 << 20},
		"bad kind":      {Limit: 1, Kinds: []correlate.Kind{99}},
		"arity alone":   {Limit: 1, Arity: new(uint32)},
		"empty process": {Limit: 1, Process: &correlate.Process{}},
	} {
		if _, err := s.Events(0, q); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := s.Apply(0, &correlate.Result{Index: 1, Events: []correlate.Event{{Kind: correlate.KindCall}}}); !errors.Is(err, ErrInvalidResult) {
		t.Errorf("event without id: %v", err)
	}
	if _, err := s.AppliedIndex(metaShard); !errors.Is(err, ErrInvalidShard) {
		t.Errorf("reserved shard: %v", err)
	}
	if ai, _ := s.AppliedIndex(0); ai != 0 {
		t.Errorf("a rejected Apply left applied index %d", ai)
	}
}

func TestHugePayload(t *testing.T) {
	s := openMem(t)
	g := newGen(7, 1)
	e := correlate.Event{Origin: "o", PID: "p", Kind: correlate.KindStateChange, TimestampNs: -5,
		Payload: strings.Repeat("é", 2<<20)}
	e.ID = g.id(0)
	mustApply(t, s, 0, &correlate.Result{Index: 1, Events: []correlate.Event{e}})
	got, ok, err := s.StateAt(0, e.Process(), 0)
	if err != nil || !ok || got.Payload != e.Payload {
		t.Fatalf("StateAt: ok=%v err=%v len=%d", ok, err, len(got.Payload))
	}
	if _, ok, _ := s.StateAt(0, e.Process(), -6); ok {
		t.Fatal("StateAt before the first state change found one")
	}
}

func TestCursorResumedAcrossWrites(t *testing.T) {
	s := openMem(t)
	g := newGen(8, 3)
	r := fill(t, s, 0, g, 4, 25)
	q := Unbounded(30)
	page, err := s.Events(0, q)
	if err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 9; i++ {
		res := g.batch(uint64(i), 25)
		mustApply(t, s, 0, res)
		r.apply(res)
	}
	q.After = &page.Next
	q.Limit = 10_000
	page2, err := s.Events(0, q)
	if err != nil {
		t.Fatal(err)
	}
	want := r.query(q)
	if !reflect.DeepEqual(norm(page2.Events, 0), norm(want, 0)) || len(page.Events)+len(want) != len(r.events) {
		t.Fatalf("resumed page: %d events, want %d (total %d)", len(page2.Events), len(want), len(r.events))
	}
}

// TestDuplicateAcrossBatchesChangesNothing re-applies events already
// stored (as a client retry older than the correlator's dedup window
// would), mixed with new events, repeated within the batch, from memtable
// and from flushed sstables: the shard must end byte-identical (Digest) to
// one that never saw the duplicates, with the same counts and answers.
func TestDuplicateAcrossBatchesChangesNothing(t *testing.T) {
	for _, flush := range []bool{false, true} {
		t.Run(fmt.Sprintf("flush=%v", flush), func(t *testing.T) {
			dup, clean := openMem(t), openMem(t)
			g := newGen(11, 4)
			first := g.batch(1, 300) // spans many 2^20 ns buckets
			fresh := g.batch(2, 50)
			for _, s := range []*Store{dup, clean} {
				mustApply(t, s, 3, first)
				if flush {
					if err := s.db.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Index 2: the fresh events, with old ones (first, middle, last
			// of batch 1) and an in-batch repeat interleaved.
			old := first.Events
			mixed := &correlate.Result{Index: 2, State: fresh.State}
			mixed.Events = append(mixed.Events, old[0], fresh.Events[0], old[150])
			mixed.Events = append(mixed.Events, fresh.Events[1:]...)
			mixed.Events = append(mixed.Events, old[299], fresh.Events[7], old[0])
			mustApply(t, dup, 3, mixed)
			mustApply(t, clean, 3, fresh)
			// Index 3: nothing but duplicates.
			mustApply(t, dup, 3, &correlate.Result{Index: 3, Events: old[10:20]})
			mustApply(t, clean, 3, &correlate.Result{Index: 3})

			if c := dup.Counters().Duplicates; c != 15 {
				t.Fatalf("Duplicates = %d, want 15", c)
			}
			dd, err := dup.Digest(3)
			if err != nil {
				t.Fatal(err)
			}
			cd, err := clean.Digest(3)
			if err != nil {
				t.Fatal(err)
			}
			if dd != cd {
				t.Fatalf("digest %x with duplicates, %x without", dd, cd)
			}
			ds, _ := dup.Stats(3)
			cs, _ := clean.Stats(3)
			if !reflect.DeepEqual(ds, cs) || ds.Events != 350 {
				t.Fatalf("stats %+v with duplicates, %+v without (want 350 events)", ds, cs)
			}
			r := newRef()
			r.apply(first)
			r.apply(fresh)
			checkStats(t, dup, 3, r)
			p, err := dup.Events(3, Unbounded(1000))
			if err != nil || len(p.Events) != 350 {
				t.Fatalf("%d events, %v", len(p.Events), err)
			}
		})
	}
}

// TestEventsMaxBytes pages through queries with a byte bound: every page
// stops at the first event that reaches MaxBytes (so it holds at least one
// event and every event before its last is under the bound), and the pages
// together are exactly the unbounded answer, in order.
func TestEventsMaxBytes(t *testing.T) {
	s := openMem(t)
	g := newGen(3, 6)
	r := fill(t, s, 2, g, 20, 40)
	all := queries(g, r)
	for _, name := range []string{"all asc", "all desc", "process", "kinds", "range inclusive"} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			q := all[name]
			q.Limit = 1000
			whole, err := s.Events(2, q)
			if err != nil || whole.More {
				t.Fatalf("unbounded: more %v, %v", whole.More, err)
			}
			const maxBytes = 1200 // three or four events of the generator
			q.MaxBytes = maxBytes
			var got []correlate.Event
			for pages := 0; ; pages++ {
				if pages > 1000 {
					t.Fatal("no progress")
				}
				page, err := s.Events(2, q)
				if err != nil {
					t.Fatal(err)
				}
				size := 0
				for i := range page.Events {
					if size >= maxBytes {
						t.Fatalf("page %d goes on after %d bytes (event %d of %d)", pages, size, i, len(page.Events))
					}
					size += page.Events[i].MemSize()
				}
				if page.More && len(page.Events) == 0 {
					t.Fatalf("page %d is empty but says more", pages)
				}
				got = append(got, page.Events...)
				if !page.More {
					break
				}
				q.After = &page.Next
			}
			if !reflect.DeepEqual(ids(got), ids(whole.Events)) {
				t.Fatalf("paged by bytes:\n%v\nwant\n%v", ids(got), ids(whole.Events))
			}
		})
	}
	if _, err := s.Events(2, Query{Limit: 1, MaxBytes: -1}); !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("MaxBytes -1: %v", err)
	}
}

// TestEdgeFromOtherShardStoredAlike: an edge whose source the correlator
// says is on another shard skips the lookup of its source, and is stored
// exactly as the same edge found missing by that lookup.
func TestEdgeFromOtherShardStoredAlike(t *testing.T) {
	digests := make([]uint64, 2)
	for i, flagged := range []bool{false, true} {
		s := openMem(t)
		g := newGen(9, 4)
		res := g.batch(1, 60)
		mustApply(t, s, 2, res)
		var edges []correlate.Edge
		for _, e := range res.Events {
			if e.Kind == correlate.KindReceive {
				edges = append(edges, correlate.Edge{From: g.id(0), Type: correlate.LinkDeliveredTo, To: e.ID, FromOtherShard: flagged})
			}
		}
		if len(edges) == 0 {
			t.Fatal("the batch has no RECEIVE")
		}
		mustApply(t, s, 2, &correlate.Result{Index: 2, Edges: edges})
		for _, e := range edges {
			if links, err := s.Edges(2, e.From); err != nil || len(links) != 1 || links[0].Target != e.To {
				t.Fatalf("flagged %v: edges of %s: %v, %v", flagged, e.From, links, err)
			}
		}
		d, err := s.Digest(2)
		if err != nil {
			t.Fatal(err)
		}
		digests[i] = d
	}
	if digests[0] != digests[1] {
		t.Fatal("the flag changed what the shard stores")
	}
}
