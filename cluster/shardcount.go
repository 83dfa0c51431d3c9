package cluster

import (
	"fmt"
	"slices"
)

// A node started with another shard count than its cluster's (`-shards`
// given to one node and not the others, or not given to a node joining a
// cluster created with it) is never a placement candidate (stability.go),
// so it holds no replica, and it routes by a layout that is not the
// cluster's. shardCountRound says so on both sides, once per change: the
// node itself logs an error and is not ready (ShardCountError, /readyz);
// the others log a warning and list it as excluded (ClusterService
// Members).

// shardCountRound runs before every round.
func (c *Cluster) shardCountRound() {
	members := c.sameCluster(c.members.Members())
	var others, agreeing []string
	var theirs []uint32
	for _, m := range members {
		if m.Name == c.cfg.Name || m.State != MemberAlive || m.MetaErr != nil || !m.Meta.Formed {
			continue
		}
		if b := m.Meta.BaseShards(); b != c.cfg.Shards {
			others = append(others, m.Name)
			if !slices.Contains(theirs, b) {
				theirs = append(theirs, b)
			}
		} else {
			agreeing = append(agreeing, m.Name)
		}
	}
	// This node is the odd one out when it holds no replica and every
	// formed member it sees has one other count.
	var selfErr error
	if len(agreeing) == 0 && len(theirs) == 1 && len(c.node.Replicas()) == 0 {
		selfErr = fmt.Errorf("%w: this node was started with %d shards, the cluster has %d (%v): it takes no replicas; "+
			"stop it, empty its data directory and start it with -shards %d", ErrShardCount, c.cfg.Shards, theirs[0], others, theirs[0])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if selfErr != nil && c.shardCountErr == nil {
		c.logger.Error("this node's shard count is not the cluster's", "err", selfErr)
	}
	c.shardCountErr = selfErr
	if selfErr != nil {
		return
	}
	// The others: warn once per member and count.
	seen := make(map[string]bool, len(others))
	for _, m := range members {
		if !slices.Contains(others, m.Name) {
			continue
		}
		seen[m.Name] = true
		if c.shardCountWarned[m.Name] == m.Meta.BaseShards() {
			continue
		}
		if c.shardCountWarned == nil {
			c.shardCountWarned = make(map[string]uint32)
		}
		c.shardCountWarned[m.Name] = m.Meta.BaseShards()
		c.logger.Warn("a member was started with another shard count than this node's: it is given no replicas "+
			"(start it with the cluster's -shards and an empty data directory)",
			"member", m.Name, "member_shards", m.Meta.BaseShards(), "shards", c.cfg.Shards)
	}
	for name := range c.shardCountWarned {
		if !seen[name] {
			delete(c.shardCountWarned, name)
		}
	}
}

// ShardCountError says why this node cannot take part in its cluster
// because of its shard count, or nil.
func (c *Cluster) ShardCountError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shardCountErr
}
