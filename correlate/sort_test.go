package correlate

import (
	"cmp"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// TestSortProcRefs checks the radix sort against a stable comparison sort,
// over small and full-width spreads of record numbers (every byte position).
func TestSortProcRefs(t *testing.T) {
	procs := make([]proc, 8)
	rapid.Check(t, func(t *rapid.T) {
		base := rapid.Uint64().Draw(t, "base")
		spread := rapid.SampledFrom([]uint64{1, 255, 1 << 16, 1 << 40, ^uint64(0)}).Draw(t, "spread")
		n := rapid.IntRange(0, 600).Draw(t, "n")
		refs := make([]procRef, n)
		for i := range refs {
			off := rapid.Uint64Range(0, spread).Draw(t, "off")
			refs[i] = procRef{no: base + off, p: &procs[i%len(procs)]} // may wrap: still a uint64 order
		}
		want := slices.Clone(refs)
		slices.SortStableFunc(want, func(a, b procRef) int { return cmp.Compare(a.no, b.no) })
		scratch := sortProcRefs(refs, rapid.SampledFrom([][]procRef{nil, make([]procRef, 3)}).Draw(t, "scratch"))
		if !slices.Equal(refs, want) {
			t.Fatalf("sorted %v, want %v", refs, want)
		}
		if len(refs) > 1 && len(scratch) != len(refs) {
			t.Fatalf("scratch of %d for %d refs", len(scratch), len(refs))
		}
	})
}
