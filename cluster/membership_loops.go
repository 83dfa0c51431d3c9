package cluster

import (
	"bytes"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// The background side of Membership: the loops it runs and the callbacks
// memberlist makes into it.

// publishLoop re-advertises this node whenever its metadata changed.
// memberlist.UpdateNode reads the metadata through NodeMeta and stamps it
// with a new incarnation; running it from one goroutine guarantees a newer
// incarnation always carries newer metadata.
func (m *Membership) publishLoop() {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.publish:
		}
		m.metaPublishes.Add(1)
		if err := m.ml.UpdateNode(m.cfg.UpdateTimeout); err != nil {
			// The local state is updated; push-pull and later gossip
			// still spread it. Only the wait for a broadcast timed out.
			m.metaPublishTimeouts.Add(1)
			m.log.Debug("metadata broadcast not sent in time", "timeout", m.cfg.UpdateTimeout, "err", err)
		}
	}
}

// rejoinLoop repairs partitions: memberlist never contacts a dead member
// again on its own, so two halves of a healed partition would stay apart.
// Every RejoinInterval, if a member this node knew is dead (not left), it
// joins the seeds and the last known addresses of the dead members.
func (m *Membership) rejoinLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		targets := m.rejoinTargets(time.Now())
		if len(targets) == 0 {
			continue
		}
		m.rejoins.Add(1)
		n, err := m.ml.Join(targets)
		if n == 0 {
			m.rejoinFailures.Add(1)
			m.log.Debug("rejoin reached no member", "targets", targets, "err", err)
			continue
		}
		m.log.Debug("rejoined", "targets", targets, "reached", n)
	}
}

// rejoinTargets forgets members dead or departed for longer than
// ForgetAfter and returns whom to contact: nobody if every known member is
// alive (or left); otherwise the seeds, then the dead members' addresses,
// most recently seen first, at most MaxRejoinTargets, never this node.
func (m *Membership) rejoinTargets(now time.Time) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var dead []*Member
	alive := 0
	for name, mem := range m.members {
		switch {
		case mem.State == MemberAlive:
			alive++
		case now.Sub(mem.Since) > m.cfg.ForgetAfter:
			delete(m.members, name)
			m.forgotten.Add(1)
		case mem.State == MemberDead:
			dead = append(dead, mem)
		}
	}
	missing := len(dead) > 0 || (alive <= 1 && len(m.seeds) > 0)
	if !missing {
		return nil
	}
	slices.SortFunc(dead, func(a, b *Member) int { return b.Since.Compare(a.Since) })
	var targets []string
	add := func(a string) {
		if a != "" && a != m.addr && len(targets) < m.cfg.MaxRejoinTargets && !slices.Contains(targets, a) {
			targets = append(targets, a)
		}
	}
	for _, s := range m.seeds {
		add(s)
	}
	for _, d := range dead {
		add(d.Addr)
	}
	return targets
}

// observe records a memberlist event. It runs on memberlist's goroutines,
// under memberlist's node lock: it must not call into memberlist, and it
// never blocks (subscribers get a coalesced signal).
//
// memberlist's events do not say whether a node died or left (the Node they
// carry has a stale State field), so a departure counts as graceful when
// the node's last metadata announced it (Meta.Leaving, set by Leave).
func (m *Membership) observe(n *memberlist.Node, gone bool, counter *atomic.Uint64) {
	counter.Add(1)
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		m.metaDecodeErrors.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	mem, ok := m.members[n.Name]
	if !ok {
		if len(m.members) >= m.cfg.MaxMembers && !m.evictOldestGoneLocked() {
			m.membersOverflow.Add(1)
			return
		}
		mem = &Member{Name: n.Name}
		m.members[n.Name] = mem
	}
	state := MemberAlive
	if gone {
		state = MemberDead
		if meta.Leaving || mem.Meta.Leaving {
			state = MemberLeft
		}
	}
	if mem.State != state {
		mem.Since = time.Now()
	}
	mem.State, mem.Addr, mem.readsMeta = state, n.Address(), n.DMax
	if err == nil || !gone {
		mem.Meta, mem.MetaErr = meta, err
	}
	// A member that cannot read metadata format 2 or identity sections
	// arrived, or the last one went: re-encode this node's metadata
	// (publishLoop sends it).
	if n.Name != m.cfg.Name && m.metaBytes != nil {
		if b, err := m.encodeLocked(m.meta); err == nil && !bytes.Equal(b, m.metaBytes) {
			m.metaBytes = b
			select {
			case m.publish <- struct{}{}:
			default:
				m.coalesced.Add(1)
			}
		}
	}
	for _, c := range m.subs {
		select {
		case c <- struct{}{}:
		default:
			m.coalesced.Add(1)
		}
	}
}

// evictOldestGoneLocked forgets the dead or departed member gone longest,
// reporting whether there was one.
func (m *Membership) evictOldestGoneLocked() bool {
	var oldest *Member
	for _, mem := range m.members {
		if mem.State != MemberAlive && (oldest == nil || mem.Since.Before(oldest.Since)) {
			oldest = mem
		}
	}
	if oldest == nil {
		return false
	}
	delete(m.members, oldest.Name)
	m.forgotten.Add(1)
	return true
}

// membershipDelegate implements memberlist's Delegate and EventDelegate.
// Kept apart from Membership so its exported method set stays ours.
type membershipDelegate struct{ m *Membership }

// NodeMeta returns the encoded metadata, already checked against the limit.
func (d *membershipDelegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.metaBytes) > limit {
		// Encode enforced memberlist.MetaMaxSize; a smaller limit would
		// make memberlist panic, so fail loudly here instead.
		panic(fmt.Sprintf("cluster: metadata is %d bytes, memberlist allows %d", len(d.m.metaBytes), limit))
	}
	return d.m.metaBytes
}

func (d *membershipDelegate) NotifyMsg([]byte)                {}
func (d *membershipDelegate) GetBroadcasts(_, _ int) [][]byte { return nil }
func (d *membershipDelegate) LocalState(bool) []byte          { return nil }
func (d *membershipDelegate) MergeRemoteState([]byte, bool)   {}
func (d *membershipDelegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(n, false, &d.m.joins) }
func (d *membershipDelegate) NotifyLeave(n *memberlist.Node)  { d.m.observe(n, true, &d.m.leaves) }
func (d *membershipDelegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(n, false, &d.m.updates) }
