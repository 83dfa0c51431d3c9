package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// maxInternalMessage bounds a node-to-node request or response.
const maxInternalMessage = 64 << 20

// Handler returns the node-to-node API (scope.node.v1.NodeService), to be
// mounted on the node's HTTP mux.
func (c *Cluster) Handler() (string, http.Handler) {
	return nodev1connect.NewNodeServiceHandler(nodeService{c}, connect.WithReadMaxBytes(maxInternalMessage),
		connect.WithInterceptors(protocolInterceptor{c}))
}

// nodeService implements scope.node.v1.NodeService over the local node.
type nodeService struct{ c *Cluster }

var _ nodev1connect.NodeServiceHandler = nodeService{}

func (s nodeService) OpenReplica(_ context.Context, req *connect.Request[nodev1.OpenReplicaRequest]) (*connect.Response[nodev1.OpenReplicaResponse], error) {
	if got := req.Msg.GetShards(); got != s.c.cfg.Shards {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("cluster: this node has %d shards, the caller %d", s.c.cfg.Shards, got))
	}
	if s.c.isDraining() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("cluster: this node is leaving"))
	}
	r, err := s.c.node.OpenReplica(req.Msg.GetShard())
	if err != nil {
		return nil, internalError(err)
	}
	applied, _, _ := r.Status()
	return connect.NewResponse(&nodev1.OpenReplicaResponse{AppliedIndex: applied}), nil
}

func (s nodeService) ReplicaStatus(_ context.Context, req *connect.Request[nodev1.ReplicaStatusRequest]) (*connect.Response[nodev1.ReplicaStatusResponse], error) {
	r := s.c.node.Replica(req.Msg.GetShard())
	if r == nil {
		if !s.c.hostedOpen.Load() {
			// Starting: the HTTP server and gossip come up before the
			// replicas on disk are reopened. "No replica" now could be
			// false, and a leader that suspects this node of a lost disk
			// would remove it from its groups on that word.
			return nil, connect.NewError(connect.CodeUnavailable,
				errors.New("cluster: this node is starting: the replicas in its data directory are not reopened yet"))
		}
		return connect.NewResponse(&nodev1.ReplicaStatusResponse{}), nil
	}
	applied, failed := r.Progress()
	st := r.Reshard()
	resp := &nodev1.ReplicaStatusResponse{Exists: true, AppliedIndex: applied, Leader: r.IsLeader(),
		Failed: failed != nil, CommitIndex: r.Raft().CommitIndex(),
		LayoutShards: st.Layout.Shards, AwaitingHandoff: st.Awaiting, Handoffs: uint32(st.Handoffs)}
	if f := r.Raft().GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			resp.Members = append(resp.Members, string(s.ID))
		}
	}
	return connect.NewResponse(resp), nil
}

// DropReplica deletes this node's replica of a shard whose group removed
// it. The caller's word is not enough (a stale, misdirected or forged call
// must not destroy a live copy: D29): the replica must not lead, and the
// shard's leader, asked by this node, must confirm that its group no
// longer names this node, with a commit index covering the replica's log
// and the claimed removal index (leaderDisowns). The drop itself is
// cancelled if an OpenReplica returned the replica meanwhile (a leader
// re-adding this node). When in doubt it refuses; the orphan check
// (orphans.go) drops a replica that really was removed later.
func (s nodeService) DropReplica(ctx context.Context, req *connect.Request[nodev1.DropReplicaRequest]) (*connect.Response[nodev1.DropReplicaResponse], error) {
	shard, removedAt := req.Msg.GetShard(), req.Msg.GetRemovedAt()
	r := s.c.node.Replica(shard)
	if r == nil {
		// Nothing open: clear what an interrupted drop may have left.
		if err := s.c.node.DropReplica(shard); err != nil {
			return nil, internalError(err)
		}
		return connect.NewResponse(&nodev1.DropReplicaResponse{}), nil
	}
	if s.c.stillMember(r, removedAt) {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("cluster: shard %d lists this node as a member in a configuration newer than its removal (index %d)",
				shard, removedAt))
	}
	seq, _ := r.LastOpen()
	leader, commit, why := s.c.leaderDisowns(ctx, r, removedAt)
	if why != "" {
		s.c.metrics.dropsRefused.Inc()
		s.c.logger.Warn("refused DropReplica: the shard's leader does not confirm the removal", "shard", shard,
			"removed_at", removedAt, "why", why)
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("cluster: shard %d: not dropped: %s", shard, why))
	}
	dropped, err := s.c.node.DropReplicaUnopened(shard, r, seq)
	if err != nil {
		return nil, internalError(err)
	}
	if !dropped {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("cluster: shard %d: not dropped: reopened meanwhile (a leader is adding this node back)", shard))
	}
	s.c.logger.Info("dropped replica", "shard", shard, "leader", leader, "leader_commit", commit)
	return connect.NewResponse(&nodev1.DropReplicaResponse{}), nil
}

func (s nodeService) DeliverNotices(ctx context.Context, req *connect.Request[nodev1.DeliverNoticesRequest]) (*connect.Response[nodev1.DeliverNoticesResponse], error) {
	b, err := correlate.DecodeBatch(req.Msg.GetBatch())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	if len(b.Events) > 0 || len(b.Acked) > 0 || b.Retention != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("cluster: a notice batch may hold only notices"))
	}
	if err := s.c.node.ProposeNotices(req.Msg.GetShard(), b.Notices); err != nil {
		return nil, internalError(err)
	}
	return connect.NewResponse(&nodev1.DeliverNoticesResponse{}), nil
}

func (s nodeService) Split(ctx context.Context, req *connect.Request[nodev1.SplitRequest]) (*connect.Response[nodev1.SplitResponse], error) {
	if req.Msg.GetPrepareOnly() {
		if err := s.c.node.PrepareSplit(ctx, req.Msg.GetShard(), req.Msg.GetShards()); err != nil {
			return nil, internalError(err)
		}
		return connect.NewResponse(&nodev1.SplitResponse{}), nil
	}
	split, err := s.c.node.Split(ctx, req.Msg.GetShard(), req.Msg.GetShards())
	if err != nil {
		return nil, internalError(err)
	}
	return connect.NewResponse(&nodev1.SplitResponse{Split: split}), nil
}

func (s nodeService) Adopt(ctx context.Context, req *connect.Request[nodev1.AdoptRequest]) (*connect.Response[nodev1.AdoptResponse], error) {
	m := req.Msg
	a := correlate.Adoption{From: m.GetFrom(), Chunk: m.GetChunk(), Of: m.GetOf(), Records: m.GetRecords()}
	if err := s.c.node.Adopt(ctx, m.GetShard(), a); err != nil {
		return nil, internalError(err)
	}
	return connect.NewResponse(&nodev1.AdoptResponse{}), nil
}

func (s nodeService) ShardRead(ctx context.Context, req *connect.Request[nodev1.ShardReadRequest]) (*connect.Response[nodev1.ShardReadResponse], error) {
	shard := req.Msg.GetShard()
	r := s.c.node.Replica(shard)
	switch {
	case r == nil:
		return nil, internalError(fmt.Errorf("%w: shard %d", node.ErrNoShard, shard))
	case req.Msg.GetRequireLeader() && !r.IsLeader():
		addr, id := r.Leader()
		return nil, internalError(&node.NotLeaderError{Shard: shard, LeaderID: string(id), LeaderAddr: string(addr)})
	}
	if _, failed := r.Progress(); failed != nil {
		// Its store stopped at the failed write: whatever it answered
		// would silently miss everything committed since.
		return nil, internalError(failed)
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up (a hedged read another replica answered):
		// skip the store read.
		return nil, internalError(err)
	}
	if req.Msg.GetRequireLeader() {
		// A LEADER read is linearizable: leadership confirmed by a quorum
		// and the store caught up with the commit index.
		if err := r.ReadIndex(ctx); err != nil {
			return nil, internalError(err)
		}
	}
	lag := r.Lag()
	result, err := readLocal(s.c.node.Store(), s.c.cfg.Name, shard, req.Msg.GetMethod(), req.Msg.GetArgs())
	if err != nil {
		return nil, internalError(err)
	}
	return connect.NewResponse(&nodev1.ShardReadResponse{Result: result, Node: s.c.cfg.Name,
		LagEntries: lag.Entries, SinceLeaderContactMs: uint64(lag.SinceContact.Milliseconds())}), nil
}

// Shard read arguments, msgpack-encoded on the wire.
type (
	getArgs  struct{ ID correlate.EventID }
	treeArgs struct {
		Root      correlate.EventID
		MaxFrames int
	}
	procArgs struct {
		Process correlate.Process
		AtNs    int64
	}
	flowArgs struct {
		A, B         correlate.Process
		FromNs, ToNs int64
		Limit        int
	}
	stateResult struct {
		Event correlate.Event
		Found bool
	}
)

// edgesManyArgs are an edges_many read's: at most store.MaxEdgesMany ids.
type edgesManyArgs struct{ IDs []correlate.EventID }

// wirePage is a store.Page on the node-to-node wire. Its events use
// correlate's hand-written event codec: msgpack reflection over
// correlate.Event, encoding and decoding, was about 30% of a remote Events
// read's CPU (BenchmarkRemoteEvents).
type wirePage struct {
	Events  [][]byte
	More    bool
	Next    store.Position
	Scanned int
}

func toWirePage(p *store.Page) *wirePage {
	w := &wirePage{Events: make([][]byte, len(p.Events)), More: p.More, Next: p.Next, Scanned: p.Scanned}
	for i := range p.Events {
		w.Events[i] = correlate.AppendEvent(nil, &p.Events[i])
	}
	return w
}

// page decodes w; a malformed event names its index.
func (w *wirePage) page() (store.Page, error) {
	p := store.Page{Events: make([]correlate.Event, len(w.Events)), More: w.More, Next: w.Next, Scanned: w.Scanned}
	for i, b := range w.Events {
		if err := correlate.DecodeEvent(b, &p.Events[i]); err != nil {
			return store.Page{}, fmt.Errorf("events[%d]: %w", i, err)
		}
	}
	return p, nil
}

// readLocal runs one shard read on the local store; self (this node's name)
// is reported as the node that answered a stats read.
func readLocal(st *store.Store, self string, shard uint32, method string, args []byte) ([]byte, error) {
	bad := func(err error) error {
		return fmt.Errorf("%w: %s arguments: %w", store.ErrInvalidQuery, method, err)
	}
	switch method {
	case "get":
		var a getArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		e, err := st.Get(shard, a.ID)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(&e)
	case "edges": // asked by nodes older than edges_many, during a rolling upgrade
		var a getArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		links, err := st.Edges(shard, a.ID)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(links)
	case "edges_many":
		var a edgesManyArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		links, err := st.EdgesMany(shard, a.IDs)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(links)
	case "events":
		var q store.Query
		if err := msgpack.Unmarshal(args, &q); err != nil {
			return nil, bad(err)
		}
		p, err := st.Events(shard, q)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(toWirePage(&p))
	case "call_tree":
		var a treeArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		t, err := st.CallTree(shard, a.Root, a.MaxFrames)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(t)
	case "call_stack_at":
		var a procArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		frames, err := st.CallStackAt(shard, a.Process, a.AtNs)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(frames)
	case "message_flow":
		var a flowArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		p, err := st.MessageFlow(shard, a.A, a.B, a.FromNs, a.ToNs, a.Limit)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(toWirePage(&p))
	case "state_at":
		var a procArgs
		if err := msgpack.Unmarshal(args, &a); err != nil {
			return nil, bad(err)
		}
		e, ok, err := st.StateAt(shard, a.Process, a.AtNs)
		if err != nil {
			return nil, err
		}
		return msgpack.Marshal(&stateResult{Event: e, Found: ok})
	case "stats":
		stats, err := st.Stats(shard)
		if err != nil {
			return nil, err
		}
		stats.Node = self
		return msgpack.Marshal(&stats)
	}
	return nil, fmt.Errorf("%w: unknown shard read %q", store.ErrInvalidQuery, method)
}

// Keyring changes or lists this node's gossip keyring (keyring.go).
func (s nodeService) Keyring(_ context.Context, req *connect.Request[nodev1.KeyringRequest]) (*connect.Response[nodev1.KeyringResponse], error) {
	op, key := req.Msg.GetOperation(), req.Msg.GetKey()
	if op != scopev1.KeyringOperation_KEYRING_OPERATION_LIST {
		if _, err := ParseGossipKey(encodeGossipKey(key)); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	keys, err := s.c.changeKeyringLocal(op, key)
	switch {
	case err == nil:
	case errors.Is(err, ErrNoKeyring), errors.Is(err, ErrKeyringRefused):
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	default:
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	if op != scopev1.KeyringOperation_KEYRING_OPERATION_LIST {
		s.c.logger.Info("gossip keyring changed", "op", op.String(), "key", KeyFingerprint(key), "keys", keys)
	}
	return connect.NewResponse(&nodev1.KeyringResponse{Keys: keys}), nil
}

// TransferLeadership hands the leadership of a shard this node leads to
// another voter (transfer.go).
func (s nodeService) TransferLeadership(_ context.Context, req *connect.Request[nodev1.TransferLeadershipRequest]) (*connect.Response[nodev1.TransferLeadershipResponse], error) {
	r := s.c.node.Replica(req.Msg.GetShard())
	if r == nil || !r.IsLeader() {
		// The leadership moved between the forwarding node's lookup and
		// this call: not-leader is UNAVAILABLE, asking again reaches the
		// new leader.
		return nil, connect.NewError(connect.CodeUnavailable,
			fmt.Errorf("%w: shard %d: this node does not lead it", node.ErrNotLeader, req.Msg.GetShard()))
	}
	leader, err := s.c.transferLocal(r, req.Msg.GetTo())
	if err != nil {
		return nil, transferError(err)
	}
	return connect.NewResponse(&nodev1.TransferLeadershipResponse{Leader: leader}), nil
}

// transferError maps a transfer's failure to its Connect code.
func transferError(err error) error {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, ErrNotVoter), errors.Is(err, ErrConfig):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, ErrNoOtherVoter):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewError(connect.CodeUnavailable, err)
}

// internalError maps a node or store error to the Connect code the calling
// node classifies back (see remoteError).
func internalError(err error) *connect.Error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, store.ErrInvalidQuery):
		code = connect.CodeInvalidArgument
	case errors.Is(err, store.ErrScanLimit), errors.Is(err, node.ErrFull):
		code = connect.CodeResourceExhausted
	case errors.Is(err, node.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, node.ErrNotLeader), errors.Is(err, node.ErrNoShard), errors.Is(err, node.ErrClosed),
		errors.Is(err, node.ErrReplicaFailed), errors.Is(err, node.ErrShardClosed), errors.Is(err, store.ErrClosed),
		errors.Is(err, node.ErrAwaitingHandoff):
		code = connect.CodeUnavailable
	case errors.Is(err, node.ErrConfig):
		code = connect.CodeInvalidArgument
		code = connect.CodeUnavailable
	}
	return connect.NewError(code, err)
}

// remoteError turns a Connect error from another node back into the
// sentinel the rpc layer classifies, keeping the remote message.
func remoteError(addr string, err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("%w: %s: %w", node.ErrNoShard, addr, err)
	}
	if ce.Code() == connect.CodeFailedPrecondition && ce.Meta().Get(ProtocolHeader) != "" {
		// A protocol refusal: no retry or other replica changes it.
		return connect.NewError(ce.Code(), fmt.Errorf("%s: %s", addr, ce.Message()))
	}
	var sentinel error
	switch ce.Code() {
	case connect.CodeNotFound:
		sentinel = store.ErrNotFound
	case connect.CodeInvalidArgument:
		sentinel = store.ErrInvalidQuery
	case connect.CodeResourceExhausted:
		sentinel = store.ErrScanLimit
	case connect.CodeDeadlineExceeded:
		sentinel = node.ErrTimeout
	case connect.CodeUnavailable, connect.CodeFailedPrecondition, connect.CodeCanceled:
		sentinel = node.ErrNoShard
	default:
		return fmt.Errorf("cluster: %s: %w", addr, err)
	}
	return fmt.Errorf("%w: %s: %s", sentinel, addr, ce.Message())
}
