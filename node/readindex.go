package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// Linearizable reads (docs/DECISIONS.md D23). A leader may answer a read
// from its store only once it knows that (1) it still leads: no other
// leader can have committed anything it has not, confirmed by a quorum
// after the read arrived (raft's VerifyLeader); and (2) its store has
// applied everything committed before the read arrived: the commit index
// read before the confirmation. A new leader's commit index may lag what
// its predecessor committed until an entry of its own term commits (raft
// commits earlier terms' entries only indirectly), so the first read of a
// term first waits for a barrier, an entry of the term that the FSM sees
// applied once everything before it is.
//
// Reads arriving together share one confirmation (a round): a read joins
// the next round to start, never one already running, whose commit index
// may predate the read.

// readRound is one confirmation of leadership, shared by the reads that
// joined it before it started.
type readRound struct {
	done  chan struct{} // closed once index and err are set
	index uint64        // the commit index the reads must see applied
	err   error
	reads int // reads that joined it (under readIndexer.mu)
}

// readIndexer runs a replica's rounds one after another.
type readIndexer struct {
	mu      sync.Mutex
	next    *readRound // the round reads join; started when none runs
	running bool
	// readyTerm is the last term in which this replica, leading, saw a
	// barrier of the term applied.
	readyTerm atomic.Uint64
	rounds    atomic.Uint64 // rounds run (tests and metrics)
}

// join returns the round a read arriving now must wait for, starting it if
// no round runs.
func (q *readIndexer) join(confirm func() (uint64, error)) *readRound {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.next == nil {
		q.next = &readRound{done: make(chan struct{})}
	}
	rd := q.next
	rd.reads++
	if !q.running {
		q.running = true
		q.next = nil
		go q.run(rd, confirm)
	}
	return rd
}

// waiting reports whether a round runs and how many reads wait for the
// next one.
func (q *readIndexer) waiting() (running bool, next int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.next != nil {
		next = q.next.reads
	}
	return q.running, next
}

// run confirms rd, then every round joined meanwhile, until none is left.
func (q *readIndexer) run(rd *readRound, confirm func() (uint64, error)) {
	for rd != nil {
		rd.index, rd.err = confirm()
		q.rounds.Add(1)
		close(rd.done)
		q.mu.Lock()
		rd, q.next = q.next, nil
		if rd == nil {
			q.running = false
		}
		q.mu.Unlock()
	}
}

// ReadIndex waits until a read of this replica's store is linearizable:
// the replica leads its group, confirmed by a quorum after the call, and
// has applied every entry committed before the call. It fails with a
// NotLeaderError when the replica does not lead (or lost the leadership
// meanwhile), with the replica's failure if it stopped applying, and with
// ctx's error if ctx ends first.
func (r *Replica) ReadIndex(ctx context.Context) error {
	if r.raft.State() != raft.Leader {
		return r.notLeader()
	}
	rd := r.reads.join(r.confirmLeadership)
	select {
	case <-rd.done:
	case <-ctx.Done():
		return fmt.Errorf("node: shard %d: leadership not confirmed: %w", r.shard, ctx.Err())
	}
	if rd.err != nil {
		return rd.err
	}
	return r.waitApplied(ctx, rd.index)
}

// confirmLeadership is one round: the commit index reads must see applied,
// once a quorum confirmed that this replica still leads in the same term.
func (r *Replica) confirmLeadership() (uint64, error) {
	term := r.raft.CurrentTerm()
	if r.raft.State() != raft.Leader {
		return 0, r.notLeader()
	}
	if r.reads.readyTerm.Load() != term {
		if err := r.raft.Barrier(0).Error(); err != nil {
			return 0, r.leadershipError(err)
		}
		if r.raft.CurrentTerm() != term {
			return 0, r.notLeader()
		}
		r.reads.readyTerm.Store(term)
	}
	index := r.raft.CommitIndex()
	if err := r.raft.VerifyLeader().Error(); err != nil {
		return 0, r.leadershipError(err)
	}
	if r.raft.CurrentTerm() != term {
		return 0, r.notLeader()
	}
	return index, nil
}

// waitApplied waits until the FSM has applied every entry up to index
// that it sees: leader no-ops and barriers never reach it, and an idle
// shard's log can end in many of them (one per election, one barrier per
// term that served reads).
func (r *Replica) waitApplied(ctx context.Context, index uint64) error {
	need := index
	for {
		applied, failed, changed := r.fsm.prog.get()
		if failed != nil {
			return failed
		}
		if need == index && applied < index {
			// Entries never change once committed: look once.
			need = r.lastFSMEntry(applied+1, index)
		}
		if applied >= need {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("node: shard %d: index %d not applied (applied %d): %w", r.shard, need, applied, ctx.Err())
		}
	}
}

// lastFSMEntry returns the highest index in [from, to] of an entry the FSM
// applies (a command or a configuration), 0 if there is none. Entries
// below the log's first index were compacted into a snapshot, which the
// FSM had processed: they are not looked at. An entry that cannot be read
// counts as one the FSM applies.
func (r *Replica) lastFSMEntry(from, to uint64) uint64 {
	if first, err := r.logs.store.FirstIndex(); err == nil && first > from {
		from = first
	}
	var l raft.Log
	for i := to; i >= from && i > 0; i-- {
		if err := r.logs.store.GetLog(i, &l); err != nil || l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i
		}
	}
	return 0
}

// fsmEntries counts the entries in [from, to] that the FSM applies
// (commands and configurations; an entry it cannot read, compacted away,
// counts too).
func (r *Replica) fsmEntries(from, to uint64) uint64 {
	var n uint64
	var l raft.Log
	for i := from; i <= to; i++ {
		if err := r.logs.store.GetLog(i, &l); err != nil || l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			n++
		}
	}
	return n
}

func (r *Replica) notLeader() error {
	addr, id := r.Leader()
	return &NotLeaderError{Shard: r.shard, LeaderID: string(id), LeaderAddr: string(addr)}
}

// leadershipError classifies an error of a barrier or a leadership check.
func (r *Replica) leadershipError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return r.notLeader()
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: shard %d", ErrShardClosed, r.shard)
	}
	return fmt.Errorf("node: shard %d: leadership check: %w", r.shard, err)
}
