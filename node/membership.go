package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/elixirscope/scope/correlate"
)

// This file holds what the cluster layer needs of a node: reopening the
// replicas it hosted before a restart, dropping a replica that left its
// group, and hooks to reach shards led elsewhere.

// Forwarder sends a shard's part of an ingest request to the node that
// leads the shard, and waits per the durability asked for. It returns nil
// once the leader acknowledged every event, or the leader's error; dups is
// how many of the events the leader reported as duplicates (already stored,
// not stored again).
type Forwarder interface {
	Forward(ctx context.Context, shard uint32, events []correlate.Event, d Durability) (dups int, err error)
}

// SetForwarder installs the cluster's forwarder: Ingest hands it the parts
// for shards this node does not lead (unless the request was itself
// forwarded, see NoForward). Set it before serving requests.
func (n *Node) SetForwarder(f Forwarder) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.forwarder = f
}

// SetRemoteDelivery installs the cluster's delivery of notices to shards
// whose leader is on another node.
func (n *Node) SetRemoteDelivery(deliver func(shard uint32, notices []correlate.Notice) error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cfg.DeliverRemote = deliver
}

type noForwardKey struct{}

// NoForward marks ctx as carrying a request that another node already
// forwarded here: Ingest answers not-leader instead of forwarding again, so
// a stale routing table can never make a request loop.
func NoForward(ctx context.Context) context.Context {
	return context.WithValue(ctx, noForwardKey{}, true)
}

func isForwarded(ctx context.Context) bool { v, _ := ctx.Value(noForwardKey{}).(bool); return v }

func (n *Node) replicaDir(shard uint32) string {
	return filepath.Join(n.cfg.DataDir, "raft", fmt.Sprintf("shard-%04d", shard))
}

// HostedShards lists the shards this node has replica directories for:
// the replicas it hosted before it stopped.
func (n *Node) HostedShards() ([]uint32, error) {
	entries, err := os.ReadDir(filepath.Join(n.cfg.DataDir, "raft"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var shards []uint32
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), "shard-")
		if !ok || !e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(s, 10, 32)
		if err != nil || uint32(id) >= n.cfg.Shards {
			return nil, fmt.Errorf("%w: unexpected replica directory %q", ErrConfig, e.Name())
		}
		shards = append(shards, uint32(id))
	}
	return shards, nil
}

// OpenHosted reopens every replica this node hosted before a restart.
// Each resumes its group from its own raft log.
func (n *Node) OpenHosted() ([]uint32, error) {
	shards, err := n.HostedShards()
	if err != nil {
		return nil, err
	}
	for _, s := range shards {
		if _, err := n.OpenReplica(s); err != nil {
			return nil, err
		}
	}
	return shards, nil
}

// DropReplica closes this node's replica of shard and deletes its data: its
// directory (snapshots, and a raft-boltdb log from an older data dir), its
// span in the shared raft log, and its span in the store. The directory
// goes first: once it is gone the replica no longer exists for
// HostedShards, and a later OpenReplica clears whatever an interruption
// left in the shared log. The caller makes sure the replica is no longer a
// member of its group.
func (n *Node) DropReplica(shard uint32) error {
	n.mu.Lock()
	r, ok := n.replicas[shard]
	if ok {
		delete(n.replicas, shard)
	}
	n.mu.Unlock()
	if !ok {
		return nil
	}
	n.tail.gone(shard, "replica dropped", nil)
	err := n.pool.RemoveShard(shard)
	err = errors.Join(err, r.Close())
	err = errors.Join(err, os.RemoveAll(n.replicaDir(shard)))
	err = errors.Join(err, n.raftLog.DeleteShard(shard))
	return errors.Join(err, n.store.DeleteShard(shard))
}
