package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/node"
)

// A node whose data directory was lost (a wiped or replaced disk, a
// restore of nothing) comes back under its old name with no replica. Its
// groups still list it as a voter, and its name alone must not make it
// one again: a voter that forgot its votes and its log can elect a lagging
// leader and lose acknowledged writes. It does not bootstrap (bootstrap),
// it opens no replica nobody added it to, and the leader of each group it
// was a voter of removes it and adds it back as a new replica, through the
// usual non-voter, catch-up and promotion steps (docs/DECISIONS.md D24).
//
// A node that holds no replica says so in gossip (Meta.HoldsReplicas false) from
// its first message, and a node that started empty says so until it has held
// replicas for Config.FormationWindow (Meta.Formed false). At formation every
// node is in that state for a while, so a member becomes suspect only after it
// has been unsettled for Config.LostVoterGrace, and a group replaces a suspect
// voter only if it confirms it holds no replica of that group. It stays suspect for lostVoterWindow (its
// groups are replaced one by one, and once the first is, it holds a
// replica again: HoldsReplicas no longer tells), or until it dies or leaves; a
// group replaces it only after the node confirms it holds no replica of
// that shard.

// lostVoterWindow is how long a member stays suspect.
const lostVoterWindow = 10 * time.Minute

// unformedSince tracks, per member, since when it has advertised no
// replica, and until when it is suspect. Both maps are bounded by the
// member list: entries of members that are no longer alive are deleted on
// every update.
type unformedSince struct {
	mu      sync.Mutex
	since   map[string]time.Time
	suspect map[string]time.Time // until
}

// update records the alive members' states as of now.
func (u *unformedSince) update(byName map[string]Member, now time.Time, grace time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.since == nil {
		u.since, u.suspect = make(map[string]time.Time), make(map[string]time.Time)
	}
	for name := range u.since {
		if m, ok := byName[name]; !ok || settled(m) {
			delete(u.since, name)
		}
	}
	for name, until := range u.suspect {
		if _, ok := byName[name]; !ok || now.After(until) {
			delete(u.suspect, name)
		}
	}
	for name, m := range byName {
		if settled(m) {
			continue
		}
		t, ok := u.since[name]
		if !ok {
			u.since[name] = now
		} else if now.Sub(t) >= grace {
			u.suspect[name] = now.Add(lostVoterWindow)
		}
	}
}

// settled reports whether a member has held replicas since it started, or
// for long enough (Meta.Formed), and holds some now. A node that came back
// empty is unsettled for at least FormationWindow after its first new
// replica, which is longer than LostVoterGrace: that first replica (a group
// it was never a voter of may add it within seconds) must not hide it from
// the groups that still list it as a voter with the data it lost.
func settled(m Member) bool { return m.Meta.Formed && m.Meta.HoldsReplicas }

// lost reports whether name is suspect of having lost its data.
func (u *unformedSince) lost(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.suspect[name]
	return ok
}

// replaceLostVoter removes from r's group the first voter (other than this
// node) whose node lost its data, so that the next rounds add it back as a
// new replica. It reports whether it removed one.
func (c *Cluster) replaceLostVoter(ctx context.Context, r *node.Replica, voters []raft.Server, byName map[string]Member, prevIndex uint64) bool {
	for _, s := range voters {
		name := string(s.ID)
		m, alive := byName[name]
		if name == c.cfg.Name || !alive || !c.unformed.lost(name) {
			continue
		}
		st, err := c.peers.replicaStatus(ctx, m.Meta.HTTPAddr, r.Shard())
		if err != nil || st.GetExists() {
			continue // unreachable, or it holds the replica after all
		}
		c.removeServer(ctx, r, s, prevIndex, "its node holds no replica of the group (data directory lost?): it is added back as a new replica")
		c.metrics.lostVoters.Inc()
		return true
	}
	return false
}
