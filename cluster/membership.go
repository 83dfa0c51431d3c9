package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// MemberState is a member's liveness as this node last heard it.
type MemberState uint8

const (
	// MemberAlive: alive, possibly suspected (memberlist reports no event
	// for suspicion: a suspect stays Alive here until declared dead).
	MemberAlive MemberState = iota + 1
	// MemberDead: failed its probes; it may come back (a partition heals,
	// the process restarts), so the rejoin loop keeps trying it.
	MemberDead
	// MemberLeft: left gracefully; not retried.
	MemberLeft
)

func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberDead:
		return "dead"
	case MemberLeft:
		return "left"
	}
	return fmt.Sprintf("MemberState(%d)", uint8(s))
}

// Member is one node as this node sees it.
type Member struct {
	Name  string
	Addr  string // gossip address, ip:port
	State MemberState
	// Since is when this node saw State begin (local clock).
	Since time.Time
	// Meta is the member's decoded gossip metadata. Its Led slice is shared
	// between snapshots and must not be modified.
	Meta Meta
	// MetaErr is set when the member's metadata could not be decoded (a
	// newer format, corruption); Meta is then zero.
	MetaErr error
	// readsMeta is the newest metadata format the member reads: memberlist's
	// delegate protocol maximum, 0 from a node that predates format 2.
	readsMeta uint8
}

// MembershipStats counts what membership did and refused.
type MembershipStats struct {
	Joins, Leaves, Updates uint64 // memberlist events received
	MetaDecodeErrors       uint64 // members whose metadata did not decode
	Rejoins                uint64 // rejoin attempts (a known member was missing)
	RejoinFailures         uint64 // attempts that reached no target
	Forgotten              uint64 // dead/left members dropped after ForgetAfter or to make room
	MembersOverflow        uint64 // new members not listed: MaxMembers live ones already
	SeedsOverflow          uint64 // Join addresses not kept as seeds: MaxSeeds reached
	MetaPublishes          uint64 // metadata re-advertisements
	MetaPublishTimeouts    uint64 // ... whose broadcast was not sent within UpdateTimeout
	Coalesced              uint64 // change signals merged into one already pending
}

// Membership wraps a memberlist: node metadata in gossip, a table of
// members with their state, coalesced change notifications and a loop that
// rejoins the seeds when a known member goes missing (memberlist does not
// heal a partition by itself).
//
// All methods are safe for concurrent use. Membership is advisory: it says
// who is alive and what they claim; Raft configurations decide who
// replicates a shard.
type Membership struct {
	cfg  MembershipConfig
	log  *slog.Logger
	ml   *memberlist.Memberlist
	addr string // this node's advertised gossip address
	// keyring is memberlist's (nil: gossip is not encrypted).
	keyring *memberlist.Keyring

	mu        sync.Mutex
	meta      Meta
	metaBytes []byte // meta encoded; what NodeMeta hands memberlist
	members   map[string]*Member
	seeds     []string
	subs      map[uint64]chan struct{}
	nextSub   uint64
	stopping  bool // Leave or Shutdown called: loops stopped, no rejoin
	closed    bool // Shutdown called: subscriber channels closed

	publish  chan struct{} // size 1: metadata changed, re-advertise
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	// life serializes memberlist's Leave and Shutdown: memberlist panics on
	// a Leave after Shutdown.
	life         sync.Mutex
	shutdownOnce sync.Once

	joins, leaves, updates, metaDecodeErrors, rejoins, rejoinFailures, forgotten,
	membersOverflow, seedsOverflow, metaPublishes, metaPublishTimeouts, coalesced atomic.Uint64
}

// NewMembership starts gossiping on cfg.BindAddr with meta as this node's
// metadata (meta.Name is set to cfg.Name). It does not contact anyone:
// call Join (e.g. with cfg.Seeds) to enter a cluster; the rejoin loop only
// repairs a membership once something is missing from it.
func NewMembership(cfg MembershipConfig, meta Meta) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	meta.Name = cfg.Name
	meta.ReadsIdentity = true
	if meta.Protocol == (ProtocolRange{}) {
		meta.Protocol = BuildProtocol
	}
	mb, err := meta.Encode(memberlist.MetaMaxSize)
	if err != nil {
		return nil, err
	}
	mc, err := cfg.memberlistConfig()
	if err != nil {
		return nil, err
	}
	m := &Membership{
		cfg: cfg, log: cfg.Logger, meta: meta, metaBytes: mb,
		members: make(map[string]*Member), seeds: slices.Clone(cfg.Seeds),
		subs: make(map[uint64]chan struct{}), publish: make(chan struct{}, 1),
		stop: make(chan struct{}),
	}
	d := &membershipDelegate{m: m}
	mc.Delegate, mc.Events = d, d
	// Create announces this node alive, which calls NotifyJoin for it
	// synchronously: the table then holds this node and its address.
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.ml = ml
	m.keyring = mc.Keyring
	m.mu.Lock()
	if self, ok := m.members[cfg.Name]; ok {
		m.addr = self.Addr
	}
	m.mu.Unlock()
	if m.addr == "" {
		_ = ml.Shutdown()
		return nil, fmt.Errorf("cluster: gossip on %s started without announcing %q", cfg.BindAddr, cfg.Name)
	}
	m.wg.Add(2)
	go m.rejoinLoop()
	go m.publishLoop()
	return m, nil
}

// Name is this node's name.
func (m *Membership) Name() string { return m.cfg.Name }

// SetGossipKeys replaces the gossip keyring with keys, the first the
// primary (it encrypts; all decrypt): keys not yet installed are added, the
// primary is switched, and installed keys not in keys are removed, so a
// rotation is three reloads of every node's keyring file (add the new key,
// make it first, drop the old one). Gossip that started unencrypted cannot
// be encrypted without a restart.
func (m *Membership) SetGossipKeys(keys [][]byte) error {
	if m.keyring == nil {
		return fmt.Errorf("%w: gossip started without a key: restart to turn encryption on", ErrMembershipConfig)
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: no gossip key", ErrMembershipConfig)
	}
	for i, k := range keys {
		if err := m.keyring.AddKey(k); err != nil {
			return fmt.Errorf("%w: key %d: %v", ErrMembershipConfig, i, err)
		}
	}
	if err := m.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("%w: primary key: %v", ErrMembershipConfig, err)
	}
	for _, k := range slices.Clone(m.keyring.GetKeys()) {
		if !slices.ContainsFunc(keys, func(w []byte) bool { return bytes.Equal(w, k) }) {
			if err := m.keyring.RemoveKey(k); err != nil {
				return fmt.Errorf("%w: remove key: %v", ErrMembershipConfig, err)
			}
		}
	}
	return nil
}

// GossipKeys returns the gossip keys in use, the primary first (nil when
// gossip is not encrypted).
func (m *Membership) GossipKeys() [][]byte {
	if m.keyring == nil {
		return nil
	}
	return slices.Clone(m.keyring.GetKeys())
}

// Addr is this node's advertised gossip address (ip:port), with the port
// actually bound when the configured one was 0.
func (m *Membership) Addr() string { return m.addr }

// Join contacts the given gossip addresses (host:port) and merges state
// with them; it returns how many were reached and an error only if none
// was. Reached addresses are kept as seeds for the rejoin loop. It blocks
// for up to memberlist's TCPTimeout per unreachable address.
func (m *Membership) Join(addrs []string) (int, error) {
	m.mu.Lock()
	stopping := m.stopping
	m.mu.Unlock()
	if stopping {
		return 0, ErrMembershipClosed
	}
	n, err := m.ml.Join(addrs)
	if n > 0 {
		m.addSeeds(addrs)
	}
	if err != nil {
		return n, fmt.Errorf("cluster: join %s: %w", strings.Join(addrs, ","), err)
	}
	return n, nil
}

func (m *Membership) addSeeds(addrs []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range addrs {
		if a == m.addr || slices.Contains(m.seeds, a) {
			continue
		}
		if len(m.seeds) >= m.cfg.MaxSeeds {
			m.seedsOverflow.Add(1)
			continue
		}
		m.seeds = append(m.seeds, a)
	}
}

// Members returns every member this node knows, itself included, sorted by
// name: alive ones, and dead or departed ones until ForgetAfter. The slice
// is the caller's.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, *mem)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns a copy of the member called name, if it is known.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem, ok := m.members[name]; ok {
		return *mem, true
	}
	return Member{}, false
}

// LiveNames returns the names of the alive members, sorted: the input to
// Placement.
func (m *Membership) LiveNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, mem := range m.members {
		if mem.State == MemberAlive {
			out = append(out, mem.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Meta returns this node's current metadata as last set, with its full Led
// (a copy); peers may see a cut Led (LedPartial) if it did not fit.
func (m *Membership) Meta() Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	meta := m.meta
	meta.Led = slices.Clone(meta.Led)
	return meta
}

// UpdateMeta applies update to this node's metadata and advertises the
// result. It does not wait for the network: the new metadata is in the
// local table at once and reaches peers with the next broadcast (coalesced
// if updates come faster). update runs under a lock and must not call
// Membership methods; the name cannot change. If the result is invalid or
// does not fit the gossip limit, nothing changes and the error says why.
func (m *Membership) UpdateMeta(update func(*Meta)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping {
		return ErrMembershipClosed
	}
	meta := m.meta
	meta.Led = slices.Clone(meta.Led)
	update(&meta)
	if meta.Name != m.cfg.Name {
		return fmt.Errorf("%w: Name %q: a node's name is fixed (%q)", ErrMetaInvalid, meta.Name, m.cfg.Name)
	}
	b, err := m.encodeLocked(meta)
	if err != nil {
		return err
	}
	m.meta, m.metaBytes = meta, b
	select {
	case m.publish <- struct{}{}:
	default:
		m.coalesced.Add(1)
	}
	return nil
}

// encodeLocked encodes meta for gossip in the newest format every other
// live member reads: format 2 once all do, else format 1 (which carries no
// protocol range: it says 1-1, so a node whose range lacks 1 sends format
// 2 anyway and older nodes refuse it, as they must), with its identity
// section only while every live member reads one (Meta.ReadsIdentity).
func (m *Membership) encodeLocked(meta Meta) ([]byte, error) {
	meta.legacy = !m.allReadLocked(func(mem *Member) bool { return mem.readsMeta >= metaFormatV2 }) &&
		(meta.Protocol == (ProtocolRange{}) || meta.Protocol.Contains(1))
	meta.omitIdentity = !m.allReadLocked(func(mem *Member) bool { return mem.Meta.ReadsIdentity })
	return meta.Encode(memberlist.MetaMaxSize)
}

// allReadLocked reports whether reads holds for every other live member
// whose metadata decodes.
func (m *Membership) allReadLocked(reads func(*Member) bool) bool {
	for name, mem := range m.members {
		if name != m.cfg.Name && mem.State == MemberAlive && mem.MetaErr == nil && !reads(mem) {
			return false
		}
	}
	return true
}

// Subscribe returns a channel that receives a value whenever the member
// table changes (a join, a departure, new metadata), and a cancel function.
// Signals are coalesced into a buffer of one, so memberlist never waits on
// a slow subscriber: on each signal, read Members for the current state. A
// signal is pending from the start, so the first read sees the initial
// table. The channel is closed by Shutdown and by cancel.
func (m *Membership) Subscribe() (<-chan struct{}, func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, ErrMembershipClosed
	}
	if len(m.subs) >= m.cfg.MaxSubscribers {
		return nil, nil, fmt.Errorf("%w: %d, MaxSubscribers is %d", ErrTooManySubs, len(m.subs), m.cfg.MaxSubscribers)
	}
	id := m.nextSub
	m.nextSub++
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	m.subs[id] = ch
	cancel := func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if c, ok := m.subs[id]; ok {
			delete(m.subs, id)
			close(c)
		}
	}
	return ch, cancel, nil
}

// Leave announces a graceful departure and waits up to timeout for the
// announcement to go out; peers then list this node as left, not dead.
// Gossip keeps running (so the announcement spreads) until Shutdown; the
// rejoin loop and metadata publishing stop.
func (m *Membership) Leave(timeout time.Duration) error {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrMembershipClosed
	}
	m.stopping = true
	if !m.meta.Leaving {
		m.meta.Leaving = true
		if b, err := m.encodeLocked(m.meta); err == nil {
			m.metaBytes = b
		}
	}
	m.mu.Unlock()
	m.stopLoops()
	// Announce the intent in metadata first, so peers can tell this
	// departure from a death; then the departure itself. Each waits at
	// most timeout for memberlist to hand its broadcast to a peer.
	if err := m.ml.UpdateNode(timeout); err != nil {
		m.log.Warn("leaving: metadata broadcast not sent in time; peers may list this node as dead", "err", err)
	}
	if err := m.ml.Leave(timeout); err != nil {
		return fmt.Errorf("cluster: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip without a departure announcement: peers detect
// this node as dead by probing. Call Leave first to depart gracefully.
// Subscriber channels are closed. Safe to call more than once.
func (m *Membership) Shutdown() error {
	var err error
	m.shutdownOnce.Do(func() {
		m.life.Lock()
		defer m.life.Unlock()
		m.mu.Lock()
		m.stopping = true
		m.mu.Unlock()
		m.stopLoops()
		err = m.ml.Shutdown()
		m.mu.Lock()
		m.closed = true
		for id, c := range m.subs {
			delete(m.subs, id)
			close(c)
		}
		m.mu.Unlock()
	})
	return err
}

// stopLoops stops the rejoin and publish loops and waits for them; each
// blocks for at most MaxRejoinTargets × TCPTimeout or UpdateTimeout.
func (m *Membership) stopLoops() {
	m.stopOnce.Do(func() { close(m.stop) })
	m.wg.Wait()
}

// Stats returns the membership counters.
func (m *Membership) Stats() MembershipStats {
	return MembershipStats{
		Joins: m.joins.Load(), Leaves: m.leaves.Load(), Updates: m.updates.Load(),
		MetaDecodeErrors: m.metaDecodeErrors.Load(), Rejoins: m.rejoins.Load(),
		RejoinFailures: m.rejoinFailures.Load(), Forgotten: m.forgotten.Load(),
		MembersOverflow: m.membersOverflow.Load(), SeedsOverflow: m.seedsOverflow.Load(),
		MetaPublishes: m.metaPublishes.Load(), MetaPublishTimeouts: m.metaPublishTimeouts.Load(),
		Coalesced: m.coalesced.Load(),
	}
}
