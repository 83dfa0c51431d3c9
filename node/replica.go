package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// RaftTiming holds the Raft timeouts of every shard group on a node. A node
// runs one group per hosted shard, so the defaults are slower than
// hashicorp/raft's: a 2-core machine carrying 16–48 groups must not spend
// its time on heartbeats (see docs/DECISIONS.md).
type RaftTiming struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	TrailingLogs       uint64
	MaxAppendEntries   int
	// LogBytes bounds each shard's raft log in bytes as well (0: entries
	// only): a snapshot is taken when the entries applied since the last
	// one hold half of it, and at most about half of it is kept after a
	// snapshot (logbudget.go).
	LogBytes uint64
}

// DefaultRaftLogBytes is the default bound of one shard's raft log
// (RaftTiming.LogBytes, `scope agent -raft-log-size`).
const DefaultRaftLogBytes = 128 << 20

// DefaultRaftTiming returns the timing used by `scope agent`.
func DefaultRaftTiming() RaftTiming {
	return RaftTiming{
		HeartbeatTimeout:   1000 * time.Millisecond,
		ElectionTimeout:    1000 * time.Millisecond,
		LeaderLeaseTimeout: 1000 * time.Millisecond,
		CommitTimeout:      100 * time.Millisecond,
		SnapshotInterval:   2 * time.Minute,
		SnapshotThreshold:  8192,
		TrailingLogs:       10240,
		MaxAppendEntries:   64,
		LogBytes:           DefaultRaftLogBytes,
	}
}

// ReplicaConfig configures one shard replica.
type ReplicaConfig struct {
	Shard     uint32
	NodeID    raft.ServerID
	Dir       string // the replica's own directory: raft log and snapshots
	Store     *store.Store
	Transport raft.Transport
	// Correlator is the shard's correlator configuration; its Shard field
	// must equal Shard.
	Correlator correlate.Config
	Timing     RaftTiming
	Logger     *slog.Logger
	// Logs is the node's shared raft log. A replica whose Dir already has
	// a raft.db (a data dir from before the shared log) keeps using that
	// raft-boltdb file, as does every replica when Logs is nil.
	Logs *RaftLog
	// OnApply is called on the FSM goroutine after each durable apply, with
	// where each entry's events end in res.Events.
	OnApply func(shard uint32, res *correlate.Result, spans []EntrySpan)
	// OnFail is called once, on the FSM goroutine, when the replica stops
	// applying because a store write failed (Status reports the error).
	OnFail func(shard uint32)
	// WaitWritable, if set, is called on the FSM goroutine before each
	// store write; it blocks while the node's disk is too full to write
	// (the node's disk guard) and returns false if stop closed first (the
	// replica is closing: it applies nothing more).
	WaitWritable func(stop <-chan struct{}) bool
	// BeforeApply, if set, is called on the FSM goroutine before each
	// ApplyBatch (fault injection in tests; see Config.BeforeApply).
	BeforeApply func(shard uint32)
	// OnMaterialize, if set, is told each time the shard's span is written
	// out for a snapshot raft sends to a follower (snapshot.go).
	OnMaterialize func(shard uint32, bytes int64, took time.Duration)
	// OnReshard, if set, is told the shard's resharding state each time
	// an apply changed it (on the FSM goroutine; it must not block).
	OnReshard func(shard uint32, st correlate.ReshardState)
	// OnPrepared, if set, is given every first preparation of a split the
	// replica applies (on the FSM goroutine; it must not block).
	OnPrepared func(shard uint32, p correlate.Prepared)
	// OnLogBudgetSnapshot, if set, is told each time a snapshot is taken
	// because the log reached Timing.LogBytes (logbudget.go).
	OnLogBudgetSnapshot func(shard uint32)
}

// Replica is one shard's copy on this node: a hashicorp/raft group member
// whose FSM correlates committed batches into the store.
type Replica struct {
	shard uint32
	raft  *raft.Raft
	fsm   *shardFSM
	logs  replicaLog
	trans raft.Transport
	now   func() time.Time
	// heartbeat is the group's HeartbeatTimeout: a follower that has not
	// heard from a leader for longer has lost it (see Lag).
	heartbeat time.Duration
	opened    time.Time

	// lastOpen is the node-wide sequence number and time (unix ns) of the
	// last OpenReplica call that returned this replica (see LastOpen).
	lastOpenSeq atomic.Uint64
	lastOpenAt  atomic.Int64

	// reads confirms leadership for linearizable reads (ReadIndex).
	reads readIndexer

	// retired: the replica failed and left its group's work (see retire).
	retired   atomic.Bool
	stop      chan struct{} // closed when Close starts (ends a WaitWritable)
	closeOnce sync.Once
	closeErr  error
}

// OpenReplica opens (or creates) the replica in cfg.Dir. The replica joins
// no group by itself: call Bootstrap for a new group, or let a leader add
// it, or, if it was a member before, it resumes from its log.
func OpenReplica(cfg ReplicaConfig) (*Replica, error) {
	if cfg.Correlator.Shard != cfg.Shard {
		return nil, fmt.Errorf("node: replica shard %d has correlator config for shard %d", cfg.Shard, cfg.Correlator.Shard)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("node: shard %d: %w", cfg.Shard, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	fsm, err := newShardFSM(cfg.Shard, cfg.Store, cfg.Correlator, cfg.Logger)
	if err != nil {
		return nil, err
	}
	if cfg.OnApply != nil {
		fsm.onApply = func(res *correlate.Result, spans []EntrySpan) { cfg.OnApply(cfg.Shard, res, spans) }
	}
	if cfg.OnPrepared != nil {
		fsm.onPrepared = func(p correlate.Prepared) { cfg.OnPrepared(cfg.Shard, p) }
	}
	if cfg.OnReshard != nil {
		fsm.onReshard = func(st correlate.ReshardState) { cfg.OnReshard(cfg.Shard, st) }
	}
	if cfg.OnFail != nil {
		fsm.onFail = func() { cfg.OnFail(cfg.Shard) }
	}
	stop := make(chan struct{})
	if cfg.WaitWritable != nil {
		fsm.waitWritable = func() bool { return cfg.WaitWritable(stop) }
	}
	if cfg.BeforeApply != nil {
		fsm.beforeApply = func() { cfg.BeforeApply(cfg.Shard) }
	}
	if cfg.Timing.LogBytes > 0 {
		var told func()
		if cfg.OnLogBudgetSnapshot != nil {
			told = func() { cfg.OnLogBudgetSnapshot(cfg.Shard) }
		}
		fsm.budget = newLogBudget(cfg.Shard, cfg.Timing, cfg.Logger, told)
	}
	logs, err := openReplicaLog(cfg)
	if err != nil {
		return nil, err
	}
	hlog := newHCLogger(cfg.Logger, fmt.Sprintf("raft.%d", cfg.Shard), hclog.Warn)
	files, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.Dir, "snapshots"), 2, hlog)
	if err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("node: shard %d: snapshot store: %w", cfg.Shard, err)
	}
	snaps, err := newLazySnapshotStore(filepath.Join(cfg.Dir, "snapshots"), fsm, files)
	if err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("node: shard %d: snapshot store: %w", cfg.Shard, err)
	}
	if cfg.OnMaterialize != nil {
		snaps.onMaterialize = func(bytes int64, took time.Duration) { cfg.OnMaterialize(cfg.Shard, bytes, took) }
	}
	rc := raft.DefaultConfig()
	rc.LocalID = cfg.NodeID
	rc.Logger = hlog
	rc.NoSnapshotRestoreOnStart = true // the store already holds applied state
	rc.HeartbeatTimeout = cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.Timing.CommitTimeout
	rc.SnapshotInterval = cfg.Timing.SnapshotInterval
	rc.SnapshotThreshold = cfg.Timing.SnapshotThreshold
	rc.TrailingLogs = cfg.Timing.TrailingLogs
	rc.MaxAppendEntries = cfg.Timing.MaxAppendEntries
	if err := raft.ValidateConfig(rc); err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("node: shard %d: raft config: %w", cfg.Shard, err)
	}
	r, err := raft.NewRaft(rc, fsm, logs.store, logs.store, snaps, cfg.Transport)
	if err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("node: shard %d: start raft: %w", cfg.Shard, err)
	}
	if v, ok := logs.store.(*RaftLogShard); ok {
		v.SetLeading(func() bool { return r.State() == raft.Leader })
	}
	if fsm.budget != nil {
		fsm.budget.raft.Store(r)
	}
	return &Replica{shard: cfg.Shard, raft: r, fsm: fsm, logs: logs, trans: cfg.Transport, now: time.Now, stop: stop,
		heartbeat: cfg.Timing.HeartbeatTimeout, opened: time.Now()}, nil
}

// replicaLog is a replica's raft log and stable store and how to let go of
// it: a raft-boltdb file is the replica's own to close; a RaftLog view is
// not (the node closes the shared DB).
type replicaLog struct {
	store interface {
		raft.LogStore
		raft.StableStore
	}
	close func() error
}

func (l replicaLog) Close() error { return l.close() }

// legacyLogFile is the raft-boltdb file of a replica created before the
// node's shared RaftLog.
const legacyLogFile = "raft.db"

func openReplicaLog(cfg ReplicaConfig) (replicaLog, error) {
	path := filepath.Join(cfg.Dir, legacyLogFile)
	_, statErr := os.Stat(path)
	switch {
	case statErr != nil && !errors.Is(statErr, os.ErrNotExist):
		return replicaLog{}, fmt.Errorf("node: shard %d: raft log: %w", cfg.Shard, statErr)
	case cfg.Logs != nil && statErr != nil:
		v, err := cfg.Logs.For(cfg.Shard)
		if err != nil {
			return replicaLog{}, fmt.Errorf("node: shard %d: %w", cfg.Shard, err)
		}
		return replicaLog{store: v, close: func() error { return nil }}, nil
	case cfg.Logs != nil:
		cfg.Logger.Info("replica keeps its own raft-boltdb log (created before the shared raft log)",
			"shard", cfg.Shard, "path", path)
	}
	b, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		return replicaLog{}, fmt.Errorf("node: shard %d: open raft log: %w", cfg.Shard, err)
	}
	return replicaLog{store: b, close: b.Close}, nil
}

// Shard is the replica's shard id.
func (r *Replica) Shard() uint32 { return r.shard }

// Raft exposes the raft group for membership changes and observation.
func (r *Replica) Raft() *raft.Raft { return r.raft }

// Bootstrap starts a new group with servers as its voters. It is a no-op
// error (raft.ErrCantBootstrap) when the replica already has state.
func (r *Replica) Bootstrap(servers []raft.Server) error {
	err := r.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	if errors.Is(err, raft.ErrCantBootstrap) {
		return nil
	}
	return err
}

// IsLeader reports whether this replica is its group's leader.
func (r *Replica) IsLeader() bool { return r.raft.State() == raft.Leader }

// Leader returns the current leader's address and id, if known. A retired
// replica knows none: what its raft last saw is stale.
func (r *Replica) Leader() (raft.ServerAddress, raft.ServerID) {
	if r.retired.Load() {
		return "", ""
	}
	return r.raft.LeaderWithID()
}

// LastOpen returns the sequence number (node-wide, increasing) and time of
// the last OpenReplica call that returned this replica: a leader adding
// this node to the group calls it just before AddNonvoter, so a replica
// opened recently may be about to become a member.
func (r *Replica) LastOpen() (seq uint64, at time.Time) {
	return r.lastOpenSeq.Load(), time.Unix(0, r.lastOpenAt.Load())
}

// LastIndex is the index of the last entry in the replica's raft log.
func (r *Replica) LastIndex() uint64 { return r.raft.LastIndex() }

// Retired reports whether the replica failed and left its group's work.
func (r *Replica) Retired() bool { return r.retired.Load() }

// retire takes a replica whose store write failed out of its group's work.
// Its FSM can apply nothing more, so as a leader it would commit entries
// that it fails back to their clients, refuse every snapshot (the log grows
// without bound), and win elections again with its up-to-date log. So a
// leader first hands leadership to the most up-to-date follower (raft's
// LeadershipTransfer: faster than letting the followers time out), then
// the replica shuts its raft instance and transport down: a shut-down
// member neither campaigns, votes nor appends, and its peers see a dead
// member, which the group tolerates like any other. It stays in the node's
// map, failed, until it is dropped or the node restarts (a restart
// replays its log into the store). See docs/DECISIONS.md.
func (r *Replica) retire() (wasLeader bool, err error) {
	r.retired.Store(true)
	if r.IsLeader() {
		wasLeader = true
		err = r.raft.LeadershipTransfer().Error()
	}
	return wasLeader, errors.Join(err, r.Close())
}

// Propose stamps b with this node's clock as its log time and proposes it.
// It does not wait: the returned future resolves once the entry is
// committed and applied here (or fails, e.g. raft.ErrNotLeader).
func (r *Replica) Propose(b *correlate.Batch, timeout time.Duration) raft.ApplyFuture {
	b.LogTime = r.now().UnixNano()
	return r.raft.Apply(encodeEntry(b), timeout)
}

// Voters returns the voters of the group's latest configuration.
func (r *Replica) Voters() ([]raft.Server, error) {
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	var out []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, s)
		}
	}
	return out, nil
}

// Reshard returns the shard's layout and handoff progress as of its last
// apply, without waiting for an apply in progress.
func (r *Replica) Reshard() correlate.ReshardState { return r.fsm.Reshard() }

// Awaiting says the shard is a split child that has not adopted its whole
// handoff: it takes no events or notices yet (ErrAwaitingHandoff).
func (r *Replica) Awaiting() bool { return r.fsm.Reshard().Awaiting }

// AwaitHandoff waits until the shard is not a split child awaiting its
// handoff, ctx ends (its error) or the replica stops (its failure).
func (r *Replica) AwaitHandoff(ctx context.Context) error {
	if !r.Awaiting() { // every ingest part asks: one atomic load, no lock
		return nil
	}
	for {
		_, failed, changed := r.fsm.prog.get() // before the check: no apply is missed
		if !r.Awaiting() {
			return nil
		}
		if failed != nil {
			return failed
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: shard %d: %w", ErrAwaitingHandoff, r.shard, ctx.Err())
		case <-changed:
		}
	}
}

// Handoffs returns the handoff chunks this shard's child has not confirmed.
func (r *Replica) Handoffs() []correlate.Handoff { return r.fsm.Handoffs() }

// Outbox returns the notices this shard still has to deliver.
func (r *Replica) Outbox() []correlate.Notice { return r.fsm.Outbox() }

// OutboxDests returns the shards the outbox holds notices for, ascending.
func (r *Replica) OutboxDests() []uint32 { return r.fsm.OutboxDests() }

// OutboxHeads returns, for each shard of dests, the first perDest notices
// still to deliver to it, in outbox order: one delivery round's worth.
func (r *Replica) OutboxHeads(perDest int, dests []uint32) map[uint32][]correlate.Notice {
	return r.fsm.OutboxHeads(perDest, dests)
}

// Status reports the replica's applied index, counters and failure. It
// waits for an apply in progress; Progress does not.
func (r *Replica) Status() (applied uint64, totals correlate.Counters, failed error) {
	return r.fsm.Status()
}

// Progress reports the replica's applied index and the failure that
// stopped it (nil while it applies), without waiting for an apply in
// progress: what the read path checks.
func (r *Replica) Progress() (applied uint64, failed error) {
	applied, failed, _ = r.fsm.prog.get()
	return applied, failed
}

// Lag is how far a replica may be behind its group, as the replica itself
// can tell.
type Lag struct {
	// Entries is the number of log entries the replica knows are committed
	// but has not applied to its store. A follower learns the commit index
	// from its leader, so one cut off from the leader reports what it last
	// heard: SinceContact says how stale that is.
	Entries uint64
	// SinceContact is how long a replica that is not the leader has gone
	// without hearing from one, when that exceeds the heartbeat timeout
	// (Raft's own threshold for a lost leader); 0 otherwise.
	SinceContact time.Duration
}

// lagScanMax bounds the log entries Lag reads to tell entries the store
// applies from leader no-ops (which never reach the FSM and so never
// advance its applied index). Beyond it, Lag counts every entry: an
// overcount of at most one no-op per election in the window.
const lagScanMax = 16

// Lag reports how far this replica is behind. It is cheap enough for every
// shard read: two index loads, and a log read only while entries are
// outstanding.
func (r *Replica) Lag() Lag {
	var lag Lag
	commit := r.raft.CommitIndex()
	applied, _ := r.Progress()
	if commit > applied {
		lag.Entries = commit - applied
		if lag.Entries <= lagScanMax {
			lag.Entries = r.fsmEntries(applied+1, commit)
		}
	}
	if r.raft.State() != raft.Leader {
		last := r.raft.LastContact()
		if last.IsZero() {
			last = r.opened // never heard from a leader since it opened
		}
		if since := r.now().Sub(last); since > r.heartbeat {
			lag.SinceContact = since
		}
	}
	return lag
}

// Close shuts the raft group down and closes its log. The store and the
// transport's listener belong to the caller. Close is idempotent (a
// retired replica is closed, then closed again when dropped or when the
// node closes); a concurrent call waits for the first.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.close() })
	return r.closeErr
}

func (r *Replica) close() error {
	// Start the shutdown, then close the transport before waiting for it:
	// a leader's replication goroutine can be blocked in a pipelined
	// AppendEntries on a peer that stopped answering, and only failing its
	// connection lets it (and so Shutdown) finish.
	close(r.stop) // an FSM waiting for disk space gives up: raft waits for it
	shutdown := r.raft.Shutdown()
	var err error
	if nt, ok := r.trans.(interface{ CloseStreams() }); ok {
		nt.CloseStreams() // pooled outbound connections; Close leaves them open
	}
	if c, ok := r.trans.(raft.WithClose); ok {
		err = c.Close()
	}
	err = errors.Join(shutdown.Error(), err)
	if r.fsm.budget != nil {
		r.fsm.budget.wait()
	}
	return errors.Join(err, r.logs.Close())
}
