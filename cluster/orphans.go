package cluster

import (
	"context"
	"slices"
	"time"

	"github.com/elixirscope/scope/node"
)

// Orphaned replicas. A replica becomes an orphan when its group stops
// naming this node without telling it: it was removed while this node was
// dead or cut off (the leader tells a removed node only if it is alive),
// or a leader opened it and then failed to add it (AddNonvoter refused, or
// the leader was deposed in between). Nobody replicates to an orphan, so
// it only goes stale, yet ANY reads here would prefer it and Leave would
// wait for it forever. Each round, this node drops a replica only when all
// of these hold:
//
//  1. it does not lead its group and is not retired (a retired replica
//     stays until its node restarts: its log replays);
//  2. no OpenReplica returned it for OrphanGrace, and it has not heard
//     from a leader for OrphanGrace: every member of a group hears its
//     leader's heartbeats, and a leader adding this node calls
//     OpenReplica then, within two RPC timeouts, appends AddNonvoter;
//  3. the shard's leader (asked over NodeService.ReplicaStatus, and
//     answering as leader) does not name this node in its latest
//     configuration, committed or not;
//  4. that leader's commit index covers this replica's whole log, so the
//     leader's configuration supersedes every configuration this replica
//     ever held (a configuration change is effective once appended, and
//     the leader's log holds every committed entry);
//  5. no OpenReplica returned it between the check of 2 and the drop
//     (Node.DropReplicaUnopened: checked and dropped under the shard's
//     lifecycle lock).
//
// When in doubt (no leader known, the leader unreachable, a failed
// replica) it keeps the replica and asks again next round.

// dropIfOrphan drops r if it is an orphan; it reports only a failed drop.
func (c *Cluster) dropIfOrphan(ctx context.Context, r *node.Replica) error {
	if r.IsLeader() || r.Retired() {
		return nil
	}
	seq, opened := r.LastOpen()
	now := time.Now()
	if now.Sub(opened) < c.cfg.OrphanGrace {
		return nil
	}
	if contact := r.Raft().LastContact(); !contact.IsZero() && now.Sub(contact) < c.cfg.OrphanGrace {
		return nil
	}
	shard := r.Shard()
	leader, addr, err := c.leaderOf(shard)
	if err != nil || leader == c.cfg.Name {
		return nil
	}
	st, err := c.peers.replicaStatus(ctx, addr, shard)
	switch {
	case err != nil || !st.GetExists() || !st.GetLeader() || st.GetFailed():
		return nil
	case slices.Contains(st.GetMembers(), c.cfg.Name):
		return nil
	case st.GetCommitIndex() < r.LastIndex():
		return nil
	}
	dropped, err := c.node.DropReplicaUnopened(shard, r, seq)
	if dropped {
		c.metrics.orphansDropped.Inc()
		c.logger.Info("dropped orphaned replica: its group's leader no longer names this node",
			"shard", shard, "leader", leader, "leader_commit", st.GetCommitIndex())
	}
	return err
}
