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

// RemoteDelivery delivers notices to shards whose leader is on another
// node (the cluster layer). Both methods may be called concurrently.
type RemoteDelivery interface {
	// Route names the node that leads shard, as this node knows it ("" if
	// it knows none). Deliveries with one route run one after another,
	// different routes concurrently. It must not block.
	Route(shard uint32) string
	// Deliver proposes notices to shard on the node named to (what Route
	// returned), which refuses them unless it leads shard, and waits for
	// the commit there, giving up when ctx ends or its own per-call
	// deadline passes.
	Deliver(ctx context.Context, to string, shard uint32, notices []correlate.Notice) error
}

// SetRemoteDelivery installs the cluster's delivery of notices to shards
// whose leader is on another node.
func (n *Node) SetRemoteDelivery(d RemoteDelivery) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cfg.DeliverRemote = d
}

type noForwardKey struct{}

// NoForward marks ctx as carrying a request that another node already
// forwarded here: Ingest answers not-leader instead of forwarding again, so
// a stale routing table can never make a request loop.
func NoForward(ctx context.Context) context.Context {
	return context.WithValue(ctx, noForwardKey{}, true)
}

func isForwarded(ctx context.Context) bool { v, _ := ctx.Value(noForwardKey{}).(bool); return v }

type redirectKey struct{}

// MarkRedirect marks ctx as carrying events an old leader of their shard
// admitted and now hands to the new one (Node.Redirect; the cluster layer
// carries the mark to the leader's node). A redirect is not refused for a
// full disk: its events were admitted already, and ACCEPTED ones
// acknowledged.
func MarkRedirect(ctx context.Context) context.Context {
	return context.WithValue(ctx, redirectKey{}, true)
}

// IsRedirect reports whether ctx was marked by MarkRedirect.
func IsRedirect(ctx context.Context) bool { v, _ := ctx.Value(redirectKey{}).(bool); return v }

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
		if err != nil || uint32(id) >= n.maxShards {
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
	err = EachShard(shards, func(s uint32) error {
		_, err := n.OpenReplica(s)
		return err
	})
	if err != nil {
		return nil, err
	}
	return shards, nil
}

// DropReplica closes this node's replica of shard and deletes its data: its
// directory (snapshots, and a raft-boltdb log from an older data dir), its
// span in the shared raft log, and its span in the store. The directory
// goes first: once it is gone the replica no longer exists for
// HostedShards, and a later OpenReplica clears whatever an interruption
// left in the shared log. The whole drop holds the shard's lifecycle lock,
// so an OpenReplica of the same shard waits until the old data is gone and
// then starts an empty replica. The caller makes sure the replica is no
// longer a member of its group.
func (n *Node) DropReplica(shard uint32) error {
	_, err := n.dropReplica(shard, nil)
	return err
}

// DropReplicaUnopened drops r, shard's replica, as DropReplica does, but
// only if it is still the shard's replica and no OpenReplica returned it
// since the one numbered seq (Replica.LastOpen): the check and the drop
// hold the shard's lifecycle lock, so an open that a leader makes before
// adding this node to the group either lands first and cancels the drop,
// or waits and then starts an empty replica. It reports whether it
// dropped.
func (n *Node) DropReplicaUnopened(shard uint32, r *Replica, seq uint64) (bool, error) {
	return n.dropReplica(shard, func(cur *Replica) bool {
		return cur == r && r.lastOpenSeq.Load() == seq
	})
}

func (n *Node) dropReplica(shard uint32, may func(*Replica) bool) (bool, error) {
	if shard >= n.maxShards {
		return false, nil
	}
	unlock := n.lockLifecycle(shard)
	defer unlock()
	n.mu.Lock()
	r, ok := n.replicas[shard]
	if ok && may != nil && !may(r) {
		ok = false
	}
	if ok {
		delete(n.replicas, shard)
	}
	n.mu.Unlock()
	if !ok {
		return false, nil
	}
	n.tail.gone(shard, "replica dropped", nil)
	err := n.pool.RemoveShard(shard)
	err = errors.Join(err, r.Close())
	if h := n.hooks.dropClosed; h != nil {
		h(shard)
	}
	err = errors.Join(err, os.RemoveAll(n.replicaDir(shard)))
	err = errors.Join(err, n.raftLog.DeleteShard(shard))
	return true, errors.Join(err, n.store.DeleteShard(shard))
}

// lockLifecycle takes shard's lifecycle lock (see Node.lifecycle) and
// returns its release. Waiting for it (an open or drop of the same shard is
// under way) is counted.
func (n *Node) lockLifecycle(shard uint32) (unlock func()) {
	l := &n.lifecycle[shard]
	if !l.TryLock() {
		n.metrics.lifecycleWaits.Inc()
		l.Lock()
	}
	return l.Unlock
}

// testHooks are seams for tests to park an operation between its steps
// (set only by tests, before the operation starts).
type testHooks struct {
	// dropClosed runs in DropReplica after the replica closed, before its
	// data is deleted.
	dropClosed func(shard uint32)
}
