package rpc

import (
	"context"
	"math"
	"sort"
	"sync"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// edgeKey identifies a followed link.
type edgeKey struct {
	from correlate.EventID
	typ  correlate.LinkType
	to   correlate.EventID
}

// linkFollows is the trace-only edge type of process order: from an event
// to its predecessor in its process. It is never stored.
const linkFollows = correlate.LinkFollows

// neighbour is an event one link away from a visited one.
type neighbour struct {
	id correlate.EventID
	// shards that may hold it: every shard its process has lived on, or
	// nil when its process cannot be derived (every shard is asked).
	shards []uint32
	edge   edgeKey
	// read is the event when finding the neighbour already read it.
	read *located
}

// traceWalk is one Trace: a breadth-first walk over links, bounded by depth
// and by events, across shards.
type traceWalk struct {
	s                   *Server
	c                   Consistency
	back, fwd           bool
	order               bool // also follow process order (process_order)
	maxDepth, maxEvents int
	allowPartial        bool
	// bytes of the events visited (MemSize); the walk stops adding events
	// once they reach the query memory budget, as at maxEvents.
	bytes int

	nodes     map[correlate.EventID]*located
	edges     map[edgeKey]bool
	trees     map[correlate.EventID]map[correlate.EventID]*store.Frame // root → frames by CALL id
	failures  []shardFailure
	truncated bool
}

func (q queryService) Trace(ctx context.Context, req *connect.Request[scopev1.TraceRequest]) (*connect.Response[scopev1.TraceResponse], error) {
	const proc = scopev1connect.QueryServiceTraceProcedure
	m := req.Msg
	id, err := parseID("event_id", m.GetEventId())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	hint, err := optionalProcess(m.GetOrigin(), m.GetPid())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	w := &traceWalk{s: q.s, c: c, allowPartial: m.GetAllowPartial(), order: m.GetProcessOrder(),
		maxDepth:  clamp(m.GetMaxDepth(), 32, 1024),
		maxEvents: clamp(m.GetMaxEvents(), 1000, 100_000),
		nodes:     make(map[correlate.EventID]*located),
		edges:     make(map[edgeKey]bool),
		trees:     make(map[correlate.EventID]map[correlate.EventID]*store.Frame)}
	switch m.GetDirection() {
	case scopev1.TraceDirection_TRACE_DIRECTION_BACKWARD:
		w.back = true
	case scopev1.TraceDirection_TRACE_DIRECTION_FORWARD:
		w.fwd = true
	case scopev1.TraceDirection_TRACE_DIRECTION_UNSPECIFIED, scopev1.TraceDirection_TRACE_DIRECTION_BOTH:
		w.back, w.fwd = true, true
	default:
		return nil, q.s.fail(proc, invalid("direction", m.GetDirection(), "must be BACKWARD, FORWARD or BOTH"))
	}
	start, err := q.s.find(ctx, proc, id, hint, c)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	if err := w.walk(ctx, &start); err != nil {
		return nil, q.s.fail(proc, err)
	}
	if !w.fwd {
		// A forward walk has read them already.
		nodes := make([]*correlate.Event, 0, len(w.nodes))
		for _, l := range w.nodes {
			nodes = append(nodes, &l.e)
		}
		w.failures = append(w.failures, q.s.addPeerLinks(ctx, nodes, c)...)
	}
	missing, err := q.s.planner.settle(proc, w.failures, w.allowPartial)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	resp := &scopev1.TraceResponse{Truncated: w.truncated, Missing: missing, Lag: lag.proto()}
	nodes := make([]*located, 0, len(w.nodes))
	for _, l := range w.nodes {
		nodes = append(nodes, l)
	}
	sort.Slice(nodes, func(i, j int) bool { return posLess(posOf(&nodes[i].e), posOf(&nodes[j].e), false) })
	resp.Nodes = make([]*scopev1.Event, len(nodes))
	for i, l := range nodes {
		resp.Nodes[i] = EventToProto(&l.e)
	}
	for k := range w.edges {
		resp.Edges = append(resp.Edges, &scopev1.Edge{FromEventId: k.from.String(), Type: LinkTypeToProto(k.typ),
			ToEventId: k.to.String()})
	}
	sort.Slice(resp.Edges, func(i, j int) bool {
		a, b := resp.Edges[i], resp.Edges[j]
		if a.FromEventId != b.FromEventId {
			return a.FromEventId < b.FromEventId
		}
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		return a.ToEventId < b.ToEventId
	})
	return connect.NewResponse(resp), nil
}

// walk visits events breadth-first from start. Only a failed context ends
// it with an error; shards that cannot answer are recorded in failures.
func (w *traceWalk) walk(ctx context.Context, start *located) error {
	w.nodes[start.e.ID] = start
	level := []*located{start}
	for depth := 0; len(level) > 0; depth++ {
		var next []*located
		for _, l := range level {
			ns, err := w.neighbours(ctx, l)
			if err != nil {
				return err
			}
			for _, n := range ns {
				if _, seen := w.nodes[n.id]; seen {
					w.edges[n.edge] = true
					continue
				}
				if depth >= w.maxDepth || len(w.nodes) >= w.maxEvents || w.bytes >= w.s.cfg.QueryMemory {
					w.truncated = true
					continue
				}
				found := n.read
				if found == nil {
					var err error
					if found, err = w.fetch(ctx, n); err != nil {
						return err
					}
				}
				if found == nil {
					continue // deleted by retention, or on a shard that did not answer
				}
				w.nodes[n.id] = found
				w.bytes += found.e.MemSize()
				w.edges[n.edge] = true
				next = append(next, found)
			}
		}
		level = next
	}
	return nil
}

// fetch reads a neighbour from its shards (or from every shard).
func (w *traceWalk) fetch(ctx context.Context, n neighbour) (*located, error) {
	shards := w.s.planner.allShards()
	if n.shards != nil {
		shards = n.shards
	}
	found, failures := w.s.lookup(ctx, n.id, shards, w.c)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w.failures = append(w.failures, failures...)
	return found, nil
}

// neighbours lists the events one link away from l in the walk's
// directions.
func (w *traceWalk) neighbours(ctx context.Context, l *located) ([]neighbour, error) {
	e := &l.e
	same := w.s.planner.history(e.Process()) // its own process's shards
	var peer []uint32                        // unknown: every shard
	if e.PeerOrigin != "" && e.PeerPID != "" {
		peer = w.s.planner.history(e.Peer())
	}
	if w.fwd {
		if failures := w.s.addPeerLinks(ctx, []*correlate.Event{e}, w.c); len(failures) > 0 {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			w.failures = append(w.failures, failures...)
		}
	}
	var out []neighbour
	for _, lk := range e.Links {
		n := neighbour{id: lk.Target, edge: edgeKey{from: e.ID, typ: lk.Type, to: lk.Target}}
		switch lk.Type {
		case correlate.LinkCalledFrom, correlate.LinkCompletes:
			if !w.back {
				continue
			}
			n.shards = same
		case correlate.LinkReceivedFrom:
			if !w.back {
				continue
			}
			n.shards = peer // the sender, when the RECEIVE names it
		case correlate.LinkSpawnedBy:
			if !w.back {
				continue
			}
			n.shards = nil
		case correlate.LinkDeliveredTo, correlate.LinkSpawned:
			if !w.fwd {
				continue
			}
			n.shards = peer
		default:
			continue
		}
		out = append(out, n)
	}
	if w.order {
		for _, back := range []bool{true, false} {
			if back && !w.back || !back && !w.fwd {
				continue
			}
			adj, err := w.adjacent(ctx, l, back)
			if err != nil {
				return nil, err
			}
			if adj == nil {
				continue
			}
			edge := edgeKey{from: e.ID, typ: linkFollows, to: adj.e.ID}
			if !back {
				edge.from, edge.to = adj.e.ID, e.ID
			}
			out = append(out, neighbour{id: adj.e.ID, shards: same, edge: edge, read: adj})
		}
	}
	if w.fwd && e.Kind == correlate.KindCall {
		frame, err := w.frame(ctx, l)
		if err != nil {
			return nil, err
		}
		if frame != nil {
			for _, ch := range frame.Children {
				out = append(out, neighbour{id: ch.Call.ID, shards: same,
					edge: edgeKey{from: ch.Call.ID, typ: correlate.LinkCalledFrom, to: e.ID}})
			}
			if frame.End != nil {
				out = append(out, neighbour{id: frame.End.ID, shards: same,
					edge: edgeKey{from: frame.End.ID, typ: correlate.LinkCompletes, to: e.ID}})
			}
		}
	}
	return out, nil
}

// adjacent returns the event before (back) or after l in its process's
// order, nil when there is none or a shard could not answer (the failure
// is recorded): one one-event read on each shard the process has lived on
// (one until the cluster reshards), the nearest answer kept.
func (w *traceWalk) adjacent(ctx context.Context, l *located, back bool) (*located, error) {
	p := correlate.Process{Origin: l.e.Origin, PID: l.e.PID}
	after := posOf(&l.e)
	var mu sync.Mutex
	var found *located
	failures := w.s.planner.each(ctx, w.s.planner.history(p), w.c, func(ctx context.Context, r ShardReader, shard uint32) error {
		q := store.Query{Process: &p, FromNs: math.MinInt64, ToNs: math.MaxInt64, Descending: back, Limit: 1, After: &after}
		// A page may come back empty with More (the store's scan limit):
		// read on, within the shard's deadline.
		for range w.s.cfg.MaxMergeRounds {
			page, err := r.Events(ctx, shard, q)
			if err != nil {
				return err
			}
			if len(page.Events) > 0 {
				mu.Lock()
				defer mu.Unlock()
				if found == nil || posLess(posOf(&page.Events[0]), posOf(&found.e), back) {
					found = &located{e: page.Events[0], shard: shard}
				}
				return nil
			}
			if !page.More {
				return nil
			}
			next := page.Next
			q.After = &next
		}
		return nil
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w.failures = append(w.failures, failures...)
	return found, nil
}

// frame returns the CALL's frame in its call tree (read once per tree and
// kept for the walk). nil when the tree cannot be read: the shard failure
// is recorded.
func (w *traceWalk) frame(ctx context.Context, l *located) (*store.Frame, error) {
	root := l.e.RootID
	if root.IsZero() {
		root = l.e.ID
	}
	frames, ok := w.trees[root]
	if !ok {
		tree, failures := w.s.callTree(ctx, l.e.Process(), root, l.shard, w.maxEvents, w.c)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		frames = make(map[correlate.EventID]*store.Frame)
		if len(failures) > 0 {
			if codeOf(failures[0].err) != connect.CodeNotFound {
				w.failures = append(w.failures, failures...)
			}
		} else {
			if tree.Truncated {
				w.truncated = true
			}
			stack := []*store.Frame{tree.Root}
			for len(stack) > 0 {
				f := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				frames[f.Call.ID] = f
				stack = append(stack, f.Children...)
			}
		}
		w.trees[root] = frames
	}
	return frames[l.e.ID], nil
}
