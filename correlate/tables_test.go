package correlate

import (
	"cmp"
	"fmt"
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

// TestProcTable checks the process table against a map through random
// puts, deletes and lookups. Hash collisions are too rare to draw, so the
// chains are exercised by TestProcTableChains.
func TestProcTable(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		tab := newProcTable()
		ref := map[Process]*proc{}
		origins := []string{"a@h", "b@h", ""}
		for step := range rapid.IntRange(0, 3000).Draw(t, "steps") {
			k := Process{
				Origin: rapid.SampledFrom(origins).Draw(t, "origin"),
				PID:    fmt.Sprintf("<0.%d.0>", rapid.IntRange(0, 1500).Draw(t, "pid")),
			}
			switch p := ref[k]; {
			case p == nil:
				p = &proc{no: uint64(step)}
				p.key.Origin = k.Origin
				p.setPID(k.PID)
				tab.put(p)
				ref[k] = p
			case rapid.Bool().Draw(t, "delete"):
				tab.del(p)
				delete(ref, k)
			}
			if got := tab.get(k.Origin, k.PID); got != ref[k] {
				t.Fatalf("step %d: get(%v) = %p, want %p", step, k, got, ref[k])
			}
		}
		if tab.len() != len(ref) {
			t.Fatalf("len %d, want %d", tab.len(), len(ref))
		}
		all := tab.appendAll(nil)
		if len(all) != len(ref) {
			t.Fatalf("appendAll: %d processes, want %d", len(all), len(ref))
		}
		for _, p := range all {
			if ref[p.key] != p {
				t.Fatalf("appendAll: %v not in the reference", p.key)
			}
		}
		for k, p := range ref {
			if got := tab.get(k.Origin, k.PID); got != p {
				t.Fatalf("final get(%v) = %p, want %p", k, got, p)
			}
		}
	})
}

// TestProcTableChains puts every process under one hash, so they share a
// chain, and removes them from its head, middle and tail.
func TestProcTableChains(t *testing.T) {
	const h = 42
	tab := newProcTable()
	live := map[*proc]bool{}
	var ps []*proc
	for i := range 6 {
		p := &proc{key: Process{Origin: "o"}}
		p.setPID(fmt.Sprintf("<0.%d.0>", i))
		tab.putHashed(h, p)
		live[p] = true
		ps = append(ps, p)
	}
	check := func(when string) {
		t.Helper()
		for _, p := range ps {
			want := p
			if !live[p] {
				want = nil
			}
			if got := tab.getHashed(h, p.key.Origin, p.key.PID); got != want {
				t.Fatalf("%s: get(%v) = %p, want %p", when, p.key, got, want)
			}
		}
		if tab.len() != len(live) {
			t.Fatalf("%s: len %d, want %d", when, tab.len(), len(live))
		}
	}
	check("all put")
	// ps[5] is the chain's head, ps[0] its tail.
	for _, i := range []int{5, 2, 0, 3, 1, 4} {
		tab.delHashed(h, ps[i])
		delete(live, ps[i])
		check(fmt.Sprintf("after removing %v", ps[i].key))
	}
	if len(tab.byHash) != 0 {
		t.Fatalf("%d hashes left after removing every process", len(tab.byHash))
	}
}
