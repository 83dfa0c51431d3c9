package store

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// TestEdgesManyMatchesEdges: for random id lists (stored events, remote
// sources whose edges lie in several buckets, ids with nothing stored,
// duplicates, any order) every EdgesMany answer equals Edges of its id.
func TestEdgesManyMatchesEdges(t *testing.T) {
	s := openMem(t)
	g := newGen(11, 6)
	r := fill(t, s, 3, g, 8, 100)
	all := r.sorted()
	var recvs []correlate.EventID
	for _, e := range all {
		if e.Kind == correlate.KindReceive {
			recvs = append(recvs, e.ID)
		}
	}
	if len(recvs) < 20 {
		t.Fatalf("fixture has %d receives, want at least 20", len(recvs))
	}
	rng := rand.New(rand.NewPCG(7, 7))
	// Remote sources (not stored here), each with edges to receives spread
	// over the shard's buckets.
	var remote []correlate.EventID
	var edges []correlate.Edge
	for range 12 {
		from := g.id(int64(rng.IntN(1 << 30)))
		remote = append(remote, from)
		for range 1 + rng.IntN(3) {
			edges = append(edges, correlate.Edge{From: from, Type: correlate.LinkDeliveredTo, To: recvs[rng.IntN(len(recvs))]})
		}
	}
	mustApply(t, s, 3, &correlate.Result{Index: 1000, Edges: edges})
	var buckets int
	if d, err := readDir(s.db, 3, 0, ^uint64(0)); err != nil || len(d.buckets) < 3 {
		t.Fatalf("fixture spans %d buckets (%v), want several", len(d.buckets), err)
	} else {
		buckets = len(d.buckets)
	}

	pick := func() correlate.EventID {
		switch rng.IntN(4) {
		case 0:
			return remote[rng.IntN(len(remote))]
		case 1:
			return g.id(int64(rng.IntN(1 << 40))) // nothing stored
		default:
			return all[rng.IntN(len(all))].ID
		}
	}
	for round := range 25 {
		n := rng.IntN(60)
		ids := make([]correlate.EventID, 0, n+5)
		for range n {
			ids = append(ids, pick())
		}
		for range rng.IntN(5) { // duplicates
			if len(ids) > 0 {
				ids = append(ids, ids[rng.IntN(len(ids))])
			}
		}
		rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
		got, err := s.EdgesMany(3, ids)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(got) != len(ids) {
			t.Fatalf("round %d: %d answers for %d ids", round, len(got), len(ids))
		}
		for i, id := range ids {
			want, err := s.Edges(3, id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i], want) {
				t.Fatalf("round %d (%d buckets): EdgesMany[%d] of %s = %v, Edges = %v", round, buckets, i, id, got[i], want)
			}
		}
		// Duplicates get their own slices: changing one leaves the other.
		for i := range ids {
			for j := i + 1; j < len(ids); j++ {
				if ids[i] == ids[j] && len(got[i]) > 0 && &got[i][0] == &got[j][0] {
					t.Fatalf("round %d: answers %d and %d share memory", round, i, j)
				}
			}
		}
	}
}

func TestEdgesManyBounds(t *testing.T) {
	s := openMem(t)
	got, err := s.EdgesMany(1, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("no ids: %v, %v", got, err)
	}
	_, err = s.EdgesMany(1, make([]correlate.EventID, MaxEdgesMany+1))
	if !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("%d ids: %v, want ErrInvalidQuery", MaxEdgesMany+1, err)
	}
	if _, err := s.EdgesMany(1, make([]correlate.EventID, MaxEdgesMany)); err != nil {
		t.Fatalf("%d ids: %v", MaxEdgesMany, err)
	}
	if _, err := s.EdgesMany(metaShard, []correlate.EventID{{1}}); !errors.Is(err, ErrInvalidShard) {
		t.Fatalf("metadata shard: %v, want ErrInvalidShard", err)
	}
}
