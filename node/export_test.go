package node

import (
	"github.com/hashicorp/raft"
	dto "github.com/prometheus/client_model/go"
)

// SetDropHook makes DropReplica call hook after the replica closed and
// before its data is deleted.
func SetDropHook(n *Node, hook func(shard uint32)) { n.hooks.dropClosed = hook }

// LifecycleWaits is how many opens and drops waited for another of the same
// shard.
func LifecycleWaits(n *Node) float64 {
	var m dto.Metric
	_ = n.metrics.lifecycleWaits.Write(&m)
	return m.GetCounter().GetValue()
}

// DiskWaiters is how many replicas' store writes wait for disk space.
func DiskWaiters(n *Node) int64 { return n.disk.waiting.Load() }

// ReadRounds is how many leadership confirmations r's reads have run.
func ReadRounds(r *Replica) uint64 { return r.reads.rounds.Load() }

// ReadsWaiting reports whether a leadership confirmation of r runs and how
// many reads wait for the next one.
func ReadsWaiting(r *Replica) (running bool, next int) { return r.reads.waiting() }

// RaftLogSize returns the number of entries in shard's raft log and the
// bytes of their data, read entry by entry.
func RaftLogSize(n *Node, shard uint32) (entries int, bytes int, err error) {
	v, err := n.raftLog.For(shard)
	if err != nil {
		return 0, 0, err
	}
	first, _ := v.FirstIndex()
	last, _ := v.LastIndex()
	for i := first; first > 0 && i <= last; i++ {
		var l raft.Log
		if err := v.GetLog(i, &l); err != nil {
			return 0, 0, err
		}
		entries++
		bytes += len(l.Data)
	}
	return entries, bytes, nil
}
