package node

import (
	"fmt"
	"sort"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// noticeRetry is how often undelivered outbox notices are retried when no
// new notice arrives to trigger a delivery round.
const noticeRetry = 500 * time.Millisecond

// deliverNotices moves send/spawn notices from the outboxes of the shards
// this node leads to their destination shards (docs/ARCHITECTURE.md, "Cross-shard links"): deliver a
// batch, wait until the destination committed it, then propose the batch's
// removal from the source outbox. A crash between the two redelivers the
// batch from the replicated outbox; the destination's dedup window drops
// the repeat, so a notice is never lost and never applied twice.
func (n *Node) deliverNotices() {
	defer n.wg.Done()
	retry := time.NewTicker(noticeRetry)
	defer retry.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-n.outboxSignal:
		case <-retry.C:
		}
		for _, r := range n.Replicas() {
			if !r.IsLeader() {
				continue
			}
			if out := r.Outbox(); len(out) > 0 {
				n.deliverFrom(r, out)
			}
		}
	}
}

// deliverFrom delivers up to NoticeBatch notices per destination shard from
// src's outbox and acknowledges those delivered.
func (n *Node) deliverFrom(src *Replica, outbox []correlate.Notice) {
	byDest := make(map[uint32][]correlate.Notice)
	for _, nt := range outbox {
		if len(byDest[nt.ToShard]) < n.cfg.NoticeBatch {
			byDest[nt.ToShard] = append(byDest[nt.ToShard], nt)
		}
	}
	dests := make([]uint32, 0, len(byDest))
	for d := range byDest {
		dests = append(dests, d)
	}
	sort.Slice(dests, func(i, j int) bool { return dests[i] < dests[j] })

	var acked []correlate.EventID
	for _, dest := range dests {
		list := byDest[dest]
		if err := n.deliver(dest, list); err != nil {
			n.metrics.noticeFailures.Inc()
			n.logger.Debug("notice delivery failed; will retry", "from", src.shard, "to", dest,
				"notices", len(list), "err", err)
			continue
		}
		n.metrics.noticesDelivered.Add(float64(len(list)))
		for _, nt := range list {
			acked = append(acked, nt.EventID)
		}
	}
	if len(acked) == 0 {
		return
	}
	if err := (raftFuture{f: src.Propose(&correlate.Batch{Acked: acked}, n.cfg.CommitTimeout)}).Wait(); err != nil {
		// The notices stay in the outbox and are delivered again; the
		// destination drops the repeats.
		n.logger.Debug("notice ack failed; will redeliver", "shard", src.shard, "err", err)
	}
}

// deliver proposes notices to the destination shard's group and waits for
// the commit. Only a local leader replica can take them here; the cluster
// layer routes to remote leaders through Config.DeliverRemote.
func (n *Node) deliver(dest uint32, notices []correlate.Notice) error {
	r := n.Replica(dest)
	if r == nil || !r.IsLeader() {
		n.mu.RLock()
		remote := n.cfg.DeliverRemote
		n.mu.RUnlock()
		if remote != nil {
			return remote(dest, notices)
		}
		if r == nil {
			return fmt.Errorf("%w: shard %d", ErrNoShard, dest)
		}
		addr, id := r.Leader()
		return &NotLeaderError{Shard: dest, LeaderID: string(id), LeaderAddr: string(addr)}
	}
	return n.ProposeNotices(dest, notices)
}

// ProposeNotices proposes notices delivered to shard (from any node) to the
// local replica, which must lead the shard, and waits for the commit.
func (n *Node) ProposeNotices(shard uint32, notices []correlate.Notice) error {
	r := n.Replica(shard)
	if r == nil {
		return fmt.Errorf("%w: shard %d", ErrNoShard, shard)
	}
	if !r.IsLeader() {
		addr, id := r.Leader()
		return &NotLeaderError{Shard: shard, LeaderID: string(id), LeaderAddr: string(addr)}
	}
	return raftFuture{f: r.Propose(&correlate.Batch{Notices: notices}, n.cfg.CommitTimeout)}.Wait()
}

// runRetention proposes the retention rule to every shard this node leads,
// every RetentionInterval. The rule travels through the log so every replica
// deletes the same events at the same point.
func (n *Node) runRetention() {
	defer n.wg.Done()
	if n.cfg.RetentionMaxAge <= 0 && n.cfg.RetentionMaxEvents == 0 || n.cfg.RetentionInterval <= 0 {
		<-n.stop
		return
	}
	t := time.NewTicker(n.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case now := <-t.C:
			rule := &correlate.Retention{MaxEvents: n.cfg.RetentionMaxEvents}
			if n.cfg.RetentionMaxAge > 0 {
				rule.BeforeNs = now.Add(-n.cfg.RetentionMaxAge).UnixNano()
			}
			for _, r := range n.Replicas() {
				if !r.IsLeader() {
					continue
				}
				if err := (raftFuture{f: r.Propose(&correlate.Batch{Retention: rule}, n.cfg.CommitTimeout)}).Wait(); err != nil {
					n.logger.Warn("retention proposal failed", "shard", r.shard, "err", err)
				}
			}
		}
	}
}
