package cluster

import (
	"cmp"
	"encoding/binary"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Placement is rendezvous (highest-random-weight) hashing: every (shard,
// node) pair gets a pseudo-random weight, and a shard's desired replicas are
// the r members with the highest weights, in rank order (rank 0 first).
//
// Why rendezvous rather than a ring: there is no ring state to build or
// agree on, the answer is a pure function of the member names, and it has
// the minimal-disruption property the reconciler relies on:
//   - a new member enters a shard's set only by beating its lowest-ranked
//     replica, which it replaces; every other set is unchanged;
//   - a departing member leaves only the sets that contained it, and each
//     of those gains exactly the next-ranked member at the end.
//
// The result does not depend on the order of members; duplicate names count
// once. r is capped at the number of distinct members; r <= 0 yields nil.
// Placement performs no I/O and keeps no state; it is safe for concurrent
// use. The returned slice is newly allocated and owned by the caller.
func Placement(shard uint32, members []string, r int) []string {
	if r <= 0 || len(members) == 0 {
		return nil
	}
	ranked := make([]weighted, 0, len(members))
	for _, name := range members {
		ranked = append(ranked, weighted{name: name, weight: Weight(shard, name)})
	}
	slices.SortFunc(ranked, compareWeighted)
	out := make([]string, 0, min(r, len(ranked)))
	for i, w := range ranked {
		if i > 0 && ranked[i-1].name == w.name {
			continue // duplicate name: equal weight, so adjacent after sorting
		}
		if len(out) == r {
			break
		}
		out = append(out, w.name)
	}
	return out
}

// Weight is the rendezvous weight of node for shard: xxhash64 over the
// shard id (4 bytes, big-endian) followed by the node name. It is part of
// the placement contract: every node of a cluster, of any version, must
// compute the same weights, so it never changes.
func Weight(shard uint32, node string) uint64 {
	var d xxhash.Digest
	d.Reset()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], shard)
	_, _ = d.Write(b[:])
	_, _ = d.WriteString(node)
	return d.Sum64()
}

type weighted struct {
	name   string
	weight uint64
}

// compareWeighted orders by weight, highest first; equal weights (only a
// 64-bit collision or a duplicate name) fall back to the name so the order
// is total and independent of the input order.
func compareWeighted(a, b weighted) int {
	if c := cmp.Compare(b.weight, a.weight); c != 0 {
		return c
	}
	return cmp.Compare(a.name, b.name)
}

// PlaceAll returns the desired replica set of every shard in [0, shards).
func PlaceAll(shards uint32, members []string, r int) map[uint32][]string {
	out := make(map[uint32][]string, shards)
	for s := range shards {
		out[s] = Placement(s, members, r)
	}
	return out
}

// Move is the change one shard's replica set needs to go from an old set to
// a new one. It is data for the reconciler, which applies it one step at a
// time (add a learner, promote it, then remove), never more than one
// membership change per shard in flight.
type Move struct {
	Shard uint32
	// Add lists members in the new set but not the old, in the new set's
	// rank order (the most preferred first).
	Add []string
	// Remove lists members in the old set but not the new, in the old
	// set's order.
	Remove []string
}

// Moves compares two placements (shard → replica set, e.g. from PlaceAll
// or from the Raft configurations actually in force) and lists, sorted by
// shard, every shard whose set differs. A shard present in only one map is
// treated as having an empty set in the other. Reordering within a set is
// not a move.
func Moves(old, new map[uint32][]string) []Move {
	shards := make([]uint32, 0, len(new))
	for s := range new {
		shards = append(shards, s)
	}
	for s := range old {
		if _, ok := new[s]; !ok {
			shards = append(shards, s)
		}
	}
	slices.Sort(shards)
	var moves []Move
	for _, s := range shards {
		add := missingFrom(new[s], old[s])
		remove := missingFrom(old[s], new[s])
		if len(add) == 0 && len(remove) == 0 {
			continue
		}
		moves = append(moves, Move{Shard: s, Add: add, Remove: remove})
	}
	return moves
}

// missingFrom returns the names of a that are not in b, in a's order.
// Replica sets are small (R is typically 3), so a linear scan beats a map.
func missingFrom(a, b []string) []string {
	var out []string
	for _, name := range a {
		if !slices.Contains(b, name) && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}
