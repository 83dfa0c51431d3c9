package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
)

func voter(name string) raft.Server {
	return raft.Server{ID: raft.ServerID(name), Suffrage: raft.Voter}
}

func nonvoter(name string) raft.Server {
	return raft.Server{ID: raft.ServerID(name), Suffrage: raft.Nonvoter}
}

func liveMembers(names ...string) map[string]Member {
	out := map[string]Member{}
	for _, n := range names {
		out[n] = Member{Name: n, State: MemberAlive, Meta: Meta{Ready: true, HoldsReplicas: true}}
	}
	return out
}

// TestPlanReconcileStep covers the order of a reconciliation step: finish
// a move before starting one, add before removing, never below the
// voters a group needs, and the leader hands over before it is removed.
func TestPlanReconcileStep(t *testing.T) {
	tests := []struct {
		name       string
		servers    []raft.Server
		desired    []string
		live       []string // members alive now (placementMembers)
		alive      []string // members gossip calls alive (defaults to live)
		candidates int
		want       stepKind
		on         string
	}{
		{name: "matched", servers: []raft.Server{voter("a"), voter("b"), voter("c")}, desired: []string{"a", "b", "c"},
			live: []string{"a", "b", "c"}, candidates: 3, want: stepMatched},
		{name: "a missing member is added", servers: []raft.Server{voter("a"), voter("b"), voter("c")}, desired: []string{"a", "b", "d"},
			live: []string{"a", "b", "c", "d"}, candidates: 4, want: stepAdd, on: "d"},
		{name: "a missing member that died since is waited for", servers: []raft.Server{voter("a"), voter("b"), voter("c")},
			desired: []string{"a", "b", "d"}, live: []string{"a", "b", "c"}, candidates: 4, want: stepWait, on: "d"},
		{name: "a desired non-voter is promoted first", servers: []raft.Server{voter("a"), voter("b"), voter("c"), nonvoter("d")},
			desired: []string{"a", "b", "d"}, live: []string{"a", "b", "c", "d"}, candidates: 4, want: stepPromote, on: "d"},
		{name: "a non-voter no longer desired is dropped", servers: []raft.Server{voter("a"), voter("b"), voter("c"), nonvoter("d")},
			desired: []string{"a", "b", "c"}, live: []string{"a", "b", "c", "d"}, candidates: 4, want: stepDropNonvoter, on: "d"},
		{name: "a desired non-voter that is down is waited for", servers: []raft.Server{voter("a"), voter("b"), voter("c"), nonvoter("d")},
			desired: []string{"a", "b", "d"}, live: []string{"a", "b", "c"}, candidates: 4, want: stepWait, on: "d"},
		{name: "a displaced voter goes once its replacement votes", servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
			desired: []string{"a", "b", "d"}, live: []string{"a", "b", "c", "d"}, candidates: 4, want: stepRemoveVoter, on: "c"},
		{name: "a dead voter goes once R voters remain", servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
			desired: []string{"a", "b", "d"}, live: []string{"a", "b", "d"}, alive: []string{"a", "b", "d"}, candidates: 4,
			want: stepRemoveVoter, on: "c"},
		{name: "a dead voter stays while fewer than R would remain", servers: []raft.Server{voter("a"), voter("b"), voter("c")},
			desired: []string{"a", "b"}, live: []string{"a", "b"}, alive: []string{"a", "b"}, candidates: 2, want: stepMatched},
		{name: "a leaving voter goes down to the candidate count", servers: []raft.Server{voter("a"), voter("b"), voter("c")},
			desired: []string{"a", "b"}, live: []string{"a", "b"}, alive: []string{"a", "b", "c"}, candidates: 2,
			want: stepRemoveVoter, on: "c"},
		{name: "the leader hands over before it is removed", servers: []raft.Server{voter("self"), voter("b"), voter("c"), voter("d")},
			desired: []string{"b", "c", "d"}, live: []string{"self", "b", "c", "d"}, candidates: 4, want: stepHandOff, on: "self"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alive := tt.alive
			if alive == nil {
				alive = tt.live
			}
			v := groupView{self: "self", servers: tt.servers, desired: tt.desired, candidates: tt.candidates, replicas: 3,
				live: liveMembers(tt.live...),
				alive: func(name string) bool {
					for _, a := range alive {
						if a == name {
							return true
						}
					}
					return false
				}}
			step, ok := planNonvoterStep(v)
			if !ok {
				step = planVoterStep(v)
			}
			if step.kind != tt.want || step.name != tt.on {
				t.Fatalf("step %d on %q, want %d on %q", step.kind, step.name, tt.want, tt.on)
			}
		})
	}
}

// TestLeadershipTarget covers whom a leader hands a leadership to: only
// from above the cluster's mean, to a voter that leads at least two
// fewer, the fewest first, never to one that cannot take it.
func TestLeadershipTarget(t *testing.T) {
	group := []raft.Server{voter("self"), voter("b"), voter("c"), nonvoter("d")}
	members := func(led map[string]int, adjust func(map[string]Member)) map[string]Member {
		out := liveMembers("self", "b", "c", "d", "e")
		for name, n := range led {
			m := out[name]
			m.Meta.Led = make([]uint32, n)
			out[name] = m
		}
		if adjust != nil {
			adjust(out)
		}
		return out
	}
	tests := []struct {
		name   string
		mine   int
		led    map[string]int
		adjust func(map[string]Member)
		want   string
	}{
		{name: "the voter leading fewest", mine: 8, led: map[string]int{"b": 5, "c": 3, "d": 0, "e": 4}, want: "c"},
		{name: "not to one leading one fewer", mine: 8, led: map[string]int{"b": 7, "c": 7, "d": 0, "e": 0}, want: ""},
		{name: "not at the mean", mine: 4, led: map[string]int{"b": 2, "c": 4, "d": 4, "e": 6}, want: ""},
		{name: "not below the mean, however few a voter leads", mine: 3, led: map[string]int{"b": 1, "c": 4, "d": 4, "e": 8}, want: ""},
		{name: "not to a non-voter", mine: 8, led: map[string]int{"b": 7, "c": 7, "d": 0, "e": 0}, want: ""},
		{name: "not to a voter whose list of shards led was cut", mine: 8, led: map[string]int{"b": 7, "c": 2, "e": 0},
			adjust: func(m map[string]Member) { c := m["c"]; c.Meta.LedPartial = true; m["c"] = c }, want: ""},
		{name: "not to a voter that is not ready", mine: 8, led: map[string]int{"b": 7, "c": 2, "e": 0},
			adjust: func(m map[string]Member) { c := m["c"]; c.Meta.Ready = false; m["c"] = c }, want: ""},
		{name: "not to a voter that is not alive", mine: 8, led: map[string]int{"b": 7, "c": 2, "e": 0},
			adjust: func(m map[string]Member) { delete(m, "c") }, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, _ := leadershipTarget("self", tt.mine, group, members(tt.led, tt.adjust))
			if string(target.ID) != tt.want {
				t.Fatalf("target %q, want %q", target.ID, tt.want)
			}
		})
	}
}
