package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Fault kinds, as named in Config.Faults and the report.
const (
	FaultKill            = "kill"             // SIGKILL a node; restart it after the hold
	FaultPause           = "pause"            // SIGSTOP a node for the hold (longer than an election timeout), then SIGCONT
	FaultPartitionOne    = "partition-one"    // cut one node off from the others
	FaultPartitionLeader = "partition-leader" // cut off the node leading a random shard
	FaultPartitionHalves = "partition-halves" // split the nodes into a majority and a minority
	FaultBridge          = "bridge"           // two sides that see a bridge node but not each other
	FaultWipe            = "wipe"             // SIGKILL a node, delete its data directory, restart it with its old flags
	FaultLeave           = "leave"            // drain a node with Leave; it stops; it comes back wiped under its name
	FaultTransferStorm   = "transfer-storm"   // for the hold, hand a random shard's leadership to another voter every 100-400 ms
)

// AllFaults lists every fault kind; the partitions need the netns network.
var AllFaults = []string{FaultKill, FaultPause, FaultPartitionOne, FaultPartitionLeader,
	FaultPartitionHalves, FaultBridge, FaultWipe, FaultLeave, FaultTransferStorm}

func isPartition(kind string) bool {
	switch kind {
	case FaultPartitionOne, FaultPartitionLeader, FaultPartitionHalves, FaultBridge:
		return true
	}
	return false
}

// nemesis injects one fault at a time on a seeded schedule: a quiet gap,
// a fault held for a while, its repair, then a wait until the cluster is
// whole again (every shard led, R voters, replicas caught up) before the
// next. One fault at a time keeps every group able to reach a quorum with
// R = 3, so the campaign measures safety, not a cluster that is simply
// down; a wipe is repaired only when the wiped node has been replaced in
// every group, since a second disk lost before that could lose a quorum's
// copies.
type nemesis struct {
	c      *campaign
	rnd    *rand.Rand
	faults []string
}

func (n *nemesis) run(ctx context.Context, until time.Time) {
	whole := true
	for time.Now().Before(until) && ctx.Err() == nil {
		if !sleepCtx(ctx, n.between(2*time.Second, 4*time.Second)) {
			return
		}
		kind := n.pick(whole)
		hold := n.between(3*time.Second, 8*time.Second)
		start := time.Now()
		desc, err := n.inject(ctx, kind, hold)
		if err != nil {
			n.c.logf("nemesis: %s: %v", kind, err)
			n.c.report.FaultErrors++
			if herr := n.c.healAll(ctx); herr != nil {
				n.c.logf("nemesis: heal: %v", herr)
			}
			continue
		}
		n.c.report.Faults[kind]++
		n.c.logf("nemesis: %s (held %.1fs)", desc, time.Since(start).Seconds())
		err = n.c.waitWhole(ctx, 90*time.Second)
		whole = err == nil
		if err != nil {
			n.c.report.Unrecovered = append(n.c.report.Unrecovered, fmt.Sprintf("after %s: %v", desc, err))
			n.c.logf("nemesis: not whole after %s: %v", desc, err)
		}
	}
}

// pick chooses the next fault. While the cluster is not whole (a group is
// short of a replica), faults that destroy a copy (wipe, leave) are left
// out: a second lost copy in a group of three loses data in any Raft
// system, which would say nothing about Scope.
func (n *nemesis) pick(whole bool) string {
	choices := n.faults
	if !whole {
		choices = slices.DeleteFunc(slices.Clone(n.faults), func(f string) bool { return f == FaultWipe || f == FaultLeave })
		if len(choices) == 0 {
			choices = []string{FaultPause}
		}
	}
	return choices[n.rnd.IntN(len(choices))]
}

func (n *nemesis) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(n.rnd.Int64N(int64(hi-lo)))
}

// inject applies one fault, holds it, and repairs it.
func (n *nemesis) inject(ctx context.Context, kind string, hold time.Duration) (string, error) {
	c := n.c
	all := make([]int, len(c.agents))
	for i := range all {
		all[i] = i
	}
	target := n.rnd.IntN(len(c.agents))
	a := c.agents[target]
	switch kind {
	case FaultKill:
		if err := a.kill(); err != nil {
			return "", err
		}
		sleepCtx(ctx, hold)
		return "kill " + a.name, c.restart(ctx, a)
	case FaultPause:
		if err := a.signal(syscall.SIGSTOP); err != nil {
			return "", err
		}
		sleepCtx(ctx, hold)
		return "pause " + a.name, a.signal(syscall.SIGCONT)
	case FaultPartitionOne, FaultPartitionLeader:
		desc := "isolate " + a.name
		if kind == FaultPartitionLeader {
			shard, leader, err := c.randomLeader(ctx, n.rnd)
			if err != nil {
				return "", err
			}
			target, a = leader, c.agents[leader]
			desc = fmt.Sprintf("isolate %s (leader of shard %d)", a.name, shard)
		}
		rest := slices.DeleteFunc(slices.Clone(all), func(i int) bool { return i == target })
		return desc, n.partitionFor(ctx, [][]int{{target}, rest}, hold)
	case FaultPartitionHalves:
		n.rnd.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		minority := (len(all) - 1) / 2
		if minority == 0 {
			minority = 1
		}
		groups := [][]int{all[:minority], all[minority:]}
		return fmt.Sprintf("partition %s | %s", c.names(groups[0]), c.names(groups[1])), n.partitionFor(ctx, groups, hold)
	case FaultBridge:
		// The bridge sees everyone; the others split into two sides that
		// do not see each other.
		n.rnd.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		bridge, rest := all[0], all[1:]
		half := len(rest) / 2
		groups := [][]int{rest[:half], rest[half:]}
		return fmt.Sprintf("bridge %s between %s | %s", c.agents[bridge].name, c.names(groups[0]), c.names(groups[1])),
			n.partitionFor(ctx, groups, hold)
	case FaultWipe:
		if err := a.kill(); err != nil {
			return "", err
		}
		if err := a.wipe(); err != nil {
			return "", err
		}
		return "wipe " + a.name, c.restart(ctx, a)
	case FaultLeave:
		// Leave is sent to the node that leaves: it drains (its replicas
		// move away), leaves the gossip and stops its agent.
		lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if _, err := c.endpoints[a.index].cluster.Leave(lctx, connect.NewRequest(&scopev1.LeaveRequest{Name: a.name})); err != nil {
			return "", fmt.Errorf("leave %s: %w", a.name, err)
		}
		if err := a.waitExit(lctx); err != nil {
			c.logf("nemesis: %s did not stop after leaving (%v); killing it", a.name, err)
			_ = a.kill()
		}
		if err := a.wipe(); err != nil {
			return "", err
		}
		return "leave " + a.name + ", then rejoin empty", c.restart(ctx, a)
	case FaultTransferStorm:
		moved, err := n.transferStorm(ctx, hold)
		return fmt.Sprintf("transfer storm (%d leaderships moved)", moved), err
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// transferStorm hands a random shard's leadership to another voter every
// 100-400 ms for hold, through a random node (which forwards to the
// leader). A transfer refused because leadership moved meanwhile is part
// of the storm; it fails only if none succeeded.
func (n *nemesis) transferStorm(ctx context.Context, hold time.Duration) (int, error) {
	c := n.c
	until := time.Now().Add(hold)
	moved, tried := 0, 0
	var lastErr error
	for time.Now().Before(until) && ctx.Err() == nil {
		ep := c.endpoints[n.rnd.IntN(len(c.endpoints))]
		shard := uint32(n.rnd.IntN(c.cfg.Shards))
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := ep.cluster.TransferLeadership(tctx, connect.NewRequest(&scopev1.TransferLeadershipRequest{Shard: shard}))
		cancel()
		tried++
		if err == nil {
			moved++
		} else {
			lastErr = err
		}
		sleepCtx(ctx, n.between(100*time.Millisecond, 400*time.Millisecond))
	}
	if moved == 0 && tried > 0 {
		return 0, fmt.Errorf("no transfer succeeded of %d: %w", tried, lastErr)
	}
	return moved, nil
}

// partitionFor cuts the groups apart for hold, then heals.
func (n *nemesis) partitionFor(ctx context.Context, groups [][]int, hold time.Duration) error {
	if err := n.c.net.partition(groups); err != nil {
		return err
	}
	sleepCtx(ctx, hold)
	return n.c.net.heal()
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
