package cluster

import (
	"context"
	"fmt"
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
	leader, commit, why := c.leaderDisowns(ctx, r, 0)
	if why != "" {
		return nil
	}
	shard := r.Shard()
	dropped, err := c.node.DropReplicaUnopened(shard, r, seq)
	if dropped {
		c.metrics.orphansDropped.Inc()
		c.logger.Info("dropped orphaned replica: its group's leader no longer names this node",
			"shard", shard, "leader", leader, "leader_commit", commit)
	}
	return err
}

// leaderDisowns asks the leader of r's shard (another node, answering as
// leader, its replica healthy) whether its latest configuration, committed
// or not, still names this node. It disowns r only if it does not, and its
// commit index covers both r's whole log (so its configuration supersedes
// every one r ever held) and removedAt (the removal a caller claims is
// committed). why says what is missing ("" when disowned).
func (c *Cluster) leaderDisowns(ctx context.Context, r *node.Replica, removedAt uint64) (leader string, commit uint64, why string) {
	shard := r.Shard()
	leader, addr, err := c.leaderOf(shard)
	switch {
	case err != nil:
		return "", 0, "no leader known: " + err.Error()
	case leader == c.cfg.Name:
		return leader, 0, "this node is the leader"
	}
	st, err := c.peers.replicaStatus(ctx, addr, shard)
	switch {
	case err != nil:
		return leader, 0, "the leader " + leader + " did not answer: " + err.Error()
	case !st.GetExists() || !st.GetLeader() || st.GetFailed():
		return leader, 0, "the node " + leader + " does not answer as the shard's healthy leader"
	case slices.Contains(st.GetMembers(), c.cfg.Name):
		return leader, 0, "the leader " + leader + " still names this node in the shard's group"
	case st.GetCommitIndex() < r.LastIndex():
		return leader, 0, fmt.Sprintf("the leader %s's commit index %d is below this replica's last index %d",
			leader, st.GetCommitIndex(), r.LastIndex())
	case st.GetCommitIndex() < removedAt:
		return leader, 0, fmt.Sprintf("the leader %s's commit index %d is below the claimed removal index %d",
			leader, st.GetCommitIndex(), removedAt)
	}
	return leader, st.GetCommitIndex(), ""
}
