package node

import (
	"slices"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

func TestDroppedEvents(t *testing.T) {
	id := func(b byte) correlate.EventID { return correlate.EventID{15: b} }
	evs := func(bs ...byte) []correlate.Event {
		out := make([]correlate.Event, len(bs))
		for i, b := range bs {
			out[i].ID = id(b)
		}
		return out
	}
	ids := func(bs ...byte) []correlate.EventID {
		out := make([]correlate.EventID, len(bs))
		for i, b := range bs {
			out[i] = id(b)
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		ids            []correlate.EventID
		kept, rerouted []correlate.Event
		want, away     []int
	}{
		{"all kept", ids(1, 2, 3), evs(3, 1, 2), nil, nil, nil},
		{"one applied before", ids(1, 2, 3), evs(1, 3), nil, []int{1}, nil},
		{"none kept", ids(1, 2), nil, nil, []int{0, 1}, nil},
		{"one id twice: the later is the duplicate", ids(1, 2, 1), evs(1, 2), nil, []int{2}, nil},
		{"rerouted apart from duplicates", ids(1, 2, 3, 4), evs(4), evs(3, 1), []int{1}, []int{0, 2}},
		{"all rerouted", ids(5, 6), nil, evs(5, 6), nil, []int{0, 1}},
	} {
		got, away := droppedEvents(tc.ids, tc.kept, tc.rerouted)
		if !slices.Equal(got, tc.want) || !slices.Equal(away, tc.away) {
			t.Errorf("%s: dropped %v rerouted %v, want %v and %v", tc.name, got, away, tc.want, tc.away)
		}
	}
}

func TestAttributeDuplicates(t *testing.T) {
	// Three tickets share one proposal: 2 events of a, 3 of b, 1 of c.
	a, b, c := newTicket(2), newTicket(3), newTicket(1)
	runs := []ticketRun{{a, 2}, {b, 3}, {c, 1}}
	attributeDuplicates(runs, []int{1, 2, 4, 5})
	if got := []int{a.Duplicates(), b.Duplicates(), c.Duplicates()}; !slices.Equal(got, []int{1, 2, 1}) {
		t.Fatalf("duplicates per ticket %v, want [1 2 1]", got)
	}
	attributeDuplicates(runs, nil)
	if got := []int{a.Duplicates(), b.Duplicates(), c.Duplicates()}; !slices.Equal(got, []int{1, 2, 1}) {
		t.Fatalf("no duplicates changed the counts: %v", got)
	}
}
