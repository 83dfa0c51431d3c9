package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/node"
)

// Reconciliation (docs/ARCHITECTURE.md, "Cluster"): the leader of each shard moves its
// group toward the shard's placement over the live members, one membership
// change at a time, each conditioned on the configuration index it read
// (prevIndex), so two concurrent decisions can never both apply:
//
//  1. a desired member that is not in the group gets an empty replica
//     (NodeService.OpenReplica) and joins as a non-voter;
//  2. a non-voter that has caught up (applied index within CatchUpLag of
//     the leader's) is promoted to voter;
//  3. a voter that is not desired is removed — after leadership moves away
//     if it is the leader itself — but only while enough voters remain:
//     a dead member only once its replacement votes (R voters remain), a
//     leaving or displaced one once min(R, live members) voters remain.
//     The removed node is then told to delete its copy.
//
// A group is never shrunk below its quorum by automatic removal, and a
// dead node is replaced only when a spare live member exists. A node that
// was removed without being told (it was down) finds and drops its copy
// itself (orphans.go).

func (c *Cluster) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}

// stillMember reports whether r must be kept although a leader removed
// this node from its group at configuration index removedAt: r leads the
// group, or r's own configuration lists this node and is at least as new
// as the removal (the node was added back since). A removed server
// usually never learns of its removal — the leader stops replicating to it
// as soon as it appends the change — so an older configuration that still
// lists it does not count. removedAt 0 (unknown) keeps any replica whose
// configuration lists this node.
func (c *Cluster) stillMember(r *node.Replica, removedAt uint64) bool {
	if r.IsLeader() {
		return true
	}
	f := r.Raft().GetConfiguration()
	if f.Error() != nil {
		return true // unknown: never delete on a guess
	}
	listed := false
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == c.cfg.Name {
			listed = true
		}
	}
	return listed && (removedAt == 0 || f.Index() >= removedAt)
}

// maxConcurrentSteps bounds the shard steps running at once on a node.
const maxConcurrentSteps = 64

// stepAll starts one step for every local replica that has none running:
// a reconciliation step where the replica leads, an orphan check where it
// does not (orphans.go). Steps run concurrently and this round does not
// wait for them, so a peer that gossip calls alive but that does not
// answer delays only the shards whose step calls it, each call bounded by
// RPCTimeout and by maxBackgroundCallsPerPeer (docs/DECISIONS.md D25). A
// shard never has two steps at once: one membership change at a time, as
// before. Shards beyond maxConcurrentSteps wait for a later round
// (scope_cluster_steps_deferred_total).
func (c *Cluster) stepAll(round uint64) {
	c.unformed.update(c.sameCluster(c.members.Members()), time.Now(), c.cfg.LostVoterGrace)
	reps := c.node.Replicas()
	// Start each round at another replica, so that when the slots run out
	// the same shards do not take them every round.
	if len(reps) > 0 {
		k := int(round % uint64(len(reps)))
		reps = append(reps[k:], reps[:k]...)
	}
	// Shards with a replica catching up go first: the step that promotes
	// it ends a move, and other additions wait for that (moves.go). Behind
	// the rotation, with hundreds of shards led, it could wait many rounds.
	reps = c.moves.first(reps)
	for _, r := range reps {
		if c.ctx.Err() != nil {
			return
		}
		if !c.claimStep(r.Shard()) {
			continue
		}
		select {
		case c.stepSlots <- struct{}{}:
		default:
			c.releaseStep(r.Shard())
			c.metrics.stepsDeferred.Inc()
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() { <-c.stepSlots }()
			defer c.releaseStep(r.Shard())
			if !r.IsLeader() {
				if err := c.dropIfOrphan(c.ctx, r); err != nil {
					c.logger.Warn("drop orphaned replica", "shard", r.Shard(), "err", err)
				}
				return
			}
			if c.reconcileShard(c.ctx, r) {
				c.balance(r)
			}
		}()
	}
}

// claimStep marks shard as having a step running; false if it has one.
func (c *Cluster) claimStep(shard uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.steps[shard] {
		return false
	}
	c.steps[shard] = true
	return true
}

func (c *Cluster) releaseStep(shard uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.steps, shard)
}

// balance hands r's leadership over unless this node is handing one over
// now or did within the last ReconcileInterval: balance slowly, never
// thrash. Once per round would not be slow: every gossip update starts a
// round, and leadership counts travel by gossip, so at scale rounds follow
// one another and each node's transfers outran what gossip said of their
// targets (docs/DECISIONS.md D40: the scale model balanced a bootstrap of
// 100 nodes with 30,187 transfers where 261 leaderships were in excess).
func (c *Cluster) balance(r *node.Replica) {
	if !c.balanceMu.TryLock() {
		return // a transfer is under way on this node
	}
	defer c.balanceMu.Unlock()
	if time.Since(c.lastTransfer) < c.cfg.ReconcileInterval {
		return
	}
	if c.balanceLeadership(r) {
		c.lastTransfer = time.Now()
	}
}

// transferBackoff is how long leadership balancing leaves a shard alone
// after a transfer of it failed: while a transfer is under way its leader
// refuses writes and LEADER reads, and a target that cannot take over (it
// lags, or is slow to answer) would otherwise be tried again every round,
// keeping the shard unavailable most of the time.
const transferBackoff = 5 * time.Second

// balanceLeadership hands r's leadership to a voter of its group that leads
// at least two shards fewer than this node (by gossip), so that leaders,
// which do the ingest work, spread over the cluster: a node that joins or
// comes back otherwise leads nothing. It reports whether it transferred.
func (c *Cluster) balanceLeadership(r *node.Replica) bool {
	if c.isDraining() {
		return false
	}
	mine := 0
	for _, rep := range c.node.Replicas() {
		if rep.IsLeader() {
			mine++
		}
	}
	cf := r.Raft().GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	_, byName := c.placementMembers()
	target, fewest := leadershipTarget(c.cfg.Name, mine, cf.Configuration().Servers, byName)
	if target.ID == "" {
		return false
	}
	if failed, ok := c.transferFailed[r.Shard()]; ok && time.Since(failed) < transferBackoff {
		return false
	}
	if err := r.Raft().LeadershipTransferToServer(target.ID, target.Address).Error(); err != nil {
		if c.transferFailed == nil {
			c.transferFailed = make(map[uint32]time.Time)
		}
		c.transferFailed[r.Shard()] = time.Now()
		c.metrics.leaderTransferFailures.Inc()
		c.logger.Debug("leadership balance transfer failed; the shard is left alone for a while", "shard", r.Shard(),
			"to", target.ID, "backoff", transferBackoff, "err", err)
		return false
	}
	delete(c.transferFailed, r.Shard())
	c.metrics.leaderTransfers.Inc()
	c.logger.Info("leadership handed over to balance load", "shard", r.Shard(), "to", target.ID,
		"led_here", mine, "led_there", fewest)
	return true
}

// leadershipTarget picks, among the voters of a group that self leads,
// the one to hand leadership to: a live, ready voter holding replicas that
// leads at least two shards fewer than self's mine (by gossip), the fewest
// first. A zero ID: none. led is how many the target leads.
//
// Only a node that leads more than the mean of the members (by gossip,
// its own count exact) hands a leadership over. Without that, when one
// member leads few (it just joined), every other node hands it one each
// round until gossip shows it leading many: it ends far above the mean and
// hands them back, and leaderships churn through the cluster (D40). Above
// the mean, each node hands over at most its excess.
func leadershipTarget(self string, mine int, servers []raft.Server, byName map[string]Member) (target raft.Server, led int) {
	sum, count := leadCounts(self, mine, byName)
	if mine*count <= sum {
		return raft.Server{}, 0 // at or below the mean
	}
	fewest := mine - 1 // a target must lead at least 2 fewer
	for _, s := range servers {
		m, alive := byName[string(s.ID)]
		// A node that holds no replica (just wiped, or not yet
		// bootstrapped) cannot take a leadership.
		if s.Suffrage != raft.Voter || !alive || m.Name == self || !m.Meta.Ready || !m.Meta.HoldsReplicas || m.Meta.LedPartial {
			continue
		}
		if n := len(m.Meta.Led); n < fewest {
			fewest, target = n, s
		}
	}
	return target, fewest
}

// leadCounts returns the shards led by the live members that hold
// replicas, summed, and how many they are (self counted once, with mine):
// their mean is sum/count.
func leadCounts(self string, mine int, byName map[string]Member) (sum, count int) {
	sum, count = mine, 1
	for name, m := range byName {
		if name == self || !m.Meta.HoldsReplicas {
			continue
		}
		sum += len(m.Meta.Led)
		count++
	}
	return sum, count
}

// stepKind is what one reconciliation step does to a group.
type stepKind uint8

const (
	stepMatched      stepKind = iota // the group matches its placement
	stepWait                         // nothing this round: a member the step needs is down
	stepDropNonvoter                 // remove a non-voter that is no longer desired
	stepPromote                      // promote a non-voter once it has caught up
	stepAdd                          // add a desired member as a non-voter
	stepHandOff                      // the leader itself must go: hand leadership over first
	stepRemoveVoter                  // remove a voter that is no longer desired
)

// reconcileStep is the step a shard's leader plans: what, and on whom.
type reconcileStep struct {
	kind   stepKind
	server raft.Server
	name   string
}

// groupView is what a shard's leader knows when it plans a step: the
// group's configuration and the placement over the members it sees.
type groupView struct {
	self       string        // the leader's name
	servers    []raft.Server // the group's configuration
	desired    []string      // Placement over the candidates
	candidates int           // how many placement candidates there are
	replicas   int           // the replication factor
	// live holds the members alive now (placementMembers): calls reach them.
	live map[string]Member
	// alive reports whether gossip knows name and calls it alive.
	alive func(name string) bool
}

// planNonvoterStep plans the first step of a round, on the group's first
// non-voter (finishing a move beats starting one); ok is false when the
// group has none.
func planNonvoterStep(v groupView) (step reconcileStep, ok bool) {
	for _, s := range v.servers {
		if s.Suffrage == raft.Voter {
			continue
		}
		name := string(s.ID)
		step = reconcileStep{server: s, name: name}
		switch _, live := v.live[name]; {
		case !slices.Contains(v.desired, name):
			step.kind = stepDropNonvoter
		case !live:
			step.kind = stepWait // down for less than the stabilization time
		default:
			step.kind = stepPromote
		}
		return step, true
	}
	return reconcileStep{}, false
}

// planVoterStep plans a step for a group of voters only: add the first
// desired member that is missing, else remove a voter that is not desired
// while enough voters remain, else nothing (stepMatched).
func planVoterStep(v groupView) reconcileStep {
	for _, name := range v.desired {
		if slices.ContainsFunc(v.servers, func(s raft.Server) bool { return string(s.ID) == name }) {
			continue
		}
		if _, live := v.live[name]; !live {
			return reconcileStep{kind: stepWait, name: name} // died since the candidates were listed
		}
		return reconcileStep{kind: stepAdd, name: name}
	}
	voters := 0
	for _, s := range v.servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for _, s := range v.servers {
		name := string(s.ID)
		if s.Suffrage != raft.Voter || slices.Contains(v.desired, name) {
			continue
		}
		after := voters - 1
		need := v.replicas
		if v.alive(name) {
			need = min(v.replicas, v.candidates) // leaving or displaced: may shrink to the candidate count
		}
		if after < need || after < 1 {
			continue
		}
		if name == v.self {
			return reconcileStep{kind: stepHandOff, server: s, name: name}
		}
		return reconcileStep{kind: stepRemoveVoter, server: s, name: name}
	}
	return reconcileStep{kind: stepMatched}
}

// reconcileShard takes at most one step toward the shard's placement
// (planNonvoterStep, then a lost voter's replacement, then
// planVoterStep). It reports whether the group already matched it.
func (c *Cluster) reconcileShard(ctx context.Context, r *node.Replica) bool {
	shard := r.Shard()
	cf := r.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		return false
	}
	conf, prevIndex := cf.Configuration(), cf.Index()
	c.moves.track(shard, conf)
	var inGroup []string
	for _, s := range conf.Servers {
		inGroup = append(inGroup, string(s.ID))
	}
	// Placement chooses among the candidates (stability.go: flap damping);
	// byName holds the members alive now, whom calls can reach.
	candidates := placementCandidates(c.placeable(c.members.Members()), inGroup, c.cfg.Shards, c.cfg.StabilizationTime, time.Now())
	_, byName := c.placementMembers()
	desired := Placement(shard, candidates, c.cfg.Replicas)
	if len(desired) == 0 {
		return false
	}
	v := groupView{
		self: c.cfg.Name, servers: conf.Servers, desired: desired, candidates: len(candidates),
		replicas: c.cfg.Replicas, live: byName,
		alive: func(name string) bool {
			m, known := c.member(name)
			return known && m.State == MemberAlive
		},
	}
	if step, ok := planNonvoterStep(v); ok {
		switch step.kind {
		case stepDropNonvoter:
			c.removeServer(ctx, r, step.server, prevIndex, "non-voter no longer desired")
		case stepPromote:
			c.promote(ctx, r, step.server, byName[step.name], prevIndex)
		}
		return false
	}

	// Replace a voter whose node lost its data (identity.go).
	var voters []raft.Server
	for _, s := range conf.Servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s)
		}
	}
	if c.replaceLostVoter(ctx, r, voters, byName, prevIndex) {
		return false
	}

	step := planVoterStep(v)
	switch step.kind {
	case stepAdd:
		c.addNonvoter(ctx, r, byName[step.name], prevIndex)
	case stepHandOff:
		// The new leader finishes the removal.
		if err := r.Raft().LeadershipTransfer().Error(); err != nil {
			c.logger.Warn("leadership transfer", "shard", shard, "err", err)
		}
	case stepRemoveVoter:
		c.removeServer(ctx, r, step.server, prevIndex, "voter no longer desired")
	}
	return step.kind == stepMatched
}

// promote makes non-voter s of r's group a voter once it has caught up
// (applied index within CatchUpLag of the leader's).
func (c *Cluster) promote(ctx context.Context, r *node.Replica, s raft.Server, m Member, prevIndex uint64) {
	shard := r.Shard()
	st, err := c.peers.replicaStatus(ctx, m.Meta.HTTPAddr, shard)
	if err != nil || !st.GetExists() {
		return // not reachable yet, or still opening: next round
	}
	applied, _, _ := r.Status()
	if applied > st.GetAppliedIndex()+c.cfg.CatchUpLag {
		return // still catching up
	}
	if err := r.Raft().AddVoter(s.ID, s.Address, prevIndex, c.cfg.RPCTimeout).Error(); err != nil {
		c.logger.Warn("promote replica", "shard", shard, "node", m.Name, "err", err)
		return
	}
	c.moves.release(shard) // caught up: a move less in flight
	c.metrics.promotions.Inc()
	c.logger.Info("replica promoted to voter", "shard", shard, "node", m.Name)
}

// addNonvoter opens an empty replica of r's shard on m and adds it to the
// group as a non-voter.
func (c *Cluster) addNonvoter(ctx context.Context, r *node.Replica, m Member, prevIndex uint64) {
	shard := r.Shard()
	// The move slot is taken once the replica is open: a new member that
	// does not answer holds no slot while its OpenReplica waits for the
	// deadline, so moves to other members go on.
	if err := c.peers.openReplica(ctx, m.Meta.HTTPAddr, shard, c.cfg.Shards); err != nil {
		c.logger.Warn("open replica on new member", "shard", shard, "node", m.Name, "err", err)
		return
	}
	if !c.moves.take(shard, c.leads) {
		// The open replica waits for the next round (OpenReplica is
		// idempotent); if no round adds it, it is dropped as an orphan.
		c.metrics.movesDeferred.Inc()
		return // enough replicas catching up from this node
	}
	id, addr := raftServer(m)
	if err := r.Raft().AddNonvoter(id, addr, prevIndex, c.cfg.RPCTimeout).Error(); err != nil {
		c.moves.release(shard)
		c.logger.Warn("add non-voter", "shard", shard, "node", m.Name, "err", err)
		return
	}
	c.metrics.additions.Inc()
	c.logger.Info("replica added as non-voter", "shard", shard, "node", m.Name)
}

// removeServer removes s from r's group and, if it is reachable, tells it
// to delete its copy.
func (c *Cluster) removeServer(ctx context.Context, r *node.Replica, s raft.Server, prevIndex uint64, why string) {
	shard := r.Shard()
	f := r.Raft().RemoveServer(s.ID, prevIndex, c.cfg.RPCTimeout)
	if err := f.Error(); err != nil {
		c.logger.Warn("remove replica", "shard", shard, "node", s.ID, "err", err)
		return
	}
	removedAt := f.Index()
	c.metrics.removals.Inc()
	c.logger.Info("replica removed", "shard", shard, "node", s.ID, "why", why)
	m, ok := c.member(string(s.ID))
	if !ok || m.State != MemberAlive {
		return
	}
	// The removed node learns of its removal only through this call (the
	// leader stopped replicating to it when it appended the change).
	for attempt := range 5 {
		err := c.peers.dropReplica(ctx, m.Meta.HTTPAddr, shard, removedAt)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	c.logger.Warn("removed replica not dropped; its node keeps a stale copy", "shard", shard, "node", s.ID)
}

// bootstrap creates every shard's group once BootstrapExpect members are
// live: each node computes the same placement from the same member set and
// bootstraps the groups it belongs to with that set as voters. It reports
// whether bootstrapping is done.
//
// A node never bootstraps a cluster that exists: if a live member says the
// cluster is formed (Meta.Formed: it held replicas before its current run,
// or has for longer than the formation window), this node lost its data (a
// wiped or replaced disk, started again with -bootstrap-expect still set)
// or is new. Bootstrapping would make it a voter that forgot its votes and
// log, the way Raft loses acknowledged writes; it joins instead, and the
// leaders replace it in their groups as a new replica (replaceLostVoter).
// Declining is always safe; a founder that declines by mistake is replaced
// the same way.
func (c *Cluster) bootstrap() (bool, error) {
	live, byName := c.placementMembers()
	for _, name := range live {
		if m := byName[name]; name != c.cfg.Name && m.Meta.Formed {
			c.metrics.bootstrapDeclined.Inc()
			c.logger.Warn("the cluster is already formed: joining it instead of bootstrapping (this node's data directory holds no replica)",
				"member", name, "bootstrap_expect", c.cfg.BootstrapExpect)
			return true, nil
		}
	}
	if len(live) < c.cfg.BootstrapExpect {
		return false, nil
	}
	if len(live) > c.cfg.BootstrapExpect {
		return false, fmt.Errorf("cluster: %d members live, -bootstrap-expect is %d: start exactly that many, or join the others later",
			len(live), c.cfg.BootstrapExpect)
	}
	founders := make([]Member, 0, len(live))
	for _, name := range live {
		founders = append(founders, byName[name])
	}
	clusterID, ok := bootstrapClusterID(founders)
	if !ok {
		return false, nil // a founder's node id has not reached this node yet
	}
	if clusterID != 0 {
		c.adoptClusterID(clusterID, "created at bootstrap")
	}
	mine := map[uint32][]raft.Server{}
	var shards []uint32
	for shard := range c.cfg.Shards {
		want := Placement(shard, live, c.cfg.Replicas)
		if !slices.Contains(want, c.cfg.Name) {
			continue
		}
		var servers []raft.Server
		for _, name := range want {
			id, addr := raftServer(byName[name])
			servers = append(servers, raft.Server{ID: id, Address: addr})
		}
		mine[shard] = servers
		shards = append(shards, shard)
	}
	err := node.EachShard(shards, func(shard uint32) error {
		r, err := c.node.OpenReplica(shard)
		if err != nil {
			return err
		}
		if err := r.Bootstrap(mine[shard]); err != nil {
			return fmt.Errorf("cluster: bootstrap shard %d: %w", shard, err)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	c.logger.Info("cluster bootstrapped", "members", live, "shards", c.cfg.Shards, "replicas", c.cfg.Replicas,
		"cluster_id", FormatID(clusterID))
	return true, nil
}
