package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
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
// its first message, and a node that started empty, or dropped its replicas
// as an old copy (resync), says so until it has held replicas for
// Config.FormationWindow (Meta.Formed false). At formation every
// node is in that state for a while, so a member becomes suspect only after it
// has been unsettled for Config.LostVoterGrace, and a group replaces a suspect
// voter only if it confirms it holds no replica of that group. It stays suspect for lostVoterWindow (its
// groups are replaced one by one, and once the first is, it holds a
// replica again: HoldsReplicas no longer tells), or until it leaves; a
// group replaces it only after the node confirms it holds no replica of
// that shard.

// lostVoterWindow is how long a member stays suspect.
const lostVoterWindow = 10 * time.Minute

// unformedSince tracks, per member, since when it has been unsettled, and
// until when it is suspect. Both survive a member's death (a node that
// came back empty and flaps stays unsettled and suspect through its short
// deaths: a death must not restart its grace while its first replicas make
// it formed) and end when it leaves or is no longer in the member list, so
// both maps are bounded by the member list. Suspicion also ends when the
// member starts again (another run) and is settled at once: it came back
// with its data, and asking it about a replica it is still reopening must
// not have it replaced.
type unformedSince struct {
	mu      sync.Mutex
	since   map[string]time.Time
	suspect map[string]suspicion
}

// suspicion is one suspect member's: until when, and the run it was seen
// unsettled in.
type suspicion struct {
	until time.Time
	run   uint64
}

// update records the members' states (every member in the list, in any
// state) as of now.
func (u *unformedSince) update(members []Member, now time.Time, grace time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.since == nil {
		u.since, u.suspect = make(map[string]time.Time), make(map[string]suspicion)
	}
	known := make(map[string]Member, len(members))
	for _, m := range members {
		if m.State != MemberLeft {
			known[m.Name] = m
		}
	}
	for name := range u.since {
		if m, ok := known[name]; !ok || m.State == MemberAlive && settled(m) {
			delete(u.since, name)
		}
	}
	for name, sus := range u.suspect {
		m, ok := known[name]
		restarted := ok && m.State == MemberAlive && m.MetaErr == nil && settled(m) && m.Meta.Run != sus.run
		if !ok || now.After(sus.until) || restarted {
			delete(u.suspect, name)
		}
	}
	for name, m := range known {
		if m.State != MemberAlive || m.MetaErr != nil || settled(m) {
			continue
		}
		t, ok := u.since[name]
		if !ok {
			u.since[name] = now
		} else if now.Sub(t) >= grace {
			u.suspect[name] = suspicion{until: now.Add(lostVoterWindow), run: m.Meta.Run}
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
//
// A split child's group (D39) is also checked once per leadership term
// after it adopted its handoff: a voter of the parent that caught up from
// a snapshot past the preparation entry never created the child's
// replica, and the group names it as a voter it does not have. Such a
// voter, on a node that is formed and ready, is replaced the same way
// (removing a voter is safe whatever it holds; it comes back as a new
// replica that catches up).
func (c *Cluster) replaceLostVoter(ctx context.Context, r *node.Replica, voters []raft.Server, byName map[string]Member, prevIndex uint64) bool {
	term, checkChild := c.childCheckDue(r)
	verified := true
	for _, s := range voters {
		name := string(s.ID)
		if name == c.cfg.Name {
			continue
		}
		m, alive := byName[name]
		child := checkChild && alive && settled(m) && m.Meta.Ready
		if checkChild && !child {
			verified = false // down, starting or not ready: check it in a later round
		}
		lost := alive && c.unformed.lost(name)
		if !lost && !child {
			continue
		}
		st, err := c.peers.replicaStatus(ctx, m.Meta.HTTPAddr, r.Shard())
		if err != nil {
			verified = false
			continue // unreachable: next round
		}
		if st.GetExists() {
			continue // it holds the replica
		}
		why := "its node holds no replica of the group (data directory lost?): it is added back as a new replica"
		if !lost {
			why = "its node never created this split child's replica (it missed the preparation entry): it is added back as a new replica"
		}
		c.removeServer(ctx, r, s, prevIndex, why)
		c.metrics.lostVoters.Inc()
		return true
	}
	if checkChild && verified {
		c.mu.Lock()
		c.childChecked[r.Shard()] = term
		c.mu.Unlock()
	}
	return false
}

// childCheckDue reports whether r's group is a split child that adopted
// its handoff and whose voters this node has not checked in the current
// term, and the term.
func (c *Cluster) childCheckDue(r *node.Replica) (uint64, bool) {
	if r.Shard() < c.cfg.Shards || r.Reshard().Awaiting {
		return 0, false // a base shard, or a child still adopting
	}
	term := r.Raft().CurrentTerm()
	c.mu.Lock()
	defer c.mu.Unlock()
	return term, c.childChecked[r.Shard()] != term
}

// Node identity (docs/DECISIONS.md D27). Every data directory has a node
// id, written once, and learns its cluster's id: the founders derive it
// from their node ids when they bootstrap, and a node that joins adopts
// the one the formed members agree on. Both travel in gossip.
//
//   - A member whose cluster id differs from this node's (both known) is
//     foreign: it is never a placement candidate, never bootstrapped with,
//     never asked as a shard leader, and a group that lists it replaces
//     it (it is not desired).
//   - A data directory restored from an old copy is found by its epoch,
//     the count of its starts, written before each start gossips: every
//     node remembers the highest epoch and that start's run id seen per
//     node id, and a member whose current start is older (a lower epoch,
//     or the same epoch with another run id) runs from an old copy. The
//     nodes that see it say so in their gossip (Meta.Stale); the node
//     itself, reading that, takes an epoch above the highest seen, drops
//     every replica it reopened from the directory, and is from then on a
//     node that lost its data: its groups replace it as a new replica
//     (replaceLostVoter).

// maxEpochRecords bounds the node ids whose highest epoch this node
// remembers; beyond it the record of a node id not alive now is forgotten
// (scope_cluster_identity_records_evicted_total).
const maxEpochRecords = 4096

type epochRecord struct {
	epoch, run uint64
	seen       time.Time
	warnedRun  uint64 // the stale run last logged
}

// epochTable is the highest epoch seen per node id.
type epochTable struct {
	mu      sync.Mutex
	records map[uint64]*epochRecord
}

// stale reports whether m runs from an old copy of its data directory,
// and the highest epoch seen for its node id.
func (t *epochTable) stale(m Meta) (bool, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.records[m.NodeID]
	if !ok || m.NodeID == 0 {
		return false, 0
	}
	return m.Epoch < r.epoch || (m.Epoch == r.epoch && m.Run != r.run), r.epoch
}

// observe records the alive members' starts. It returns the members seen
// running from an old copy for the first time in that run.
func (t *epochTable) observe(alive []Member, now time.Time) (newlyStale []Member, evicted int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.records == nil {
		t.records = make(map[uint64]*epochRecord)
	}
	live := make(map[uint64]bool, len(alive))
	for _, m := range alive {
		live[m.Meta.NodeID] = true
	}
	for _, m := range alive {
		id := m.Meta.NodeID
		r, ok := t.records[id]
		switch {
		case !ok:
			for len(t.records) >= maxEpochRecords && t.evictLocked(live) {
				evicted++
			}
			if len(t.records) >= maxEpochRecords {
				continue // every record is of a live member: cannot happen below MaxMembers
			}
			t.records[id] = &epochRecord{epoch: m.Meta.Epoch, run: m.Meta.Run, seen: now}
		case m.Meta.Epoch > r.epoch:
			r.epoch, r.run, r.seen = m.Meta.Epoch, m.Meta.Run, now
		case m.Meta.Epoch == r.epoch && m.Meta.Run == r.run:
			r.seen = now
		case r.warnedRun != m.Meta.Run:
			r.warnedRun = m.Meta.Run
			newlyStale = append(newlyStale, m)
		}
	}
	return newlyStale, evicted
}

// evictLocked forgets the record seen longest ago whose node is not live.
func (t *epochTable) evictLocked(live map[uint64]bool) bool {
	var oldest uint64
	var at time.Time
	for id, r := range t.records {
		if !live[id] && (oldest == 0 || r.seen.Before(at)) {
			oldest, at = id, r.seen
		}
	}
	if oldest == 0 {
		return false
	}
	delete(t.records, oldest)
	return true
}

// foreign reports whether m belongs to another cluster than this node.
func (c *Cluster) foreign(m Member) bool {
	ours := c.id.Get().ClusterID
	return ours != 0 && m.Meta.ClusterID != 0 && m.Meta.ClusterID != ours
}

// sameCluster returns the members that are not foreign, in order.
func (c *Cluster) sameCluster(members []Member) []Member {
	out := members[:0:0]
	for _, m := range members {
		if !c.foreign(m) {
			out = append(out, m)
		}
	}
	return out
}

// identityRound runs before every round: it learns the cluster id, warns
// about foreign members, records the members' starts, and resynchronizes
// this node if its peers say its data directory is an old copy.
func (c *Cluster) identityRound() {
	all := c.members.Members()
	var alive []Member
	for _, m := range all {
		if m.State == MemberAlive && m.MetaErr == nil && m.Name != c.cfg.Name {
			alive = append(alive, m)
		}
	}
	c.learnClusterID(alive)
	ours := c.id.Get()
	for _, m := range alive {
		if c.foreign(m) && c.warnForeign(m) {
			c.logger.Error("a member of another cluster is in this cluster's gossip: it is refused (never given replicas, "+
				"never a voter). If it should join this cluster, stop it, move its data directory aside and start it with "+
				"-join; otherwise remove this cluster's addresses from its -join list",
				"member", m.Name, "member_cluster_id", FormatID(m.Meta.ClusterID), "cluster_id", FormatID(ours.ClusterID),
				"member_node_id", FormatID(m.Meta.NodeID))
		}
	}
	alive = c.sameCluster(alive)
	var withID []Member
	for _, m := range alive {
		if m.Meta.NodeID != 0 {
			withID = append(withID, m)
		}
	}
	stale, evicted := c.epochs.observe(withID, time.Now())
	c.metrics.epochEvictions.Add(float64(evicted))
	for _, m := range stale {
		c.metrics.staleRuns.Inc()
		_, seen := c.epochs.stale(m.Meta)
		c.logger.Error("a member started from an old copy of its data directory (restored from a backup?): "+
			"it is told to drop its replicas, which its groups then replace as new ones",
			"member", m.Name, "node_id", FormatID(m.Meta.NodeID), "epoch", m.Meta.Epoch, "highest_epoch_seen", seen)
	}
	for _, m := range alive {
		for _, s := range m.Meta.Stale {
			if s.NodeID == ours.NodeID && s.Epoch >= c.id.Get().Epoch {
				c.resync(m.Name, s.Epoch)
			}
		}
	}
}

// warnForeign reports whether m's foreign cluster id was not logged yet
// for m (bounded by the member table: entries of members gone are
// dropped).
func (c *Cluster) warnForeign(m Member) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.foreignWarned == nil {
		c.foreignWarned = make(map[string]uint64)
	}
	for name := range c.foreignWarned {
		if _, ok := c.members.Member(name); !ok {
			delete(c.foreignWarned, name)
		}
	}
	if c.foreignWarned[m.Name] == m.Meta.ClusterID {
		return false
	}
	c.foreignWarned[m.Name] = m.Meta.ClusterID
	return true
}

// learnClusterID adopts, if this node has none, the cluster id that every
// formed member with one agrees on.
func (c *Cluster) learnClusterID(alive []Member) {
	if c.id.Get().ClusterID != 0 {
		return
	}
	var found uint64
	for _, m := range alive {
		if !m.Meta.Formed || m.Meta.ClusterID == 0 || m.Meta.BaseShards() != c.cfg.Shards {
			continue
		}
		if found != 0 && m.Meta.ClusterID != found {
			if pair := found ^ m.Meta.ClusterID; pair != c.twoClustersWarned {
				c.twoClustersWarned = pair // logged once per pair of ids
				c.logger.Warn("members of two clusters are in this node's gossip: not adopting a cluster id until one is left "+
					"(check this node's -join addresses)",
					"cluster_id", FormatID(found), "other_cluster_id", FormatID(m.Meta.ClusterID), "member", m.Name)
			}
			return
		}
		found = m.Meta.ClusterID
	}
	if found != 0 {
		c.adoptClusterID(found, "learned from the cluster's members")
	}
}

// adoptClusterID records id as the cluster id and gossips it.
func (c *Cluster) adoptClusterID(id uint64, how string) {
	if err := c.id.setClusterID(id); err != nil {
		c.logger.Error("record the cluster id", "cluster_id", FormatID(id), "err", err)
		return
	}
	if err := c.members.UpdateMeta(func(m *Meta) { m.ClusterID = id }); err != nil {
		c.logger.Warn("publish the cluster id", "err", err)
	}
	c.logger.Info("cluster id "+how, "cluster_id", FormatID(id), "node_id", FormatID(c.id.Get().NodeID))
}

// bootstrapClusterID derives the new cluster's id from its founders: the
// same on every founder (they bootstrap from the same member set), and
// different for every cluster (node ids are random). ok is false while a
// founder's node id is not known yet. A founder older than node ids makes
// a cluster without an id (0).
func bootstrapClusterID(founders []Member) (id uint64, ok bool) {
	for _, m := range founders {
		if !m.Meta.ReadsIdentity {
			return 0, true
		}
	}
	h := sha256.New()
	ids := make([]uint64, 0, len(founders))
	for _, m := range founders {
		if m.Meta.NodeID == 0 {
			return 0, false
		}
		ids = append(ids, m.Meta.NodeID)
	}
	slices.Sort(ids)
	for _, id := range ids {
		_ = binary.Write(h, binary.BigEndian, id)
	}
	id = binary.BigEndian.Uint64(h.Sum(nil))
	return max(id, 1), true
}

// resync handles this node's data directory being an old copy, as peer
// (which has seen the node id at epoch seen) reports: it takes a higher
// epoch, then drops every replica it reopened from the directory.
func (c *Cluster) resync(peer string, seen uint64) {
	before := c.id.Get()
	if err := c.id.beginResync(seen); err != nil {
		c.logger.Error("record the resynchronization", "err", err)
		return
	}
	c.logger.Error("this node's data directory is an old copy (restored from a backup?): its replicas may lack "+
		"entries this node acknowledged. Dropping every replica reopened from it; the groups add this node back "+
		"as a new replica that catches up from the others",
		"reported_by", peer, "node_id", FormatID(before.NodeID), "epoch", before.Epoch, "highest_epoch_seen", seen,
		"new_epoch", c.id.Get().Epoch)
	c.metrics.resyncs.Inc()
	c.dropRestored()
	// From now on this node is one that came back empty (unformed until it
	// has held replicas for the formation window), at once in gossip: a
	// group it was a voter of must find it unsettled, ask it, and replace
	// it, even if other groups give it new replicas within LostVoterGrace.
	// Still formed, it would stay a voter with no replica of that group.
	c.unform()
	holds := len(c.node.Replicas()) > 0
	if err := c.members.UpdateMeta(func(m *Meta) {
		m.Epoch, m.Formed, m.HoldsReplicas = c.id.Get().Epoch, false, holds
	}); err != nil {
		c.logger.Warn("publish the new epoch", "err", err)
	}
}

// dropRestored drops the replicas reopened from the data directory at
// Start that no leader has opened again since, then clears the identity's
// Resync mark.
func (c *Cluster) dropRestored() {
	c.mu.Lock()
	restored := c.restored
	c.restored = nil
	c.mu.Unlock()
	failed := false
	for _, rs := range restored {
		if !c.otherVoters(rs.r) {
			// Its group has no other voter (R = 1, or the others were
			// removed) or its configuration cannot be read: the old copy
			// may be all there is, and dropping it would lose the shard.
			c.logger.Error("keeping a replica of the old data directory copy: its group has no other voter to "+
				"catch up from (entries acknowledged after the copy was made are lost unless the newer directory "+
				"is put back)", "shard", rs.r.Shard())
			continue
		}
		if _, err := c.node.DropReplicaUnopened(rs.r.Shard(), rs.r, rs.seq); err != nil {
			failed = true
			c.logger.Error("drop a replica of the old data directory", "shard", rs.r.Shard(), "err", err)
		}
	}
	if failed {
		return // the next start drops what is left (Identity.Resync)
	}
	if err := c.id.endResync(); err != nil {
		c.logger.Error("record the resynchronization", "err", err)
	}
}

// otherVoters reports whether r's latest configuration lists a voter other
// than this node (false when unknown: never drop on a guess).
func (c *Cluster) otherVoters(r *node.Replica) bool {
	f := r.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != c.cfg.Name {
			return true
		}
	}
	return false
}

// restoredReplica is a replica reopened from the data directory at Start,
// and the open count then (Replica.LastOpen).
type restoredReplica struct {
	r   *node.Replica
	seq uint64
}

// staleRuns lists, for this node's gossip, the alive members of this
// cluster that run from an old copy of their data directory, with the
// highest epoch seen for each; at most MaxStaleRuns, by node id.
func (c *Cluster) staleRuns() []StaleRun {
	var out []StaleRun
	for _, m := range c.sameCluster(c.members.Members()) {
		if m.State != MemberAlive || m.MetaErr != nil || m.Name == c.cfg.Name {
			continue
		}
		if stale, seen := c.epochs.stale(m.Meta); stale {
			out = append(out, StaleRun{NodeID: m.Meta.NodeID, Epoch: seen})
		}
	}
	slices.SortFunc(out, func(a, b StaleRun) int { return cmp.Compare(a.NodeID, b.NodeID) })
	c.metrics.staleRunsUnsent.Set(float64(max(len(out)-MaxStaleRuns, 0)))
	if len(out) > MaxStaleRuns {
		out = out[:MaxStaleRuns] // the others are named once these resynchronized
	}
	return out
}
