package correlate

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestIDSetGrowsAndAgreesWithAMap: random adds and removes, checked
// against a map after every step; the table starts at its minimum, grows
// only as ids arrive, never past twice its limit, and keeps its load at or
// below 1/2.
func TestIDSetGrowsAndAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, maxLen := range []int{1, 8, 100, 5000} {
		s := newIDSet(maxLen)
		if len(s.slots) != idSetMinSlots {
			t.Fatalf("maxLen %d: a new table has %d slots, want %d", maxLen, len(s.slots), idSetMinSlots)
		}
		want := map[EventID]bool{}
		var live []EventID
		id := func(n uint64) EventID {
			var e EventID
			binary.LittleEndian.PutUint64(e[:8], n+1) // never the zero id
			binary.LittleEndian.PutUint64(e[8:], n*0x9e3779b97f4a7c15)
			return e
		}
		for step := range 20 * maxLen {
			if len(live) < s.limit && (len(live) == 0 || rng.IntN(3) > 0) {
				e := id(rng.Uint64N(uint64(4 * maxLen)))
				if added := s.add(e); added == want[e] {
					t.Fatalf("maxLen %d step %d: add(%x) = %v with the id present: %v", maxLen, step, e, added, want[e])
				}
				if !want[e] {
					want[e] = true
					live = append(live, e)
				}
			} else {
				i := rng.IntN(len(live))
				s.remove(live[i])
				delete(want, live[i])
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
			}
			if s.n != len(want) || 2*s.n > len(s.slots) || len(s.slots) > 2*s.limit {
				t.Fatalf("maxLen %d step %d: %d ids (map %d) in %d slots, limit %d", maxLen, step, s.n, len(want), len(s.slots), s.limit)
			}
		}
		for e := range want {
			if !s.contains(e) {
				t.Fatalf("maxLen %d: lost %x", maxLen, e)
			}
		}
		if s.contains(id(uint64(8 * maxLen))) {
			t.Fatalf("maxLen %d: contains an id never added", maxLen)
		}
	}
}

// TestIdleCorrelatorIsSmall: a correlator with the default dedup window
// (131,072 ids, 4 MiB once full) holds a table of the minimum size until
// ids arrive.
func TestIdleCorrelatorIsSmall(t *testing.T) {
	c, err := New(DefaultConfig(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c.dedup.ids.slots); n != idSetMinSlots {
		t.Fatalf("idle correlator's dedup table: %d slots, want %d", n, idSetMinSlots)
	}
}
