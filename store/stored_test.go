package store

import (
	"slices"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// TestStoredMatchesApplysDuplicateCheck: Stored reports exactly the events
// Apply would skip — stored ids in their event's bucket — and nothing for
// new ids, for a stored id under another bucket's timestamp, or on
// another shard.
func TestStoredMatchesApplysDuplicateCheck(t *testing.T) {
	s := openMem(t)
	g := newGen(1, 4)
	res := &correlate.Result{Index: 1}
	for range 20 {
		res.Events = append(res.Events, g.event())
	}
	if err := s.Apply(0, res); err != nil {
		t.Fatal(err)
	}
	stored := res.Events[3]
	moved := res.Events[5]
	moved.TimestampNs += 1 << 40 // same id, a bucket that holds nothing
	fresh := g.event()
	events := []correlate.Event{fresh, stored, moved, res.Events[19]}
	found := make([]bool, len(events))
	if err := s.Stored(0, events, found); err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, false, true}; !slices.Equal(found, want) {
		t.Fatalf("Stored = %v, want %v", found, want)
	}
	if err := s.Stored(1, events, found); err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, false, false, false}; !slices.Equal(found, want) {
		t.Fatalf("Stored on another shard = %v, want %v", found, want)
	}
	// Apply agrees: of these, it stores exactly the ones Stored did not find.
	before := s.Counters().Duplicates
	if err := s.Apply(0, &correlate.Result{Index: 2, Events: events}); err != nil {
		t.Fatal(err)
	}
	if got := s.Counters().Duplicates - before; got != 2 {
		t.Fatalf("Apply skipped %d duplicates, want 2", got)
	}
}
