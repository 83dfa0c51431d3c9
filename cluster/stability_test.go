package cluster

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestPlacementCandidates drives the flap-damping rule (stability.go) with
// a clock: who placement may choose, for a member in the group and for one
// outside it, as its gossip state ages.
func TestPlacementCandidates(t *testing.T) {
	const shards = 4
	stab := 10 * time.Second
	now := time.Unix(1000, 0)
	member := func(state MemberState, age time.Duration) Member {
		return Member{Name: "x", State: state, Since: now.Add(-age), Meta: Meta{Shards: shards}}
	}
	tests := []struct {
		name    string
		m       Member
		inGroup bool
		want    bool
	}{
		{"alive, new, outside the group: not yet stable", member(MemberAlive, time.Second), false, false},
		{"alive, stable, outside the group", member(MemberAlive, stab), false, true},
		{"alive, new, in the group: kept", member(MemberAlive, time.Second), true, true},
		{"dead briefly, in the group: kept (a flap moves nothing)", member(MemberDead, time.Second), true, true},
		{"dead for the stabilization time, in the group: replaced", member(MemberDead, stab), true, false},
		{"dead, outside the group", member(MemberDead, time.Second), false, false},
		{"left, in the group: at once", member(MemberLeft, 0), true, false},
		{"leaving, in the group: at once", func() Member { m := member(MemberAlive, time.Hour); m.Meta.Leaving = true; return m }(), true, false},
		{"other shard count", func() Member { m := member(MemberAlive, time.Hour); m.Meta.Shards = 8; return m }(), true, false},
		{"undecodable metadata", func() Member { m := member(MemberAlive, time.Hour); m.MetaErr = errors.New("bad"); return m }(), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var group []string
			if tt.inGroup {
				group = []string{"x"}
			}
			got := slices.Contains(placementCandidates([]Member{tt.m}, group, shards, stab, now), "x")
			if got != tt.want {
				t.Fatalf("candidate = %v, want %v", got, tt.want)
			}
		})
	}
	// Stabilization 0: only gossip's current state counts (no damping).
	if got := placementCandidates([]Member{member(MemberAlive, 0), {Name: "y", State: MemberDead, Since: now, Meta: Meta{Shards: shards}}},
		[]string{"x", "y"}, shards, 0, now); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("no damping: candidates %v, want [x]", got)
	}
}

// TestFlappingMemberKeepsPlacement replays a member that dies and returns
// every few seconds: every shard's desired set, computed over the
// candidates at each moment, stays the set its group already has, until
// the member stays dead for the stabilization time; then it is replaced
// by the spare.
func TestFlappingMemberKeepsPlacement(t *testing.T) {
	const shards, r = 16, 3
	stab := 10 * time.Second
	start := time.Unix(1000, 0)
	names := []string{"a", "b", "c", "d"}
	groups := PlaceAll(shards, names, r) // formed with everyone alive and stable
	members := func(flapState MemberState, since time.Time) []Member {
		var out []Member
		for _, n := range names {
			m := Member{Name: n, State: MemberAlive, Since: start.Add(-time.Hour), Meta: Meta{Shards: shards}}
			if n == "d" {
				m.State, m.Since = flapState, since
			}
			out = append(out, m)
		}
		return out
	}
	desired := func(ms []Member, now time.Time) map[uint32][]string {
		out := make(map[uint32][]string)
		for s := range uint32(shards) {
			out[s] = Placement(s, placementCandidates(ms, groups[s], shards, stab, now), r)
		}
		return out
	}
	// d flaps: dead 2 s, alive 1 s, ten times.
	now := start
	for range 10 {
		died := now
		for now.Sub(died) < 2*time.Second {
			if m := Moves(groups, desired(members(MemberDead, died), now)); len(m) > 0 {
				t.Fatalf("at +%v (d dead since +%v): moves %v", now.Sub(start), died.Sub(start), m)
			}
			now = now.Add(100 * time.Millisecond)
		}
		back := now
		for now.Sub(back) < time.Second {
			if m := Moves(groups, desired(members(MemberAlive, back), now)); len(m) > 0 {
				t.Fatalf("at +%v (d back since +%v): moves %v", now.Sub(start), back.Sub(start), m)
			}
			now = now.Add(100 * time.Millisecond)
		}
	}
	// d stays dead: its groups move to the spare once the death is stable.
	died := now
	if m := Moves(groups, desired(members(MemberDead, died), died.Add(stab-time.Millisecond))); len(m) > 0 {
		t.Fatalf("dead just under the stabilization time: moves %v", m)
	}
	moves := Moves(groups, desired(members(MemberDead, died), died.Add(stab)))
	if len(moves) == 0 {
		t.Fatal("dead for the stabilization time: no moves, want d replaced")
	}
	for _, m := range moves {
		if !slices.Equal(m.Remove, []string{"d"}) || len(m.Add) != 1 {
			t.Fatalf("move %+v: want d replaced by the spare", m)
		}
	}
}
