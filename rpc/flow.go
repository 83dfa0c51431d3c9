package rpc

import (
	"context"
	"math"
	"slices"
	"sort"
	"sync"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/store"
)

// MessageFlow merges the message flow pages of every shard either process
// has lived on (store.MessageFlow's contract): SENDs of either process to
// the other, their RECEIVEs, and sender-less RECEIVEs whose RECEIVED_FROM
// names one of the returned SENDs. Each RECEIVE is paired with the SEND
// its RECEIVED_FROM link names.
func (q queryService) MessageFlow(ctx context.Context, req *connect.Request[scopev1.MessageFlowRequest]) (*connect.Response[scopev1.MessageFlowResponse], error) {
	const proc = scopev1connect.QueryServiceMessageFlowProcedure
	m := req.Msg
	a, err := parseProcess("a.", m.GetA().GetOrigin(), m.GetA().GetPid())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	b, err := parseProcess("b.", m.GetB().GetOrigin(), m.GetB().GetPid())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	c, err := consistencyOf(m.GetConsistency())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	ctx, lag := withLag(ctx)
	fromNs, toNs := int64(math.MinInt64), int64(math.MaxInt64)
	if m.GetFromNs() != 0 {
		fromNs = m.GetFromNs()
	}
	if m.GetToNs() != 0 {
		if m.GetToNs() <= fromNs {
			return nil, q.s.fail(proc, invalid("to_ns", m.GetToNs(), "must be greater than from_ns"))
		}
		toNs = m.GetToNs() - 1
	}
	limit := clamp(m.GetLimit(), 100, q.s.cfg.MaxQueryLimit)

	// Every shard either process has lived on, a's first.
	shards := q.s.planner.history(a)
	for _, sb := range q.s.planner.history(b) {
		if !slices.Contains(shards, sb) {
			shards = append(shards, sb)
		}
	}
	var (
		mu     sync.Mutex
		events []correlate.Event
		more   bool
	)
	failures := q.s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		page, err := r.MessageFlow(ctx, shard, a, b, fromNs, toNs, limit)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		events = append(events, page.Events...)
		more = more || page.More
		return nil
	})
	bytes := 0
	for i := range events {
		bytes += events[i].MemSize()
	}
	if err := q.s.overBudget("message flow", bytes, "ask for fewer messages (limit) or a shorter time range (from_ns, to_ns)"); err != nil {
		return nil, err
	}
	failures = append(failures, q.s.addPeerLinks(ctx, eventPtrs(events), c)...)
	missing, err := q.s.planner.settle(proc, failures, m.GetAllowPartial())
	if err != nil {
		return nil, q.s.fail(proc, err)
	}
	msgs := pairMessages(events)
	resp := &scopev1.MessageFlowResponse{Missing: missing, Truncated: more, Lag: lag.proto()}
	if len(msgs) > limit {
		msgs, resp.Truncated = msgs[:limit], true
	}
	resp.Messages = msgs
	return connect.NewResponse(resp), nil
}

// pairMessages turns SEND and RECEIVE events into messages ordered by the
// send's (timestamp, id), or the receive's when the send is absent.
func pairMessages(events []correlate.Event) []*scopev1.Message {
	sends := make(map[correlate.EventID]*scopev1.Message)
	type keyed struct {
		pos store.Position
		m   *scopev1.Message
	}
	var out []keyed
	for i := range events {
		e := &events[i]
		if e.Kind == correlate.KindSend {
			if _, dup := sends[e.ID]; dup {
				continue // both shards are the same process's shard: read twice
			}
			msg := &scopev1.Message{Send: EventToProto(e)}
			sends[e.ID] = msg
			out = append(out, keyed{pos: posOf(e), m: msg})
		}
	}
	seen := make(map[correlate.EventID]bool)
	for i := range events {
		e := &events[i]
		if e.Kind != correlate.KindReceive || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		var from correlate.EventID
		for _, l := range e.Links {
			if l.Type == correlate.LinkReceivedFrom {
				from = l.Target
			}
		}
		if msg, ok := sends[from]; ok && msg.Receive == nil {
			msg.Receive = EventToProto(e)
			msg.LatencyNs = e.TimestampNs - msg.Send.GetTimestampNs()
			continue
		}
		if e.PeerOrigin == "" && e.PeerPID == "" {
			// A sender-less RECEIVE belongs to the flow only through a
			// returned SEND (store.MessageFlow's contract).
			continue
		}
		out = append(out, keyed{pos: posOf(e), m: &scopev1.Message{Receive: EventToProto(e)}})
	}
	sort.Slice(out, func(i, j int) bool { return posLess(out[i].pos, out[j].pos, false) })
	msgs := make([]*scopev1.Message, len(out))
	for i := range out {
		msgs[i] = out[i].m
	}
	return msgs
}
