package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
)

// Config configures a node's part in the cluster.
type Config struct {
	// Name is this node's name: its memberlist name and its raft server id.
	Name string
	// RaftAddr is the advertised address of this node's raft mux.
	RaftAddr string
	// Shards is the cluster's shard count S; Replicas is R, the desired
	// replicas per shard (capped by the number of live nodes).
	Shards   uint32
	Replicas int
	// BootstrapExpect, when > 0 and this node has never been part of a
	// cluster, waits for that many live members and then creates every
	// shard's group on its placement. 0: join an existing cluster.
	BootstrapExpect int
	// ReconcileInterval is how often each shard leader compares its group
	// with the placement (membership changes also trigger a round).
	ReconcileInterval time.Duration
	// MaxConcurrentMoves bounds the replicas this node, as their shards'
	// leader, adds at once: from the addition of a non-voter until it is
	// promoted or removed. Each receives a snapshot of its shard from this
	// node, so this bounds the snapshots it streams at once. Non-voters a
	// previous leader added count too; an addition waits while the bound is
	// reached.
	MaxConcurrentMoves int
	// CatchUpLag is how far behind the leader's applied index a new
	// non-voter may be when it is promoted to voter.
	CatchUpLag uint64
	// RPCTimeout bounds one node-to-node call.
	RPCTimeout time.Duration
	// OrphanGrace is how long a replica must have gone without an
	// OpenReplica call and without hearing from a leader before this node
	// asks the leader whether its group still names it (and drops it if
	// not, see orphans.go). It must exceed the time a leader takes from
	// opening a replica here to adding it to the group: two RPCTimeouts.
	OrphanGrace time.Duration
	// FormationWindow is how long after this node first holds replicas it
	// still counts as forming the cluster (Meta.Formed false), so that
	// founders bootstrapping at the same time never take one another for
	// an existing cluster. A node that held replicas when it started is
	// formed at once.
	FormationWindow time.Duration
	// LostVoterGrace is how long a member must hold no replica, or have
	// started empty and not yet be formed, before the groups that list it
	// as a voter ask it whether it lost their data, and replace it if it
	// did (identity.go). It must be shorter than FormationWindow.
	LostVoterGrace time.Duration
	// StabilizationTime is how long a member's gossip state must have
	// lasted before placement moves replicas because of it: to a member
	// once it has been alive that long, away from a member of a group once
	// it has been dead that long (stability.go). 0 disables the damping.
	StabilizationTime time.Duration
	// Identity is the data directory's identity (node id, cluster id,
	// epoch: identity.go); nil: a new one in memory, which no restart
	// keeps.
	Identity *IdentityStore
	// HTTPClient carries node-to-node calls (nil: a default that speaks
	// HTTP/1.1 and cleartext HTTP/2).
	HTTPClient *http.Client
	// TLS makes node-to-node calls go to https:// addresses; HTTPClient
	// must then dial mutual TLS (tlsconf.Reloader.NodeHTTPClient).
	TLS bool
	// Keyring is this node's gossip keyring file (-gossip-keyring), which
	// the node API's Keyring changes; nil: the keys cannot change at run
	// time.
	Keyring *KeyringFile
	// Auth, when set, supplies the node credential sent on every
	// node-to-node call (rpc.Auth.NodeTransport); the server side checks it
	// in the rpc server's middleware.
	Auth   *rpc.Auth
	Logger *slog.Logger
}

// DefaultConfig returns defaults for a node named name.
func DefaultConfig(name string) Config {
	return Config{
		Name:               name,
		Shards:             16,
		Replicas:           3,
		ReconcileInterval:  2 * time.Second,
		MaxConcurrentMoves: 4,
		CatchUpLag:         1024,
		RPCTimeout:         10 * time.Second,
		OrphanGrace:        30 * time.Second,
		FormationWindow:    30 * time.Second,
		LostVoterGrace:     10 * time.Second,
		StabilizationTime:  10 * time.Second,
		Logger:             slog.Default(),
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: Name: required", ErrConfig)
	case c.RaftAddr == "":
		return fmt.Errorf("%w: RaftAddr: required", ErrConfig)
	case c.Shards == 0:
		return fmt.Errorf("%w: Shards: must be at least 1", ErrConfig)
	case c.Replicas < 1 || c.Replicas > 7:
		return fmt.Errorf("%w: Replicas %d: must be in 1..7", ErrConfig, c.Replicas)
	case c.BootstrapExpect < 0:
		return fmt.Errorf("%w: BootstrapExpect %d: must not be negative", ErrConfig, c.BootstrapExpect)
	case c.ReconcileInterval <= 0:
		return fmt.Errorf("%w: ReconcileInterval %v: must be positive", ErrConfig, c.ReconcileInterval)
	case c.MaxConcurrentMoves < 1:
		return fmt.Errorf("%w: MaxConcurrentMoves %d: must be at least 1", ErrConfig, c.MaxConcurrentMoves)
	case c.RPCTimeout <= 0:
		return fmt.Errorf("%w: RPCTimeout %v: must be positive", ErrConfig, c.RPCTimeout)
	case c.StabilizationTime < 0:
		return fmt.Errorf("%w: StabilizationTime %v: must not be negative (0 disables flap damping)", ErrConfig, c.StabilizationTime)
	case c.OrphanGrace <= 0:
		return fmt.Errorf("%w: OrphanGrace %v: must be positive (at least twice RPCTimeout)", ErrConfig, c.OrphanGrace)
	case c.FormationWindow < 0:
		return fmt.Errorf("%w: FormationWindow %v: must not be negative", ErrConfig, c.FormationWindow)
	case c.LostVoterGrace <= 0:
		return fmt.Errorf("%w: LostVoterGrace %v: must be positive", ErrConfig, c.LostVoterGrace)
	case c.LostVoterGrace >= c.FormationWindow:
		return fmt.Errorf("%w: LostVoterGrace %v: must be shorter than FormationWindow %v (a node that came back empty must be suspect before it counts as formed)",
			ErrConfig, c.LostVoterGrace, c.FormationWindow)
	}
	return nil
}

// Cluster runs a node's part of the cluster: it publishes the shards the
// node leads in gossip, routes ingest and notices to shard leaders on other
// nodes, serves and calls the node-to-node API, bootstraps the shard groups
// once, and, for every shard this node leads, moves the group toward its
// placement.
type Cluster struct {
	cfg     Config
	node    *node.Node
	members *Membership
	logger  *slog.Logger
	peers   *peers
	moves   *moveTracker // replicas catching up from this node (MaxConcurrentMoves)
	// hostedOpen is set once Start has reopened the replicas the data
	// directory holds: until then ReplicaStatus cannot say a replica is
	// missing (nodeservice.go).
	hostedOpen atomic.Bool
	metrics    *metrics
	// unformed tracks members that advertise no replica (identity.go).
	unformed unformedSince
	// id is the data directory's identity; epochs the highest start seen
	// per node id (identity.go).
	id     *IdentityStore
	epochs epochTable
	// twoClustersWarned: the pair of cluster ids last logged as both in
	// this node's gossip (used by the run loop only).
	twoClustersWarned uint64

	// ctx is cancelled by Close: the background loops' node-to-node calls
	// give up at once.
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	wg     sync.WaitGroup
	// stepSlots bounds the shard steps running at once (reconcile.go).
	stepSlots chan struct{}

	// reshardMu lets one Reshard coordinate from this node at a time.
	reshardMu sync.Mutex
	mu        sync.Mutex
	closed    bool
	draining  bool
	steps     map[uint32]bool // shards with a step running (reconcile.go)
	// childChecked is, per split child led here, the term in which its
	// voters were last found to hold its replica (replaceLostVoter); at
	// most one entry per shard.
	childChecked map[uint32]uint64
	// restored: the replicas reopened from the data directory at Start,
	// dropped if it turns out to be an old copy (identity.go).
	restored []restoredReplica
	// foreignWarned: the cluster id last logged per foreign member.
	foreignWarned map[string]uint64
	// protocol is the cluster's protocol version as last computed (0
	// before any), protocolErr why this node cannot speak it, and
	// protocolWarned the range last logged per member that cannot
	// (protocol.go).
	protocol       uint8
	protocolErr    error
	protocolWarned map[string]ProtocolRange
	// shardCountErr says why this node takes no part for its shard count;
	// shardCountWarned the count last logged per member with another
	// (shardcount.go).
	shardCountErr    error
	shardCountWarned map[string]uint32
	// selfProtocol is this node's range (fixed: its gossip metadata's);
	// writes the version its requests are written in, set by
	// protocolRound and read on every node-to-node request.
	selfProtocol ProtocolRange
	writes       atomic.Uint32
	// formedAtStart and heldSince decide Meta.Formed (formedNow):
	// formedAtStart, the data directory held replicas when Start ran and
	// they were not dropped as an old copy since; heldSince, when this node
	// first held a replica since it started or was emptied by a
	// resynchronization.
	formedAtStart bool
	heldSince     time.Time

	// balanceMu serializes leadership balancing: at most one transfer per
	// ReconcileInterval (lastTransfer is when the last one completed);
	// transferFailed holds when a balancing transfer of a shard last failed
	// (at most one entry per shard).
	balanceMu      sync.Mutex
	lastTransfer   time.Time
	transferFailed map[uint32]time.Time
}

// New wires n and members into a cluster. Call Start to begin.
func New(cfg Config, n *node.Node, members *Membership) (*Cluster, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if n.BaseShards() != cfg.Shards {
		return nil, fmt.Errorf("%w: node has %d shards, cluster config %d", ErrConfig, n.BaseShards(), cfg.Shards)
	}
	client := cfg.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
	}
	if cfg.Identity == nil {
		cfg.Identity = NewMemoryIdentity()
	}
	if cfg.Auth != nil {
		c := *client
		c.Transport = cfg.Auth.NodeTransport(client.Transport)
		client = &c
	}
	c := &Cluster{
		id:           cfg.Identity,
		cfg:          cfg,
		node:         n,
		members:      members,
		logger:       cfg.Logger,
		moves:        newMoveTracker(cfg.MaxConcurrentMoves),
		stop:         make(chan struct{}),
		steps:        make(map[uint32]bool),
		childChecked: make(map[uint32]uint64),
		// A step is short unless a peer is slow; the bound keeps a
		// cluster of thousands of shards from starting thousands of calls.
		// Not bounded by the shard count: resharding adds shards later.
		stepSlots: make(chan struct{}, maxConcurrentSteps),
	}
	c.selfProtocol = members.Meta().Protocol
	c.writes.Store(uint32(c.selfProtocol.writes(0)))
	c.peers = newPeers(client, cfg.RPCTimeout, cfg.TLS, connect.WithInterceptors(protocolInterceptor{c}))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.metrics = newMetrics(c)
	if err := n.Metrics().Registry().Register(c.metrics); err != nil {
		return nil, fmt.Errorf("cluster: register metrics: %w", err)
	}
	return c, nil
}

// defaultHTTPClient speaks HTTP/1.1 and cleartext HTTP/2 (prior knowledge),
// so node-to-node calls share a few multiplexed connections.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	t.MaxIdleConnsPerHost = 16
	return &http.Client{Transport: t}
}

// Start reopens the replicas this node hosted, installs the node's routes
// to other nodes, and starts the background loops.
func (c *Cluster) Start() error {
	hosted, err := c.node.OpenHosted()
	if err != nil {
		return err
	}
	c.hostedOpen.Store(true)
	for _, s := range hosted {
		if r := c.node.Replica(s); r != nil {
			seq, _ := r.LastOpen()
			c.restored = append(c.restored, restoredReplica{r: r, seq: seq})
		}
	}
	if c.id.Get().Resync {
		// The last run learned that this directory is an old copy and
		// stopped before it had dropped every replica.
		c.logger.Warn("finishing the resynchronization of an old data directory copy: dropping its replicas",
			"replicas", len(hosted))
		c.dropRestored()
		hosted = nil
	}
	c.mu.Lock()
	c.formedAtStart = len(hosted) > 0
	c.mu.Unlock()
	id := c.id.Get()
	if err := c.members.UpdateMeta(func(m *Meta) {
		m.Formed, m.HoldsReplicas = len(hosted) > 0, len(hosted) > 0
		m.NodeID, m.ClusterID, m.Epoch, m.Run = id.NodeID, id.ClusterID, id.Epoch, c.id.Run()
	}); err != nil {
		return err
	}
	c.node.SetForwarder(forwarder{c})
	c.node.SetRemoteDelivery(noticeDelivery{c})
	changes, cancel, err := c.members.Subscribe()
	if err != nil {
		return err
	}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		defer cancel()
		c.run(changes, len(hosted) > 0)
	}()
	go func() {
		defer c.wg.Done()
		c.publishLoop()
	}()
	return nil
}

// run bootstraps (once, if asked) and then reconciles on every membership
// change and every ReconcileInterval.
func (c *Cluster) run(changes <-chan struct{}, hosted bool) {
	tick := time.NewTicker(c.cfg.ReconcileInterval)
	defer tick.Stop()
	bootstrapped := hosted || c.cfg.BootstrapExpect == 0
	for round := uint64(1); ; round++ {
		select {
		case <-c.stop:
			return
		case <-changes:
		case <-tick.C:
		}
		c.identityRound()
		c.protocolRound()
		c.shardCountRound()
		if !bootstrapped {
			done, err := c.bootstrap()
			if err != nil {
				c.logger.Error("bootstrap failed", "err", err)
			}
			bootstrapped = done
			continue
		}
		c.metrics.rounds.Inc()
		c.stepAll(round)
	}
}

// publishLoop keeps this node's gossip metadata (shards led, ready, formed,
// holds replicas) current.
func (c *Cluster) publishLoop() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var last []uint32
	var lastStale []StaleRun
	lastReady, lastFormed, lastHolds := false, false, false
	lastShards := c.cfg.Shards
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.learnLayout()
		shards := c.node.Shards()
		var led []uint32
		ready := true
		reps := c.node.Replicas()
		holds := len(reps) > 0
		formed := c.formedNow(holds, time.Now())
		for _, r := range reps {
			if r.IsLeader() {
				led = append(led, r.Shard())
			}
			if addr, _ := r.Leader(); addr == "" {
				ready = false
			}
		}
		stale := c.staleRuns()
		if slices.Equal(led, last) && ready == lastReady && formed == lastFormed && holds == lastHolds && slices.Equal(stale, lastStale) &&
			shards == lastShards {
			continue
		}
		if err := c.members.UpdateMeta(func(m *Meta) {
			m.Led, m.Ready, m.Formed, m.HoldsReplicas, m.Stale = led, ready, formed, holds, stale
			m.Shards, m.Base = shards, 0
			if shards != c.cfg.Shards {
				m.Base = c.cfg.Shards
			}
		}); err != nil {
			c.logger.Warn("publish metadata", "err", err)
			continue
		}
		last, lastReady, lastFormed, lastHolds, lastStale, lastShards = led, ready, formed, holds, stale, shards
	}
}

// learnLayout has the node route by the newest layout a live member of
// this cluster advertises (docs/DECISIONS.md D39): a member advertises a
// layout once one of its replicas applied a split to it, or it learned it
// the same way, so the count only grows.
func (c *Cluster) learnLayout() {
	most := c.node.Shards()
	for _, m := range c.members.Members() {
		if m.State == MemberAlive && m.MetaErr == nil && m.Meta.BaseShards() == c.cfg.Shards && !c.foreign(m) && m.Meta.Shards > most {
			most = m.Meta.Shards
		}
	}
	if most > c.node.Shards() {
		c.node.LearnLayout(correlate.Layout{Base: c.cfg.Shards, Shards: most})
	}
}

// formedNow is Meta.Formed at now for a node that holds replicas or not:
// it held replicas when it started (and did not drop them as an old copy),
// or it has held replicas for the formation window.
func (c *Cluster) formedNow(holds bool, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if holds && c.heldSince.IsZero() {
		c.heldSince = now
	}
	return c.formedAtStart || holds && now.Sub(c.heldSince) >= c.cfg.FormationWindow
}

// unform makes this node count as one that came back empty: its replicas
// were dropped as an old copy (identity.go).
func (c *Cluster) unform() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.formedAtStart, c.heldSince = false, time.Time{}
}

// Close stops the loops: node-to-node calls in progress are cancelled,
// and Close waits for the shard steps running to return, until ctx ends
// (a step may be waiting for a raft membership change, which finishes
// when it commits or the leadership is lost). The node and the membership
// belong to the caller; close the node after the cluster.
func (c *Cluster) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	close(c.stop)
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	defer c.node.Metrics().Registry().Unregister(c.metrics)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cluster: close: background work still running: %w", ctx.Err())
	}
}

// Name is this node's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// Members returns every member this node knows of, itself included.
func (c *Cluster) Members() []Member { return c.members.Members() }

// Join asks the membership to contact addrs (gossip addresses).
func (c *Cluster) Join(addrs []string) (int, error) { return c.members.Join(addrs) }

// placementMembers returns the names of live members that take replicas:
// alive, serving the same shard count, not leaving, of this cluster and
// speaking its protocol.
func (c *Cluster) placementMembers() (names []string, byName map[string]Member) {
	byName = make(map[string]Member)
	members := c.members.Members()
	v := clusterProtocol(c.sameCluster(members))
	for _, m := range members {
		if m.State != MemberAlive || m.MetaErr != nil || m.Meta.Leaving || m.Meta.BaseShards() != c.cfg.Shards || c.foreign(m) ||
			!speaksProtocol(m, v) {
			continue
		}
		byName[m.Name] = m
		names = append(names, m.Name)
	}
	sort.Strings(names)
	return names, byName
}

// member returns a member by name, in any state.
func (c *Cluster) member(name string) (Member, bool) { return c.members.Member(name) }

// leaderOf returns the HTTP address and name of shard's leader: the local
// replica's view first (raft knows best), then gossip. Raft's leader is
// taken whatever gossip thinks of the member, short of having left: raft
// has heard from it within an election timeout, while membership can call
// it dead for a minute after a partition heals (raft reconnects at once,
// gossip only when its rejoin loop merges the member tables again).
func (c *Cluster) leaderOf(shard uint32) (name, httpAddr string, err error) {
	if r := c.node.Replica(shard); r != nil {
		if _, id := r.Leader(); id != "" {
			if m, ok := c.member(string(id)); ok && m.State != MemberLeft && m.Meta.HTTPAddr != "" && !c.foreign(m) {
				return m.Name, m.Meta.HTTPAddr, nil
			}
		}
	}
	for _, m := range c.sameCluster(c.members.Members()) {
		if m.State == MemberAlive && m.Name != c.cfg.Name && slices.Contains(m.Meta.Led, shard) {
			return m.Name, m.Meta.HTTPAddr, nil
		}
	}
	return "", "", fmt.Errorf("%w: shard %d", ErrNoLeader, shard)
}

// replicaHolders returns the alive members whose gossip says they lead, or
// that the local raft configuration lists as replicas of shard.
func (c *Cluster) replicaHolders(shard uint32) []Member {
	var out []Member
	seen := make(map[string]bool)
	add := func(name string) {
		if seen[name] || name == c.cfg.Name {
			return
		}
		if m, ok := c.member(name); ok && m.State == MemberAlive && !c.foreign(m) {
			seen[name] = true
			out = append(out, m)
		}
	}
	if r := c.node.Replica(shard); r != nil {
		if f := r.Raft().GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				add(string(s.ID))
			}
		}
	}
	for _, m := range c.members.Members() {
		if slices.Contains(m.Meta.Led, shard) {
			add(m.Name)
		}
	}
	return out
}

// Leave drains this node gracefully: it announces that it is leaving (so
// placement excludes it), waits until the shard leaders have moved every
// replica away, then leaves the membership.
func (c *Cluster) Leave(ctx context.Context) error {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
	if err := c.members.UpdateMeta(func(m *Meta) { m.Leaving = true }); err != nil {
		return err
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for len(c.node.Replicas()) > 0 {
		// Leaders here hand their groups over; other leaders remove us.
		for _, r := range c.node.Replicas() {
			if r.IsLeader() && c.claimStep(r.Shard()) {
				c.reconcileShard(ctx, r)
				c.releaseStep(r.Shard())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: leave: %d replicas still here: %w", len(c.node.Replicas()), ctx.Err())
		case <-t.C:
		}
	}
	return c.members.Leave(5 * time.Second)
}

// raftServer describes a member as a raft server.
func raftServer(m Member) (raft.ServerID, raft.ServerAddress) {
	return raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr)
}
