package node

// A replica whose store write failed stops applying (shardFSM.failed) and
// is retired from its group (Replica.retire): this file routes the FSM's
// one-time failure call to a goroutine that may block, and counts failed
// replicas for /metrics.

// replicaFailed runs once per replica, on its FSM goroutine, when a store
// write failed. It must not block: it marks the shard and wakes
// retireFailed. One flag per shard bounds what can be pending.
func (n *Node) replicaFailed(shard uint32) {
	n.tail.failed(shard)
	n.failing[shard].Store(true)
	select {
	case n.failSignal <- struct{}{}:
	default: // a wake-up is pending; it scans every shard
	}
}

// retireFailed retires the replicas replicaFailed marked, one at a time,
// until the node closes.
func (n *Node) retireFailed() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.failSignal:
		}
		for shard := range n.failing {
			if n.failing[shard].Swap(false) {
				n.retire(uint32(shard))
			}
		}
	}
}

// retire retires shard's replica if it is (still) the one that failed. It
// holds the shard's lifecycle lock, so it never races a drop or reopen.
func (n *Node) retire(shard uint32) {
	unlock := n.lockLifecycle(shard)
	defer unlock()
	r := n.Replica(shard)
	if r == nil || r.Retired() {
		return
	}
	_, _, failed := r.Status()
	if failed == nil {
		return
	}
	wasLeader, err := r.retire()
	n.logger.Error("replica failed; retired from its group until the node restarts",
		"shard", shard, "was_leader", wasLeader, "failure", failed, "err", err)
}

// failedReplicas counts the replicas whose store write failed.
func (n *Node) failedReplicas() int {
	failed := 0
	for _, r := range n.Replicas() {
		if _, err := r.Progress(); err != nil {
			failed++
		}
	}
	return failed
}
