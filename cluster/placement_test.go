package cluster

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
	"pgregory.net/rapid"
)

func nodeNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%d", i+1)
	}
	return names
}

// TestPlacementPinned pins outputs: placement is a cluster-wide contract, so
// a change to the hash or tie-break must show up here, not in production as
// every node disagreeing about replica sets after a rolling upgrade.
func TestPlacementPinned(t *testing.T) {
	five := nodeNames(5)
	tests := []struct {
		shard   uint32
		members []string
		r       int
		want    []string
	}{
		{0, five, 3, []string{"node-4", "node-2", "node-1"}},
		{1, five, 3, []string{"node-4", "node-3", "node-1"}},
		{2, five, 3, []string{"node-2", "node-5", "node-3"}},
		{3, five, 3, []string{"node-4", "node-1", "node-2"}},
		{7, five, 3, []string{"node-4", "node-2", "node-3"}},
		{15, five, 3, []string{"node-2", "node-1", "node-3"}},
		{255, five, 3, []string{"node-5", "node-2", "node-1"}},
		{4095, five, 3, []string{"node-4", "node-3", "node-5"}},
		// r is capped by the member count; the order is still by rank.
		{0, five, 9, []string{"node-4", "node-2", "node-1", "node-5", "node-3"}},
		{0, five, 1, []string{"node-4"}},
		// Input order and duplicates do not matter.
		{0, []string{"node-1", "node-4", "node-4", "node-2"}, 3, []string{"node-4", "node-2", "node-1"}},
		{0, []string{"node-4", "node-4"}, 3, []string{"node-4"}},
		// Degenerate inputs.
		{0, five, 0, nil},
		{0, five, -1, nil},
		{0, nil, 3, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("shard=%d/members=%d/r=%d", tt.shard, len(tt.members), tt.r), func(t *testing.T) {
			if got := Placement(tt.shard, tt.members, tt.r); !slices.Equal(got, tt.want) {
				t.Fatalf("Placement = %q, want %q", got, tt.want)
			}
		})
	}
	if w := Weight(0, "node-1"); w != 0x2d2600ab829cf0e8 {
		t.Fatalf("Weight(0, node-1) = %#x: the weight function changed", w)
	}
}

// TestWeightIsXXHashOfShardAndName checks Weight against a direct
// construction of its documented input.
func TestWeightIsXXHashOfShardAndName(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		shard := rapid.Uint32().Draw(t, "shard")
		name := rapid.String().Draw(t, "name")
		buf := []byte{byte(shard >> 24), byte(shard >> 16), byte(shard >> 8), byte(shard)}
		buf = append(buf, name...)
		if got, want := Weight(shard, name), xxhash.Sum64(buf); got != want {
			t.Fatalf("Weight(%d, %q) = %#x, want xxhash64 %#x", shard, name, got, want)
		}
	})
}

var genName = rapid.StringMatching(`[a-z][a-z0-9-]{0,11}`)

func genMembers(minN, maxN int) *rapid.Generator[[]string] {
	return rapid.SliceOfNDistinct(genName, minN, maxN, func(s string) string { return s })
}

func TestPlacementOrderIndependent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		members := genMembers(1, 12).Draw(t, "members")
		perm := rapid.Permutation(members).Draw(t, "perm")
		shard := rapid.Uint32().Draw(t, "shard")
		r := rapid.IntRange(1, 6).Draw(t, "r")
		a, b := Placement(shard, members, r), Placement(shard, perm, r)
		if !slices.Equal(a, b) {
			t.Fatalf("order changed the result: %q vs %q", a, b)
		}
		if want := min(r, len(members)); len(a) != want {
			t.Fatalf("got %d replicas, want %d", len(a), want)
		}
	})
}

// TestPlacementAddMemberMovesOnlyWhatItWins: going from N to N+1 members,
// every replica set is either unchanged, or the new member took the place
// of the set's lowest-ranked entry (or, while N < r, simply joined it), with
// the survivors keeping their relative order.
func TestPlacementAddMemberMovesOnlyWhatItWins(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		all := genMembers(2, 12).Draw(t, "members")
		before, added := all[:len(all)-1], all[len(all)-1]
		r := rapid.IntRange(1, 5).Draw(t, "r")
		shards := rapid.Uint32Range(1, 64).Draw(t, "shards")
		for s := range shards {
			old, cur := Placement(s, before, r), Placement(s, all, r)
			if !slices.Contains(cur, added) {
				if !slices.Equal(old, cur) {
					t.Fatalf("shard %d: %q → %q although %s did not win it", s, old, cur, added)
				}
				continue
			}
			survivors := slices.DeleteFunc(slices.Clone(cur), func(n string) bool { return n == added })
			wantSurvivors := old
			if len(old) == r {
				wantSurvivors = old[:r-1] // the lowest-ranked replica makes room
			}
			if !slices.Equal(survivors, wantSurvivors) {
				t.Fatalf("shard %d: %q → %q: more moved than %s replacing the lowest-ranked replica",
					s, old, cur, added)
			}
		}
	})
}

// TestPlacementRemoveMemberMovesOnlyItsShards: removing a member changes
// only the sets that contained it, and each loses just that member, gaining
// (if there is one) the next-ranked member at the end.
func TestPlacementRemoveMemberMovesOnlyItsShards(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		all := genMembers(2, 12).Draw(t, "members")
		gone := rapid.SampledFrom(all).Draw(t, "removed")
		rest := slices.DeleteFunc(slices.Clone(all), func(n string) bool { return n == gone })
		r := rapid.IntRange(1, 5).Draw(t, "r")
		shards := rapid.Uint32Range(1, 64).Draw(t, "shards")
		for s := range shards {
			old, cur := Placement(s, all, r), Placement(s, rest, r)
			if !slices.Contains(old, gone) {
				if !slices.Equal(old, cur) {
					t.Fatalf("shard %d: %q → %q although %s was not a replica", s, old, cur, gone)
				}
				continue
			}
			kept := slices.DeleteFunc(slices.Clone(old), func(n string) bool { return n == gone })
			if !slices.Equal(cur[:len(kept)], kept) || len(cur)-len(kept) > 1 {
				t.Fatalf("shard %d: %q → %q: more moved than %s leaving", s, old, cur, gone)
			}
		}
	})
}

// TestPlacementBalance checks that each member holds close to its share
// r/N of the replicas and 1/N of the first-ranked (preferred leader) slots.
// A member's count is binomial(shards, p); six standard deviations (plus
// one for rounding) makes a false failure practically impossible, while a
// weight that ignored the shard, or the name, fails at once for >= 64
// shards.
func TestPlacementBalance(t *testing.T) {
	check := func(t interface{ Fatalf(string, ...any) }, members []string, shards uint32, r int) {
		total := make(map[string]int)
		first := make(map[string]int)
		for s := range shards {
			set := Placement(s, members, r)
			first[set[0]]++
			for _, n := range set {
				total[n]++
			}
		}
		n := float64(len(members))
		for _, c := range []struct {
			what   string
			counts map[string]int
			p      float64
		}{{"replicas", total, math.Min(1, float64(r)/n)}, {"first-ranked", first, 1 / n}} {
			mean := float64(shards) * c.p
			tol := 6*math.Sqrt(float64(shards)*c.p*(1-c.p)) + 1
			for _, m := range members {
				if d := math.Abs(float64(c.counts[m]) - mean); d > tol {
					t.Fatalf("%d shards, %d members, r=%d: %s has %d %s, want %.1f ± %.1f",
						shards, len(members), r, m, c.counts[m], c.what, mean, tol)
				}
			}
		}
	}
	for _, shards := range []uint32{16, 64, 256} {
		for _, n := range []int{3, 5, 8} {
			check(t, nodeNames(n), shards, 3)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		members := genMembers(2, 10).Draw(t, "members")
		shards := rapid.Uint32Range(16, 256).Draw(t, "shards")
		check(t, members, shards, rapid.IntRange(1, 3).Draw(t, "r"))
	})
}

func TestMoves(t *testing.T) {
	old := map[uint32][]string{
		0: {"a", "b", "c"},
		1: {"a", "b", "c"},
		2: {"a", "b"},
		4: {"x"},
	}
	cur := map[uint32][]string{
		0: {"c", "a", "b"}, // reordered only: no move
		1: {"d", "a", "b"}, // d replaces c
		2: {"a", "b", "e"}, // grows
		3: {"f", "g"},      // new shard
	}
	want := []Move{
		{Shard: 1, Add: []string{"d"}, Remove: []string{"c"}},
		{Shard: 2, Add: []string{"e"}},
		{Shard: 3, Add: []string{"f", "g"}},
		{Shard: 4, Remove: []string{"x"}},
	}
	got := Moves(old, cur)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Moves =\n%v\nwant\n%v", got, want)
	}
	if m := Moves(cur, cur); len(m) != 0 {
		t.Fatalf("Moves(x, x) = %v, want none", m)
	}
}

// TestMovesOfAJoinAreOnlyTheWinsOfTheNewMember ties Moves to placement: the
// moves from N to N+1 members add only the new member.
func TestMovesOfAJoinAreOnlyTheWinsOfTheNewMember(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		all := genMembers(3, 10).Draw(t, "members")
		shards := rapid.Uint32Range(1, 256).Draw(t, "shards")
		added := all[len(all)-1]
		moves := Moves(PlaceAll(shards, all[:len(all)-1], 3), PlaceAll(shards, all, 3))
		for _, m := range moves {
			if !slices.Equal(m.Add, []string{added}) || len(m.Remove) > 1 {
				t.Fatalf("move %+v: want only %s added, at most one removal", m, added)
			}
		}
	})
}

func BenchmarkPlacement(b *testing.B) {
	for _, n := range []int{3, 16, 64} {
		for _, shards := range []uint32{16, 256} {
			members := nodeNames(n)
			b.Run(fmt.Sprintf("members=%d/shards=%d", n, shards), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					for s := range shards {
						_ = Placement(s, members, 3)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(shards), "ns/shard")
			})
		}
	}
}
