package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// Durability is how far an event must get before Ingest acknowledges it.
type Durability uint8

const (
	// Committed: committed on a majority of the shard's replicas and applied
	// on the leader (durable and queryable).
	Committed Durability = iota
	// Accepted: in the shard leader's ring buffer (may be lost if the node
	// dies before the batch commits).
	Accepted
)

// Config configures a Node.
type Config struct {
	// ID names the node in every Raft group (its raft.ServerID).
	ID string
	// RaftAddr is the address other nodes reach this node's raft mux at.
	RaftAddr string
	// DataDir holds the store and one directory per shard replica.
	DataDir string
	// Shards is the cluster's shard count at bootstrap: the base of its
	// layout. Online resharding doubles the count (Node.Layout); shard ids
	// then run up to MaxShardsFor(Shards).
	Shards uint32
	// Pool configures the ring buffers and writer pool.
	Pool PoolConfig
	// Raft is the timing of every shard group.
	Raft RaftTiming
	// Correlator is the template for every shard's correlator config
	// (Shard and Shards are filled in per replica).
	Correlator correlate.Config
	// Store configures the node's Pebble store.
	Store store.Options
	// Disk is the free-space guard of DataDir (see DiskConfig).
	Disk DiskConfig
	// CommitTimeout bounds how long a COMMITTED ingest waits for space in
	// a full ring buffer and for the commit itself.
	CommitTimeout time.Duration
	// Retention, when non-zero, is proposed to every led shard every
	// RetentionInterval.
	RetentionMaxAge    time.Duration
	RetentionMaxEvents uint64
	RetentionInterval  time.Duration
	// NoticeBatch bounds the notices delivered in one proposal.
	NoticeBatch int
	// DeliverRemote delivers notices to a shard whose leader is on another
	// node, waiting for the commit there (set by the cluster layer; nil on
	// a single node).
	DeliverRemote RemoteDelivery

	Logger *slog.Logger
	// Transport returns the raft transport for a shard's group on this node.
	Transport func(shard uint32) (raft.Transport, error)
	// BeforeApply, if set, is called on a replica's FSM goroutine before
	// it applies committed entries: a fault-injection seam for tests (a
	// hook that blocks stalls the replica's applies, as a slow disk does).
	BeforeApply func(shard uint32)
}

// DefaultConfig returns a configuration for a node with the given id and
// data directory. Transport must still be set.
func DefaultConfig(id, dataDir string) Config {
	pool := DefaultPoolConfig()
	// A failed raft proposal is failed back to the client rather than
	// retried by the pool: a retry could land after later proposals of the
	// same shard that were already in flight and reorder a process's
	// events, whereas the client's retry (idempotent by event id) is
	// ordered by the client. See docs/DECISIONS.md.
	pool.Retry.MaxAttempts = 1
	return Config{
		ID:                id,
		DataDir:           dataDir,
		Shards:            16,
		Pool:              pool,
		Raft:              DefaultRaftTiming(),
		Correlator:        correlate.DefaultConfig(0, 16),
		Store:             store.DefaultOptions(),
		Disk:              DefaultDiskConfig(),
		CommitTimeout:     10 * time.Second,
		RetentionInterval: time.Minute,
		NoticeBatch:       1024,
		Logger:            slog.Default(),
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.ID == "":
		return fmt.Errorf("%w: ID: required", ErrConfig)
	case c.DataDir == "":
		return fmt.Errorf("%w: DataDir: required", ErrConfig)
	case c.Shards == 0 || c.Shards > 4096:
		return fmt.Errorf("%w: Shards %d: must be in 1..4096", ErrConfig, c.Shards)
	case c.CommitTimeout <= 0:
		return fmt.Errorf("%w: CommitTimeout %v: must be positive", ErrConfig, c.CommitTimeout)
	case c.NoticeBatch <= 0:
		return fmt.Errorf("%w: NoticeBatch %d: must be positive", ErrConfig, c.NoticeBatch)
	case c.Transport == nil:
		return fmt.Errorf("%w: Transport: required", ErrConfig)
	case c.Pool.MaxShards < int(c.Shards):
		return fmt.Errorf("%w: Pool.MaxShards %d: must be at least Shards (%d)", ErrConfig, c.Pool.MaxShards, c.Shards)
	}
	if err := c.Pool.Validate(); err != nil {
		return err
	}
	if err := c.Disk.Validate(); err != nil {
		return err
	}
	if need := MinFreeFor(c.Store.MemTableSize); c.Disk.MinFree > 0 && c.Disk.MinFree < need {
		return fmt.Errorf("%w: Disk.MinFree %s: must be 0 or at least %s for a Store.MemTableSize of %s: "+
			"once ingest is refused, a memtable flush and a new preallocated WAL of the store and of the raft log must still fit",
			ErrConfig, FormatBytes(c.Disk.MinFree), FormatBytes(need), FormatBytes(c.Store.MemTableSize))
	}
	return nil
}

// MinFreeFor is the least Disk.MinFree that leaves room, once ingest is
// refused, for what Pebble may still write: for the store and for the raft
// log, a memtable flush (at most a memtable) and the next WAL, which Pebble
// preallocates at 110% of a memtable: 2.1 memtables each (202 MiB with the
// default 64 MiB store memtable; the default MinFree is 256 MiB, and the
// rest is for the events in flight).
func MinFreeFor(storeMemTable uint64) uint64 {
	return (storeMemTable + raftLogMemTable(storeMemTable)) * 21 / 10
}

// raftLogMemTable is the raft log's memtable size for a store memtable of
// size m: half (32 MiB by default), at least Pebble's 1 MiB minimum.
func raftLogMemTable(m uint64) uint64 { return max(1<<20, m/2) }

// Node is one Scope node: its store, the shard replicas it hosts, the ring
// buffers and writer pool in front of them, and the loops that deliver
// cross-shard notices and run retention.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	store   *store.Store
	raftLog *RaftLog // every new replica's raft log (see OpenReplica)
	pool    *Pool
	metrics *Metrics
	disk    *diskGuard

	// lifecycle serializes OpenReplica and DropReplica of one shard (one
	// mutex per shard, taken before mu): a drop deletes the replica's
	// directory, log span and store span after it let go of mu, and an
	// open of the same shard must not start until that is done, or it
	// would open the dying replica's files and then lose them. Opens and
	// drops of different shards never wait for each other.
	lifecycle []sync.Mutex
	hooks     testHooks
	openSeq   atomic.Uint64 // numbers OpenReplica calls (Replica.LastOpen)

	mu        sync.RWMutex
	replicas  map[uint32]*Replica
	forwarder Forwarder
	closed    bool

	outboxSignal chan struct{} // a replica's outbox grew
	// failing marks, per shard, a replica whose store write failed and
	// that retireFailed has yet to retire; failSignal wakes it.
	failing    []atomic.Bool
	failSignal chan struct{}
	notices    noticeWork // notices.go
	// ctx is cancelled by Close: node-to-node calls of the background
	// loops (notice delivery) give up at once.
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	wg     sync.WaitGroup
	// opening counts OpenReplica calls past the closed check (Close waits
	// for them).
	opening sync.WaitGroup
	tail    *tailHub

	// layout is the newest layout this node knows (packed base<<32 |
	// shards): what Ingest routes by. It only grows: a split replica
	// applied here, or the cluster learned it from a peer (LearnLayout).
	layout atomic.Uint64
	// maxShards bounds shard ids: the base doubled as far as 4,096.
	maxShards uint32
	// handoffSignal wakes the handoff loop (reshard.go).
	handoffSignal chan struct{}
}

// MaxNodeShards bounds a node's shard count, after any doubling.
const MaxNodeShards = 4096

// MaxShardsFor returns how many shards a cluster of base shards can grow
// to: base doubled while it stays within MaxNodeShards (base itself above
// half of it).
func MaxShardsFor(base uint32) uint32 { return correlate.MaxShardsWithin(base, MaxNodeShards) }

// Open opens the node's store, starts the writer pool and the background
// loops. It hosts no replicas until OpenReplica is called.
func Open(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Pool.Logger == nil {
		cfg.Pool.Logger = cfg.Logger
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	metrics := newMetrics()
	// Measure before opening Pebble: on a disk that filled up while the
	// node was down, the guard releases the reserve file first, so that
	// opening (WAL replay, a new WAL and MANIFEST) has room, and the node
	// starts refusing writes rather than failing.
	disk := newDiskGuard(cfg.Disk, cfg.DataDir, cfg.Logger, metrics.reg)
	disk.check()
	if need := MinFreeFor(cfg.Store.MemTableSize) / 2; disk.enabled() && disk.avail.Load() < need {
		// Pebble opening on a disk this full replays its WALs into a
		// memtable it cannot flush, and retries the flush in a loop for
		// good: fail now, saying what to do (a supervisor restarting the
		// agent retries).
		return nil, fmt.Errorf("%w: data dir %s has %s free and no reserve file left to release; opening the store needs at least %s: "+
			"free space on the volume (or grow it), then start again", ErrDiskFull, cfg.DataDir,
			FormatBytes(disk.avail.Load()), FormatBytes(need))
	}
	so := cfg.Store
	if so.Logger == nil {
		so.Logger = cfg.Logger // the node's handler and format, not slog.Default's
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "store"), so)
	if err != nil {
		return nil, err
	}
	maxShards := MaxShardsFor(cfg.Shards)
	lo := DefaultRaftLogOptions(maxShards)
	lo.Logger = cfg.Logger
	lo.MemTableSize = raftLogMemTable(cfg.Store.MemTableSize)
	if disk.enabled() {
		lo.WriteGate = disk.appendErr
	}
	rl, err := OpenRaftLog(filepath.Join(cfg.DataDir, "raftlog"), lo)
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	n := &Node{
		cfg:           cfg,
		logger:        cfg.Logger,
		store:         st,
		raftLog:       rl,
		metrics:       metrics,
		disk:          disk,
		replicas:      make(map[uint32]*Replica),
		maxShards:     maxShards,
		lifecycle:     make([]sync.Mutex, maxShards),
		failing:       make([]atomic.Bool, maxShards),
		failSignal:    make(chan struct{}, 1),
		outboxSignal:  make(chan struct{}, 1),
		handoffSignal: make(chan struct{}, 1),
		stop:          make(chan struct{}),
		tail:          newTailHub(maxShards),
		notices:       noticeWork{routes: make(map[string]bool), pairs: make(map[noticePair]bool)},
	}
	n.layout.Store(packLayout(correlate.Layout{Base: cfg.Shards, Shards: cfg.Shards}))
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.pool, err = NewPool(cfg.Pool, n, n.metrics.pool)
	if err != nil {
		_ = rl.Close()
		_ = st.Close()
		return nil, err
	}
	n.pool.Start()
	n.metrics.watchReplicas(n.failedReplicas)
	n.metrics.watchTail(n.tail)
	n.metrics.reg.MustRegister(newPebbleCollector(map[string]func() (*pebble.Metrics, uint64){
		"store": st.PebbleMetrics, "raftlog": rl.PebbleMetrics}))
	n.metrics.watchStore(st)
	n.wg.Add(4)
	go n.deliverHandoffs()
	go n.deliverNotices()
	go n.runRetention()
	go n.retireFailed()
	if disk.enabled() {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			disk.run(n.stop)
		}()
	}
	return n, nil
}

// Store is the node's store (read-only use by the query layer).
func (n *Node) Store() *store.Store { return n.store }

// Metrics is the node's metrics registry.
func (n *Node) Metrics() *Metrics { return n.metrics }

// Shards is the cluster's shard count in the newest layout this node
// knows.
func (n *Node) Shards() uint32 { return n.Layout().Shards }

// BaseShards is the cluster's shard count at bootstrap.
func (n *Node) BaseShards() uint32 { return n.cfg.Shards }

// MaxShards bounds the shard ids this node accepts.
func (n *Node) MaxShards() uint32 { return n.maxShards }

// Layout is the newest layout this node knows: what Ingest routes by.
func (n *Node) Layout() correlate.Layout { return unpackLayout(n.layout.Load()) }

// LearnLayout makes l the node's layout if it is newer (more shards) than
// the one it has, of the same base and within MaxShards, and reports
// whether it did.
func (n *Node) LearnLayout(l correlate.Layout) bool {
	if l.Base != n.cfg.Shards || l.Validate() != nil || l.Shards > n.maxShards {
		return false
	}
	for {
		cur := n.layout.Load()
		if unpackLayout(cur).Shards >= l.Shards {
			return false
		}
		if n.layout.CompareAndSwap(cur, packLayout(l)) {
			n.logger.Info("layout learned", "base", l.Base, "shards", l.Shards)
			return true
		}
	}
}

func packLayout(l correlate.Layout) uint64 { return uint64(l.Base)<<32 | uint64(l.Shards) }

func unpackLayout(v uint64) correlate.Layout {
	return correlate.Layout{Base: uint32(v >> 32), Shards: uint32(v)}
}

// ID is the node's raft server id.
func (n *Node) ID() string { return n.cfg.ID }

// OpenReplica opens this node's replica of shard and routes the shard's
// writes to it.
func (n *Node) OpenReplica(shard uint32) (*Replica, error) {
	if shard >= n.maxShards {
		return nil, fmt.Errorf("%w: shard %d: ids run below %d (%d shards doubled)", ErrNoShard, shard, n.maxShards, n.cfg.Shards)
	}
	// The lifecycle lock keeps other opens and drops of this shard out;
	// n.mu is held only to look and to publish, so replicas of different
	// shards open in parallel (EachShard). Close waits for the opens that
	// got past this check.
	unlock := n.lockLifecycle(shard)
	defer unlock()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	if r, ok := n.replicas[shard]; ok {
		n.noteOpen(r)
		n.mu.Unlock()
		return r, nil
	}
	n.opening.Add(1)
	n.mu.Unlock()
	defer n.opening.Done()
	r, err := n.openReplica(shard)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.replicas[shard] = r
	n.noteOpen(r)
	n.mu.Unlock()
	return r, nil
}

// openReplica opens shard's replica and adds the shard to the pool (with
// the shard's lifecycle lock held, not n.mu).
func (n *Node) openReplica(shard uint32) (*Replica, error) {
	dir := n.replicaDir(shard)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		// A new replica. The directory is what says a replica exists
		// (HostedShards); a DropReplica interrupted after removing it may
		// have left the shard's span in the shared log: clear it, or the
		// new replica would start from a dead one's term, vote and log.
		if err := n.raftLog.DeleteShard(shard); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("node: shard %d: %w", shard, err)
	}
	trans, err := n.cfg.Transport(shard)
	if err != nil {
		return nil, err
	}
	cc := n.cfg.Correlator
	cc.Shard, cc.Shards = shard, n.cfg.Shards
	r, err := OpenReplica(ReplicaConfig{
		Shard:       shard,
		NodeID:      raft.ServerID(n.cfg.ID),
		Dir:         dir,
		Store:       n.store,
		Logs:        n.raftLog,
		Transport:   trans,
		Correlator:  cc,
		Timing:      n.cfg.Raft,
		Logger:      n.logger,
		OnApply:     n.onApply,
		OnFail:      n.replicaFailed,
		BeforeApply: n.cfg.BeforeApply,
		OnMaterialize: func(_ uint32, bytes int64, _ time.Duration) {
			n.metrics.snapshotsMaterialized.Inc()
			n.metrics.snapshotBytesMaterialized.Add(float64(bytes))
		},
		OnLogBudgetSnapshot: func(uint32) { n.metrics.logBudgetSnapshots.Inc() },
		OnReshard:           n.reshardChanged,
		OnPrepared:          n.prepared,
		WaitWritable: func(stop <-chan struct{}) bool {
			return n.disk.waitWritable(stop)
		},
	})
	if err != nil {
		if c, ok := trans.(raft.WithClose); ok {
			_ = c.Close()
		}
		return nil, err
	}
	if err := n.pool.AddShard(shard); err != nil {
		_ = r.Close()
		return nil, err
	}
	n.reshardChanged(shard, r.Reshard()) // what its state on disk says
	return r, nil
}

// noteOpen records an OpenReplica call that returned r (see
// Replica.LastOpen).
func (n *Node) noteOpen(r *Replica) {
	r.lastOpenSeq.Store(n.openSeq.Add(1))
	r.lastOpenAt.Store(time.Now().UnixNano())
}

// Replica returns the local replica of shard, or nil.
func (n *Node) Replica(shard uint32) *Replica {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.replicas[shard]
}

// Replicas returns the local replicas in shard order.
func (n *Node) Replicas() []*Replica {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]*Replica, 0, len(n.replicas))
	for _, r := range n.replicas {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].shard < out[j].shard })
	return out
}

// Bootstrap creates every shard's group with this node as its only voter
// (a one-node cluster, `scope agent -dev`), or resumes them if they exist,
// with the groups of shards split since (docs/DECISIONS.md D39).
func (n *Node) Bootstrap() error {
	if _, err := n.OpenHosted(); err != nil {
		return err
	}
	self := []raft.Server{{ID: raft.ServerID(n.cfg.ID), Address: raft.ServerAddress(n.cfg.RaftAddr)}}
	all := make([]uint32, n.cfg.Shards)
	for i := range all {
		all[i] = uint32(i)
	}
	return EachShard(all, func(shard uint32) error {
		r, err := n.OpenReplica(shard)
		if err != nil {
			return err
		}
		if err := r.Bootstrap(self); err != nil {
			return fmt.Errorf("node: bootstrap shard %d: %w", shard, err)
		}
		return nil
	})
}

// eachShardWorkers bounds EachShard's concurrency. Opening a replica is
// mostly waiting for fsyncs (its log's deletion, raft's term and first
// entry): run together, Pebble commits them with one fsync for many.
const eachShardWorkers = 32

// EachShard calls fn for every shard of shards, up to 32 at a time, and
// returns the error of the lowest shard that failed (after every call
// started has returned; no call starts after the first failure).
func EachShard(shards []uint32, fn func(shard uint32) error) error {
	errs := make([]error, len(shards))
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	for range min(eachShardWorkers, len(shards)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(shards) {
					return
				}
				if errs[i] = fn(shards[i]); errs[i] != nil {
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// WaitLeaders waits until every local replica knows a leader.
func (n *Node) WaitLeaders(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		missing := 0
		for _, r := range n.Replicas() {
			if addr, _ := r.Leader(); addr == "" {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node: %d shards without a leader: %w", missing, ctx.Err())
		case <-t.C:
		}
	}
}

// ShardResult is the outcome of one shard's part of an ingest request.
// Events = Repeats + the part handed to the shard; when Err is nil the part
// is Accepted + Duplicates.
type ShardResult struct {
	Shard    uint32
	Events   int // events of the request for this shard, repeats included
	Accepted int // events acknowledged (per the durability asked for), duplicates excluded
	// Repeats are events whose id an earlier event of the request already
	// had (the same event twice): not handed to the shard, they share the
	// first one's outcome.
	Repeats int
	// Duplicates are events of the part the shard did not store because it
	// had applied their ids already (known under Committed only).
	Duplicates int
	Err        error // why the shard's part was refused or failed (nil if accepted)
}

// IngestResult is the outcome of an ingest request.
type IngestResult struct {
	IDs    []correlate.EventID // per request event, in request order
	Shards []ShardResult       // in shard order
}

// Accepted counts events acknowledged over all shards, and those that
// were not (refused or of unknown outcome); duplicates and repeats of a
// shard that succeeded are neither.
func (r *IngestResult) Accepted() (accepted, refused int) {
	for _, s := range r.Shards {
		accepted += s.Accepted
		if s.Err != nil {
			refused += s.Events - s.Accepted
		}
	}
	return accepted, refused
}

// Ingest assigns missing event ids (correlate.ContentID: a resend of the
// same event gets the same id), normalises the events, splits them by shard
// and hands each shard's part to its ring buffer, all or nothing per shard.
// An event whose id an earlier event of the request had is a repeat: it is
// not handed over again (ShardResult.Repeats). With Committed it then waits
// (bounded by ctx and CommitTimeout) until each part is committed and
// applied. The caller has validated the events (correlate.Validate) and
// refused an id naming two different events (correlate.CheckRepeatedIDs).
// events is modified in place.
func (n *Node) Ingest(ctx context.Context, events []correlate.Event, d Durability) IngestResult {
	res := IngestResult{IDs: make([]correlate.EventID, len(events))}
	byShard := make(map[uint32][]correlate.Event)
	repeats := make(map[uint32]int)
	seen := make(map[correlate.EventID]uint32, len(events)) // id → its shard; bounded by the request
	layout := n.Layout()
	for i := range events {
		e := &events[i]
		if e.ID.IsZero() {
			e.ID = correlate.ContentID(e) // before Normalize: the client's content
		}
		res.IDs[i] = e.ID
		if shard, ok := seen[e.ID]; ok {
			repeats[shard]++
			continue
		}
		correlate.Normalize(e, n.cfg.Correlator.Limits)
		e.Shard = layout.ShardOf(e.Origin, e.PID)
		seen[e.ID] = e.Shard
		byShard[e.Shard] = append(byShard[e.Shard], *e)
	}
	shards := make([]uint32, 0, len(byShard))
	for s := range byShard {
		shards = append(shards, s)
	}
	sort.Slice(shards, func(i, j int) bool { return shards[i] < shards[j] })

	ctx, cancel := context.WithTimeout(ctx, n.cfg.CommitTimeout)
	defer cancel()
	tickets := make([]*Ticket, len(shards))
	forwarded := make([]bool, len(shards))
	res.Shards = make([]ShardResult, len(shards))
	for i, shard := range shards {
		part := byShard[shard]
		res.Shards[i] = ShardResult{Shard: shard, Events: len(part) + repeats[shard], Repeats: repeats[shard]}
		// The pool takes the part when this node leads the shard, and also
		// while it still holds earlier events of the shard (it lost the
		// leadership and is redirecting them): the part then queues behind
		// them instead of overtaking them.
		// A forwarded part is never queued behind this node's own
		// redirects (they may be waiting on this very request).
		r := n.Replica(shard)
		if r == nil || !(r.IsLeader() || n.pool.Outstanding(shard) > 0 && !isForwarded(ctx)) {
			forwarded[i] = true
			continue
		}
		// A split child takes nothing before its handoff is in (the
		// parent's leader is delivering it): the part waits for it, within
		// the request's deadline, and is refused if it is not in by then.
		if err := r.AwaitHandoff(ctx); err != nil {
			res.Shards[i].Err = err
			continue
		}
		// A full disk refuses new events where they would be stored: on
		// the shard's leader. A redirect carries events an old leader
		// admitted (ACCEPTED ones were acknowledged): it is let into the
		// margin kept for admitted writes, until that is critical too.
		if err := n.disk.admit(len(part), IsRedirect(ctx)); err != nil {
			res.Shards[i].Err = fmt.Errorf("shard %d: %w", shard, err)
			continue
		}
		t, err := n.pool.Submit(ctx, shard, part, d == Committed)
		if err != nil {
			res.Shards[i].Err = err // counted by the pool
			continue
		}
		tickets[i] = t
		if d == Accepted {
			res.Shards[i].Accepted = len(part)
		}
	}
	// settle records a part's outcome: on success, what the shard stored
	// and what it already had.
	settle := func(i, dups int, err error) {
		if err != nil {
			res.Shards[i].Err = err
			return
		}
		res.Shards[i].Duplicates = dups
		res.Shards[i].Accepted = len(byShard[shards[i]]) - dups
	}
	// Parts for shards led elsewhere go to their leaders, concurrently,
	// while the local parts commit.
	var fwd sync.WaitGroup
	for i, shard := range shards {
		if forwarded[i] {
			fwd.Add(1)
			go func() {
				defer fwd.Done()
				dups, err := n.forward(ctx, shard, byShard[shard], d)
				settle(i, dups, err)
			}()
		}
	}
	if d == Committed {
		// A part whose proposal met a leadership change was redirected to
		// the new leader by the pool (see Redirect): its ticket tells the
		// final outcome, and the duplicates the new leader reported.
		for i, t := range tickets {
			if t == nil {
				continue
			}
			select {
			case <-t.Done():
				settle(i, t.Duplicates(), t.Err())
			case <-ctx.Done():
				res.Shards[i].Err = fmt.Errorf("%w: %w: shard %d: not committed within the deadline: %w",
					ErrOutcomeUnknown, ErrTimeout, res.Shards[i].Shard, ctx.Err())
			}
		}
	}
	fwd.Wait()
	for _, s := range res.Shards {
		n.metrics.ingested(s.Shard, s.Accepted)
	}
	return res
}

// forward hands a shard's part to its leader on another node, unless the
// request was forwarded here already or no forwarder is installed. dups is
// how many of the events the shard had stored already (Committed only).
func (n *Node) forward(ctx context.Context, shard uint32, events []correlate.Event, d Durability) (dups int, err error) {
	n.mu.RLock()
	f := n.forwarder
	n.mu.RUnlock()
	r := n.Replica(shard)
	if f == nil || isForwarded(ctx) {
		if r == nil {
			return 0, fmt.Errorf("%w: shard %d", ErrNoShard, shard)
		}
		addr, id := r.Leader()
		return 0, &NotLeaderError{Shard: shard, LeaderID: string(id), LeaderAddr: string(addr)}
	}
	n.metrics.forwarded.Add(float64(len(events)))
	return f.Forward(ctx, shard, events, d)
}

// Propose implements Proposer for the writer pool: it proposes a batch of
// events to the shard's raft group without waiting for the commit. It
// blocks while the group's apply queue is full (at most CommitTimeout); the
// pool calls it from the shard's own goroutine.
func (n *Node) Propose(shard uint32, events []correlate.Event) ProposalFuture {
	r := n.Replica(shard)
	if r == nil {
		return failedFuture{fmt.Errorf("%w: shard %d", ErrShardClosed, shard)}
	}
	return raftFuture{shard: shard, f: r.Propose(&correlate.Batch{Events: events}, n.cfg.CommitTimeout)}
}

// Redirect implements Redirector for the writer pool: a batch whose
// proposal failed because this node lost the shard's leadership goes to
// the new leader (same ids, so a batch that commits after all is
// deduplicated there), within CommitTimeout. It always asks for the
// commit, even for ACCEPTED events: an ACCEPTED forward is refused at once
// by a full ring, and these events were acknowledged already; waiting for
// the commit also keeps the redirected batches in order behind one
// another. If leadership comes back here, the batch is proposed directly
// to the local replica: through the pool it would wait behind its own
// completer, which is the caller. dups is the count of events the shard
// had applied already, from the local FSM or the leader's answer.
func (n *Node) Redirect(ctx context.Context, shard uint32, events []correlate.Event, _ bool) (dups int, err error) {
	ctx, cancel := context.WithTimeout(MarkRedirect(ctx), n.cfg.CommitTimeout)
	defer cancel()
	backoff := time.Millisecond
	for {
		if r := n.Replica(shard); r != nil && r.IsLeader() && !r.Awaiting() {
			f := raftFuture{shard: shard, f: r.Propose(&correlate.Batch{Events: events}, n.cfg.CommitTimeout)}
			if dups, err = 0, f.Wait(); err == nil {
				dups = len(f.Duplicates())
				if idx := f.Rerouted(); len(idx) > 0 {
					// The shard split before the entry: its given-away
					// events go on to their owner.
					away := make([]correlate.Event, len(idx))
					for i, j := range idx {
						away[i] = events[j]
					}
					d, rerr := n.Reroute(ctx, away, true)
					if dups += d; rerr != nil {
						return dups, fmt.Errorf("%w: %d of %d events stored, the rest rerouted: %w", ErrOutcomeUnknown, len(events)-len(away), len(events), rerr)
					}
				}
			}
		} else if r != nil && r.IsLeader() {
			err = fmt.Errorf("%w: shard %d", ErrAwaitingHandoff, shard)
		} else {
			dups, err = n.forward(ctx, shard, events, Committed)
		}
		// Not taken, or taken maybe (the receiving leader lost the
		// leadership in turn), or the shard awaits its handoff: same ids,
		// so trying again is safe, and a retry counts the events a lost
		// attempt stored as duplicates.
		if err == nil || !(errors.Is(err, ErrNotLeader) || errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrAwaitingHandoff)) || ctx.Err() != nil {
			return dups, err
		}
		select { // leadership is moving: look again shortly
		case <-ctx.Done():
			return 0, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// raftFuture adapts a raft.ApplyFuture to the pool's ProposalFuture. It
// tells apart a proposal raft never appended (ErrNotLeader: refused) from
// one appended and then orphaned by a leadership change
// (ErrLeadershipLost: it may still commit, the outcome is unknown).
type raftFuture struct {
	shard uint32
	f     raft.ApplyFuture
}

func (f raftFuture) Wait() error {
	if err := f.f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrLeadershipLost):
			return fmt.Errorf("%w (%w): shard %d: %w", ErrLeadershipLost, ErrOutcomeUnknown, f.shard, err)
		case errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return fmt.Errorf("%w: shard %d: %w", ErrNotLeader, f.shard, err)
		}
		return err
	}
	if ar, ok := f.f.Response().(ApplyResult); ok && ar.Err != nil {
		return ar.Err
	}
	return nil
}

// Duplicates implements DuplicateReporter: read once Wait returned nil.
func (f raftFuture) Duplicates() []int {
	ar, _ := f.f.Response().(ApplyResult)
	return ar.Duplicates
}

// Rerouted implements RerouteReporter: read once Wait returned nil.
func (f raftFuture) Rerouted() []int {
	ar, _ := f.f.Response().(ApplyResult)
	return ar.Rerouted
}

type failedFuture struct{ err error }

func (f failedFuture) Wait() error { return f.err }

// onApply runs on a replica's FSM goroutine after each durable apply.
func (n *Node) onApply(shard uint32, res *correlate.Result, spans []EntrySpan) {
	n.metrics.applied(shard, res)
	if len(res.Outbox) > 0 {
		select {
		case n.outboxSignal <- struct{}{}:
		default:
		}
	}
	n.tail.publish(shard, res.Events, spans)
}

// DiskCondition is nil while the data directory has the free space the
// node needs, else the error saying that and why writes are refused
// (reads go on). For readiness reports.
func (n *Node) DiskCondition() error { return n.disk.condition() }

// Close stops the node gracefully: the writer pool drains its rings (so
// accepted events are proposed), the background loops stop, every replica
// shuts down, and the store closes.
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.opening.Wait() // an open under way publishes its replica: it is closed below

	err := n.pool.Close(ctx)
	n.cancel()
	close(n.stop)
	n.wg.Wait()
	n.tail.close()
	// Replicas shut down concurrently: each may wait for its transport to
	// fail calls to peers that stopped answering.
	replicas := n.Replicas()
	errs := make([]error, len(replicas))
	var closing sync.WaitGroup
	for i, r := range replicas {
		closing.Add(1)
		go func() {
			defer closing.Done()
			errs[i] = r.Close()
		}()
	}
	closing.Wait()
	return errors.Join(err, errors.Join(errs...), n.raftLog.Close(), n.store.Close())
}
