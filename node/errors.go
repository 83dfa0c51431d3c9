package node

import (
	"errors"
	"fmt"
)

// Errors of the node, its shard replicas and its writer pool.
var (
	ErrConfig             = errors.New("node: invalid config")
	ErrClosed             = errors.New("node: closed")
	ErrNoShard            = errors.New("node: shard not hosted on this node")
	ErrTimeout            = errors.New("node: deadline exceeded")
	ErrBadEntry           = errors.New("node: bad raft entry")
	ErrReplicaFailed      = errors.New("node: replica failed")
	ErrTooManySubscribers = errors.New("node: too many tail subscriptions")

	// Writer pool.
	// ErrFull: a shard's ring had no room for a submission (at once, or
	// before the submitter's deadline). The error names the shard.
	ErrFull = errors.New("node: ring buffer full")
	// ErrNotLeader: this node's replica is not the shard's leader. A
	// proposal failing with it is failed back at once, never retried here.
	ErrNotLeader = errors.New("node: not the leader")
	// ErrShardClosed: the shard was removed from the pool; its pending
	// events are failed back.
	ErrShardClosed = errors.New("node: shard closed")
	// ErrPoolClosed: the pool is closing or closed.
	ErrPoolClosed = errors.New("node: writer pool closed")
	// ErrUnknownShard: the pool hosts no ring for the shard.
	ErrUnknownShard = errors.New("node: shard not in writer pool")
	// ErrShardExists: AddShard of a shard the pool already hosts.
	ErrShardExists = errors.New("node: shard already in writer pool")
	// ErrBatchTooLarge: one submission holds more events than a ring.
	ErrBatchTooLarge = errors.New("node: submission larger than ring capacity")
	// ErrProposerPanic: proposing a batch panicked on every attempt.
	ErrProposerPanic = errors.New("node: proposer panicked")
	// ErrPoolConfig: a PoolConfig field is out of range.
	ErrPoolConfig = errors.New("node: invalid pool config")
)

// NotLeaderError says that this node's replica of a shard is not its
// leader, and who is, if known. errors.Is(err, ErrNotLeader) holds.
type NotLeaderError struct {
	Shard      uint32
	LeaderID   string
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return fmt.Sprintf("node: shard %d: not the leader, leader unknown", e.Shard)
	}
	return fmt.Sprintf("node: shard %d: not the leader; leader is %s at %s", e.Shard, e.LeaderID, e.LeaderAddr)
}

func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }
