package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
)

// A move stays in flight until its non-voter is promoted or gone, not just
// until the membership change that added it commits: the bound is on the
// snapshots this node streams. Non-voters a previous leader added count,
// and shards this node no longer leads stop counting.
func TestMoveTrackerBoundsReplicasCatchingUp(t *testing.T) {
	conf := func(nonvoters int) raft.Configuration {
		c := raft.Configuration{Servers: []raft.Server{{ID: "a", Suffrage: raft.Voter}}}
		for range nonvoters {
			c.Servers = append(c.Servers, raft.Server{ID: "n", Suffrage: raft.Nonvoter})
		}
		return c
	}
	led := map[uint32]bool{1: true, 2: true, 3: true, 4: true}
	leads := func(s uint32) bool { return led[s] }
	tr := newMoveTracker(2)
	step := func(what string, ok bool, want int) {
		t.Helper()
		if !ok {
			t.Fatalf("%s: refused", what)
		}
		if got := tr.inFlight(); got != want {
			t.Fatalf("%s: %d in flight, want %d", what, got, want)
		}
	}
	refused := func(what string, shard uint32) {
		t.Helper()
		if tr.take(shard, leads) {
			t.Fatalf("%s: shard %d's addition was allowed with %d in flight", what, shard, tr.inFlight())
		}
	}

	tr.track(1, conf(1)) // a non-voter a previous leader added
	step("inherited", true, 1)
	step("add to 2", tr.take(2, leads), 2)
	tr.track(2, conf(1)) // the addition committed: its replica catches up
	step("2 committed", true, 2)
	refused("two catching up", 3)

	tr.release(1) // promoted
	tr.track(1, conf(0))
	step("1 promoted", true, 1)
	step("add to 3", tr.take(3, leads), 2)
	tr.release(3) // the addition failed
	step("3 failed", true, 1)
	step("add to 3 again", tr.take(3, leads), 2)
	refused("full again", 4)

	led[2] = false // leadership of 2 moved: its new leader counts it
	step("add to 4", tr.take(4, leads), 2)
	if got := tr.inFlight(); got != 2 {
		t.Fatalf("%d in flight, want 2 (3 and 4)", got)
	}
	tr.track(3, conf(0)) // a step sees 3's non-voter gone (removed)
	tr.track(4, conf(0))
	step("all done", true, 0)
}
