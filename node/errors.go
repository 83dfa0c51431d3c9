package node

import (
	"errors"
	"fmt"
)

// Errors of the node and its shard replicas. The writer pool's errors
// (ErrFull, ErrNotLeader, ErrShardClosed, ...) are in pool.go.
var (
	ErrConfig             = errors.New("node: invalid config")
	ErrClosed             = errors.New("node: closed")
	ErrNoShard            = errors.New("node: shard not hosted on this node")
	ErrTimeout            = errors.New("node: deadline exceeded")
	ErrBadEntry           = errors.New("node: bad raft entry")
	ErrReplicaFailed      = errors.New("node: replica failed")
	ErrTooManySubscribers = errors.New("node: too many tail subscriptions")
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
