package rpc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// queryService implements scope.v1.QueryService over the planner.
type queryService struct{ s *Server }

var _ scopev1connect.QueryServiceHandler = queryService{}

func consistencyOf(c scopev1.Consistency) (Consistency, error) {
	switch c {
	case scopev1.Consistency_CONSISTENCY_UNSPECIFIED, scopev1.Consistency_CONSISTENCY_LEADER:
		return ConsistencyLeader, nil
	case scopev1.Consistency_CONSISTENCY_ANY:
		return ConsistencyAny, nil
	}
	return 0, invalid("consistency", c, "must be CONSISTENCY_LEADER or CONSISTENCY_ANY")
}

// clamp applies a request's bound: 0 means def, more than max means max.
func clamp(v uint32, def, max int) int {
	switch {
	case v == 0:
		return def
	case int64(v) > int64(max):
		return max
	}
	return int(v)
}

func parseID(field, s string) (correlate.EventID, error) {
	if s == "" {
		return correlate.EventID{}, missing(field)
	}
	id, err := correlate.ParseEventID(s)
	if err != nil {
		return id, invalid(field, quoted(s), "must be a 26-character ULID")
	}
	return id, nil
}

func parseProcess(prefix, origin, pid string) (correlate.Process, error) {
	switch {
	case origin == "":
		return correlate.Process{}, missing(prefix + "origin")
	case pid == "":
		return correlate.Process{}, missing(prefix + "pid")
	}
	return correlate.Process{Origin: origin, PID: pid}, nil
}

// optionalProcess parses an optional (origin, pid) hint: both or neither.
func optionalProcess(origin, pid string) (*correlate.Process, error) {
	if origin == "" && pid == "" {
		return nil, nil
	}
	p, err := parseProcess("", origin, pid)
	return &p, err
}

// located is an event with the shard it was read from.
type located struct {
	e     correlate.Event
	shard uint32
}

// find reads event id from the process's shards when hint is set (every
// shard it has lived on), else from every shard. NOT_FOUND only when every
// asked shard answered and none has it (with a hint: none has it for that
// process); a shard that failed makes the answer unknown (its error),
// unless the event was found elsewhere. An id several shards have is
// ErrEventIDConflict (see lookup).
func (s *Server) find(ctx context.Context, procedure string, id correlate.EventID, hint *correlate.Process, c Consistency) (located, error) {
	shards := s.planner.allShards()
	if hint != nil {
		shards = s.planner.history(*hint)
	}
	found, failures := s.lookup(ctx, id, shards, c)
	if found != nil && hint != nil && found.e.Process() != *hint {
		// The process's shard has the id for another of its processes:
		// this process has no event with it.
		return located{}, connect.NewError(connect.CodeNotFound, fmt.Errorf("event_id %s: no event of origin %q pid %q (the id names an event of pid %q)",
			id, hint.Origin, hint.PID, found.e.PID))
	}
	if found != nil {
		return *found, nil
	}
	for _, f := range failures {
		if errors.Is(f.err, ErrEventIDConflict) {
			return located{}, f.err
		}
	}
	if _, err := s.planner.settle(procedure, failures, false); err != nil {
		return located{}, err
	}
	return located{}, connect.NewError(connect.CodeNotFound, errors.New("event_id "+id.String()+": no shard has this event"))
}

// lookup asks shards for event id. found is nil when no shard that
// answered has it; failures lists the shards that did not answer.
//
// An id names one event, but a shard cannot see another shard's ids: a
// client that reuses an id for another process's event has it stored on
// both shards (docs/DECISIONS.md). lookup never picks one of them: when
// more than one shard has the id, found is nil and failures holds one
// ErrEventIDConflict naming every copy (and the conflict is counted).
func (s *Server) lookup(ctx context.Context, id correlate.EventID, shards []uint32, c Consistency) (found *located, failures []shardFailure) {
	var mu sync.Mutex
	var hits []located
	failures = s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		e, err := r.Get(ctx, shard, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		mu.Lock()
		hits = append(hits, located{e: e, shard: shard})
		mu.Unlock()
		return nil
	})
	switch {
	case len(hits) == 1:
		return &hits[0], nil
	case len(hits) > 1:
		s.metrics.eventIDConflicts.Inc()
		slices.SortFunc(hits, func(a, b located) int { return cmp.Compare(a.shard, b.shard) })
		copies := make([]string, len(hits))
		for i, h := range hits {
			copies[i] = fmt.Sprintf("shard %d: origin %q pid %q", h.shard, h.e.Origin, h.e.PID)
		}
		err := fmt.Errorf("%w: event_id %s: %d stored events (%s); pass origin and pid to choose one",
			ErrEventIDConflict, id, len(hits), strings.Join(copies, "; "))
		return nil, []shardFailure{{shard: hits[1].shard, err: err}}
	}
	return nil, failures
}

// peerLinks adds the links of a SEND (DELIVERED_TO) or SPAWN (SPAWNED)
// that are stored on its peer's shard (links.go).
func (s *Server) peerLinks(ctx context.Context, l *located, c Consistency) error {
	if failures := s.addPeerLinks(ctx, []*correlate.Event{&l.e}, c); len(failures) > 0 {
		return failures[0].err
	}
	return nil
}

func (q queryService) GetEvent(ctx context.Context, req *connect.Request[scopev1.GetEventRequest]) (*connect.Response[scopev1.GetEventResponse], error) {
	const proc = scopev1connect.QueryServiceGetEventProcedure
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
	l, err := q.s.find(ctx, proc, id, hint, c)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	if err := q.s.peerLinks(ctx, &l, c); err != nil {
		return nil, q.s.fail(proc, err)
	}
	return connect.NewResponse(&scopev1.GetEventResponse{Event: EventToProto(&l.e), Lag: lag.proto()}), nil
}

func (q queryService) Events(ctx context.Context, req *connect.Request[scopev1.EventsRequest]) (*connect.Response[scopev1.EventsResponse], error) {
	const proc = scopev1connect.QueryServiceEventsProcedure
	m := req.Msg
	f, err := parseFilter(filterFields{origin: m.GetOrigin(), pid: m.GetPid(), kinds: m.GetKinds(),
		module: m.GetModule(), function: m.GetFunction(), arity: m.Arity, fromNs: m.GetFromNs(), toNs: m.GetToNs(),
		correlationID: m.GetCorrelationId(), rootID: m.GetRootId()})
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	limit := clamp(m.GetLimit(), q.s.cfg.DefaultQueryLimit, q.s.cfg.MaxQueryLimit)
	sq := f.query(m.GetDescending(), limit)
	if cur := m.GetCursor(); cur != "" {
		pos, err := decodeCursor(cur, m)
		if err != nil {
			return nil, q.s.fail(proc, err)
		}
		sq.After = &pos
	}
	page, err := q.s.planner.merge(ctx, proc, mergeQuery{q: sq, shards: f.shards(q.s.planner), consistency: c,
		allowPartial: m.GetAllowPartial(), keep: f.residual()})
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	linkFailures := q.s.addPeerLinks(ctx, eventPtrs(page.events), c)
	more, err := q.s.planner.settle(proc, linkFailures, m.GetAllowPartial())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	page.missing = joinMissing(page.missing, more)
	resp := &scopev1.EventsResponse{Events: EventsToProto(page.events), Missing: page.missing,
		MissingShards: missingShardIDs(page.missing), Lag: lag.proto()}
	if page.next != nil {
		resp.NextCursor = encodeCursor(*page.next, m)
	}
	return connect.NewResponse(resp), nil
}

func (q queryService) CallTree(ctx context.Context, req *connect.Request[scopev1.CallTreeRequest]) (*connect.Response[scopev1.CallTreeResponse], error) {
	const proc = scopev1connect.QueryServiceCallTreeProcedure
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
	maxFrames := clamp(m.GetMaxFrames(), 1000, 100_000)
	l, err := q.s.find(ctx, proc, id, hint, c)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	rootID := l.e.RootID
	if rootID.IsZero() {
		return nil, q.s.fail(proc, invalid("event_id", id, "the event ("+l.e.Kind.String()+") belongs to no call tree"))
	}
	tree, failures := q.s.callTree(ctx, l.e.Process(), rootID, l.shard, maxFrames, c)
	if len(failures) > 0 {
		return nil, q.s.fail(proc, failures[0].err)
	}
	if err := q.s.overBudget("call tree", frameBytes(tree.Root), "ask for fewer frames (max_frames)"); err != nil {
		return nil, err
	}
	conv := EventToProto
	if m.GetSummary() {
		conv = summaryEventToProto
	}
	root := frameToProto(tree.Root, true, conv)
	if m.GetSummary() {
		root.Call.Origin, root.Call.Pid = tree.Root.Call.Origin, tree.Root.Call.PID // a tree is one process's
	}
	return connect.NewResponse(&scopev1.CallTreeResponse{Root: root, Truncated: tree.Truncated,
		Lag: lag.proto()}), nil
}

// summaryEventToProto converts only what CallTreeRequest.summary keeps of
// an event (the caller adds the process to the root's CALL).
func summaryEventToProto(e *correlate.Event) *scopev1.Event {
	return &scopev1.Event{EventId: idString(e.ID), Kind: KindToProto(e.Kind), TimestampNs: e.TimestampNs,
		Module: e.Module, Function: e.Function, Arity: e.Arity, Payload: e.Payload,
		PayloadTruncated: e.PayloadTruncated, PayloadSize: e.PayloadSize, Reason: e.Reason,
		DurationNs: e.DurationNs, Outcome: OutcomeToProto(e.Outcome), Orphan: e.Orphan}
}

// frameBytes is the MemSize of the events of the tree under f (bounded by
// max_frames, so the recursion is too).
func frameBytes(f *store.Frame) int {
	n := f.Call.MemSize()
	if f.End != nil {
		n += f.End.MemSize()
	}
	for _, c := range f.Children {
		n += frameBytes(c)
	}
	return n
}

// frameToProto converts a frame, its events with conv, with its children
// when deep. A tree is bounded by max_frames, so the recursion is too.
func frameToProto(f *store.Frame, deep bool, conv func(*correlate.Event) *scopev1.Event) *scopev1.CallFrame {
	out := &scopev1.CallFrame{Call: conv(&f.Call), Outcome: OutcomeToProto(f.Outcome),
		DurationNs: f.DurationNs, Open: f.Open(), AbandonReason: AbandonReasonToProto(f.AbandonReason)}
	if f.End != nil {
		out.End = conv(f.End)
	}
	if deep && len(f.Children) > 0 {
		out.Children = make([]*scopev1.CallFrame, len(f.Children))
		for i, c := range f.Children {
			out.Children[i] = frameToProto(c, true, conv)
		}
	}
	return out
}

func (q queryService) CallStackAt(ctx context.Context, req *connect.Request[scopev1.CallStackAtRequest]) (*connect.Response[scopev1.CallStackAtResponse], error) {
	const proc = scopev1connect.QueryServiceCallStackAtProcedure
	m := req.Msg
	p, err := parseProcess("", m.GetOrigin(), m.GetPid())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	if m.GetAtNs() == 0 {
		return nil, q.s.fail(proc, missing("at_ns"))
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	frames, err := q.s.callStackAt(ctx, p, m.GetAtNs(), c)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	resp := &scopev1.CallStackAtResponse{Frames: make([]*scopev1.CallFrame, len(frames)), Lag: lag.proto()}
	for i := range frames {
		resp.Frames[i] = frameToProto(&frames[i], false, EventToProto)
	}
	return connect.NewResponse(resp), nil
}

func (q queryService) StateAt(ctx context.Context, req *connect.Request[scopev1.StateAtRequest]) (*connect.Response[scopev1.StateAtResponse], error) {
	const proc = scopev1connect.QueryServiceStateAtProcedure
	m := req.Msg
	p, err := parseProcess("", m.GetOrigin(), m.GetPid())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	if m.GetAtNs() == 0 {
		return nil, q.s.fail(proc, missing("at_ns"))
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	e, ok, err := q.s.stateAt(ctx, p, m.GetAtNs(), c)
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	resp := &scopev1.StateAtResponse{Lag: lag.proto()}
	if ok {
		resp.Event = EventToProto(&e)
	}
	return connect.NewResponse(resp), nil
}
