package correlate

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
)

// idSet is the dedup window's membership table: open addressing with
// linear probing and backward-shift deletion, its load factor kept at or
// below 1/2. The window deletes one id for every id it adds; Go's built-in
// map leaves a tombstone per delete and its probes degrade under that
// pattern (measured: 23% of Apply's time), this table has no tombstones.
//
// It starts small and doubles as ids arrive, up to the size its bound
// needs (limit ids at load 1/2): a shard that holds few ids — an idle one,
// of thousands on a node — costs a few hundred bytes, not the megabytes
// a full window takes.
//
// The hash is seeded randomly per correlator so that clients cannot choose
// colliding ids. The seed and the table's size only decide where ids sit
// in memory, never what Apply returns, so determinism is unaffected.
type idSet struct {
	slots  []EventID // the zero id marks an empty slot (it is never added)
	mask   uint64
	n      int
	limit  int    // the most ids it is sized to hold (full)
	k0, k1 uint64 // hash seed
}

// idSetMinSlots is the size a table starts at.
const idSetMinSlots = 16

// newIDSet returns a table for up to maxLen ids: its limit is half the
// smallest power of two at least 2 × maxLen, the size it may grow to.
func newIDSet(maxLen int) idSet {
	size := idSetMinSlots
	for size < 2*maxLen {
		size *= 2
	}
	return idSet{slots: make([]EventID, idSetMinSlots), mask: idSetMinSlots - 1, limit: size / 2,
		k0: rand.Uint64(), k1: rand.Uint64()}
}

// full reports whether the table holds more ids than its limit.
func (s *idSet) full() bool { return s.n > s.limit }

// grow doubles the table when one more id would take its load above 1/2,
// while that keeps it within what limit needs.
func (s *idSet) grow() {
	if 2*(s.n+1) <= len(s.slots) || len(s.slots) >= 2*s.limit {
		return
	}
	old := s.slots
	s.slots = make([]EventID, 2*len(old))
	s.mask = uint64(len(s.slots) - 1)
	for _, id := range old {
		if id != (EventID{}) {
			i, _ := s.find(id)
			s.slots[i] = id
		}
	}
}

// home hashes id to its home slot with one seeded 64×64→128-bit multiply
// of its two halves, folded (wyhash's mixing step, which the Go runtime
// also uses for its maps where AES is unavailable). It is inlined: a
// removal re-hashes every entry it shifts, and a call to maphash.Bytes per
// hash was a measurable share of the window's cost.
func (s *idSet) home(id *EventID) uint64 {
	hi, lo := bits.Mul64(binary.LittleEndian.Uint64(id[:8])^s.k0, binary.LittleEndian.Uint64(id[8:])^s.k1)
	return (hi ^ lo) & s.mask
}

// find returns the slot holding id, or the empty slot where it would go.
func (s *idSet) find(id EventID) (uint64, bool) {
	for i := s.home(&id); ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case id:
			return i, true
		case EventID{}:
			return i, false
		}
	}
}

func (s *idSet) contains(id EventID) bool {
	_, ok := s.find(id)
	return ok
}

// add inserts id and reports whether it was absent, in one probe (after
// growing the table, if it must); the caller keeps the count within
// limit.
func (s *idSet) add(id EventID) bool {
	s.grow()
	i, ok := s.find(id)
	if !ok {
		s.slots[i] = id
		s.n++
	}
	return !ok
}

func (s *idSet) remove(id EventID) {
	i, ok := s.find(id)
	if !ok {
		return
	}
	// Backward shift: move later entries of the probe run into the hole
	// when their home slot does not lie cyclically in (hole, position].
	for j := (i + 1) & s.mask; s.slots[j] != (EventID{}); j = (j + 1) & s.mask {
		k := s.home(&s.slots[j])
		if (j > i && (k <= i || k > j)) || (j < i && k <= i && k > j) {
			s.slots[i] = s.slots[j]
			i = j
		}
	}
	s.slots[i] = EventID{}
	s.n--
}
