package cluster

import (
	"slices"
	"time"
)

// Flap damping (docs/DECISIONS.md D25). Placement is a pure function of a
// member list; which members a shard's placement may choose is decided
// here, per group, so that a member whose gossip state keeps changing
// moves nothing:
//
//   - a member that is not in the group's configuration is a candidate
//     only once it has been alive continuously for the stabilization time:
//     replicas move to a member only when it has proven stable;
//   - a member that is in the configuration stays a candidate while it is
//     alive, and while it has been dead for less than the stabilization
//     time: replicas move away from a failed member only once its failure
//     has lasted that long;
//   - a member that left, announced it is leaving, or whose metadata does
//     not match (undecodable, another shard count) is never a candidate:
//     those are decisions, not flaps, and act at once.
//
// A group whose member flaps therefore keeps its configuration: the
// member is a candidate through every short death and every return. A dead
// member is still replaced, once its death has lasted the stabilization
// time (a dead node must not hold replicas forever), and a member that
// comes back after being replaced waits the stabilization time before
// replicas move back to it.
//
// "Since" is when this node saw the member's current gossip state begin
// (Member.Since, local clock). A node that just started sees every member
// as new: members of a group stay candidates (they are in the
// configuration), and moves to other members wait one stabilization time.

// placementCandidates returns, sorted, the members shard placement may
// choose for a group whose configuration lists the servers named inGroup,
// at time now. It performs no I/O; members and inGroup are only read.
func placementCandidates(members []Member, inGroup []string, shards uint32, stabilization time.Duration, now time.Time) []string {
	var out []string
	for _, m := range members {
		if candidate(m, slices.Contains(inGroup, m.Name), shards, stabilization, now) {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

// candidate applies the rules above to one member.
func candidate(m Member, inGroup bool, shards uint32, stabilization time.Duration, now time.Time) bool {
	if m.MetaErr != nil || m.Meta.Leaving || m.Meta.BaseShards() != shards {
		return false
	}
	settled := now.Sub(m.Since) >= stabilization
	switch m.State {
	case MemberAlive:
		return inGroup || settled
	case MemberDead:
		return inGroup && !settled
	}
	return false // left
}
