package rpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TailSources is what a cluster-wide Tail needs beyond this node: which
// nodes hold a shard's replicas and a stream of another node's applied
// events. Without it (SetTailSources never called) a Tail follows only
// this node's replicas.
type TailSources interface {
	// TailReplicas names the nodes holding a replica of shard, this node
	// included, in the order a tail at consistency c should try them:
	// LEADER — the leader first; ANY — this node first. It must not block
	// on the network; the slice is the caller's.
	TailReplicas(shard uint32, c Consistency) []string
	// OpenTail opens a tail stream from another node. The stream ends when
	// ctx is done, the node is lost, or Close is called.
	OpenTail(ctx context.Context, node string, req TailSourceRequest) (TailStream, error)
}

// TailSourceRequest is one source's part of a tail.
type TailSourceRequest struct {
	Shards []uint32
	// After holds resume positions (see node.TailSpec.After).
	After  map[uint32]node.TailPosition
	Filter *scopev1.TailRequest // only its filter fields are used
	Buffer int
}

// TailStream is one source's items. Recv and Close may be called from
// different goroutines; Recv is called from one goroutine at a time.
type TailStream interface {
	// Recv blocks for the next item. An error ends the stream.
	Recv() (node.TailItem, error)
	Close()
}

// SetTailSources installs the cluster's tail sources. Call it before
// serving.
func (s *Server) SetTailSources(t TailSources) { s.tailSources = t }

// TailMatcher returns the event predicate of a public tail filter, for a
// node serving another node's tail stream.
func TailMatcher(req *scopev1.TailRequest) (func(*correlate.Event) bool, error) {
	f, err := parseTailFilter(req)
	if err != nil {
		return nil, err
	}
	return f.match, nil
}

func parseTailFilter(m *scopev1.TailRequest) (*filter, error) {
	f, err := parseFilter(filterFields{origin: m.GetOrigin(), pid: m.GetPid(), kinds: m.GetKinds(),
		module: m.GetModule(), function: m.GetFunction(), arity: m.Arity,
		correlationID: m.GetCorrelationId(), rootID: m.GetRootId()})
	if err != nil {
		return nil, err
	}
	return &f, nil
}

// localTail is a TailStream over this node's own subscription.
type localTail struct {
	ctx context.Context
	sub *node.Subscription
}

func openLocalTail(ctx context.Context, n *node.Node, req TailSourceRequest, match func(*correlate.Event) bool) (TailStream, error) {
	sub, err := n.Subscribe(node.TailSpec{Shards: req.Shards, After: req.After, Match: match, Buffer: req.Buffer})
	if err != nil {
		return nil, err
	}
	return &localTail{ctx: ctx, sub: sub}, nil
}

func (l *localTail) Recv() (node.TailItem, error) {
	it, err := l.sub.Next(l.ctx)
	if errors.Is(err, node.ErrClosed) {
		err = fmt.Errorf("%w: tail subscription ended", err)
	}
	return it, err
}

func (l *localTail) Close() { l.sub.Close() }
