package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
)

// Online resharding on the node (docs/DECISIONS.md D39). The correlator
// splits a shard at one entry of its log (correlate/split.go); the node:
//   - creates the child's group through the parent's log, with the parent's
//     voters (PrepareSplit, prepared), then proposes the split on the
//     shard's leader (Split);
//   - delivers the handoff chunks the split left in the parent's state to
//     the child's leader, in order, and confirms each to the parent once the
//     child committed it (the handoff loop below; Adopt on the child's side);
//   - holds ingest for a child that has not adopted its whole handoff (it
//     waits within the request's deadline) and refuses notices to it
//     (ErrAwaitingHandoff: nothing is stored, a retry succeeds);
//   - sends the events a split shard gave away to their owner (Reroute,
//     called by the writer pool for RerouteReporter proposals);
//   - routes ingest by the newest layout it knows (Layout), which only grows:
//     learned from its own replicas' applies and from the cluster.

// RemoteAdopter is implemented by a RemoteDelivery that can also hand a
// split child its handoff chunks on another node.
type RemoteAdopter interface {
	// Adopt proposes chunk a to shard child on the node named to (what
	// Route returned), which refuses it unless it leads child, and waits
	// for the commit there.
	Adopt(ctx context.Context, to string, child uint32, a correlate.Adoption) error
}

// handoffRetry is how often the handoff loop looks again at handoffs not
// delivered (a child without a leader yet, an unreachable node).
const handoffRetry = 200 * time.Millisecond

// Split splits shard, which this node must lead, into the layout of to
// shards (its current count doubled), and waits for the commit: first
// PrepareSplit, then the split itself, at the next entry of the log. It is
// idempotent: a shard already split to to shards or more returns false and
// nil; split says this call split the shard.
func (n *Node) Split(ctx context.Context, shard, to uint32) (split bool, err error) {
	r, done, err := n.splitting(shard, to)
	if err != nil || done {
		return false, err
	}
	if err := n.PrepareSplit(ctx, shard, to); err != nil {
		return false, err
	}
	err = raftFuture{shard: shard, f: r.Propose(&correlate.Batch{Split: to}, n.timeout(ctx))}.Wait()
	if err != nil && r.Reshard().Layout.Shards >= to {
		return false, nil // split by an earlier request meanwhile
	}
	return err == nil, err
}

// PrepareSplit creates the group of the child shard's split to to shards
// will fill, and waits until it has a leader, unless it exists already:
// an entry in the parent's log names its voters (the parent's), and each
// of them creates it, empty and awaiting its handoff (only the first such
// entry counts: see prepared). Until the split nothing routes to it, so a
// reshard prepares every child before it splits any shard: once nodes
// route by the new layout, every child is there to take its events.
func (n *Node) PrepareSplit(ctx context.Context, shard, to uint32) error {
	r, done, err := n.splitting(shard, to)
	if err != nil || done {
		return err
	}
	st := r.Reshard()
	child := shard + st.Layout.Shards
	if c := n.Replica(child); st.Prepared >= to || c != nil && childLed(c) {
		return nil // prepared by an earlier entry, whose voters created the child
	}
	voters, err := r.Voters()
	if err != nil {
		return fmt.Errorf("node: shard %d: configuration: %w", shard, err)
	}
	list, err := json.Marshal(voters)
	if err != nil {
		return err
	}
	f := raftFuture{shard: shard, f: r.Propose(&correlate.Batch{Prepare: &correlate.Preparation{Shards: to, Voters: list}}, n.timeout(ctx))}
	if err := f.Wait(); err != nil {
		return fmt.Errorf("node: shard %d: preparing child %d: %w", shard, child, err)
	}
	if ar, _ := f.f.Response().(ApplyResult); !ar.Prepared {
		return nil // an earlier preparation's voters created the child
	}
	// This entry created the child's group, here among others: wait until
	// it is led, so that ingest and the handoff find it at once.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for c := n.Replica(child); c == nil || !childLed(c); c = n.Replica(child) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: shard %d: child %d has no leader yet: %w", ErrTimeout, shard, child, ctx.Err())
		case <-n.stop:
			return ErrClosed
		case <-tick.C:
		}
	}
	return nil
}

// splitting checks a split of shard to to shards on this node: the replica
// (which must lead), or done when the shard was split that far already.
func (n *Node) splitting(shard, to uint32) (r *Replica, done bool, err error) {
	r = n.Replica(shard)
	if r == nil {
		return nil, false, fmt.Errorf("%w: shard %d", ErrNoShard, shard)
	}
	st := r.Reshard()
	switch {
	case st.Layout.Shards >= to:
		return r, true, nil
	case !r.IsLeader():
		addr, id := r.Leader()
		return nil, false, &NotLeaderError{Shard: shard, LeaderID: string(id), LeaderAddr: string(addr)}
	case to != 2*st.Layout.Shards:
		return nil, false, fmt.Errorf("%w: split of shard %d to %d shards: it has %d, a split doubles them", ErrConfig, shard, to, st.Layout.Shards)
	case to > n.maxShards:
		return nil, false, fmt.Errorf("%w: split of shard %d to %d shards: this node takes at most %d", ErrConfig, shard, to, n.maxShards)
	case st.Awaiting:
		return nil, false, fmt.Errorf("%w: shard %d", ErrAwaitingHandoff, shard)
	}
	return r, false, nil
}

// timeout is the commit timeout, or less if ctx ends sooner.
func (n *Node) timeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return min(n.cfg.CommitTimeout, time.Until(d))
	}
	return n.cfg.CommitTimeout
}

// Adopt proposes handoff chunk a to child, a split shard this node must
// lead, and waits for the commit. A chunk the child adopted already
// returns nil, so a parent that lost the confirmation can deliver again.
func (n *Node) Adopt(ctx context.Context, child uint32, a correlate.Adoption) error {
	r := n.Replica(child)
	if r == nil {
		return fmt.Errorf("%w: shard %d", ErrNoShard, child)
	}
	adopted := func() bool {
		st := r.Reshard()
		return !st.Awaiting || st.Adopted > a.Chunk
	}
	if adopted() {
		return nil
	}
	if !r.IsLeader() {
		addr, id := r.Leader()
		return &NotLeaderError{Shard: child, LeaderID: string(id), LeaderAddr: string(addr)}
	}
	err := raftFuture{shard: child, f: r.Propose(&correlate.Batch{Adopt: &a}, n.timeout(ctx))}.Wait()
	if err != nil && adopted() {
		return nil
	}
	return err
}

// childLed says a child's group has a leader (so the split can proceed:
// ingest and the handoff find it at once).
func childLed(c *Replica) bool {
	_, id := c.Leader()
	return id != ""
}

// prepared is every replica's OnPrepared: the first preparation of a split
// in the shard's log names the voters that create the child's group; this
// node creates it (in the background: the FSM goroutine must not wait) if
// it is one of them, with exactly that list. Every voter that applies the
// entry does the same from the same list, and a later preparation of the
// same split creates nothing (correlate), so the child's group starts from
// one configuration whichever leader asked. A voter that never applies the
// entry (it caught up from a snapshot past it) lacks the child's replica;
// the group works with the others, and the child's leader replaces that
// voter with a new replica (cluster.replaceLostVoter).
func (n *Node) prepared(shard uint32, p correlate.Prepared) {
	var voters []raft.Server
	if err := json.Unmarshal(p.Voters, &voters); err != nil {
		n.logger.Error("ignoring a split preparation with unreadable voters", "shard", shard, "child", p.Child, "err", err)
		return
	}
	if p.Child >= n.maxShards || !slices.ContainsFunc(voters, func(s raft.Server) bool { return string(s.ID) == n.cfg.ID }) {
		return
	}
	n.mu.RLock()
	closed := n.closed
	if !closed {
		n.wg.Add(1)
	}
	n.mu.RUnlock()
	if closed {
		return
	}
	go func() {
		defer n.wg.Done()
		r, err := n.OpenReplica(p.Child)
		if err == nil {
			err = r.Bootstrap(voters)
		}
		if err != nil && !errors.Is(err, ErrClosed) {
			n.logger.Error("creating a split child's group", "shard", shard, "child", p.Child, "err", err)
			return
		}
		n.logger.Info("split child created", "shard", shard, "child", p.Child, "voters", len(voters))
	}()
}

// reshardChanged is every replica's OnReshard: the node routes by the
// newest layout it has seen applied, and the handoff loop learns of new
// chunks to deliver.
func (n *Node) reshardChanged(_ uint32, st correlate.ReshardState) {
	if !st.Awaiting {
		n.LearnLayout(st.Layout)
	}
	if st.Handoffs > 0 {
		select {
		case n.handoffSignal <- struct{}{}:
		default:
		}
	}
}

// deliverHandoffs runs the handoff loop until the node closes.
func (n *Node) deliverHandoffs() {
	defer n.wg.Done()
	retry := time.NewTicker(handoffRetry)
	defer retry.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-n.handoffSignal:
		case <-retry.C:
		}
		for _, r := range n.Replicas() {
			if r.Reshard().Handoffs == 0 || !r.IsLeader() {
				continue
			}
			if err := n.handOff(r); err != nil && n.ctx.Err() == nil {
				n.logger.Debug("handoff not delivered yet", "shard", r.Shard(), "err", err)
			}
		}
	}
}

// handOff delivers r's handoff chunks in order, each confirmed to r once
// the child committed it, until none is left or one fails.
func (n *Node) handOff(r *Replica) error {
	for _, h := range r.Handoffs() {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.CommitTimeout)
		err := n.adoptVia(ctx, h)
		cancel()
		if err != nil {
			return fmt.Errorf("handoff chunk %d of %d to shard %d: %w", h.Chunk, h.Of, h.Child, err)
		}
		err = raftFuture{shard: r.Shard(), f: r.Propose(&correlate.Batch{HandedOff: []uint64{h.Seq}}, n.cfg.CommitTimeout)}.Wait()
		if err != nil {
			return fmt.Errorf("confirming handoff chunk %d of %d: %w", h.Chunk, h.Of, err)
		}
		n.metrics.handoffChunks.Inc()
	}
	return nil
}

// adoptVia hands chunk h to its child's leader, here or on another node.
func (n *Node) adoptVia(ctx context.Context, h correlate.Handoff) error {
	parent, _ := correlate.Layout{Base: n.cfg.Shards}.Parent(h.Child)
	a := correlate.Adoption{From: parent, Chunk: h.Chunk, Of: h.Of, Records: h.Records}
	if r := n.Replica(h.Child); r != nil && r.IsLeader() {
		return n.Adopt(ctx, h.Child, a)
	}
	n.mu.RLock()
	remote := n.cfg.DeliverRemote
	n.mu.RUnlock()
	ra, ok := remote.(RemoteAdopter)
	if !ok {
		if r := n.Replica(h.Child); r != nil {
			return n.Adopt(ctx, h.Child, a) // not the leader: says who is
		}
		return fmt.Errorf("%w: shard %d", ErrNoShard, h.Child)
	}
	to := remote.Route(h.Child)
	if to == "" {
		return fmt.Errorf("%w: shard %d: no leader known", ErrNotLeader, h.Child)
	}
	return ra.Adopt(ctx, to, h.Child, a)
}

// Reroute implements Redirector: it sends events a shard gave away to the
// shards that own them in the node's layout, a part per shard, in order,
// each as Redirect does (retrying while the owner awaits its handoff or
// its leadership moves).
func (n *Node) Reroute(ctx context.Context, events []correlate.Event, commit bool) (dups int, err error) {
	layout := n.Layout()
	byShard := map[uint32][]correlate.Event{}
	var shards []uint32
	for _, e := range events {
		s := layout.ShardOf(e.Origin, e.PID)
		if byShard[s] == nil {
			shards = append(shards, s)
		}
		e.Shard = s
		byShard[s] = append(byShard[s], e)
	}
	slices.Sort(shards)
	var errs []error
	for _, s := range shards {
		d, err := n.Redirect(ctx, s, byShard[s], commit)
		dups += d
		if err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case len(errs) == 0:
		return dups, nil
	case len(errs) == len(shards):
		return dups, errors.Join(errs...) // a refusal if every part was refused
	}
	// Some parts stored, some not: the events' outcome as a whole is not
	// one of nothing stored.
	return dups, fmt.Errorf("%w: rerouted in %d parts, %d failed: %w", ErrOutcomeUnknown, len(shards), len(errs), errors.Join(errs...))
}

// ValidReshard checks that shards is a layout count the cluster of base
// shards, now at from, can grow to: from doubled one or more times (or from
// itself: nothing to do), at most MaxShardsFor(base).
func ValidReshard(base, from, shards uint32) error {
	l := correlate.Layout{Base: base, Shards: shards}
	switch {
	case shards < from:
		return fmt.Errorf("%w: shards %d: the cluster has %d; shards can only grow (doubling)", ErrConfig, shards, from)
	case l.Validate() != nil:
		return fmt.Errorf("%w: shards %d: must be the count doubled (%d, %d, %d, ...)", ErrConfig, shards, 2*from, 4*from, 8*from)
	case shards > MaxShardsFor(base):
		return fmt.Errorf("%w: shards %d: a cluster of %d shards grows to at most %d", ErrConfig, shards, base, MaxShardsFor(base))
	}
	return nil
}

// Reshard grows a one-node cluster (`scope agent -dev`, every shard here)
// to shards shards: each doubling splits every shard and waits for every
// child's handoff. It is idempotent and resumes an interrupted reshard. It
// returns the count before and how many shards this call split.
func (n *Node) Reshard(ctx context.Context, shards uint32) (from uint32, splits int, err error) {
	from = n.Shards()
	if err := ValidReshard(n.cfg.Shards, from, shards); err != nil {
		return from, 0, err
	}
	for cur := n.cfg.Shards; cur < shards; cur *= 2 {
		for parent := range cur {
			if err := n.PrepareSplit(ctx, parent, 2*cur); err != nil {
				return from, splits, fmt.Errorf("node: preparing the split of shard %d to %d shards: %w", parent, 2*cur, err)
			}
		}
		for parent := range cur {
			split, err := n.Split(ctx, parent, 2*cur)
			if err != nil {
				return from, splits, fmt.Errorf("node: split of shard %d to %d shards: %w", parent, 2*cur, err)
			}
			if split {
				splits++
			}
		}
		for child := cur; child < 2*cur; child++ {
			r := n.Replica(child)
			if r == nil {
				return from, splits, fmt.Errorf("%w: shard %d", ErrNoShard, child)
			}
			if err := r.AwaitHandoff(ctx); err != nil {
				return from, splits, err
			}
		}
	}
	return from, splits, nil
}
