package cluster

import (
	"context"
	"fmt"

	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Info adapts the cluster to the rpc layer's ClusterService.
func (c *Cluster) Info() rpc.ClusterInfo { return info{c} }

type info struct{ c *Cluster }

func (i info) Name() string                     { return i.c.cfg.Name }
func (i info) ReplicationFactor() int           { return i.c.cfg.Replicas }
func (i info) Join(addrs []string) (int, error) { return i.c.Join(addrs) }
func (i info) Leave(ctx context.Context) error  { return i.c.Leave(ctx) }

func (i info) TransferLeadership(ctx context.Context, shard uint32, to string) (string, string, error) {
	from, leader, err := i.c.TransferLeadership(ctx, shard, to)
	if err != nil {
		return "", "", transferError(err)
	}
	return from, leader, nil
}

func (i info) Reshard(ctx context.Context, shards uint32) (uint32, int, error) {
	return i.c.Reshard(ctx, shards)
}

func (i info) Keyring(ctx context.Context, op scopev1.KeyringOperation, key []byte) *scopev1.KeyringResponse {
	return i.c.Keyring(ctx, op, key)
}

func (i info) Protocol() uint32 {
	v, _ := i.c.Protocol()
	return uint32(v)
}

func (i info) ProtocolError() error { return i.c.ProtocolError() }

func (i info) ShardCountError() error { return i.c.ShardCountError() }

func (i info) ShardLeader(shard uint32) string {
	name, _, err := i.c.leaderOf(shard)
	if err != nil {
		return ""
	}
	return name
}

func (i info) Members() []*scopev1.Member {
	var out []*scopev1.Member
	members := i.c.members.Members()
	v := clusterProtocol(i.c.sameCluster(members))
	for _, m := range members {
		pm := &scopev1.Member{
			Name:        m.Name,
			HttpAddr:    m.Meta.HTTPAddr,
			RaftAddr:    m.Meta.RaftAddr,
			GossipAddr:  m.Addr,
			Version:     m.Meta.Version,
			ShardsLed:   m.Meta.Led,
			ProtocolMin: uint32(m.Meta.Protocol.Min),
			ProtocolMax: uint32(m.Meta.Protocol.Max),
		}
		if m.State == MemberAlive {
			switch {
			case m.MetaErr != nil:
				pm.Excluded = "metadata unreadable: " + m.MetaErr.Error()
			case i.c.foreign(m):
				pm.Excluded = "member of another cluster"
			case !speaksProtocol(m, v):
				pm.Excluded = fmt.Sprintf("reads protocol %s, the cluster speaks %d", m.Meta.Protocol, v)
			case m.Meta.BaseShards() != i.c.cfg.Shards:
				pm.Excluded = fmt.Sprintf("started with %d shards, this node with %d", m.Meta.BaseShards(), i.c.cfg.Shards)
			}
		}
		switch {
		case m.State == MemberAlive:
			pm.Status = scopev1.MemberStatus_MEMBER_STATUS_ALIVE
		case m.State == MemberLeft:
			pm.Status = scopev1.MemberStatus_MEMBER_STATUS_LEFT
		default:
			pm.Status = scopev1.MemberStatus_MEMBER_STATUS_DEAD
		}
		out = append(out, pm)
	}
	return out
}
