package node

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// noticeRetry is how often undelivered outbox notices are retried when no
// new notice arrives to trigger a delivery round.
const noticeRetry = 500 * time.Millisecond

// maxNoticeRoutes bounds the delivery workers running at once: one per
// route (this node's own leaders, or one other node). Routes beyond it
// wait for a later round (counted in scope_notice_routes_deferred_total).
const maxNoticeRoutes = 64

// localRoute is the route of notices for shards led on this node.
const localRoute = "\x00local"

// deliverNotices moves send/spawn notices from the outboxes of the shards
// this node leads to their destination shards (docs/ARCHITECTURE.md, "Cross-shard links"): deliver a
// batch, wait until the destination committed it, then propose the batch's
// removal from the source outbox. A crash between the two redelivers the
// batch from the replicated outbox; the destination's dedup window drops
// the repeat, so a notice is never lost and never applied twice.
//
// Deliveries are grouped by route: the node that leads the destination
// shard (RemoteDelivery.Route), or this node. Each route has at most one
// worker, which delivers its batches one after another; routes run
// concurrently and this loop never waits for a worker. So a node that
// gossip calls alive but that does not answer holds up only the notices
// for the shards it leads, each call bounded by the remote delivery's
// deadline, while every other route keeps delivering (docs/DECISIONS.md
// D25). A worker calls only its route's node (deliverVia). A (source,
// destination) pair is in at most one worker per route; when the
// destination's leadership moves while a worker waits on the old leader,
// the new leader's route delivers the pair meanwhile, and a notice that
// both deliver is dropped by the destination's dedup window, as after a
// crash between delivery and acknowledgement.
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
		n.noticeRound()
	}
}

// noticeJob is one batch of notices from one source shard to one
// destination shard.
type noticeJob struct {
	src     *Replica
	dest    uint32
	notices []correlate.Notice
}

// noticePair is a (source, destination) pair on one route.
type noticePair struct {
	route     string
	src, dest uint32
}

// noticeWork is what the delivery workers hold: the routes with a worker
// and the (source, destination) pairs in one.
type noticeWork struct {
	mu     sync.Mutex
	routes map[string]bool
	pairs  map[noticePair]bool
}

// noticeRound starts a worker for every route that has notices to deliver
// and no worker yet.
func (n *Node) noticeRound() {
	w := &n.notices
	w.mu.Lock()
	defer w.mu.Unlock()
	jobs := make(map[string][]noticeJob)
	for _, src := range n.Replicas() {
		if !src.IsLeader() {
			continue
		}
		// Which destinations this round can start a worker for is decided
		// first, and only their notices are copied, up to a batch each:
		// copying the whole outbox under the shard's apply lock after every
		// apply cost 8.6% of an agent's CPU under load, most of it notices
		// whose route already had a worker (docs/bench/peers.md).
		var dests []uint32
		var destRoutes []string // destRoutes[i] is dests[i]'s route
		for _, dest := range src.OutboxDests() {
			route, err := n.noticeRoute(dest)
			if err != nil {
				n.metrics.noticeFailures.Inc()
				n.logger.Debug("notice delivery: no route; will retry", "from", src.shard, "to", dest, "err", err)
				continue
			}
			if w.routes[route] || w.pairs[noticePair{route, src.shard, dest}] {
				continue // a worker on the route delivers it, or signals when done
			}
			dests, destRoutes = append(dests, dest), append(destRoutes, route)
		}
		if len(dests) == 0 {
			continue
		}
		byDest := src.OutboxHeads(n.cfg.NoticeBatch, dests)
		for i, dest := range dests {
			if notices := byDest[dest]; len(notices) > 0 {
				route := destRoutes[i]
				jobs[route] = append(jobs[route], noticeJob{src: src, dest: dest, notices: notices})
			}
		}
	}
	routes := make([]string, 0, len(jobs))
	for r := range jobs {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	for _, route := range routes {
		if w.routes[route] {
			continue // its worker signals when it is done
		}
		if len(w.routes) >= maxNoticeRoutes {
			n.metrics.noticeRoutesDeferred.Inc()
			continue
		}
		w.routes[route] = true
		for _, j := range jobs[route] {
			w.pairs[noticePair{route, j.src.shard, j.dest}] = true
		}
		n.wg.Add(1)
		go n.deliverRoute(route, jobs[route])
	}
}

// noticeRoute returns the route of notices for dest: localRoute when a
// replica here leads it, else the node the remote delivery names.
func (n *Node) noticeRoute(dest uint32) (string, error) {
	if r := n.Replica(dest); r != nil && r.IsLeader() {
		return localRoute, nil
	}
	n.mu.RLock()
	remote := n.cfg.DeliverRemote
	n.mu.RUnlock()
	if remote == nil {
		if r := n.Replica(dest); r != nil {
			addr, id := r.Leader()
			return "", &NotLeaderError{Shard: dest, LeaderID: string(id), LeaderAddr: string(addr)}
		}
		return "", fmt.Errorf("%w: shard %d", ErrNoShard, dest)
	}
	route := remote.Route(dest)
	if route == "" {
		return "", &NotLeaderError{Shard: dest}
	}
	return route, nil
}

// deliverRoute is one route's worker: it delivers jobs in order, then
// acknowledges what was delivered in each source shard, and finally frees
// the route and its pairs and asks for another round.
func (n *Node) deliverRoute(route string, jobs []noticeJob) {
	defer n.wg.Done()
	defer func() {
		w := &n.notices
		w.mu.Lock()
		delete(w.routes, route)
		for _, j := range jobs {
			delete(w.pairs, noticePair{route, j.src.shard, j.dest})
		}
		w.mu.Unlock()
		select {
		case n.outboxSignal <- struct{}{}:
		default:
		}
	}()
	acked := make(map[*Replica][]correlate.EventID)
	var srcs []*Replica
	for _, j := range jobs {
		if n.ctx.Err() != nil {
			return // closing: the notices stay in the outboxes
		}
		if err := n.deliverVia(n.ctx, route, j.dest, j.notices); err != nil {
			n.metrics.noticeFailures.Inc()
			n.logger.Debug("notice delivery failed; will retry", "from", j.src.shard, "to", j.dest,
				"notices", len(j.notices), "err", err)
			continue
		}
		n.metrics.noticesDelivered.Add(float64(len(j.notices)))
		if _, ok := acked[j.src]; !ok {
			srcs = append(srcs, j.src)
		}
		for _, nt := range j.notices {
			acked[j.src] = append(acked[j.src], nt.EventID)
		}
	}
	for _, src := range srcs {
		if n.ctx.Err() != nil {
			return // the delivered notices are delivered again; the destination drops them
		}
		if err := (raftFuture{f: src.Propose(&correlate.Batch{Acked: acked[src]}, n.cfg.CommitTimeout)}).Wait(); err != nil {
			// The notices stay in the outbox and are delivered again; the
			// destination drops the repeats.
			n.logger.Debug("notice ack failed; will redeliver", "shard", src.shard, "err", err)
		}
	}
}

// deliverVia proposes notices to the destination shard's group through
// route only, and waits for the commit: to the local leader replica, or
// to the node named route, which refuses them if it no longer leads dest.
// A worker thus only ever waits on its own route's node; notices whose
// shard changed leader meanwhile fail and take the new route next round.
func (n *Node) deliverVia(ctx context.Context, route string, dest uint32, notices []correlate.Notice) error {
	if route == localRoute {
		return n.ProposeNotices(dest, notices)
	}
	n.mu.RLock()
	remote := n.cfg.DeliverRemote
	n.mu.RUnlock()
	if remote == nil {
		return fmt.Errorf("%w: shard %d", ErrNoShard, dest)
	}
	return remote.Deliver(ctx, route, dest, notices)
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
	if r.Awaiting() {
		return fmt.Errorf("%w: shard %d", ErrAwaitingHandoff, shard)
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
