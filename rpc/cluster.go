package rpc

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// ClusterInfo is what the cluster layer tells ClusterService. Without it
// (SetCluster never called) the node answers as a one-node cluster.
type ClusterInfo interface {
	// Members lists every known member, this node included.
	Members() []*scopev1.Member
	// ShardLeader names the node leading shard, or "" if unknown.
	ShardLeader(shard uint32) string
	// Join contacts members at the given gossip addresses.
	Join(addrs []string) (int, error)
	// Leave drains this node (moves its replicas away) and leaves.
	Leave(ctx context.Context) error
	// Keyring applies a keyring operation on every alive member (key is
	// decoded; nil for LIST) and reports each member's outcome.
	Keyring(ctx context.Context, op scopev1.KeyringOperation, key []byte) *scopev1.KeyringResponse
	// TransferLeadership hands shard's leadership to the voter named to
	// ("" for any); its errors are Connect errors.
	TransferLeadership(ctx context.Context, shard uint32, to string) (from, leader string, err error)
	// Reshard grows the cluster's shard count to shards (doublings), on
	// every shard's leader, and waits for every new shard's handoff; its
	// errors are Connect errors or wrap node.ErrConfig.
	Reshard(ctx context.Context, shards uint32) (from uint32, splits int, err error)
	// Name is this node's name.
	Name() string
	// ReplicationFactor is the desired number of replicas per shard (R).
	ReplicationFactor() int
	// Protocol is the protocol version the cluster speaks (0 while
	// unknown); ProtocolError says why this node cannot speak it, or nil.
	Protocol() uint32
	ProtocolError() error
	// ShardCountError says why this node takes no part in the cluster
	// because it was started with another shard count, or nil.
	ShardCountError() error
}

// SetCluster installs the cluster layer's view of membership.
func (s *Server) SetCluster(c ClusterInfo) { s.cluster = c }

// clusterService implements scope.v1.ClusterService.
type clusterService struct{ s *Server }

var _ scopev1connect.ClusterServiceHandler = clusterService{}

func (c clusterService) Members(context.Context, *connect.Request[scopev1.MembersRequest]) (*connect.Response[scopev1.MembersResponse], error) {
	if c.s.cluster != nil {
		return connect.NewResponse(&scopev1.MembersResponse{Members: c.s.cluster.Members(), Protocol: c.s.cluster.Protocol()}), nil
	}
	n := c.s.node
	m := &scopev1.Member{Name: n.ID(), Status: scopev1.MemberStatus_MEMBER_STATUS_ALIVE, Version: c.s.cfg.Version}
	for _, r := range n.Replicas() {
		if r.IsLeader() {
			m.ShardsLed = append(m.ShardsLed, r.Shard())
		}
	}
	m.RaftAddr = c.s.raftAddr()
	return connect.NewResponse(&scopev1.MembersResponse{Members: []*scopev1.Member{m}}), nil
}

// raftAddr is this node's raft address as its groups' configurations
// record it.
func (s *Server) raftAddr() string {
	for _, r := range s.node.Replicas() {
		f := r.Raft().GetConfiguration()
		if f.Error() != nil {
			continue
		}
		for _, srv := range f.Configuration().Servers {
			if string(srv.ID) == s.node.ID() {
				return string(srv.Address)
			}
		}
	}
	return ""
}

func (c clusterService) Shards(_ context.Context, req *connect.Request[scopev1.ShardsRequest]) (*connect.Response[scopev1.ShardsResponse], error) {
	const proc = scopev1connect.ClusterServiceShardsProcedure
	n := c.s.node
	for i, s := range req.Msg.GetShards() {
		if s >= n.Shards() {
			return nil, c.s.fail(proc, invalid("shards["+itoa(i)+"]", s, "must be below the shard count "+itoa(int(n.Shards()))))
		}
	}
	// The desired R, not what the groups hold now: a group may be short
	// of R (no spare for a dead node) and the table shows that per shard.
	resp := &scopev1.ShardsResponse{ShardCount: n.Shards(), ReplicationFactor: 1}
	if c.s.cluster != nil {
		resp.ReplicationFactor = uint32(c.s.cluster.ReplicationFactor())
	}
	for shard := range n.Shards() {
		if want := req.Msg.GetShards(); len(want) > 0 && !slices.Contains(want, shard) {
			continue
		}
		r := n.Replica(shard)
		if r == nil {
			// Hosted elsewhere: this node knows the leader from gossip.
			if c.s.cluster != nil {
				resp.Shards = append(resp.Shards, &scopev1.ShardInfo{Shard: shard, Leader: c.s.cluster.ShardLeader(shard)})
			}
			continue
		}
		info := &scopev1.ShardInfo{Shard: r.Shard()}
		_, leaderID := r.Leader()
		info.Leader = string(leaderID)
		applied, _ := r.Progress()
		stats := r.Raft().Stats()
		info.Term = parseUint(stats["term"])
		lastIndex := parseUint(stats["last_log_index"])
		if f := r.Raft().GetConfiguration(); f.Error() == nil {
			for _, srv := range f.Configuration().Servers {
				rep := &scopev1.Replica{Node: string(srv.ID), Suffrage: suffrageOf(srv.Suffrage)}
				if string(srv.ID) == n.ID() {
					rep.AppliedIndex = applied
					if lastIndex > applied {
						rep.Lag = lastIndex - applied
					}
				}
				info.Replicas = append(info.Replicas, rep)
			}
		}
		if st, err := n.Store().Stats(r.Shard()); err == nil {
			info.Events = st.Events
		}
		resp.Shards = append(resp.Shards, info)
	}
	return connect.NewResponse(resp), nil
}

func suffrageOf(s raft.ServerSuffrage) scopev1.Suffrage {
	switch s {
	case raft.Voter:
		return scopev1.Suffrage_SUFFRAGE_VOTER
	case raft.Nonvoter:
		return scopev1.Suffrage_SUFFRAGE_NONVOTER
	}
	return scopev1.Suffrage_SUFFRAGE_UNSPECIFIED
}

var errNoCluster = errors.New("this node runs as a single node (scope agent -dev): it has no cluster to join or leave")

func (c clusterService) Join(_ context.Context, req *connect.Request[scopev1.JoinRequest]) (*connect.Response[scopev1.JoinResponse], error) {
	const proc = scopev1connect.ClusterServiceJoinProcedure
	if c.s.cluster == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errNoCluster)
	}
	if len(req.Msg.GetAddrs()) == 0 {
		return nil, c.s.fail(proc, missing("addrs"))
	}
	n, err := c.s.cluster.Join(req.Msg.GetAddrs())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(&scopev1.JoinResponse{Contacted: uint32(n)}), nil
}

func (c clusterService) Leave(ctx context.Context, req *connect.Request[scopev1.LeaveRequest]) (*connect.Response[scopev1.LeaveResponse], error) {
	if c.s.cluster == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errNoCluster)
	}
	if name := req.Msg.GetName(); name != "" && name != c.s.cluster.Name() {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("this node is %q: send Leave to the node that leaves (%q)", c.s.cluster.Name(), name))
	}
	if err := c.s.cluster.Leave(ctx); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(&scopev1.LeaveResponse{}), nil
}

func (c clusterService) Keyring(ctx context.Context, req *connect.Request[scopev1.KeyringRequest]) (*connect.Response[scopev1.KeyringResponse], error) {
	const proc = scopev1connect.ClusterServiceKeyringProcedure
	if c.s.cluster == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			errors.New("this node runs as a single node (scope agent -dev): it has no gossip keyring"))
	}
	op, text := req.Msg.GetOperation(), req.Msg.GetKey()
	var key []byte
	switch op {
	case scopev1.KeyringOperation_KEYRING_OPERATION_LIST:
		if text != "" {
			return nil, c.s.fail(proc, invalid("key", "(not shown)", "LIST takes no key"))
		}
	case scopev1.KeyringOperation_KEYRING_OPERATION_INSTALL, scopev1.KeyringOperation_KEYRING_OPERATION_USE,
		scopev1.KeyringOperation_KEYRING_OPERATION_REMOVE:
		if text == "" {
			return nil, c.s.fail(proc, missing("key"))
		}
		var err error
		if key, err = base64.StdEncoding.DecodeString(text); err != nil {
			return nil, c.s.fail(proc, invalid("key", "(not shown)", "not standard base64"))
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			return nil, c.s.fail(proc, invalid("key", "(not shown)", fmt.Sprintf("decodes to %d bytes: want 16, 24 or 32", n)))
		}
	case scopev1.KeyringOperation_KEYRING_OPERATION_UNSPECIFIED:
		return nil, c.s.fail(proc, missing("operation"))
	default:
		return nil, c.s.fail(proc, invalid("operation", op, "unknown: want LIST, INSTALL, USE or REMOVE"))
	}
	return connect.NewResponse(c.s.cluster.Keyring(ctx, op, key)), nil
}

func (c clusterService) Reshard(ctx context.Context, req *connect.Request[scopev1.ReshardRequest]) (*connect.Response[scopev1.ReshardResponse], error) {
	const proc = scopev1connect.ClusterServiceReshardProcedure
	shards := req.Msg.GetShards()
	n := c.s.node
	if err := node.ValidReshard(n.BaseShards(), n.Shards(), shards); err != nil {
		return nil, c.s.fail(proc, invalid("shards", shards, strings.TrimPrefix(err.Error(), node.ErrConfig.Error()+": ")))
	}
	var from uint32
	var splits int
	var err error
	if c.s.cluster == nil {
		from, splits, err = n.Reshard(ctx, shards)
	} else {
		from, splits, err = c.s.cluster.Reshard(ctx, shards)
	}
	if errors.Is(err, node.ErrConfig) {
		return nil, c.s.fail(proc, invalid("shards", shards, err.Error()))
	}
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("reshard to %d shards: %w (call again to resume)", shards, err))
	}
	return connect.NewResponse(&scopev1.ReshardResponse{From: from, Shards: n.Shards(), Splits: uint32(splits)}), nil
}

func (c clusterService) TransferLeadership(ctx context.Context, req *connect.Request[scopev1.TransferLeadershipRequest]) (*connect.Response[scopev1.TransferLeadershipResponse], error) {
	const proc = scopev1connect.ClusterServiceTransferLeadershipProcedure
	if c.s.cluster == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			errors.New("this node runs as a single node (scope agent -dev): its shards have no other voter"))
	}
	if shard := req.Msg.GetShard(); shard >= c.s.node.Shards() {
		return nil, c.s.fail(proc, invalid("shard", shard, fmt.Sprintf("must be below the shard count %d", c.s.node.Shards())))
	}
	from, leader, err := c.s.cluster.TransferLeadership(ctx, req.Msg.GetShard(), req.Msg.GetTo())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&scopev1.TransferLeadershipResponse{From: from, Leader: leader}), nil
}
