package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TailSources returns the rpc layer's view of this cluster for a
// cluster-wide Tail: which members hold a shard and their tail streams.
func (c *Cluster) TailSources() rpc.TailSources { return tailSources{c} }

type tailSources struct{ c *Cluster }

// TailReplicas implements rpc.TailSources from the local raft
// configuration and gossip, without network calls.
func (t tailSources) TailReplicas(shard uint32, cons rpc.Consistency) []string {
	c := t.c
	var out []string
	add := func(name string) {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	local := c.node.Replica(shard) != nil
	if local && cons == rpc.ConsistencyAny {
		add(c.cfg.Name)
	}
	if name, _, err := c.leaderOf(shard); err == nil {
		add(name)
	} else if r := c.node.Replica(shard); r != nil && r.IsLeader() {
		add(c.cfg.Name)
	}
	if local {
		add(c.cfg.Name)
	}
	for _, m := range c.replicaHolders(shard) {
		add(m.Name)
	}
	return out
}

// OpenTail implements rpc.TailSources over NodeService.Tail.
func (t tailSources) OpenTail(ctx context.Context, name string, req rpc.TailSourceRequest) (rpc.TailStream, error) {
	m, ok := t.c.member(name)
	if !ok || m.State != MemberAlive {
		return nil, fmt.Errorf("%w: tail source %q is not an alive member", node.ErrNoShard, name)
	}
	p, err := t.c.peers.get(m.Meta.HTTPAddr)
	if err != nil {
		return nil, err
	}
	filter, err := proto.Marshal(req.Filter)
	if err != nil {
		return nil, err
	}
	msg := &nodev1.TailRequest{Filter: filter, Buffer: uint32(req.Buffer)}
	for _, shard := range req.Shards {
		ts := &nodev1.TailShard{Shard: shard}
		if pos, ok := req.After[shard]; ok {
			ts.Resume, ts.AfterIndex, ts.AfterOffset, ts.AfterLast = true, pos.Index, pos.Offset, pos.Last
		}
		msg.Shards = append(msg.Shards, ts)
	}
	stream, err := p.node.Tail(ctx, connect.NewRequest(msg))
	if err != nil {
		return nil, remoteError(m.Meta.HTTPAddr, err)
	}
	return &remoteTail{addr: m.Meta.HTTPAddr, s: stream}, nil
}

// remoteTail is one NodeService.Tail stream.
type remoteTail struct {
	addr string
	s    *connect.ServerStreamForClient[nodev1.TailResponse]
}

func (r *remoteTail) Recv() (node.TailItem, error) {
	if !r.s.Receive() {
		err := r.s.Err()
		if err == nil {
			err = errors.New("cluster: tail stream ended")
		}
		return node.TailItem{}, remoteError(r.addr, err)
	}
	return tailItemFromProto(r.s.Msg())
}

func (r *remoteTail) Close() { _ = r.s.Close() }

func tailItemFromProto(m *nodev1.TailResponse) (node.TailItem, error) {
	it := node.TailItem{Shard: m.GetShard()}
	switch x := m.GetItem().(type) {
	case *nodev1.TailResponse_Event:
		it.Kind = node.TailEvent
		it.TailPosition = node.TailPosition{Index: x.Event.GetIndex(), Offset: x.Event.GetOffset(), Last: x.Event.GetLast()}
		if err := correlate.DecodeEvent(x.Event.GetEvent(), &it.Event); err != nil {
			return it, fmt.Errorf("cluster: tail event of shard %d: %w", it.Shard, err)
		}
	case *nodev1.TailResponse_Lagged:
		it.Kind, it.Dropped = node.TailLagged, x.Lagged
	case *nodev1.TailResponse_Started:
		it.Kind, it.Index = node.TailStart, x.Started
	case *nodev1.TailResponse_Gap:
		it.Kind, it.Index, it.After = node.TailGap, x.Gap.GetStartIndex(), x.Gap.GetAfterIndex()
	case *nodev1.TailResponse_Gone:
		it.Kind, it.Reason = node.TailGone, x.Gone.GetReason()
	default:
		return it, fmt.Errorf("cluster: tail item of shard %d: unknown kind %T", it.Shard, x)
	}
	return it, nil
}

func tailItemToProto(it *node.TailItem) (*nodev1.TailResponse, error) {
	m := &nodev1.TailResponse{Shard: it.Shard}
	switch it.Kind {
	case node.TailEvent:
		b := correlate.AppendEvent(nil, &it.Event)
		m.Item = &nodev1.TailResponse_Event{Event: &nodev1.TailEvent{Index: it.Index, Offset: it.Offset, Last: it.Last, Event: b}}
	case node.TailLagged:
		m.Item = &nodev1.TailResponse_Lagged{Lagged: it.Dropped}
	case node.TailStart:
		m.Item = &nodev1.TailResponse_Started{Started: it.Index}
	case node.TailGap:
		m.Item = &nodev1.TailResponse_Gap{Gap: &nodev1.TailGap{AfterIndex: it.After, StartIndex: it.Index}}
	case node.TailGone:
		m.Item = &nodev1.TailResponse_Gone{Gone: &nodev1.TailGone{Reason: it.Reason}}
	default:
		return nil, fmt.Errorf("cluster: tail item of shard %d: unknown kind %d", it.Shard, it.Kind)
	}
	return m, nil
}

// maxTailBuffer bounds the buffer another node may ask a subscription for.
const maxTailBuffer = 1 << 16

// Tail serves another node's tail of this node's replicas.
func (s nodeService) Tail(ctx context.Context, req *connect.Request[nodev1.TailRequest], stream *connect.ServerStream[nodev1.TailResponse]) error {
	var filter scopev1.TailRequest
	if err := proto.Unmarshal(req.Msg.GetFilter(), &filter); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cluster: tail filter: %w", err))
	}
	match, err := rpc.TailMatcher(&filter)
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	buffer := int(req.Msg.GetBuffer())
	if buffer > maxTailBuffer {
		return connect.NewError(connect.CodeInvalidArgument,
			fmt.Errorf("cluster: tail buffer %d: at most %d", buffer, maxTailBuffer))
	}
	spec := node.TailSpec{Shards: []uint32{}, After: make(map[uint32]node.TailPosition), Match: match, Buffer: buffer}
	for _, ts := range req.Msg.GetShards() {
		spec.Shards = append(spec.Shards, ts.GetShard())
		if ts.GetResume() {
			spec.After[ts.GetShard()] = node.TailPosition{Index: ts.GetAfterIndex(), Offset: ts.GetAfterOffset(), Last: ts.GetAfterLast()}
		}
	}
	sub, err := s.c.node.Subscribe(spec)
	if err != nil {
		return internalError(err)
	}
	defer sub.Close()
	for {
		it, err := sub.Next(ctx)
		switch {
		case errors.Is(err, node.ErrClosed):
			return internalError(fmt.Errorf("%w: tail subscription ended", err))
		case err != nil:
			return err
		}
		m, err := tailItemToProto(&it)
		if err != nil {
			return connect.NewError(connect.CodeInternal, err)
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}
