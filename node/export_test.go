package node

import dto "github.com/prometheus/client_model/go"

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
