package cluster

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/node"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
)

// Leadership transfer on request (ClusterService.TransferLeadership): an
// operator draining a node of its leaderships, or the chaos harness's
// transfer storms. Any node takes the call; the shard's leader carries it
// out, with raft's own transfer (the target catches up, then is told to
// campaign at once), so no acknowledged entry can be lost by it.

var (
	// ErrNotVoter: the named target is not a voter of the shard's group.
	ErrNotVoter = errors.New("cluster: not a voter of the shard's group")
	// ErrNoOtherVoter: the group has no voter to hand the leadership to.
	ErrNoOtherVoter = errors.New("cluster: the shard's group has no other voter")
)

// TransferLeadership hands shard's leadership to the voter named to (""
// lets raft pick the most up-to-date one). It returns the node that led
// the shard and the leader known when it returns ("" while the election is
// under way). A node that does not lead the shard forwards the call to the
// leader.
func (c *Cluster) TransferLeadership(ctx context.Context, shard uint32, to string) (from, leader string, err error) {
	if shard >= c.node.Shards() {
		return "", "", fmt.Errorf("%w: shard %d: the cluster has %d shards", ErrConfig, shard, c.node.Shards())
	}
	if r := c.node.Replica(shard); r != nil && r.IsLeader() {
		leader, err := c.transferLocal(r, to)
		return c.cfg.Name, leader, err
	}
	name, addr, err := c.leaderOf(shard)
	if err != nil {
		return "", "", err
	}
	if name == c.cfg.Name {
		return "", "", fmt.Errorf("%w: shard %d: this node lost the leadership meanwhile; ask again", ErrNoLeader, shard)
	}
	err = c.peers.call(ctx, addr, func(ctx context.Context, p *peer) error {
		resp, err := p.node.TransferLeadership(ctx, connect.NewRequest(&nodev1.TransferLeadershipRequest{Shard: shard, To: to}))
		if err == nil {
			leader = resp.Msg.GetLeader()
		}
		return err
	})
	return name, leader, err
}

// transferLocal transfers the leadership of a replica this node leads. A
// transfer to this node itself is done already.
func (c *Cluster) transferLocal(r *node.Replica, to string) (string, error) {
	if to == c.cfg.Name {
		return c.cfg.Name, nil
	}
	rf := r.Raft()
	f := rf.GetConfiguration()
	if err := f.Error(); err != nil {
		return "", err
	}
	var target *raft.Server
	others := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter || string(s.ID) == c.cfg.Name {
			continue
		}
		others++
		if string(s.ID) == to {
			target = &s
		}
	}
	switch {
	case others == 0:
		return "", ErrNoOtherVoter
	case to != "" && target == nil:
		return "", fmt.Errorf("%w: %q", ErrNotVoter, to)
	}
	var fut raft.Future
	if target != nil {
		fut = rf.LeadershipTransferToServer(target.ID, target.Address)
	} else {
		fut = rf.LeadershipTransfer()
	}
	if err := fut.Error(); err != nil {
		return "", err
	}
	c.metrics.transfers.Inc()
	_, id := rf.LeaderWithID()
	c.logger.Info("leadership transferred on request", "to", to, "leader", id)
	return string(id), nil
}
