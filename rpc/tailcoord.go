package rpc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// A cluster-wide tail follows each shard on one replica at a time (a
// source) and merges the sources into the client stream:
//
//   - Sources start grouped: one stream per node for the shards that node
//     was picked for (LEADER: the leader; ANY: this node first).
//   - The merge is blocking: a slow client pushes back to its sources,
//     whose bounded subscription buffers drop and report (Lagged,
//     reason slow_consumer). Nothing else drops.
//   - Each shard remembers the position of the last event it delivered
//     (raft index, offset in the entry). When its source ends or reports
//     the shard gone, the shard is re-planned on another replica, resumed
//     after that position. A replica that had already applied entries
//     past it cannot replay them: it says so and the client gets Lagged
//     (reason source_lost, dropped 0) naming the shard — never a silent
//     gap. Leadership moving needs no re-plan: the old leader keeps
//     applying as a follower.
//   - A failed replica (it stopped applying) reports its shard gone like a
//     dropped one. A lost shard moves at once to a replica that has not
//     lost it since the shard last delivered; once every replica has, they
//     are retried every tailReplanEvery (never in a tight loop). A shard
//     whose source has not started (TailStart or TailGap) within
//     Config.TailReplanTimeout of losing the last one ends the stream with
//     UNAVAILABLE naming it.
//   - Shards the filter can match that appear while the tail runs (a
//     reshard created them, D39) are followed from their first entry: the
//     source delivers every event the shard stored, or, if it had stored
//     some before the tail found the shard (every tailReplanEvery), says
//     so with a gap (Lagged, source_lost).

// tailReplanEvery paces attempts to place a shard that lost its source.
const tailReplanEvery = 100 * time.Millisecond

// errServerClosing ends tails when the server closes.
var errServerClosing = errors.New("server shutting down")

type tailRun struct {
	ctx   context.Context
	s     *Server
	req   *scopev1.TailRequest
	match func(*correlate.Event) bool
	cons  Consistency

	items chan sourceItem // blocking merge: one item in flight per source
	ended chan sourceEnd
	wg    sync.WaitGroup

	nextID  uint64
	sources map[uint64]*tailSource
	shards  map[uint32]*shardTail
	// shardsNow lists the shards the filter can match in the current
	// layout; nil: the set is fixed at start.
	shardsNow func() []uint32
}

type tailSource struct {
	node   string
	cancel context.CancelFunc
	owned  map[uint32]bool
}

type shardTail struct {
	source   uint64 // 0: not placed
	pos      node.TailPosition
	resume   bool            // pos is set
	failed   map[string]bool // nodes that lost the shard since it last delivered
	unplaced time.Time       // when the shard lost its last started source; zero: started
}

type sourceItem struct {
	src  uint64
	item node.TailItem
}

type sourceEnd struct {
	src uint64
	err error
}

func newTailRun(ctx context.Context, s *Server, req *scopev1.TailRequest, f *filter, c Consistency) *tailRun {
	return &tailRun{ctx: ctx, s: s, req: req, match: f.match, cons: c,
		items: make(chan sourceItem), ended: make(chan sourceEnd),
		sources: make(map[uint64]*tailSource), shards: make(map[uint32]*shardTail)}
}

// replicas lists the nodes to try for shard, best first.
func (t *tailRun) replicas(shard uint32) []string {
	if t.s.tailSources != nil {
		return t.s.tailSources.TailReplicas(shard, t.cons)
	}
	if t.s.node.Replica(shard) != nil {
		return []string{t.s.node.ID()}
	}
	return nil
}

// start places every shard, one source per node. A shard that cannot be
// placed now is retried by run.
func (t *tailRun) start(shards []uint32) error {
	byNode := make(map[string][]uint32)
	var order []string
	now := time.Now()
	for _, shard := range shards {
		sh := &shardTail{failed: make(map[string]bool), unplaced: now}
		t.shards[shard] = sh
		cands := t.replicas(shard)
		if len(cands) == 0 {
			continue
		}
		if byNode[cands[0]] == nil {
			order = append(order, cands[0])
		}
		byNode[cands[0]] = append(byNode[cands[0]], shard)
	}
	for _, n := range order {
		if err := t.open(n, byNode[n]); err != nil {
			if errors.Is(err, node.ErrTooManySubscribers) {
				return err
			}
			for _, shard := range byNode[n] {
				t.shards[shard].failed[n] = true
			}
			t.s.logger.Debug("tail source failed to open", "node", n, "err", err)
		}
	}
	return nil
}

// open starts a source on node n for shards.
func (t *tailRun) open(n string, shards []uint32) error {
	req := TailSourceRequest{Shards: shards, Filter: t.req, Buffer: t.s.cfg.TailBuffer,
		After: make(map[uint32]node.TailPosition)}
	for _, shard := range shards {
		if sh := t.shards[shard]; sh.resume {
			req.After[shard] = sh.pos
		}
	}
	ctx, cancel := context.WithCancel(t.ctx)
	var stream TailStream
	var err error
	if n == t.s.node.ID() {
		stream, err = openLocalTail(ctx, t.s.node, req, t.match)
	} else if t.s.tailSources != nil {
		stream, err = t.s.tailSources.OpenTail(ctx, n, req)
	} else {
		err = fmt.Errorf("%w: node %q: no cluster", node.ErrNoShard, n)
	}
	if err != nil {
		cancel()
		return err
	}
	t.nextID++
	id := t.nextID
	src := &tailSource{node: n, cancel: cancel, owned: make(map[uint32]bool, len(shards))}
	for _, shard := range shards {
		src.owned[shard] = true
		t.shards[shard].source = id
	}
	t.sources[id] = src
	t.s.metrics.tailSources.Inc()
	t.wg.Add(1)
	go t.pump(ctx, id, stream)
	return nil
}

// pump forwards one source's items to the merge until it ends.
func (t *tailRun) pump(ctx context.Context, id uint64, stream TailStream) {
	defer t.wg.Done()
	defer t.s.metrics.tailSources.Dec()
	defer stream.Close()
	for {
		it, err := stream.Recv()
		if err != nil {
			select {
			case t.ended <- sourceEnd{src: id, err: err}:
			case <-ctx.Done():
			}
			return
		}
		select {
		case t.items <- sourceItem{src: id, item: it}:
		case <-ctx.Done():
			return
		}
	}
}

// stop ends every source and waits for them.
func (t *tailRun) stop() {
	for _, src := range t.sources {
		src.cancel()
	}
	t.wg.Wait()
}

// release takes shard away from its source (closing a source left with
// no shard) and marks the source's node as failed for the shard.
func (t *tailRun) release(shard uint32) {
	sh := t.shards[shard]
	if src, ok := t.sources[sh.source]; ok {
		delete(src.owned, shard)
		sh.failed[src.node] = true
		if len(src.owned) == 0 {
			src.cancel()
			delete(t.sources, sh.source)
		}
	}
	sh.source = 0
	if sh.unplaced.IsZero() {
		sh.unplaced = time.Now()
	}
	t.s.metrics.tailReplans.Inc()
}

// place tries to give an unplaced shard a source: a replica that has not
// lost it yet, or, with retry (the paced tick) once every replica has,
// the best of them again.
func (t *tailRun) place(shard uint32, retry bool) {
	sh := t.shards[shard]
	cands := t.replicas(shard)
	pick := ""
	for _, n := range cands {
		if !sh.failed[n] {
			pick = n
			break
		}
	}
	if pick == "" && retry && len(cands) > 0 {
		clear(sh.failed)
		pick = cands[0]
	}
	if pick == "" {
		return
	}
	if err := t.open(pick, []uint32{shard}); err != nil {
		sh.failed[pick] = true
		t.s.logger.Debug("tail source failed to open", "node", pick, "shard", shard, "err", err)
	}
}

// run merges the sources into send until the client, the server or a
// shard's placement gives up.
func (t *tailRun) run(send func(*scopev1.TailResponse) error) error {
	tick := time.NewTicker(tailReplanEvery)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return t.ctx.Err()
		case <-t.s.done:
			return errServerClosing
		case e := <-t.ended:
			src, ok := t.sources[e.src]
			if !ok {
				continue // already closed by release
			}
			t.s.logger.Debug("tail source ended", "node", src.node, "err", e.err)
			for shard := range src.owned {
				t.release(shard)
				t.place(shard, false)
			}
		case si := <-t.items:
			if err := t.handle(si, send); err != nil {
				return err
			}
		case now := <-tick.C:
			t.follow(now)
			for shard, sh := range t.shards {
				if sh.source == 0 {
					t.place(shard, true)
				}
				if !sh.unplaced.IsZero() && now.Sub(sh.unplaced) > t.s.cfg.TailReplanTimeout {
					return fmt.Errorf("%w: shard %d: none of %v reachable for %v", ErrTailSource,
						shard, t.replicas(shard), t.s.cfg.TailReplanTimeout)
				}
			}
		}
	}
}

// follow starts following the shards the filter can match that the tail
// does not follow yet, from their first entry.
func (t *tailRun) follow(now time.Time) {
	if t.shardsNow == nil {
		return
	}
	for _, shard := range t.shardsNow() {
		if _, ok := t.shards[shard]; ok {
			continue
		}
		t.shards[shard] = &shardTail{failed: make(map[string]bool), unplaced: now,
			pos: node.TailPosition{Index: 0, Offset: math.MaxUint32, Last: true}, resume: true}
		t.s.metrics.tailShardsFollowed.Inc()
		t.place(shard, false)
	}
}

func (t *tailRun) handle(si sourceItem, send func(*scopev1.TailResponse) error) error {
	it := &si.item
	sh := t.shards[it.Shard]
	if sh == nil || sh.source != si.src {
		return nil // a shard this source no longer owns
	}
	switch it.Kind {
	case node.TailEvent:
		sh.pos, sh.resume = it.TailPosition, true
		sh.unplaced = time.Time{}
		clear(sh.failed)
		return send(&scopev1.TailResponse{Item: &scopev1.TailResponse_Event{Event: EventToProto(&it.Event)}})
	case node.TailLagged:
		t.s.metrics.tailDropped.Add(float64(it.Dropped))
		return send(lagged(it.Shard, it.Dropped, "slow_consumer"))
	case node.TailStart:
		sh.unplaced = time.Time{}
		if !sh.resume {
			sh.pos, sh.resume = node.TailPosition{Index: it.Index, Offset: math.MaxUint32, Last: true}, true
		}
	case node.TailGap:
		sh.unplaced = time.Time{}
		sh.pos = node.TailPosition{Index: it.Index, Offset: math.MaxUint32, Last: true}
		t.s.metrics.tailGaps.Inc()
		return send(lagged(it.Shard, 0, "source_lost"))
	case node.TailGone:
		t.release(it.Shard)
		t.place(it.Shard, false)
	}
	return nil
}

// started is the stream's first item: the shards that have a source now
// (subscribed: their later events are delivered) and those still pending.
func (t *tailRun) started() *scopev1.TailResponse {
	st := &scopev1.TailStarted{}
	for shard, sh := range t.shards {
		if sh.source != 0 {
			st.Shards = append(st.Shards, shard)
		} else {
			st.Pending = append(st.Pending, shard)
		}
	}
	slices.Sort(st.Shards)
	slices.Sort(st.Pending)
	return &scopev1.TailResponse{Item: &scopev1.TailResponse_Started{Started: st}}
}

func lagged(shard uint32, dropped uint64, reason string) *scopev1.TailResponse {
	return &scopev1.TailResponse{Item: &scopev1.TailResponse_Lagged{
		Lagged: &scopev1.Lagged{Dropped: dropped, Shard: &shard, Reason: reason}}}
}
