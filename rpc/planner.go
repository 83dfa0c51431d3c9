package rpc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// planner runs a query's shard parts: scatter to one reader per shard
// (bounded fan-out, per-shard deadline), gather, merge. It knows nothing
// about where a shard lives; the Resolver does.
type planner struct {
	res Resolver
	// layout is the newest shard layout this node knows (node.Node.Layout).
	// It only grows, and can change while the server runs (online
	// resharding): every query reads it again.
	layout func() correlate.Layout
	cfg    *Config
	logger *slog.Logger
	// retries counts shard reads asked again for want of a leader.
	retries atomic.Uint64
	// hedges counts hedged calls sent to a second replica, hedgeWins those
	// that answered first (nil in tests that do not look).
	hedges, hedgeWins prometheus.Counter
	// memoryCuts counts pages cut by the query memory budget.
	memoryCuts prometheus.Counter
}

// count increments c if it is set.
func (p *planner) count(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

// shardFailure is a shard that could not answer its part of a query.
type shardFailure struct {
	shard uint32
	err   error
}

// allShards lists every shard of the current layout, 0..Shards-1.
func (p *planner) allShards() []uint32 {
	out := make([]uint32, p.layout().Shards)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// history lists the shards that may hold events of process proc, newest
// first (correlate.Layout.History): its shard in the current layout and
// in every layout before it, since a split does not move stored events.
// Until the cluster reshards it is the process's one shard.
func (p *planner) history(proc correlate.Process) []uint32 {
	return p.layout().History(proc.Origin, proc.PID)
}

// each runs fn once per shard, at most MaxFanout at a time, each under its
// own QueryShardTimeout. It returns the shards that failed, in the order of
// shards. fn must be safe to run concurrently for different shards.
func (p *planner) each(ctx context.Context, shards []uint32, c Consistency,
	fn func(ctx context.Context, r ShardReader, shard uint32) error) []shardFailure {
	errs := make([]error, len(shards))
	if len(shards) == 1 {
		// One shard: no goroutine, no semaphore.
		errs[0] = p.read(ctx, shards[0], c, fn)
	} else {
		sem := make(chan struct{}, p.cfg.MaxFanout)
		var wg sync.WaitGroup
		for i, shard := range shards {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				errs[i] = p.read(ctx, shard, c, fn)
			}()
		}
		wg.Wait()
	}
	var out []shardFailure
	for i, err := range errs {
		if err != nil {
			out = append(out, shardFailure{shard: shards[i], err: err})
		}
	}
	return out
}

// Retry of a shard read that found no leader to ask: the first delay, the
// cap of its doubling, and the bound on attempts. All attempts together are
// bounded by QueryShardTimeout.
const (
	retryFirstDelay = 10 * time.Millisecond
	retryMaxDelay   = 250 * time.Millisecond
	maxReadAttempts = 32
)

// retryable reports whether a shard read failed only because the shard is
// between leaders (or this node's view of its leader is stale): asking
// again shortly may succeed. A shard whose replicas are all gone fails
// the same way; its retries end at the per-shard deadline.
func retryable(err error) bool {
	return errors.Is(err, node.ErrNotLeader) || errors.Is(err, node.ErrNoShard)
}

// read runs fn for one shard under QueryShardTimeout, resolving the
// shard's reader again and retrying with backoff while the shard has no
// reachable leader. It returns the last error.
func (p *planner) read(ctx context.Context, shard uint32, c Consistency,
	fn func(ctx context.Context, r ShardReader, shard uint32) error) error {
	sctx, cancel := context.WithTimeout(ctx, p.cfg.QueryShardTimeout)
	defer cancel()
	delay := retryFirstDelay
	for attempt := 1; ; attempt++ {
		rs, err := p.res.Readers(shard, c)
		switch {
		case err != nil:
		case len(rs) == 0:
			err = fmt.Errorf("%w: shard %d: the resolver offered no reader", node.ErrNoShard, shard)
		case len(rs) == 1 || c != ConsistencyAny || p.cfg.HedgeDelay <= 0:
			err = fn(sctx, rs[0], shard)
		default:
			err = fn(sctx, hedgedReader{p: p, cands: rs[:2]}, shard)
		}
		if err == nil || !retryable(err) || attempt >= maxReadAttempts {
			return err
		}
		p.retries.Add(1)
		t := time.NewTimer(delay)
		select {
		case <-sctx.Done():
			t.Stop()
			return err // the shard's error, not the deadline's
		case <-t.C:
		}
		delay = min(2*delay, retryMaxDelay)
	}
}

// settle turns shard failures into the response's missing list (with
// allowPartial) or into the query's error. A failure that no retry or
// other replica could fix (an invalid query) is always an error.
func (p *planner) settle(procedure string, failures []shardFailure, allowPartial bool) ([]*scopev1.MissingShard, error) {
	if len(failures) == 0 {
		return nil, nil
	}
	for _, f := range failures {
		if codeOf(f.err) == connect.CodeInvalidArgument {
			return nil, f.err
		}
	}
	if !allowPartial {
		code := codeOf(failures[0].err)
		shards := make([]string, len(failures))
		for i, f := range failures {
			shards[i] = fmt.Sprint(f.shard)
			if codeOf(f.err) != code {
				code = connect.CodeUnavailable
			}
		}
		first := toConnect(p.logger, procedure, failures[0].err)
		return nil, connect.NewError(code, fmt.Errorf("%d shard(s) could not answer (%s); shard %d: %s",
			len(failures), strings.Join(shards, ", "), failures[0].shard, first.Message()))
	}
	out := make([]*scopev1.MissingShard, len(failures))
	for i, f := range failures {
		ce := toConnect(p.logger, procedure, f.err)
		out[i] = &scopev1.MissingShard{Shard: f.shard, Code: ce.Code().String(), Reason: ce.Message()}
	}
	return out, nil
}

// joinMissing adds to a the shards of b it does not list yet, keeping the
// list ordered by shard.
func joinMissing(a, b []*scopev1.MissingShard) []*scopev1.MissingShard {
	for _, m := range b {
		if !slices.ContainsFunc(a, func(x *scopev1.MissingShard) bool { return x.Shard == m.Shard }) {
			a = append(a, m)
		}
	}
	slices.SortFunc(a, func(x, y *scopev1.MissingShard) int { return cmp.Compare(x.Shard, y.Shard) })
	return a
}

// missingShardIDs lists the shard ids of missing.
func missingShardIDs(missing []*scopev1.MissingShard) []uint32 {
	if len(missing) == 0 {
		return nil
	}
	out := make([]uint32, len(missing))
	for i, m := range missing {
		out[i] = m.Shard
	}
	return out
}

// posLess reports whether a comes before b in the query's order.
func posLess(a, b store.Position, desc bool) bool {
	if a.TimestampNs != b.TimestampNs {
		return (a.TimestampNs < b.TimestampNs) != desc
	}
	c := a.ID.Compare(b.ID)
	return c != 0 && (c < 0) != desc
}

func posOf(e *correlate.Event) store.Position {
	return store.Position{TimestampNs: e.TimestampNs, ID: e.ID}
}

// mergeQuery is one Events page over several shards.
type mergeQuery struct {
	q            store.Query // Limit is the page size; After the resume point
	shards       []uint32
	consistency  Consistency
	allowPartial bool
	// keep is a residual filter the store cannot apply (nil: keep all).
	keep func(*correlate.Event) bool
}

// mergedPage is the answer of a mergeQuery.
type mergedPage struct {
	events  []correlate.Event
	next    *store.Position // nil: nothing after this page
	missing []*scopev1.MissingShard
}

// shardStream is one shard's progress in a merge: the matching events read
// but not yet emitted (in query order), how many events the shard has
// returned (read, before the residual filter), and how far it has been
// read (next) when it has more (asked: once it has answered a page).
type shardStream struct {
	shard  uint32
	buf    []correlate.Event
	asked  bool
	read   int
	more   bool
	next   store.Position
	failed bool
}

// firstRoundSlack is added to a merge's first-round share of the page (see
// firstRoundLimit).
const firstRoundSlack = 16

// firstRoundLimit is the page size a merge first asks each of k shards
// for: twice the even share of the page plus a little slack, not the whole
// page. A time range over 16 shards used to read 16 pages of 1,000 events
// (with their links) to answer one page of 1,000; when events spread
// evenly over the shards, twice the share already fills the page before
// the frontier. When it does not (skewed data), the shards that have more
// are read on up to the whole page, which is what a first round asking
// for the whole page would have read.
func firstRoundLimit(limit, k int) int {
	if k <= 1 {
		return limit
	}
	return min(limit, 2*((limit+k-1)/k)+firstRoundSlack)
}

// frontier is the smallest position read up to by a stream that has more
// (bounded false: every stream is exhausted or failed).
func frontier(streams []*shardStream, desc bool) (bound store.Position, bounded bool) {
	for _, st := range streams {
		if st.failed || !st.more {
			continue
		}
		if !bounded || posLess(st.next, bound, desc) {
			bound, bounded = st.next, true
		}
	}
	return bound, bounded
}

// readyBefore counts the buffered events at or before bound.
func readyBefore(streams []*shardStream, bound store.Position, desc bool) int {
	ready := 0
	for _, st := range streams {
		for i := range st.buf {
			if posLess(bound, posOf(&st.buf[i]), desc) {
				break
			}
			ready++
		}
	}
	return ready
}

// merge answers mq with a k-way merge of every shard's page on
// (timestamp, id). The events it buffers are bounded by the query memory
// budget (Config.QueryMemory, counted with correlate.Event.MemSize): each
// read asks its shard for at most an even share of what is left of it
// (store.Query.MaxBytes), and no round starts once it is spent; the page
// is then cut at the frontier like a page cut by MaxMergeRounds.
//
// The invariant that makes cursors exact: an event is emitted only if it
// lies at or before the frontier — the smallest position any shard with
// more results has been read up to — so no shard can still hold an unread
// event before an emitted one. The first round
// asks each shard for its share of the page only (firstRoundLimit); if the
// frontier then leaves fewer than a page, every shard with more is read on
// up to the whole page. A shard whose page came back partial (scan limit
// or residual filter) holds the frontier back; it is read again, up to
// MaxMergeRounds times, before the page is cut at the frontier.
func (p *planner) merge(ctx context.Context, procedure string, mq mergeQuery) (mergedPage, error) {
	desc, limit := mq.q.Descending, mq.q.Limit
	streams := make([]*shardStream, len(mq.shards))
	for i, s := range mq.shards {
		streams[i] = &shardStream{shard: s, more: true}
		if mq.q.After != nil {
			streams[i].next = *mq.q.After
		}
	}
	var failures []shardFailure
	used := 0 // bytes of the events buffered (written by fetch only)
	spent := func() bool { return used >= p.cfg.QueryMemory }
	// fetch reads the next page of each stream in which, of limitOf(stream)
	// events and an even share of the memory budget left.
	fetch := func(which []*shardStream, limitOf func(*shardStream) int) error {
		share := max(1, (p.cfg.QueryMemory-used)/max(1, len(which)))
		byShard := make(map[uint32]*shardStream, len(which))
		ids := make([]uint32, len(which))
		for i, st := range which {
			byShard[st.shard], ids[i] = st, st.shard
		}
		var mu sync.Mutex
		failed := p.each(ctx, ids, mq.consistency, func(ctx context.Context, r ShardReader, shard uint32) error {
			st := byShard[shard]
			q := mq.q
			q.Limit, q.MaxBytes = limitOf(st), share
			if st.asked {
				after := st.next
				q.After = &after
			}
			page, err := r.Events(ctx, shard, q)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range page.Events {
				if mq.keep == nil || mq.keep(&page.Events[i]) {
					st.buf = append(st.buf, page.Events[i])
					used += page.Events[i].MemSize()
				}
			}
			st.asked, st.read = true, st.read+len(page.Events)
			st.more, st.next = page.More, page.Next
			return nil
		})
		for _, f := range failed {
			byShard[f.shard].failed = true
		}
		failures = append(failures, failed...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	whole := func(*shardStream) int { return limit }
	first := firstRoundLimit(limit, len(streams))
	if err := fetch(streams, func(*shardStream) int { return first }); err != nil {
		return mergedPage{}, err
	}
	if first < limit && !spent() {
		if bound, bounded := frontier(streams, desc); bounded && readyBefore(streams, bound, desc) < limit {
			var again []*shardStream
			for _, st := range streams {
				if !st.failed && st.more {
					again = append(again, st)
				}
			}
			// Up to the whole page from the start, as one round asking for
			// it would have read (st.read < first < limit).
			if err := fetch(again, func(st *shardStream) int { return limit - st.read }); err != nil {
				return mergedPage{}, err
			}
		}
	}
	var (
		bound   store.Position
		bounded bool
	)
	for round := 1; ; round++ {
		bound, bounded = frontier(streams, desc)
		if !bounded || round >= p.cfg.MaxMergeRounds {
			break
		}
		if readyBefore(streams, bound, desc) >= limit {
			break
		}
		if spent() {
			p.count(p.memoryCuts)
			break
		}
		var again []*shardStream
		for _, st := range streams {
			if !st.failed && st.more && st.next == bound {
				again = append(again, st)
			}
		}
		if err := fetch(again, whole); err != nil {
			return mergedPage{}, err
		}
	}
	sort.Slice(failures, func(i, j int) bool { return failures[i].shard < failures[j].shard })
	missing, err := p.settle(procedure, failures, mq.allowPartial)
	if err != nil {
		return mergedPage{}, err
	}

	// k-way merge of the buffered events up to the frontier.
	out := mergedPage{missing: missing}
	heads := make([]int, len(streams))
	for len(out.events) < limit {
		best := -1
		for i, st := range streams {
			if heads[i] >= len(st.buf) {
				continue
			}
			e := &st.buf[heads[i]]
			if bounded && posLess(bound, posOf(e), desc) {
				continue
			}
			if best < 0 || posLess(posOf(e), posOf(&streams[best].buf[heads[best]]), desc) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		out.events = append(out.events, streams[best].buf[heads[best]])
		heads[best]++
	}
	remains := bounded
	for i, st := range streams {
		if heads[i] < len(st.buf) {
			remains = true
		}
	}
	switch {
	case len(out.events) == limit && remains:
		last := posOf(&out.events[len(out.events)-1])
		out.next = &last
	case len(out.events) < limit && bounded:
		// Cut by MaxMergeRounds: every shard has been read up to bound.
		b := bound
		out.next = &b
	}
	return out, nil
}

// errAll joins the shard failures for a call that needs every shard.
func errAll(failures []shardFailure) error {
	errs := make([]error, len(failures))
	for i, f := range failures {
		errs[i] = fmt.Errorf("shard %d: %w", f.shard, f.err)
	}
	return errors.Join(errs...)
}
