package cluster

import (
	"sync"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/node"
)

// moveTracker counts the moves in flight from this node
// (Config.MaxConcurrentMoves). A move is a non-voter in a group this node
// leads: a new replica that receives the shard's snapshot from this node
// and catches up, until it is promoted or removed. The count is taken from
// the groups' configurations at each reconcile step (track), so non-voters
// a previous leader added count too, and a move ends when a step sees its
// non-voter gone or a promotion succeeds; additions reserve their place
// before they are made (take). A shard this node no longer leads has no
// steps here to update it, so take drops it.
type moveTracker struct {
	max int
	mu  sync.Mutex
	// moving counts, per shard this node leads, the group's non-voters
	// (and additions reserved but not yet made).
	moving map[uint32]int
}

func newMoveTracker(max int) *moveTracker {
	return &moveTracker{max: max, moving: make(map[uint32]int)}
}

// track records the non-voters of shard's group, whose configuration a
// step of this node, its leader, just read.
func (t *moveTracker) track(shard uint32, conf raft.Configuration) {
	n := 0
	for _, s := range conf.Servers {
		if s.Suffrage == raft.Nonvoter {
			n++
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n == 0 {
		delete(t.moving, shard)
	} else {
		t.moving[shard] = n
	}
}

// take reserves a move for a non-voter to add to shard's group, unless max
// moves are in flight. leads says whether this node still leads a shard:
// the others' counts are dropped first (their new leaders count them).
func (t *moveTracker) take(shard uint32, leads func(uint32) bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	total := 0
	for s, n := range t.moving {
		if !leads(s) {
			delete(t.moving, s)
			continue
		}
		total += n
	}
	if total >= t.max {
		return false
	}
	t.moving[shard]++
	return true
}

// release ends a move of shard: its addition failed, or its non-voter was
// promoted.
func (t *moveTracker) release(shard uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.moving[shard]--; t.moving[shard] <= 0 {
		delete(t.moving, shard)
	}
}

// first returns reps with the replicas of shards that have moves in flight
// first, each part in its order.
func (t *moveTracker) first(reps []*node.Replica) []*node.Replica {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.moving) == 0 {
		return reps
	}
	out := make([]*node.Replica, 0, len(reps))
	for _, r := range reps {
		if t.moving[r.Shard()] > 0 {
			out = append(out, r)
		}
	}
	for _, r := range reps {
		if t.moving[r.Shard()] <= 0 {
			out = append(out, r)
		}
	}
	return out
}

// inFlight returns the moves counted in flight.
func (t *moveTracker) inFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	total := 0
	for _, n := range t.moving {
		total += n
	}
	return total
}

// leads reports whether this node's replica of shard leads its group.
func (c *Cluster) leads(shard uint32) bool {
	r := c.node.Replica(shard)
	return r != nil && r.IsLeader()
}
