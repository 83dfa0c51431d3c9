package rpc

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"sync"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// Reads of one process across the shards it has lived on. Online
// resharding moves a process to its shard's child but not its stored
// events (correlate.Layout.History): a call opened on the parent before the
// split may be closed, or get children, on the child after it. Until the
// cluster reshards a process has one shard, and each read below is the
// store's own on that shard, unchanged; with several, the store's answers
// on each shard are combined into the one a single shard holding all of
// the process's events would give.
//
// A frame whose CALL is on an older shard and that a newer one closed
// without an event of its own (UNWOUND, PROCESS_EXIT, ABANDONED) has its
// frame record on the CALL's shard: the newer shard sends it there
// (docs/DECISIONS.md D41), so the reads below find it where the store on
// one shard would.

// callTree returns the call tree under root, a CALL of process p, of at
// most maxFrames frames; at is the shard of an event of the tree. It is the
// store's tree on the root's shard, with the frames and closing events
// stored on the process's other shards merged in as store.CallTree would
// have placed them.
func (s *Server) callTree(ctx context.Context, p correlate.Process, root correlate.EventID, at uint32, maxFrames int,
	c Consistency) (*store.CallTree, []shardFailure) {
	shards := s.planner.history(p)
	rootShard := at
	if len(shards) > 1 {
		found, failures := s.lookup(ctx, root, shards, c)
		if found == nil {
			if len(failures) == 0 {
				failures = []shardFailure{{shard: at, err: fmt.Errorf("%w: call tree root %s: on none of the shards of %s",
					store.ErrNotFound, root, p)}}
			}
			return nil, failures
		}
		rootShard = found.shard
	}
	var tree *store.CallTree
	failures := s.planner.each(ctx, []uint32{rootShard}, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		var err error
		tree, err = r.CallTree(ctx, shard, root, maxFrames)
		return err
	})
	if len(failures) > 0 || len(shards) == 1 {
		return tree, failures
	}
	others := slices.DeleteFunc(slices.Clone(shards), func(sh uint32) bool { return sh == rootShard })
	rest, failures := s.readAll(ctx, store.Query{RootID: root, FromNs: math.MinInt64, ToNs: math.MaxInt64},
		others, c, "call tree", "ask for fewer frames (max_frames)")
	if len(failures) > 0 {
		return nil, failures
	}
	if len(rest) == 0 {
		return tree, nil
	}
	return s.mergeTree(ctx, tree, rest, maxFrames, c)
}

// mergeTree adds to tree, read from its root's shard, the events of the
// tree stored on other shards (rest, in (timestamp, id) order): their
// CALLs as frames, their RETURNs and EXCEPTIONs as the ends of the frames
// they complete. The frames are cut at maxFrames in (timestamp, id) order
// and attached to their parents, as store.CallTree does on one shard.
func (s *Server) mergeTree(ctx context.Context, tree *store.CallTree, rest []located, maxFrames int,
	c Consistency) (*store.CallTree, []shardFailure) {
	var frames []*store.Frame // the root first
	for stack := []*store.Frame{tree.Root}; len(stack) > 0; {
		f := stack[len(stack)-1]
		stack = append(stack[:len(stack)-1], f.Children...)
		frames = append(frames, f)
	}
	shardOf := make(map[*store.Frame]uint32) // the frames of other shards
	ends := make(map[correlate.EventID]*correlate.Event)
	for i := range rest {
		e := &rest[i].e
		switch {
		case e.Kind == correlate.KindCall && e.ID != tree.Root.Call.ID:
			f := &store.Frame{Call: *e}
			f.Call.Links = nil // as store.CallTree reads a frame's CALL
			frames = append(frames, f)
			shardOf[f] = rest[i].shard
		case e.Kind == correlate.KindReturn || e.Kind == correlate.KindException:
			if call, ok := completes(e); ok {
				ends[call] = e
			}
		}
	}
	later := frames[1:]
	sort.Slice(later, func(i, j int) bool { return posLess(posOf(&later[i].Call), posOf(&later[j].Call), false) })
	out := &store.CallTree{Root: tree.Root, Frames: 1, Truncated: tree.Truncated}
	if len(frames) > maxFrames {
		frames, out.Truncated = frames[:maxFrames], true
	}
	byID := make(map[correlate.EventID]*store.Frame, len(frames))
	for _, f := range frames {
		f.Children = nil
		byID[f.Call.ID] = f
	}
	for _, f := range frames[1:] {
		if parent, ok := byID[f.Call.ParentID]; ok {
			parent.Children = append(parent.Children, f)
			out.Frames++
		}
	}

	// Close the open frames whose end is stored on another shard than
	// their CALL. A CALL stored on another shard and still open may have
	// a frame record there: ask for the one-frame tree rooted at it (the
	// store closes a root from its record).
	probe := make(map[uint32][]*store.Frame)
	for _, f := range frames {
		switch end := ends[f.Call.ID]; {
		case !f.Open():
		case end != nil:
			f.CloseWith(end)
		default:
			if shard, ok := shardOf[f]; ok && byID[f.Call.ParentID] != nil { // in the tree
				probe[shard] = append(probe[shard], f)
			}
		}
	}
	failures := s.planner.each(ctx, slices.Sorted(maps.Keys(probe)), c, func(ctx context.Context, r ShardReader, shard uint32) error {
		for _, f := range probe[shard] {
			one, err := r.CallTree(ctx, shard, f.Call.ID, 1)
			if err != nil {
				return err
			}
			g := one.Root
			f.End, f.Outcome, f.AbandonReason = g.End, g.Outcome, g.AbandonReason
			f.EndNs, f.ClosedBy, f.DurationNs = g.EndNs, g.ClosedBy, g.DurationNs
		}
		return nil
	})
	if len(failures) > 0 {
		return nil, failures
	}
	return out, nil
}

// readAll reads every event matching q (Limit and After are its own) on
// each of shards, in (timestamp, id) order, within the query memory
// budget (what and narrow name the answer in the error).
func (s *Server) readAll(ctx context.Context, q store.Query, shards []uint32, c Consistency, what, narrow string) ([]located, []shardFailure) {
	var (
		mu   sync.Mutex
		out  []located
		used int
	)
	failures := s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		q := q
		q.Limit = s.cfg.MaxQueryLimit
		for {
			page, err := r.Events(ctx, shard, q)
			if err != nil {
				return err
			}
			mu.Lock()
			for _, e := range page.Events {
				out = append(out, located{e: e, shard: shard})
				used += e.MemSize()
			}
			spent := used
			mu.Unlock()
			if err := s.overBudget(what, spent, narrow); err != nil {
				return err
			}
			if !page.More {
				return nil
			}
			next := page.Next
			q.After = &next
		}
	})
	sort.Slice(out, func(i, j int) bool { return posLess(posOf(&out[i].e), posOf(&out[j].e), false) })
	return out, failures
}

// maxStackFrames bounds a call stack read across shards, as the store's
// MaxTreeFrames (default) bounds one read on a shard.
const maxStackFrames = 100_000

// maxStackWalk bounds the events a call stack read across shards walks
// before it gives up (store.ErrScanLimit), as the store's MaxScan (default)
// bounds one shard's walk.
const maxStackWalk = 100_000

// callStackAt returns the frames of process p open at atNs, bottom first,
// as store.CallStackAt does on one shard. Across several shards it walks
// the process's events backwards from atNs, all shards merged, the same
// way: the first CALL closed by no event after it is the top (unless its
// frame record closes it: each shard's own call stack at atNs says which
// of its CALLs it knows open), then its parents down to the bottom.
func (s *Server) callStackAt(ctx context.Context, p correlate.Process, atNs int64, c Consistency) ([]store.Frame, error) {
	shards := s.planner.history(p)
	stackOn := func(shard uint32) ([]store.Frame, error) {
		var frames []store.Frame
		failures := s.planner.each(ctx, []uint32{shard}, c, func(ctx context.Context, r ShardReader, shard uint32) error {
			var err error
			frames, err = r.CallStackAt(ctx, shard, p, atNs)
			return err
		})
		if len(failures) > 0 {
			return nil, failures[0].err
		}
		return frames, nil
	}
	if len(shards) == 1 {
		return stackOn(shards[0])
	}

	// open[shard] holds the CALLs of shard open at atNs as far as the
	// shard knows (its own events and frame records), read when needed.
	open := make(map[uint32]map[correlate.EventID]bool)
	openOn := func(shard uint32, id correlate.EventID) (bool, error) {
		if open[shard] == nil {
			frames, err := stackOn(shard)
			if err != nil {
				return false, err
			}
			open[shard] = make(map[correlate.EventID]bool, len(frames))
			for _, f := range frames {
				open[shard][f.Call.ID] = true
			}
		}
		return open[shard][id], nil
	}
	top, err := s.stackTop(ctx, p, shards, atNs, c, openOn)
	if err != nil || top == nil {
		return nil, err
	}
	// The store's top frame is its CALL as the walk read it, without links;
	// the frames under it are read whole.
	top.Links = nil
	stack := []store.Frame{{Call: *top}}
	for e := top; e.ParentID != (correlate.EventID{}) && len(stack) < maxStackFrames; {
		parent, failures := s.lookup(ctx, e.ParentID, shards, c)
		if len(failures) > 0 {
			return nil, failures[0].err
		}
		if parent == nil {
			break // deleted by retention: the stack is known down to here
		}
		stack = append(stack, store.Frame{Call: parent.e})
		e = &parent.e
	}
	slices.Reverse(stack)
	return stack, nil
}

// stackTop walks p's events on shards backwards from atNs, merged, and
// returns the topmost frame open at atNs (nil: none), as the walk of
// store.CallStackAt does on one shard. openOn says whether a CALL no event
// of the walk closed is open on its shard (not closed by a frame record).
func (s *Server) stackTop(ctx context.Context, p correlate.Process, shards []uint32, atNs int64, c Consistency,
	openOn func(uint32, correlate.EventID) (bool, error)) (*correlate.Event, error) {
	closed := make(map[correlate.EventID]bool)
	q := store.Query{Process: &p, FromNs: math.MinInt64, ToNs: atNs, Descending: true}
	limit := min(64, s.cfg.MaxQueryLimit) // most stacks are found in the first events
	for walked := 0; walked < maxStackWalk; limit = min(2*limit, s.cfg.MaxQueryLimit) {
		q.Limit = limit
		page, err := s.planner.merge(ctx, scopev1connect.QueryServiceCallStackAtProcedure,
			mergeQuery{q: q, shards: shards, consistency: c})
		if err != nil {
			return nil, err
		}
		for i := range page.events {
			e := &page.events[i]
			closes := e.Kind == correlate.KindReturn || e.Kind == correlate.KindException
			switch {
			case e.Kind == correlate.KindExit:
				return nil, nil // an exit closed every frame open before it
			case closes && e.Orphan:
				// closed nothing
			case closes && e.ParentID == (correlate.EventID{}):
				return nil, nil // the bottom frame closed here
			case closes:
				if call, ok := completes(e); ok {
					closed[call] = true
				}
			case e.Kind == correlate.KindCall && refusedCall(e):
			case e.Kind == correlate.KindCall && !closed[e.ID]:
				open, err := openOn(e.Shard, e.ID) // Shard: the shard that stored it
				if err != nil {
					return nil, err
				}
				if open {
					return e, nil
				}
			}
		}
		walked += len(page.events)
		if page.next == nil {
			return nil, nil
		}
		q.After = page.next
	}
	return nil, fmt.Errorf("%w: call stack of %s at %d", store.ErrScanLimit, p, atNs)
}

// stateAt returns process p's latest STATE_CHANGE at or before atNs: the
// latest, by (timestamp, id), of its shards' answers.
func (s *Server) stateAt(ctx context.Context, p correlate.Process, atNs int64, c Consistency) (correlate.Event, bool, error) {
	var (
		mu     sync.Mutex
		latest correlate.Event
		found  bool
	)
	failures := s.planner.each(ctx, s.planner.history(p), c, func(ctx context.Context, r ShardReader, shard uint32) error {
		e, ok, err := r.StateAt(ctx, shard, p, atNs)
		if err != nil || !ok {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if !found || posLess(posOf(&latest), posOf(&e), false) {
			latest, found = e, true
		}
		return nil
	})
	if len(failures) > 0 {
		return correlate.Event{}, false, failures[0].err
	}
	return latest, found, nil
}

// completes returns the CALL a RETURN/EXCEPTION closes (its COMPLETES link).
func completes(e *correlate.Event) (correlate.EventID, bool) {
	for _, l := range e.Links {
		if l.Type == correlate.LinkCompletes {
			return l.Target, true
		}
	}
	return correlate.EventID{}, false
}

// refusedCall reports whether CALL e was refused a frame by the
// correlator's depth bound (store.CallStackAt skips it the same way): no
// parent, and a root that is not itself.
func refusedCall(e *correlate.Event) bool {
	return e.ParentID == (correlate.EventID{}) && e.RootID != e.ID && e.RootID != (correlate.EventID{})
}
