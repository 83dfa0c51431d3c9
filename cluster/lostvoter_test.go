package cluster

import (
	"testing"
	"time"
)

// A member becomes suspect of having lost its data once it has been
// unsettled — holding no replica, or started empty and not yet formed —
// for the grace. The case that failed before: a node that came back empty
// was given a replica of another group within the grace (HoldsReplicas
// true), so it never became suspect, and a group that still listed it as
// a voter kept a voter without the data for good (seen in a chaos campaign:
// a shard ran on two real copies of three until the end).
func TestUnformedSince(t *testing.T) {
	const grace = 10 * time.Second
	t0 := time.Unix(1_700_000_000, 0)
	member := func(formed, holds bool) Member {
		return Member{Name: "n4", State: MemberAlive, Meta: Meta{Formed: formed, HoldsReplicas: holds}}
	}
	in := func(state MemberState, m Member) Member { m.State = state; return m }
	run := func(r uint64, m Member) Member { m.Meta.Run = r; return m }
	for _, tc := range []struct {
		name    string
		states  []Member // one per second from t0, then checked at t0+len+grace
		suspect bool
	}{
		{"formed and holding", []Member{member(true, true)}, false},
		{"holds nothing", []Member{member(true, false)}, true},
		{"came back empty, holds nothing", []Member{member(false, false)}, true},
		{"came back empty, given a replica within the grace", []Member{member(false, false), member(false, true)}, true},
		{"came back empty and became formed", []Member{member(false, false), member(true, true)}, false},
		{"came back empty and left", []Member{member(false, false), in(MemberLeft, member(false, false))}, false},
		// The case that failed before: memberlist marked the node dead for a
		// moment after its restart (a new gossip address), the death reset
		// its grace, and it became formed before the grace ran out again.
		{"came back empty, flapped, then formed", func() []Member {
			ms := []Member{member(false, false), member(false, true)}
			for range grace / time.Second {
				ms = append(ms, member(false, true))
			}
			ms = append(ms, in(MemberDead, member(false, true)))
			for range grace/time.Second - 2 {
				ms = append(ms, member(false, true))
			}
			return append(ms, member(true, true))
		}(), true},
		// Suspect, then restarted with its data (another run, formed at
		// start): not lost; asked while it reopens its replicas it would
		// say it has none.
		{"came back empty, then restarted with data", func() []Member {
			ms := []Member{run(1, member(false, false))}
			for range grace/time.Second + 1 {
				ms = append(ms, run(1, member(false, true)))
			}
			return append(ms, in(MemberDead, run(1, member(false, true))), run(2, member(true, true)))
		}(), false},
		{"came back empty, flapped in the same run, then formed", func() []Member {
			ms := []Member{run(1, member(false, false))}
			for range grace/time.Second + 1 {
				ms = append(ms, run(1, member(false, true)))
			}
			return append(ms, in(MemberDead, run(1, member(false, true))), run(1, member(true, true)))
		}(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u unformedSince
			now := t0
			for _, m := range tc.states {
				u.update([]Member{m}, now, grace)
				now = now.Add(time.Second)
			}
			last := tc.states[len(tc.states)-1]
			u.update([]Member{last}, now.Add(grace), grace)
			if got := u.lost("n4"); got != tc.suspect {
				t.Fatalf("suspect = %v, want %v", got, tc.suspect)
			}
		})
	}
}
