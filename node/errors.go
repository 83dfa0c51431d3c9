package node

import (
	"errors"
	"fmt"
)

// Errors of the node, its shard replicas and its writer pool.
var (
	ErrConfig   = errors.New("node: invalid config")
	ErrClosed   = errors.New("node: closed")
	ErrNoShard  = errors.New("node: shard not hosted on this node")
	ErrTimeout  = errors.New("node: deadline exceeded")
	ErrBadEntry = errors.New("node: bad raft entry")
	// ErrEntryVersion: a raft entry in a version this build does not read
	// (written by a newer one). The replica stops rather than skip it.
	ErrEntryVersion       = errors.New("node: raft entry of an unknown version")
	ErrReplicaFailed      = errors.New("node: replica failed")
	ErrTooManySubscribers = errors.New("node: too many tail subscriptions")

	// Writer pool.
	// ErrFull: a shard's ring had no room for a submission (at once, or
	// before the submitter's deadline). The error names the shard.
	ErrFull = errors.New("node: ring buffer full")
	// ErrOverloaded: a COMMITTED submission was refused at once because
	// the shard's queue would most likely keep it past its deadline (see
	// Pool.Submit). Errors that wrap it also wrap ErrFull: the events were
	// refused, never stored, and may be sent again (after the wait the
	// message names).
	ErrOverloaded = errors.New("node: shard saturated")
	// ErrDiskFull: the data directory's free space is below the node's
	// minimum (DiskConfig.MinFree): new events are refused until space is
	// freed. The error names the directory and the free space.
	ErrDiskFull = errors.New("node: disk full")
	// ErrNotLeader: this node's replica is not the shard's leader. A
	// proposal failing with it is never retried here: the pool redirects
	// it to the new leader (Redirector) or fails it back at once.
	ErrNotLeader = errors.New("node: not the leader")
	// ErrAwaitingHandoff: the shard is a split child that has not adopted
	// its parent's handoff yet (docs/DECISIONS.md D39): it takes no events
	// or notices until it has; a retry shortly after succeeds.
	ErrAwaitingHandoff = errors.New("node: shard awaits its handoff from the shard it was split from")
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

	// ErrRejected: the shard's leader on another node rejected a forwarded
	// part before ingesting any of it (invalid, too large, unauthorised).
	ErrRejected = errors.New("node: events rejected by the shard's leader")

	// Outcomes.
	// ErrOutcomeUnknown: the events may or may not have been stored (for
	// example leadership was lost after the proposal was appended, a
	// forward's connection broke after the request was sent, a commit
	// wait timed out). Resending them with the same event ids is safe: the
	// shard skips ids it has applied.
	ErrOutcomeUnknown = errors.New("node: outcome unknown")
	// ErrLeadershipLost: the proposal was appended to this node's log but
	// the node lost the shard's leadership before it committed; it may
	// still commit under the new leader. Always wrapped together with
	// ErrOutcomeUnknown.
	ErrLeadershipLost = errors.New("node: leadership lost before commit")
)

// Refused reports whether err says that the events it concerns were
// definitely not stored: they were never handed to the shard's log (a full
// ring, a full disk, no leader here, no such shard, closing, a proposer that panicked
// before taking them). Any other failure, ErrOutcomeUnknown first, leaves
// the outcome unknown.
func Refused(err error) bool {
	if err == nil || errors.Is(err, ErrOutcomeUnknown) {
		return false
	}
	for _, r := range refusals {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

var refusals = []error{ErrFull, ErrDiskFull, ErrNotLeader, ErrNoShard, ErrClosed, ErrShardClosed, ErrPoolClosed,
	ErrUnknownShard, ErrBatchTooLarge, ErrProposerPanic, ErrRejected, ErrAwaitingHandoff}

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
