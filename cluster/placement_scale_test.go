package cluster

import (
	"fmt"
	"math"
	"testing"
)

// TestPlacementAtScale is the placement part of the scale model
// (docs/bench/scale.md): for 10, 30 and 100 members and 1,024 / 4,096
// shards at R = 3, the replicas a join moves, a leave (or a loss) moves,
// and how evenly replicas and first-ranked replicas spread. Every figure
// must be within 6 standard deviations of its ideal (binomial) value; with
// -v the table is logged.
func TestPlacementAtScale(t *testing.T) {
	const r = 3
	within := func(what string, got, mean, p float64, n float64) {
		t.Helper()
		if tol := 6*math.Sqrt(n*p*(1-p)) + 1; math.Abs(got-mean) > tol {
			t.Errorf("%s: %.0f, want %.1f ± %.1f", what, got, mean, tol)
		}
	}
	for _, members := range []int{10, 30, 100} {
		for _, shards := range []uint32{1024, 4096} {
			names := nodeNames(members + 1)
			before := PlaceAll(shards, names[:members], r)
			joined := PlaceAll(shards, names, r)
			left := PlaceAll(shards, names[:members-1], r)

			// A join moves each replica the newcomer wins, one per shard.
			moved := 0
			for _, m := range Moves(before, joined) {
				moved += len(m.Add)
			}
			pJoin := float64(r) / float64(members+1)
			within(fmt.Sprintf("%d members, %d shards: replicas moved by a join", members, shards),
				float64(moved), float64(shards)*pJoin, pJoin, float64(shards))

			// A leave (or a loss) moves the departed member's replicas.
			lost := 0
			for _, m := range Moves(before, left) {
				lost += len(m.Add)
			}
			pLeave := float64(r) / float64(members)
			within(fmt.Sprintf("%d members, %d shards: replicas moved by a leave", members, shards),
				float64(lost), float64(shards)*pLeave, pLeave, float64(shards))

			// Spread of replicas and first-ranked replicas per member.
			replicas, first := map[string]int{}, map[string]int{}
			for _, set := range before {
				first[set[0]]++
				for _, n := range set {
					replicas[n]++
				}
			}
			lo, hi := spread(replicas, names[:members])
			flo, fhi := spread(first, names[:members])
			for _, n := range names[:members] {
				within(fmt.Sprintf("%d members, %d shards: replicas of %s", members, shards, n),
					float64(replicas[n]), float64(shards)*pLeave, pLeave, float64(shards))
			}
			t.Logf("members %3d shards %4d: join moves %4d replicas (ideal %6.1f = %4.1f%%), leave %4d (ideal %6.1f); "+
				"replicas per member %d..%d (mean %.1f), first-ranked %d..%d (mean %.1f)",
				members, shards, moved, float64(shards)*pJoin, 100*float64(moved)/float64(int(shards)*r),
				lost, float64(shards)*pLeave, lo, hi, float64(int(shards)*r)/float64(members),
				flo, fhi, float64(shards)/float64(members))
		}
	}
}

func spread(counts map[string]int, members []string) (lo, hi int) {
	lo = math.MaxInt
	for _, m := range members {
		lo, hi = min(lo, counts[m]), max(hi, counts[m])
	}
	return lo, hi
}
