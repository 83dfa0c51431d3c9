package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"connectrpc.com/connect"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// Resolver returns the rpc layer's shard resolver for this cluster. At
// ConsistencyLeader a shard has one reader: the local replica when it
// leads, else the leader's node. At ConsistencyAny the candidates are, best
// first: the local replica, the leader's node, then the other nodes that
// hold a replica (the local raft configuration, gossip, and — when this
// node holds none — the shard's desired replica set), so a hedged read has
// a second replica to ask.
func (c *Cluster) Resolver(local rpc.Resolver) rpc.Resolver { return resolver{c: c, local: local} }

// maxCandidates is how many readers Readers lists: the planner asks the
// first and hedges to the second, so looking further is wasted work.
const maxCandidates = 2

type resolver struct {
	c     *Cluster
	local rpc.Resolver
}

func (r resolver) Readers(shard uint32, cons rpc.Consistency) ([]rpc.ShardReader, error) {
	var out []rpc.ShardReader
	local, err := r.local.Readers(shard, cons)
	switch {
	case err == nil && cons == rpc.ConsistencyLeader:
		return local, nil
	case err == nil:
		out = append(out, local...)
	case !errors.Is(err, node.ErrNotLeader) && !errors.Is(err, node.ErrNoShard) && !errors.Is(err, node.ErrReplicaFailed):
		return nil, err
	}
	leader, addr, lerr := r.c.leaderOf(shard)
	if cons == rpc.ConsistencyLeader {
		if lerr != nil {
			return nil, fmt.Errorf("%w: shard %d: %w", node.ErrNoShard, shard, lerr)
		}
		return []rpc.ShardReader{remoteReader{p: r.c.peers, addr: addr, requireLeader: true}}, nil
	}
	seen := map[string]bool{r.c.cfg.Name: true}
	if lerr == nil && leader != r.c.cfg.Name {
		seen[leader] = true
		out = append(out, remoteReader{p: r.c.peers, addr: addr})
	}
	if len(out) >= maxCandidates {
		return out, nil
	}
	for _, m := range r.c.replicaHolders(shard) {
		if !seen[m.Name] {
			seen[m.Name] = true
			out = append(out, remoteReader{p: r.c.peers, addr: m.Meta.HTTPAddr})
		}
	}
	if len(out) < maxCandidates && r.c.node.Replica(shard) == nil {
		// This node sees the group only through gossip, which names the
		// leader alone: the desired set names the likely followers.
		names, byName := r.c.placementMembers()
		for _, name := range Placement(shard, names, r.c.cfg.Replicas) {
			if !seen[name] {
				seen[name] = true
				out = append(out, remoteReader{p: r.c.peers, addr: byName[name].Meta.HTTPAddr})
			}
		}
	}
	if len(out) == 0 {
		if lerr == nil {
			lerr = err
		}
		return nil, fmt.Errorf("%w: shard %d: no replica to read: %w", node.ErrNoShard, shard, lerr)
	}
	return out, nil
}

// remoteReader reads one shard on another node through NodeService.ShardRead.
type remoteReader struct {
	p             *peers
	addr          string
	requireLeader bool
}

var _ rpc.ShardReader = remoteReader{}

// read sends one shard read and decodes its result into out.
func (r remoteReader) read(ctx context.Context, shard uint32, method string, args, out any) error {
	enc, err := msgpack.Marshal(args)
	if err != nil {
		return err
	}
	var result []byte
	err = r.p.call(ctx, r.addr, func(ctx context.Context, c *peer) error {
		resp, err := c.node.ShardRead(ctx, connect.NewRequest(&nodev1.ShardReadRequest{
			Shard: shard, Method: method, Args: enc, RequireLeader: r.requireLeader}))
		if err != nil {
			return err
		}
		result = resp.Msg.GetResult()
		rpc.ReportLag(ctx, shard, resp.Msg.GetNode(), node.Lag{Entries: resp.Msg.GetLagEntries(),
			SinceContact: time.Duration(resp.Msg.GetSinceLeaderContactMs()) * time.Millisecond})
		return nil
	})
	if err != nil {
		return remoteError(r.addr, err)
	}
	if err := msgpack.Unmarshal(result, out); err != nil {
		return fmt.Errorf("cluster: shard %d %s from %s: undecodable result: %w", shard, method, r.addr, err)
	}
	return nil
}

func (r remoteReader) Get(ctx context.Context, shard uint32, id correlate.EventID) (correlate.Event, error) {
	var e correlate.Event
	err := r.read(ctx, shard, "get", &getArgs{ID: id}, &e)
	return e, err
}

func (r remoteReader) Events(ctx context.Context, shard uint32, q store.Query) (store.Page, error) {
	return r.readPage(ctx, shard, "events", &q)
}

// readPage runs a shard read whose result is a wirePage.
func (r remoteReader) readPage(ctx context.Context, shard uint32, method string, args any) (store.Page, error) {
	var w wirePage
	if err := r.read(ctx, shard, method, args, &w); err != nil {
		return store.Page{}, err
	}
	p, err := w.page()
	if err != nil {
		return store.Page{}, fmt.Errorf("cluster: shard %d %s from %s: undecodable result: %w", shard, method, r.addr, err)
	}
	return p, nil
}

func (r remoteReader) EdgesMany(ctx context.Context, shard uint32, ids []correlate.EventID) ([][]correlate.Link, error) {
	var links [][]correlate.Link
	if err := r.read(ctx, shard, "edges_many", &edgesManyArgs{IDs: ids}, &links); err != nil {
		return nil, err
	}
	if len(links) != len(ids) {
		return nil, fmt.Errorf("cluster: shard %d edges_many from %s: %d answers for %d ids", shard, r.addr, len(links), len(ids))
	}
	return links, nil
}

func (r remoteReader) CallTree(ctx context.Context, shard uint32, root correlate.EventID, maxFrames int) (*store.CallTree, error) {
	var t store.CallTree
	if err := r.read(ctx, shard, "call_tree", &treeArgs{Root: root, MaxFrames: maxFrames}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

func (r remoteReader) CallStackAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) ([]store.Frame, error) {
	var frames []store.Frame
	err := r.read(ctx, shard, "call_stack_at", &procArgs{Process: p, AtNs: atNs}, &frames)
	return frames, err
}

func (r remoteReader) MessageFlow(ctx context.Context, shard uint32, a, b correlate.Process, fromNs, toNs int64, limit int) (store.Page, error) {
	return r.readPage(ctx, shard, "message_flow", &flowArgs{A: a, B: b, FromNs: fromNs, ToNs: toNs, Limit: limit})
}

func (r remoteReader) StateAt(ctx context.Context, shard uint32, p correlate.Process, atNs int64) (correlate.Event, bool, error) {
	var res stateResult
	err := r.read(ctx, shard, "state_at", &procArgs{Process: p, AtNs: atNs}, &res)
	return res.Event, res.Found, err
}

func (r remoteReader) Stats(ctx context.Context, shard uint32) (store.ShardStats, error) {
	var s store.ShardStats
	err := r.read(ctx, shard, "stats", struct{}{}, &s)
	return s, err
}

// forwarder sends a shard's part of an ingest request to the shard's
// leader through its public Ingest method, marked as forwarded.
type forwarder struct{ c *Cluster }

// Forwarding retries while the shard has no leader or the node it asked
// was not the leader (an election or a leadership change in progress):
// at most maxForwardAttempts, backing off up to maxForwardBackoff, and never
// past the request's deadline. Retrying is safe: events carry their ids and
// the shard's dedup window drops a part that did land.
const (
	maxForwardAttempts = 8
	maxForwardBackoff  = 500 * time.Millisecond
)

func (f forwarder) Forward(ctx context.Context, shard uint32, events []correlate.Event, d node.Durability) (int, error) {
	backoff := 25 * time.Millisecond
	for attempt := 1; ; attempt++ {
		dups, err := f.forwardOnce(ctx, shard, events, d)
		if err == nil || attempt == maxForwardAttempts ||
			!(errors.Is(err, ErrNoLeader) || errors.Is(err, node.ErrNotLeader)) {
			return dups, err
		}
		f.c.metrics.forwardRetries.Inc()
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxForwardBackoff)
	}
}

// forwardOnce makes one attempt; dups is the leader's count of events it
// had stored already.
func (f forwarder) forwardOnce(ctx context.Context, shard uint32, events []correlate.Event, d node.Durability) (dups int, _ error) {
	name, addr, err := f.c.leaderOf(shard)
	if err == nil && name == f.c.cfg.Name {
		// This node leads (or just regained) the shard: the node proposes
		// here itself (see node.Redirect); a forward to itself could wait
		// on its own writer pool.
		return 0, &node.NotLeaderError{Shard: shard, LeaderID: name}
	}
	if err != nil {
		if f.c.node.Replica(shard) != nil {
			// Hosted here, but no leader known: an election, or this node
			// is cut off from the others. Not "not hosted".
			return 0, fmt.Errorf("%w: %w", &node.NotLeaderError{Shard: shard}, err)
		}
		return 0, fmt.Errorf("%w: %w", node.ErrNoShard, err)
	}
	req := connect.NewRequest(&scopev1.IngestRequest{Events: rpc.EventsToProto(events), Durability: durabilityToProto(d)})
	req.Header().Set(rpc.ForwardedHeader, f.c.cfg.Name)
	if node.IsRedirect(ctx) {
		req.Header().Set(rpc.RedirectedHeader, "1")
	}
	err = f.c.peers.call(ctx, addr, func(ctx context.Context, c *peer) error {
		resp, err := c.ingest.Ingest(ctx, req)
		if err == nil {
			dups = int(resp.Msg.GetDuplicates())
		}
		return err
	})
	if err == nil {
		f.c.metrics.forwards.Inc()
		return dups, nil
	}
	f.c.metrics.forwardFailures.Inc()
	return 0, forwardOutcome(shard, addr, err)
}

// forwardOutcome classifies a failed forward of one shard's part to the
// leader at addr. It is a refusal (node.Refused) only when no event can
// have been stored: the request was never sent (no client for the address,
// the dial failed), the leader answered that it refused the whole part
// (its IngestResponse detail says so), or it rejected the request before
// ingesting anything (invalid, too large, unauthorised). Anything else —
// the connection broke after the request was sent, the leader's outcome
// was unknown, the call timed out — is ErrOutcomeUnknown: the client
// resends with the same ids.
func forwardOutcome(shard uint32, addr string, err error) error {
	var op *net.OpError
	if errors.Is(err, ErrUnknownPeer) || (errors.As(err, &op) && op.Op == "dial") {
		return fmt.Errorf("%w: forward not sent: %v", &node.NotLeaderError{Shard: shard, LeaderAddr: addr}, err)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("%w: shard %d: forward to %s: %v", node.ErrOutcomeUnknown, shard, addr, err)
	}
	if resp := ingestDetail(ce); resp != nil {
		// The leader ingested the part and says what happened to it. The
		// forwarded request holds this shard's events only.
		if resp.GetRefused() == 0 || resp.GetUnknown() > 0 || resp.GetAccepted() > 0 || resp.GetDuplicates() > 0 {
			return fmt.Errorf("%w: shard %d at %s: %d accepted, %d duplicates, %d refused, %d unknown: %s",
				node.ErrOutcomeUnknown, shard, addr, resp.GetAccepted(), resp.GetDuplicates(), resp.GetRefused(),
				resp.GetUnknown(), ce.Message())
		}
		switch ce.Code() {
		case connect.CodeResourceExhausted:
			return fmt.Errorf("%w: shard %d at %s: %s", node.ErrFull, shard, addr, ce.Message())
		case connect.CodeInvalidArgument:
			return fmt.Errorf("%w: shard %d at %s: %s", node.ErrRejected, shard, addr, ce.Message())
		}
		leader := ""
		if srs := resp.GetShards(); len(srs) == 1 {
			leader = srs[0].GetLeader()
		}
		return fmt.Errorf("%w: %s", &node.NotLeaderError{Shard: shard, LeaderID: leader, LeaderAddr: addr}, ce.Message())
	}
	switch ce.Code() {
	case connect.CodeInvalidArgument, connect.CodeResourceExhausted, connect.CodeUnauthenticated,
		connect.CodePermissionDenied, connect.CodeUnimplemented:
		// Refused before ingesting (validation, size limit, auth; a
		// disagreement between versions, as this node validated already).
		return fmt.Errorf("%w: shard %d leader %s refused forwarded events: %s: %s",
			node.ErrRejected, shard, addr, ce.Code(), ce.Message())
	case connect.CodeDeadlineExceeded:
		return fmt.Errorf("%w: %w: shard %d at %s: %s", node.ErrOutcomeUnknown, node.ErrTimeout, shard, addr, ce.Message())
	}
	return fmt.Errorf("%w: shard %d: forward to %s: %s: %s", node.ErrOutcomeUnknown, shard, addr, ce.Code(), ce.Message())
}

// ingestDetail returns the IngestResponse a failed Ingest call carries, or
// nil.
func ingestDetail(ce *connect.Error) *scopev1.IngestResponse {
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			continue
		}
		if resp, ok := v.(*scopev1.IngestResponse); ok {
			return resp
		}
	}
	return nil
}

func durabilityToProto(d node.Durability) scopev1.Durability {
	if d == node.Accepted {
		return scopev1.Durability_DURABILITY_ACCEPTED
	}
	return scopev1.Durability_DURABILITY_COMMITTED
}

// noticeDelivery is the node's RemoteDelivery: notices for a shard led on
// another node go to that node's NodeService.DeliverNotices.
type noticeDelivery struct{ c *Cluster }

var _ node.RemoteDelivery = noticeDelivery{}

// Route names the shard's leader (the local raft view first, then gossip).
func (d noticeDelivery) Route(shard uint32) string {
	name, _, err := d.c.leaderOf(shard)
	if err != nil {
		return ""
	}
	return name
}

// Adopt implements node.RemoteAdopter: it proposes a handoff chunk to a
// split child on the node named to, which refuses it unless it leads the
// child, and waits for the commit there.
func (d noticeDelivery) Adopt(ctx context.Context, to string, child uint32, a correlate.Adoption) error {
	m, ok := d.c.member(to)
	if !ok || m.State != MemberAlive {
		return fmt.Errorf("%w: %q (shard %d's leader) is not alive", ErrUnknownPeer, to, child)
	}
	return d.c.peers.call(ctx, m.Meta.HTTPAddr, func(ctx context.Context, p *peer) error {
		_, err := p.node.Adopt(ctx, connect.NewRequest(&nodev1.AdoptRequest{Shard: child, From: a.From, Chunk: a.Chunk, Of: a.Of, Records: a.Records}))
		return err
	})
}

var _ node.RemoteAdopter = noticeDelivery{}

// Deliver delivers notices for shard to the node named to, which refuses
// them unless it leads shard, and waits for the commit there, within ctx
// and RPCTimeout.
func (d noticeDelivery) Deliver(ctx context.Context, to string, shard uint32, notices []correlate.Notice) error {
	m, ok := d.c.member(to)
	if !ok || m.State != MemberAlive {
		return fmt.Errorf("%w: %q (shard %d's leader) is not alive", ErrUnknownPeer, to, shard)
	}
	addr := m.Meta.HTTPAddr
	batch := correlate.AppendBatch(nil, &correlate.Batch{Notices: notices})
	return d.c.peers.call(ctx, addr, func(ctx context.Context, p *peer) error {
		_, err := p.node.DeliverNotices(ctx, connect.NewRequest(&nodev1.DeliverNoticesRequest{Shard: shard, Batch: batch}))
		return err
	})
}
