package node

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// logBudget keeps a replica's raft log within RaftTiming.LogBytes.
// hashicorp/raft bounds its log only in entries: a snapshot every
// SnapshotThreshold entries (or SnapshotInterval), then TrailingLogs entries
// kept after it. An entry carries anything from one event to a batch of
// hundreds, so 8,192 + 10,240 entries can be a few MiB or tens of GiB. The
// budget gives each half of LogBytes one job:
//
//   - the entries applied since the last snapshot: when they hold half of
//     LogBytes, the budget asks raft for a snapshot, which cuts the log (a
//     snapshot is a 21-byte marker, snapshot.go: taking one often is cheap);
//   - the entries kept after a snapshot: the budget lowers raft's
//     TrailingLogs to what half of LogBytes holds at the moving average of
//     an entry's size (never above RaftTiming.TrailingLogs, at least one).
//     A follower further behind than that is sent a snapshot: the bound is
//     the operator's choice of disk over catch-up cost.
//
// A shard's log then holds about LogBytes at most, plus what is appended
// but not yet applied. The trailing half is an estimate (entry sizes vary;
// raft counts entries), the other is exact.
//
// applied and snapshotTaken run on the FSM goroutine; the snapshot request
// runs on a goroutine of its own (raft's Snapshot waits for the FSM
// goroutine, so that one must not wait for it).
type logBudget struct {
	shard       uint32
	half        uint64 // LogBytes / 2; 0: no byte bound
	maxTrailing uint64 // RaftTiming.TrailingLogs
	logger      *slog.Logger
	onSnapshot  func() // a snapshot the budget asked for was taken

	// since is the bytes of the entries applied since the last snapshot:
	// written on the FSM goroutine, read by the snapshot request too.
	since atomic.Uint64
	// FSM goroutine only.
	mean     float64 // moving average of an entry's bytes (0: none seen)
	trailing uint64  // the TrailingLogs raft was last given

	raft    atomic.Pointer[raft.Raft] // set once raft runs
	asking  atomic.Bool               // a snapshot request is running
	running sync.WaitGroup            // the snapshot request goroutine
}

func newLogBudget(shard uint32, t RaftTiming, logger *slog.Logger, onSnapshot func()) *logBudget {
	return &logBudget{shard: shard, half: t.LogBytes / 2, maxTrailing: t.TrailingLogs,
		trailing: t.TrailingLogs, logger: logger, onSnapshot: onSnapshot}
}

// meanWeight is the weight of the newest entry in the moving average of
// entry sizes: about the last 64 entries count.
const meanWeight = 1.0 / 64

// applied accounts for entries raft delivered to the FSM (replayed ones
// included: they are in the log too).
func (b *logBudget) applied(logs []*raft.Log) {
	if b.half == 0 {
		return
	}
	for _, l := range logs {
		n := uint64(len(l.Data) + len(l.Extensions))
		b.since.Add(n)
		if b.mean == 0 {
			b.mean = float64(n)
		} else {
			b.mean += (float64(n) - b.mean) * meanWeight
		}
	}
	r := b.raft.Load()
	if r == nil {
		return
	}
	b.fitTrailing(r)
	if b.since.Load() >= b.half && b.asking.CompareAndSwap(false, true) {
		b.running.Add(1)
		go b.askSnapshot(r)
	}
}

// fitTrailing gives raft the TrailingLogs that half the budget holds at the
// mean entry size, when it differs from the last one given by more than an
// eighth (entry sizes wander; raft need not hear of every step).
func (b *logBudget) fitTrailing(r *raft.Raft) {
	want := b.maxTrailing
	if b.mean >= 1 {
		want = min(want, max(uint64(float64(b.half)/b.mean), 1))
	}
	diff := max(want, b.trailing) - min(want, b.trailing)
	if diff == 0 || diff < b.trailing/8 {
		return
	}
	rc := r.ReloadableConfig()
	rc.TrailingLogs = want
	if err := r.ReloadConfig(rc); err != nil {
		b.logger.Warn("raft log budget: cannot set trailing logs", "shard", b.shard, "trailing", want, "err", err)
		return
	}
	b.trailing = want
}

// snapshotTaken is called by the FSM's Snapshot, whoever asked for it:
// the log is cut to the snapshot's index (less the trailing entries).
func (b *logBudget) snapshotTaken() { b.since.Store(0) }

// maxSnapshotRounds bounds the snapshots one request takes in a row.
const maxSnapshotRounds = 4

// askSnapshot asks raft for a snapshot, and again while the entries applied
// meanwhile hold half the budget already: applies that crossed it while
// this request ran could not start another, and if no entry follows them,
// nothing else would (found by TestRaftLogStaysWithinItsSize under load:
// its log stayed above the bound after the last write).
func (b *logBudget) askSnapshot(r *raft.Raft) {
	defer b.running.Done()
	for round := 0; ; round++ {
		err := r.Snapshot().Error()
		switch {
		case err == nil:
			if b.onSnapshot != nil {
				b.onSnapshot()
			}
		case errors.Is(err, raft.ErrNothingNewToSnapshot):
		case errors.Is(err, raft.ErrRaftShutdown):
			b.asking.Store(false)
			return
		default:
			b.logger.Warn("raft log budget: snapshot failed", "shard", b.shard, "err", err)
		}
		b.asking.Store(false)
		// An apply that crossed half while asking was set started nothing:
		// look once more, as that apply would have.
		if round+1 >= maxSnapshotRounds || b.since.Load() < b.half || !b.asking.CompareAndSwap(false, true) {
			return
		}
	}
}

// wait returns once no snapshot request is running (after raft's shutdown,
// a running one ends at once).
func (b *logBudget) wait() { b.running.Wait() }
