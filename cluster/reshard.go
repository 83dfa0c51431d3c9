package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
)

// Online resharding across the cluster (docs/DECISIONS.md D39). Any node
// coordinates a reshard. For each doubling: every shard's leader creates
// its child's group (node.PrepareSplit: through the shard's log, with the
// shard's voters) and waits for its leader; only then does every leader
// split its shard (node.Split), so that once nodes route by the new layout
// every child is there, and the time children await their handoff is one
// commit and a delivery, not an election; then the coordinator waits until
// every child adopted its handoff. Nodes route by the newest
// layout any member advertises (learnLayout); reconciliation then places
// each child's replicas like any shard's. Every step is idempotent, so a
// reshard interrupted by a failure resumes when it is asked again.

// maxConcurrentSplits bounds the splits one doubling runs at once.
const maxConcurrentSplits = 8

// Reshard grows the cluster to shards shards. It returns the count before
// the call and how many shards this call split.
func (c *Cluster) Reshard(ctx context.Context, shards uint32) (from uint32, splits int, err error) {
	c.reshardMu.Lock()
	defer c.reshardMu.Unlock()
	from = c.node.Shards()
	if err := node.ValidReshard(c.cfg.Shards, from, shards); err != nil {
		return from, 0, err
	}
	if err := c.canReshard(); err != nil {
		return from, 0, err
	}
	for cur := c.cfg.Shards; cur < shards; cur *= 2 {
		if _, err := c.splitAll(ctx, cur, 2*cur, true); err != nil {
			return from, splits, err
		}
		n, err := c.splitAll(ctx, cur, 2*cur, false)
		splits += n
		if err != nil {
			return from, splits, err
		}
		if err := c.awaitHandoffs(ctx, cur, 2*cur); err != nil {
			return from, splits, err
		}
		// Route by the new layout at once (gossip would tell it shortly).
		c.node.LearnLayout(correlate.Layout{Base: c.cfg.Shards, Shards: 2 * cur})
		c.logger.Info("reshard: doubling done", "shards", 2*cur)
	}
	return from, splits, nil
}

// canReshard refuses a reshard while a live member does not read the
// resharding entries: it would stop at the first one (D34).
func (c *Cluster) canReshard() error {
	if proto, _ := c.Protocol(); proto < ReshardProtocol {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"%w: the cluster speaks protocol %d; resharding needs %d: upgrade every node first", ErrProtocol, proto, ReshardProtocol))
	}
	for _, m := range c.sameCluster(c.members.Members()) {
		if m.State == MemberAlive && m.MetaErr == nil && !m.Meta.Leaving && !m.Meta.Protocol.Contains(ReshardProtocol) {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
				"%w: member %s reads protocol %s, resharding needs %d: upgrade it first", ErrProtocol, m.Name, m.Meta.Protocol, ReshardProtocol))
		}
	}
	return nil
}

// splitAll splits every shard below cur into the layout of to shards (or,
// with prepare, only creates their children's groups), on each shard's
// leader, up to maxConcurrentSplits at once, and returns how many it split
// (the others were split already).
func (c *Cluster) splitAll(ctx context.Context, cur, to uint32, prepare bool) (int, error) {
	var (
		mu     sync.Mutex
		splits int
		errs   []error
		wg     sync.WaitGroup
	)
	slots := make(chan struct{}, maxConcurrentSplits)
	for parent := range cur {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			split, err := c.splitOne(ctx, parent, to, prepare)
			mu.Lock()
			defer mu.Unlock()
			if split {
				splits++
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("shard %d: %w", parent, err))
			}
		}()
	}
	wg.Wait()
	return splits, errors.Join(errs...)
}

// splitOne splits shard on its leader, here or on another node, looking
// for the leader again while leadership moves.
func (c *Cluster) splitOne(ctx context.Context, shard, to uint32, prepare bool) (bool, error) {
	backoff := 10 * time.Millisecond
	for {
		split, err := c.splitOnLeader(ctx, shard, to, prepare)
		if err == nil || errors.Is(err, node.ErrConfig) || ctx.Err() != nil {
			return split, err
		}
		// Anything but a refusal of the request itself is worth another
		// try: leadership moves, a replica moved away is shut down, a peer
		// restarts. The deadline bounds it.
		var ce *connect.Error
		if errors.As(err, &ce) && (ce.Code() == connect.CodeInvalidArgument || ce.Code() == connect.CodeFailedPrecondition) {
			return false, err
		}
		c.logger.Debug("reshard: split not done yet", "shard", shard, "err", err)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (c *Cluster) splitOnLeader(ctx context.Context, shard, to uint32, prepare bool) (bool, error) {
	if r := c.node.Replica(shard); r != nil && r.IsLeader() {
		if prepare {
			return false, c.node.PrepareSplit(ctx, shard, to)
		}
		return c.node.Split(ctx, shard, to)
	}
	name, addr, err := c.leaderOf(shard)
	if err != nil {
		return false, connect.NewError(connect.CodeUnavailable, err)
	}
	if name == c.cfg.Name {
		return false, connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w: shard %d: leadership moving", ErrNoLeader, shard))
	}
	var split bool
	err = c.peers.call(ctx, addr, func(ctx context.Context, p *peer) error {
		resp, err := p.node.Split(ctx, connect.NewRequest(&nodev1.SplitRequest{Shard: shard, Shards: to, PrepareOnly: prepare}))
		if err == nil {
			split = resp.Msg.GetSplit()
		}
		return err
	})
	return split, err
}

// awaitHandoffs waits until every shard in [lo, hi) has adopted its
// handoff, as its leader reports it.
func (c *Cluster) awaitHandoffs(ctx context.Context, lo, hi uint32) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for child := lo; child < hi; child++ {
		for {
			done, err := c.adopted(ctx, child)
			if done {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("shard %d has not adopted its handoff (last: %v): %w", child, err, ctx.Err())
			case <-tick.C:
			}
		}
	}
	return nil
}

// adopted reports whether child's leader says it holds its whole handoff.
func (c *Cluster) adopted(ctx context.Context, child uint32) (bool, error) {
	if r := c.node.Replica(child); r != nil && r.IsLeader() {
		return !r.Awaiting(), nil
	}
	name, addr, err := c.leaderOf(child)
	if err != nil || name == c.cfg.Name {
		return false, err
	}
	var done bool
	err = c.peers.call(ctx, addr, func(ctx context.Context, p *peer) error {
		resp, err := p.node.ReplicaStatus(ctx, connect.NewRequest(&nodev1.ReplicaStatusRequest{Shard: child}))
		if err == nil {
			done = resp.Msg.GetExists() && resp.Msg.GetLeader() && !resp.Msg.GetAwaitingHandoff()
		}
		return err
	})
	return done, err
}
