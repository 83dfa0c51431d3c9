package rpc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// ingestService implements scope.v1.IngestService.
type ingestService struct{ s *Server }

var _ scopev1connect.IngestServiceHandler = ingestService{}

// ForwardedHeader marks an ingest request that another node forwarded to
// this one as the leader of its shards: this node answers not-leader rather
// than forwarding it again, so stale routing can never make a loop.
const ForwardedHeader = "Scope-Forwarded"

// RedirectedHeader marks a forwarded request that carries events an old
// leader of their shard had admitted (node.MarkRedirect): the new leader
// does not refuse it for a full disk.
const RedirectedHeader = "Scope-Redirected"

// forwardedContext marks ctx as the headers say.
func forwardedContext(ctx context.Context, h interface{ Get(string) string }) context.Context {
	if h.Get(ForwardedHeader) != "" {
		ctx = node.NoForward(ctx)
		if h.Get(RedirectedHeader) != "" {
			ctx = node.MarkRedirect(ctx)
		}
	}
	return ctx
}

func (i ingestService) Ingest(ctx context.Context, req *connect.Request[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error) {
	const proc = scopev1connect.IngestServiceIngestProcedure
	ctx = forwardedContext(ctx, req.Header())
	resp, err := i.s.ingest(ctx, proc, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// IngestStream handles each message as an Ingest request, in order. The
// summary sums the messages' counts and per-shard results; the first
// failure ends the stream, with the summary so far (that message included)
// attached.
func (i ingestService) IngestStream(ctx context.Context, stream *connect.ClientStream[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error) {
	const proc = scopev1connect.IngestServiceIngestStreamProcedure
	ctx = forwardedContext(ctx, stream.RequestHeader())
	sum := &scopev1.IngestResponse{}
	byShard := make(map[uint32]*scopev1.ShardResult)
	add := func(r *scopev1.IngestResponse) {
		sum.Accepted += r.GetAccepted()
		sum.Refused += r.GetRefused()
		sum.Duplicates += r.GetDuplicates()
		sum.Unknown += r.GetUnknown()
		sum.Durability = r.GetDurability()
		for _, sr := range r.GetShards() {
			acc, ok := byShard[sr.GetShard()]
			if !ok {
				acc = &scopev1.ShardResult{Shard: sr.GetShard()}
				byShard[sr.GetShard()] = acc
			}
			acc.Committed += sr.GetCommitted()
			acc.Accepted += sr.GetAccepted()
			acc.Refused += sr.GetRefused()
			acc.Duplicates += sr.GetDuplicates()
			acc.Unknown += sr.GetUnknown()
			acc.Leader = sr.GetLeader()
			if sr.GetErrorCode() != "" {
				acc.ErrorCode, acc.ErrorMessage = sr.GetErrorCode(), sr.GetErrorMessage()
			}
		}
	}
	finish := func() *scopev1.IngestResponse {
		sum.Shards = sum.Shards[:0]
		for _, s := range slices.Sorted(maps.Keys(byShard)) {
			sum.Shards = append(sum.Shards, byShard[s])
		}
		if sum.Durability == scopev1.Durability_DURABILITY_UNSPECIFIED {
			sum.Durability = scopev1.Durability_DURABILITY_COMMITTED
		}
		return sum
	}
	for msg := 0; stream.Receive(); msg++ {
		resp, err := i.s.ingest(ctx, proc, stream.Msg())
		if resp != nil {
			add(resp)
		}
		if err != nil {
			var ce *connect.Error
			if !errors.As(err, &ce) {
				ce = toConnect(i.s.logger, proc, err)
			}
			out := connect.NewError(ce.Code(), fmt.Errorf("stream message %d: %s", msg, ce.Message()))
			for k, v := range ce.Meta() {
				out.Meta()[k] = v
			}
			attachResponse(out, finish())
			return nil, out
		}
	}
	if err := stream.Err(); err != nil {
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			i.s.metrics.refusals.WithLabelValues(reasonRequestBytes).Inc()
		}
		return nil, err
	}
	return connect.NewResponse(finish()), nil
}

// attachResponse adds resp to err as a detail, so that a client knows
// exactly which events are durable.
func attachResponse(err *connect.Error, resp *scopev1.IngestResponse) {
	if d, derr := connect.NewErrorDetail(resp); derr == nil {
		err.AddDetail(d)
	}
}

// ingest validates and stores one request. It returns the response even
// with an error when something was stored (the error then carries it as a
// detail, too). An invalid request stores nothing.
func (s *Server) ingest(ctx context.Context, proc string, req *scopev1.IngestRequest) (*scopev1.IngestResponse, error) {
	n := len(req.GetEvents())
	s.metrics.eventsPerRequest.Observe(float64(n))
	if n > s.cfg.MaxEventsPerRequest {
		s.metrics.refusals.WithLabelValues(reasonEventsPerRequest).Inc()
		return nil, s.fail(proc, invalid("events", fmt.Sprintf("%d events", n),
			fmt.Sprintf("at most %d events per request (scope agent -max-events-per-request)", s.cfg.MaxEventsPerRequest)))
	}
	var d node.Durability
	durability := req.GetDurability()
	switch durability {
	case scopev1.Durability_DURABILITY_UNSPECIFIED, scopev1.Durability_DURABILITY_COMMITTED:
		d, durability = node.Committed, scopev1.Durability_DURABILITY_COMMITTED
	case scopev1.Durability_DURABILITY_ACCEPTED:
		d = node.Accepted
	default:
		return nil, s.fail(proc, invalid("durability", durability, "must be DURABILITY_COMMITTED or DURABILITY_ACCEPTED"))
	}
	events, err := EventsFromProto(req.GetEvents())
	if err != nil {
		var fe *correlate.FieldError
		if errors.As(err, &fe) {
			return nil, s.fail(proc, eventFieldError(fe.Index, fe))
		}
		return nil, s.fail(proc, err)
	}
	for i := range events {
		if err := correlate.Validate(&events[i], s.cfg.Limits); err != nil {
			var fe *correlate.FieldError
			if errors.As(err, &fe) {
				return nil, s.fail(proc, eventFieldError(i, fe))
			}
			return nil, s.fail(proc, err)
		}
	}
	if err := correlate.CheckRepeatedIDs(events); err != nil {
		var fe *correlate.FieldError
		if errors.As(err, &fe) {
			return nil, s.fail(proc, eventFieldError(fe.Index, fe))
		}
		return nil, s.fail(proc, err)
	}
	if n == 0 {
		return &scopev1.IngestResponse{Durability: durability}, nil
	}
	res := s.node.Ingest(ctx, events, d)
	resp, failed := ingestResponse(&res, durability, s.node.ID())
	s.ingested.Add(uint64(resp.Accepted))
	s.refused.Add(uint64(resp.Refused))
	if len(failed) == 0 {
		return resp, nil
	}
	return resp, s.ingestError(proc, resp, failed)
}

// eventFieldError is the INVALID_ARGUMENT of an invalid event field,
// naming events[i].field, the value and the rule. (correlate.FieldError
// prints "event[i]"; the API names the request's repeated field.)
func eventFieldError(i int, fe *correlate.FieldError) error {
	if fe.Value == "" {
		return fmt.Errorf("%w: events[%d].%s: %s", ErrInvalidRequest, i, fe.Field, fe.Rule)
	}
	return fmt.Errorf("%w: events[%d].%s: invalid value %q: %s", ErrInvalidRequest, i, fe.Field, fe.Value, fe.Rule)
}

// ingestResponse converts the node's result. Each shard's part has one
// outcome: stored (committed, or accepted under ACCEPTED, plus the
// duplicates the shard already had), refused (the error says no event of
// the part was stored, node.Refused) or unknown (any other error: some or
// all events may have been stored, e.g. a leadership change after the
// proposal was appended, a forward whose connection broke, a commit wait
// that timed out). A repeat of an event earlier in the request shares that
// event's outcome: a duplicate when the shard took the part, refused or
// unknown with it otherwise. So each shard's events are exactly committed
// (or accepted) + duplicates, or refused, or unknown.
func ingestResponse(res *node.IngestResult, d scopev1.Durability, self string) (*scopev1.IngestResponse, []node.ShardResult) {
	resp := &scopev1.IngestResponse{EventIds: make([]string, len(res.IDs)), Durability: d,
		Shards: make([]*scopev1.ShardResult, len(res.Shards))}
	for i, id := range res.IDs {
		resp.EventIds[i] = id.String()
	}
	var failed []node.ShardResult
	for i, sr := range res.Shards {
		out := &scopev1.ShardResult{Shard: sr.Shard}
		switch {
		case sr.Err == nil && d == scopev1.Durability_DURABILITY_ACCEPTED:
			out.Accepted = uint32(sr.Accepted)
			out.Duplicates = uint32(sr.Repeats + sr.Duplicates)
		case sr.Err == nil:
			out.Committed, out.Accepted = uint32(sr.Accepted), uint32(sr.Accepted)
			out.Duplicates = uint32(sr.Repeats + sr.Duplicates)
		case node.Refused(sr.Err):
			out.Refused = uint32(sr.Events)
		default:
			out.Unknown = uint32(sr.Events) // resend with the same ids
		}
		if sr.Err != nil {
			failed = append(failed, sr)
			out.ErrorCode = codeOf(sr.Err).String()
			out.ErrorMessage = sr.Err.Error()
			if codeOf(sr.Err) == connect.CodeInternal {
				out.ErrorMessage = "internal error (logged on the server)"
			}
		}
		var nl *node.NotLeaderError
		switch {
		case errors.As(sr.Err, &nl):
			out.Leader = nl.LeaderID // who leads it instead, if known
		case !errors.Is(sr.Err, node.ErrNoShard):
			out.Leader = self // this node's replica led the shard and took the events
		}
		resp.Shards[i] = out
		resp.Accepted += out.Accepted
		resp.Refused += out.Refused
		resp.Duplicates += out.Duplicates
		resp.Unknown += out.Unknown
	}
	return resp, failed
}

// ingestError is the error of a request some shards failed: the code of
// the first failed shard's error (all codes when they differ are in the
// message), the shards named, the response attached.
func (s *Server) ingestError(proc string, resp *scopev1.IngestResponse, failed []node.ShardResult) *connect.Error {
	first := toConnect(s.logger, proc, failed[0].Err)
	parts := make([]string, len(failed))
	for i, f := range failed {
		ce := toConnect(s.logger, proc, f.Err)
		parts[i] = fmt.Sprintf("shard %d (%d events): %s: %s", f.Shard, f.Events, ce.Code(), ce.Message())
	}
	err := connect.NewError(first.Code(), fmt.Errorf("%d of %d shards failed: %s",
		len(failed), len(resp.Shards), strings.Join(parts, "; ")))
	for k, v := range first.Meta() {
		err.Meta()[k] = v
	}
	attachResponse(err, resp)
	return err
}
