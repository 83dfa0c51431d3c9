package correlate

import (
	"slices"
	"strings"
)

// State-record tags: the first byte of every state key.
const (
	tagDedup   = 'D'
	tagMeta    = 'M'
	tagOutbox  = 'O'
	tagProc    = 'P'
	tagReceive = 'R' // a RECEIVE waiting for its send notice
	tagSend    = 'S' // a send notice waiting for its RECEIVE
	tagSpawn   = 'W' // a spawn notice waiting for the child's next event
)

// msgKey groups pending entries that can pair: the receiver and the
// message hash (for spawn notices: the child, hash 0). Within a key,
// entries are kept in arrival order; which of them pairs is decided by
// time (see matchSend and matchReceive).
type msgKey struct {
	recv Process
	hash uint64
}

// pending is one entry of a pending table. For send and spawn notices, n
// is the notice; for a waiting RECEIVE, n.EventID is the RECEIVE, n.Sender
// the sender it names (zero when none) and n.Receiver its own process.
type pending struct {
	lk      links[pending]
	tag     byte
	seq     uint64 // arrival order; the state-record number
	logTime int64  // log time of arrival, for NoticeTTL
	n       Notice
	idx     int    // index of n.EventID's event in the batch of epoch born, else -1
	born    uint64 // epoch of arrival (0: restored)
	dirty   uint64
	dead    bool
}

func (p *pending) lnk() *links[pending] { return &p.lk }

// idxIn returns the in-batch index of the entry's event if it was applied
// in the current epoch, else -1 (the event is already stored).
func (p *pending) idxIn(epoch uint64) int {
	if p.born == epoch {
		return p.idx
	}
	return -1
}

type pendingTable struct {
	tag   byte
	byKey map[msgKey][]*pending
	order dlist[pending, *pending] // oldest first
	bytes int                      // sum of pendingSize over the entries, bounded by MaxPendingBytes
}

// pendingEntryBytes is what a pending entry is charged against
// MaxPendingBytes besides its strings: about the size of its record, its
// slot under its key and its map key. It is a constant rather than
// unsafe.Sizeof because the byte bound decides which entry is evicted,
// which is replicated state: the charge must be the same on every replica,
// whatever the build's struct layout.
const pendingEntryBytes = 256

// pendingSize is the charge of an entry holding n. Every string counts in
// full, even when it is shared with a tracked process or an interned name,
// so the charge depends on the entry alone (restoring it gives the same
// sum) and bounds what the entry may hold on its own.
func pendingSize(n *Notice) int {
	return pendingEntryBytes + len(n.Sender.Origin) + len(n.Sender.PID) + len(n.Receiver.Origin) + len(n.Receiver.PID)
}

func newPendingTable(tag byte) pendingTable {
	return pendingTable{tag: tag, byKey: make(map[msgKey][]*pending)}
}

// compatible reports whether a claimed sender fits an actual one: an
// unknown sender (a BEAM receive trace names none) fits any.
func compatible(a, b Process) bool {
	return a.PID == "" || b.PID == "" || a == b
}

// fits reports whether the SEND of notice s can be the message the
// RECEIVE r got: s is not stamped after r. Stamps of one origin come from
// one clock and are compared as they are; a SEND from another origin may
// be stamped up to MaxClockSkew after the RECEIVE.
func (c *Correlator) fits(s, r *Notice) bool {
	if s.TimestampNs <= r.TimestampNs {
		return true
	}
	if s.Sender.Origin == r.Receiver.Origin {
		return false
	}
	return uint64(s.TimestampNs)-uint64(r.TimestampNs) <= uint64(c.cfg.MaxClockSkew) // the exact distance, even past MaxInt64
}

// matchSend returns the send notice under k that the receive r pairs with:
// among those whose sender is compatible with the one r names and that fit
// r, the oldest by send time (by arrival among equal stamps), or nil. The
// oldest, not the first to arrive: senders' events reach the correlator
// through different tracers, batches and shards, in any order.
func (c *Correlator) matchSend(k msgKey, r *Notice) *pending {
	var best *pending
	for _, p := range c.sends.byKey[k] {
		if compatible(p.n.Sender, r.Sender) && c.fits(&p.n, r) &&
			(best == nil || p.n.TimestampNs < best.n.TimestampNs) {
			best = p
		}
	}
	return best
}

// matchReceive returns the waiting receive under k that the send notice s
// pairs with: the first to arrive (the receiver's own order, so the oldest)
// whose named sender is compatible and that s fits, or nil.
func (c *Correlator) matchReceive(k msgKey, s *Notice) *pending {
	for _, p := range c.recvs.byKey[k] {
		if compatible(p.n.Sender, s.Sender) && c.fits(s, &p.n) {
			return p
		}
	}
	return nil
}

// match returns the oldest entry under k (in arrival order) whose sender
// is compatible with sender, or nil. Spawn notices pair this way: a child
// has one parent and one first event.
func (t *pendingTable) match(k msgKey, sender Process) *pending {
	for _, p := range t.byKey[k] {
		if compatible(p.n.Sender, sender) {
			return p
		}
	}
	return nil
}

// addPending makes n wait in t, evicting the oldest entries while the
// table is at its entry bound or n would take it past its byte bound. n
// must hold only strings the correlator owns (see owned): the entry and
// its map key, derived from n here, outlive the batch n came in.
func (c *Correlator) addPending(t *pendingTable, n Notice, idx int) {
	size := pendingSize(&n)
	for t.order.n > 0 && (t.order.n >= c.cfg.MaxPending || t.bytes+size > c.cfg.MaxPendingBytes) {
		c.removePending(t, t.order.head)
		c.cur.PendingEvictions++
	}
	p := &pending{tag: t.tag, seq: c.seq, logTime: c.logTime, n: n, idx: idx, born: c.epoch}
	c.seq++
	t.insert(p)
	c.markPending(p)
}

// insert adds p at the young end of t.
func (t *pendingTable) insert(p *pending) {
	k := keyOf(p)
	t.byKey[k] = append(t.byKey[k], p)
	t.order.pushBack(p)
	t.bytes += pendingSize(&p.n)
}

func keyOf(p *pending) msgKey {
	if p.tag == tagSpawn {
		return msgKey{recv: p.n.Receiver}
	}
	return msgKey{recv: p.n.Receiver, hash: p.n.MessageHash}
}

func (c *Correlator) removePending(t *pendingTable, p *pending) {
	k := keyOf(p)
	q := removeEntry(t.byKey[k], p)
	if len(q) == 0 {
		delete(t.byKey, k)
	} else {
		t.byKey[k] = q
	}
	t.order.remove(p)
	t.bytes -= pendingSize(&p.n)
	p.dead = true
	c.markPending(p)
}

// removeEntry removes p from q, keeping the others in order, and returns
// the shortened slice. It moves the shorter side of q over p's slot: the
// entry removed is most often the oldest (an eviction, or the oldest send
// pairing), which then costs nothing however many wait under the key (a
// timer's identical ticks to one process, whose receives are not traced,
// pile up to the table's bound). The slot left at an end is cleared so
// that the backing array pins no removed entry; appends reallocate it in
// time, so a key's slice never holds more than twice its live entries.
func removeEntry(q []*pending, p *pending) []*pending {
	i := slices.Index(q, p)
	switch {
	case i < 0:
		return q
	case i < len(q)/2:
		copy(q[1:i+1], q[:i])
		q[0] = nil
		return q[1:]
	default:
		copy(q[i:], q[i+1:])
		q[len(q)-1] = nil
		return q[:len(q)-1]
	}
}

func (c *Correlator) markPending(p *pending) {
	if p.dirty != c.epoch {
		p.dirty = c.epoch
		c.dirtyPend = append(c.dirtyPend, p)
	}
}

func (c *Correlator) expirePending(t *pendingTable, now int64) (n uint64) {
	for p := t.order.head; p != nil && now-p.logTime > int64(c.cfg.NoticeTTL); p = t.order.head {
		c.removePending(t, p)
		n++
	}
	return n
}

// deliver applies a send or spawn notice addressed to this shard. idx is
// the index of the SEND/SPAWN in the current batch when it was applied on
// this very shard, else -1.
func (c *Correlator) deliver(n Notice, idx int) {
	switch n.Kind {
	case NoticeSend:
		k := msgKey{recv: n.Receiver, hash: n.MessageHash}
		if r := c.matchReceive(k, &n); r != nil {
			// r.n.FromShard: where the RECEIVE is stored (this shard, or
			// the one it split from if r came with the handoff).
			c.pair(n.EventID, n.FromShard, idx, r.n.EventID, r.n.FromShard, r.idxIn(c.epoch))
			c.removePending(&c.recvs, r)
			return
		}
		c.addPending(&c.sends, c.owned(n), idx)
	case NoticeSpawn:
		if p := c.procs.get(n.Receiver.Origin, n.Receiver.PID); p != nil {
			firstIdx := -1
			if p.born == c.epoch {
				firstIdx = p.firstIdx
			}
			c.linkSpawn(n, idx, p.first, p.firstHome, firstIdx)
			return
		}
		c.addPending(&c.spawns, c.owned(n), idx)
	case NoticeEdge:
		c.res.Edges = append(c.res.Edges, *n.Edge)
	case NoticeFrameEnd:
		c.res.Closed = append(c.res.Closed, *n.Frame)
	default:
		c.cur.Malformed++
	}
}

// owned returns n with strings the correlator may keep (not pinning the
// buffer of the batch they were decoded from).
func (c *Correlator) owned(n Notice) Notice {
	own := func(p Process) Process {
		if q := c.procs.get(p.Origin, p.PID); q != nil {
			return q.key
		}
		return Process{Origin: c.intern(p.Origin), PID: strings.Clone(p.PID)}
	}
	n.Sender, n.Receiver = own(n.Sender), own(n.Receiver)
	return n
}

// receive pairs a RECEIVE with the send notice matchSend picks, or makes
// it wait for one: a send that fits it may still arrive, and a waiting
// receive is never given a send from its future.
func (c *Correlator) receive(p *proc, e *Event, idx int) {
	k := msgKey{recv: p.key, hash: e.MessageHash}
	n := Notice{Kind: NoticeSend, EventID: e.ID, FromShard: c.cfg.Shard, ToShard: c.cfg.Shard,
		Sender: e.Peer(), Receiver: p.key, MessageHash: e.MessageHash, TimestampNs: e.TimestampNs}
	if s := c.matchSend(k, &n); s != nil {
		c.pair(s.n.EventID, s.n.FromShard, s.idxIn(c.epoch), e.ID, c.cfg.Shard, idx)
		c.removePending(&c.sends, s)
		return
	}
	if n.Sender.PID != "" {
		n.Sender = c.peer(e) // owned: the entry outlives the batch
	} else {
		n.Sender = Process{}
	}
	c.addPending(&c.recvs, n, idx)
}

// pair links a SEND (stored on sendShard) and the RECEIVE that consumed
// it (stored on recvShard), both ways.
func (c *Correlator) pair(send EventID, sendShard uint32, sendIdx int, recv EventID, recvShard uint32, recvIdx int) {
	c.link(recvIdx, recv, recvShard, LinkReceivedFrom, send, recvShard)
	c.link(sendIdx, send, sendShard, LinkDeliveredTo, recv, recvShard)
	c.cur.Matched++
}

// linkSpawn links a SPAWN and the child's event (stored on childShard),
// both ways.
func (c *Correlator) linkSpawn(n Notice, spawnIdx int, child EventID, childShard uint32, childIdx int) {
	c.link(childIdx, child, childShard, LinkSpawnedBy, n.EventID, childShard)
	c.link(spawnIdx, n.EventID, n.FromShard, LinkSpawned, child, childShard)
	c.cur.SpawnsLinked++
}

// outbox holds notices for other shards until their delivery is acked.
type outbox struct {
	byID  map[EventID]*outEntry
	order dlist[outEntry, *outEntry] // outbox order: oldest first
	bytes int                        // sum of pendingSize over the notices, bounded by MaxOutboxBytes
}

// insert adds e at the young end of the outbox. An outbox notice is
// charged like a pending entry (pendingSize): the same record and names.
func (o *outbox) insert(e *outEntry) {
	o.byID[e.n.EventID] = e
	o.order.pushBack(e)
	o.bytes += pendingSize(&e.n)
}

type outEntry struct {
	lk      links[outEntry]
	seq     uint64
	logTime int64
	n       Notice
	born    uint64
	dirty   uint64
	dead    bool
}

func (e *outEntry) lnk() *links[outEntry] { return &e.lk }

func (c *Correlator) addOutbox(n Notice) {
	if c.outbox.byID[n.EventID] != nil {
		return // the same SEND applied twice (beyond the dedup window): one notice
	}
	n = c.owned(n)
	size := pendingSize(&n)
	for c.outbox.order.n > 0 && (c.outbox.order.n >= c.cfg.MaxOutbox || c.outbox.bytes+size > c.cfg.MaxOutboxBytes) {
		c.removeOutbox(c.outbox.order.head)
		c.cur.OutboxDropped++
	}
	e := &outEntry{seq: c.seq, logTime: c.logTime, n: n, born: c.epoch}
	c.seq++
	c.outbox.insert(e)
	c.markOutbox(e)
}

func (c *Correlator) removeOutbox(e *outEntry) {
	delete(c.outbox.byID, e.n.EventID)
	c.outbox.order.remove(e)
	c.outbox.bytes -= pendingSize(&e.n)
	e.dead = true
	c.markOutbox(e)
}

func (c *Correlator) markOutbox(e *outEntry) {
	if e.dirty != c.epoch {
		e.dirty = c.epoch
		c.dirtyOut = append(c.dirtyOut, e)
	}
}

// OutboxDests returns the destination shards of the undelivered notices,
// ascending (without copying a notice).
func (c *Correlator) OutboxDests() []uint32 {
	var seen map[uint32]struct{}
	var dests []uint32
	for e := c.outbox.order.head; e != nil && len(dests) < int(c.layout.Shards); e = e.lk.next {
		if _, ok := seen[e.n.ToShard]; ok {
			continue
		}
		if seen == nil {
			seen = make(map[uint32]struct{})
		}
		seen[e.n.ToShard] = struct{}{}
		dests = append(dests, e.n.ToShard)
	}
	slices.Sort(dests)
	return dests
}

// OutboxHeads returns, for each destination shard of dests with
// undelivered notices, the first perDest of them in outbox order: what one
// delivery round sends. It copies only those, however long the outbox is
// (Outbox copies every notice), and stops walking once every destination
// asked for has perDest. The map and slices are the caller's.
func (c *Correlator) OutboxHeads(perDest int, dests []uint32) map[uint32][]Notice {
	if perDest < 1 || len(dests) == 0 || c.outbox.order.head == nil {
		return nil
	}
	heads := make(map[uint32][]Notice, len(dests))
	for _, d := range dests {
		heads[d] = nil
	}
	full := 0
	for e := c.outbox.order.head; e != nil && full < len(heads); e = e.lk.next {
		h, ok := heads[e.n.ToShard]
		if !ok || len(h) == perDest {
			continue
		}
		if h = append(h, e.n); len(h) == perDest {
			full++
		}
		heads[e.n.ToShard] = h
	}
	for d, h := range heads {
		if len(h) == 0 {
			delete(heads, d)
		}
	}
	return heads
}

// Outbox returns the undelivered notices in outbox order, so that a new
// leader can resume delivery. The slice is the caller's.
func (c *Correlator) Outbox() []Notice {
	out := make([]Notice, 0, c.outbox.order.n)
	for e := c.outbox.order.head; e != nil; e = e.lk.next {
		out = append(out, e.n)
	}
	return out
}
