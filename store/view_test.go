package store

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// TestViewLinksAnyOrder reads every event's links through one view in
// ascending, descending and random order (the iterator reuse of
// seekEdges) and checks each against a fresh view's single seek.
func TestViewLinksAnyOrder(t *testing.T) {
	s := openMem(t)
	g := newGen(3, 8)
	var ids []correlate.EventID
	for i := range 3 {
		res := g.batch(uint64(i+1), 200)
		for _, e := range res.Events {
			ids = append(ids, e.ID)
		}
		mustApply(t, s, 0, res)
	}
	want := map[correlate.EventID][]correlate.Link{}
	bucket := map[correlate.EventID]uint64{}
	lv, err := s.newView(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		e, err := s.Get(0, id)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = e.Links
		b, _, _, err := lv.locate(id)
		if err != nil {
			t.Fatal(err)
		}
		bucket[id] = b
	}
	lv.close()
	// An id no event has: no links, wherever it falls.
	ids = append(ids, correlate.EventID{}, correlate.EventID{0xff, 0xff})
	rng := rand.New(rand.NewPCG(1, 1))
	orders := map[string]func([]correlate.EventID){
		"ascending": func(x []correlate.EventID) { slices.SortFunc(x, correlate.EventID.Compare) },
		"descending": func(x []correlate.EventID) {
			slices.SortFunc(x, func(a, b correlate.EventID) int { return b.Compare(a) })
		},
		"random": func(x []correlate.EventID) { rng.Shuffle(len(x), func(i, j int) { x[i], x[j] = x[j], x[i] }) },
	}
	for name, order := range orders {
		v, err := s.newView(0)
		if err != nil {
			t.Fatal(err)
		}
		order(ids)
		for _, id := range ids {
			got, err := v.links(bucket[id], id)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want[id]) {
				t.Fatalf("%s: links of %s = %v, want %v", name, id, got, want[id])
			}
		}
		v.close()
	}
}
