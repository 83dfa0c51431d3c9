package correlate

import (
	"cmp"
	"crypto/sha256"
	"slices"
	"strings"
)

// Correlator is one shard's correlation state machine (see doc.go). It is
// not safe for concurrent use: a shard's replica applies its log from one
// goroutine, and so must call Apply, Snapshot, Restore and Outbox from one
// goroutine (or under one lock).
type Correlator struct {
	cfg Config

	logTime    int64  // max Batch.LogTime seen: the clock of all expiry
	seq        uint64 // orders pending/outbox entries and process touches
	nextProcNo uint64 // state-record number of the next new process

	procs  procTable
	lru    lruLog       // processes, least recently touched first
	sends  pendingTable // send notices waiting for their RECEIVE
	recvs  pendingTable // RECEIVEs waiting for their send notice
	spawns pendingTable // spawn notices waiting for the child's next event
	outbox outbox
	dedup  dedupWindow
	totals Counters

	// Resharding (split.go): the layout the shard routes by; for a split
	// child, the handoff chunks adopted and expected, and the records of
	// those adopted so far (until the last); for a parent, the chunks its
	// child has not confirmed.
	layout            Layout
	prepared          uint32 // the split whose child was prepared (Batch.Prepare)
	adoptGot, adoptOf uint32
	adopting          []StateRecord
	handoffs          []*Handoff

	// Not state: shared names, so long-lived frames do not each hold a
	// copy (or pin the decoded batch buffer the name came from).
	interned map[string]string
	funcs    map[[2]string][2]string // (module, function) → interned pair, one lookup per CALL

	// Scratch for the batch being applied.
	epoch     uint64 // incremented per Apply; marks what was born/dirtied in it
	cur       Counters
	res       Result
	batch     []Event // the batch's events; [0, applied) are output
	linkArena []Link
	strArena  []byte
	seqMax    map[Process]uint64
	dirtyProc []procRef // sorted by record number without dereferencing each proc
	sortTmp   []procRef // scratch of sortProcRefs
	dirtyPend []*pending
	dirtyOut  []*outEntry
	procHash  []uint64 // procHash[i]: the process hash of batch[i] (see warm)
	warmProcs []*proc  // warmProcs[i]: batch[i]'s process when warm ran, or nil
	warmSink  uint64   // keeps warm's loads from being optimised away
}

// New returns an empty correlator, or an error if cfg is invalid.
func New(cfg Config) (*Correlator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Correlator{cfg: cfg}
	c.reset()
	return c, nil
}

// reroute moves the events of processes this shard does not own (all of
// them while it awaits its handoff) from evs to Result.Rerouted, keeping
// the others in order, and returns those.
func (c *Correlator) reroute(evs []Event, all bool) []Event {
	keep := evs[:0]
	for i := range evs {
		if all || c.layout.ShardOf(evs[i].Origin, evs[i].PID) != c.cfg.Shard {
			c.res.Rerouted = append(c.res.Rerouted, evs[i])
			continue
		}
		keep = append(keep, evs[i])
	}
	c.cur.Rerouted += uint64(len(c.res.Rerouted))
	clear(evs[len(keep):])
	return keep
}

func (c *Correlator) reset() {
	c.logTime, c.seq, c.nextProcNo = 0, 0, 0
	c.procs = newProcTable()
	c.lru = lruLog{}
	c.sends = newPendingTable(tagSend)
	c.recvs = newPendingTable(tagReceive)
	c.spawns = newPendingTable(tagSpawn)
	c.outbox = outbox{byID: make(map[EventID]*outEntry)}
	c.dedup = dedupWindow{ids: newIDSet(c.cfg.DedupWindow)}
	c.totals = Counters{}
	c.layout = Layout{Base: c.cfg.Shards, Shards: c.cfg.Shards}
	c.adoptGot, c.adoptOf, c.adopting, c.handoffs, c.prepared = 0, 0, nil, nil, 0
	c.interned = make(map[string]string)
	c.funcs = make(map[[2]string][2]string)
	c.seqMax = make(map[Process]uint64)
	c.epoch = 0
}

// Config returns the correlator's configuration.
func (c *Correlator) Config() Config { return c.cfg }

// Totals returns the counters summed over every Apply since New, including
// those restored with the state.
func (c *Correlator) Totals() Counters { return c.totals }

// LogTime returns the largest log time applied so far.
func (c *Correlator) LogTime() int64 { return c.logTime }

// Apply correlates one batch and returns what the store must persist. It
// never fails: an event it cannot correlate is still stored (marked orphan
// or counted as malformed). It assumes the ingest path ran ValidateEvents,
// and re-runs Normalize and the attribute bounds as a guard.
//
// Apply takes ownership of b.Events: the events are correlated in place,
// duplicates are compacted away, and Result.Events shares b.Events' array.
// The Result's slices are owned by the caller and never touched again by
// the correlator.
//
// Order of work, identical on every replica: expiry at the new log time;
// Acked removals from the outbox; Notices in their order; Events sorted per
// process by seq (when set), in that order.
func (c *Correlator) Apply(b Batch) Result {
	var resharded []StateRecord
	var reshardErr error
	c.res = Result{Index: b.Index, Retention: b.Retention}
	if IsReshard(&b) {
		resharded, reshardErr = c.reshardStep(&b)
	}
	c.epoch++
	c.cur = Counters{}
	c.res.ReshardErr = reshardErr
	c.logTime = max(c.logTime, b.LogTime)
	c.expire()
	awaiting, split := c.awaiting(), c.layout.Shards != c.layout.Base

	for _, id := range b.Acked {
		if e := c.outbox.byID[id]; e != nil {
			c.removeOutbox(e)
		}
	}
	for i := range b.Notices {
		n := b.Notices[i]
		if awaiting {
			c.res.NoticesRefused++ // the sender keeps it and delivers again
			continue
		}
		if !c.dedupAdd(n.EventID, len(b.Notices)+len(b.Events)) {
			c.cur.Duplicates++
			continue
		}
		if split && !n.Kind.IsRecord() { // a record is for the shard that stored its event
			if owner := c.layout.ShardOf(n.Receiver.Origin, n.Receiver.PID); owner != c.cfg.Shard {
				n.ToShard = owner // FromShard still names where the SEND is stored
				c.addOutbox(n)
				c.cur.NoticesForwarded++
				continue
			}
		}
		c.cur.NoticesApplied++
		c.deliver(n, -1)
	}

	evs := b.Events
	if awaiting || split {
		evs = c.reroute(evs, awaiting)
	}
	c.orderBySeq(evs)
	c.batch = evs
	c.linkArena = make([]Link, 0, len(evs))
	c.warm(evs)
	out := 0
	for i := range evs {
		if !c.dedupAdd(evs[i].ID, len(evs)-i) {
			c.cur.Duplicates++
			continue
		}
		if out != i {
			evs[out] = evs[i]
			c.procHash[out], c.warmProcs[out] = c.procHash[i], c.warmProcs[i]
		}
		c.applyEvent(&evs[out], out)
		out++
	}
	clear(evs[out:]) // drop references held by skipped duplicates' slots
	c.res.Events = evs[:out]

	c.totals.Add(c.cur)            // before stateRecords: the meta record carries the totals
	c.res.State = c.stateRecords() // sorts dirtyOut by seq: outbox order
	if resharded != nil {
		c.res.State = mergeRecords(resharded, c.res.State)
	}
	for _, e := range c.dirtyOut {
		if e.born == c.epoch && !e.dead {
			c.res.Outbox = append(c.res.Outbox, e.n)
		}
	}
	c.res.Counters = c.cur
	res := c.res
	c.res, c.batch, c.linkArena = Result{}, nil, nil
	clear(c.dirtyProc) // keep no dropped entry alive through the scratch slices
	clear(c.sortTmp)
	clear(c.warmProcs)
	clear(c.dirtyPend)
	clear(c.dirtyOut)
	c.dirtyProc, c.dirtyPend, c.dirtyOut = c.dirtyProc[:0], c.dirtyPend[:0], c.dirtyOut[:0]
	return res
}

func (c *Correlator) applyEvent(e *Event, idx int) {
	Normalize(e, c.cfg.Limits)
	if e.PayloadTruncated {
		c.cur.PayloadsTruncated++
	}
	c.boundAttributes(e)
	e.Shard = c.cfg.Shard
	c.cur.Events++
	if !e.Kind.Valid() {
		c.cur.Malformed++
		return
	}
	p := c.touch(e, idx)
	switch e.Kind {
	case KindCall:
		c.call(p, e)
	case KindReturn, KindException:
		c.complete(p, e)
	case KindExit:
		c.exit(p, e)
	case KindSend:
		c.setParent(p, e)
		if e.PeerPID != "" { // a SEND to a registered name cannot be paired
			c.route(Notice{Kind: NoticeSend, EventID: e.ID, Sender: p.key, Receiver: c.peer(e),
				MessageHash: e.MessageHash, TimestampNs: e.TimestampNs}, idx)
		}
	case KindReceive:
		c.setParent(p, e)
		c.receive(p, e, idx)
	case KindSpawn:
		c.setParent(p, e)
		c.route(Notice{Kind: NoticeSpawn, EventID: e.ID, Sender: p.key, Receiver: c.peer(e),
			TimestampNs: e.TimestampNs}, idx)
	case KindStateChange:
		c.setParent(p, e)
	}
}

// warm computes each event's process hash and loads, for all events of
// the batch up front, the memory the event loop will read for them: the
// dedup slot of the id, the dedup slots of the ids the batch will evict,
// and each known process's record and bottom and top frames. It records each event's
// process hash and process (nil when unknown) for touch. The tables are far
// larger than the CPU caches, so each of these loads misses; issued here
// they are independent of one another and the CPU overlaps the misses,
// where the event loop, one event at a time, waited for each in turn
// (measured: the dedup probe and the process lookup were 40% of Apply).
// warm changes no state: it only reads, so what Apply returns is the same
// with or without it.
func (c *Correlator) warm(evs []Event) {
	var sink uint64
	ids := &c.dedup.ids
	for i := range evs {
		sink += uint64(ids.slots[ids.home(&evs[i].ID)][0])
	}
	d := &c.dedup
	n := d.head
	for _, ch := range d.chunks {
		if n >= d.head+uint64(len(evs)) {
			break
		}
		for ; n < ch.start+uint64(len(ch.ids)) && n < d.head+uint64(len(evs)); n++ {
			// Removal shifts the entries after the slot back: load the next line too.
			h := ids.home(&ch.ids[n-ch.start])
			sink += uint64(ids.slots[h][0]) + uint64(ids.slots[(h+4)&ids.mask][0])
		}
	}

	c.procHash = slices.Grow(c.procHash[:0], len(evs))[:len(evs)]
	c.warmProcs = slices.Grow(c.warmProcs[:0], len(evs))[:len(evs)]
	// Three passes, each of independent loads: the table entries (chain
	// heads), the records (key and tick, then the top frame), and only then
	// the chain walk that compares keys, on records now in cache.
	for i := range evs {
		h := c.procs.hash(evs[i].Origin, evs[i].PID)
		c.procHash[i] = h
		c.warmProcs[i] = c.procs.byHash[h]
	}
	for _, p := range c.warmProcs {
		if p != nil { // the record spans cache lines; so does a frame
			sink += uint64(len(p.key.PID)) + p.tick + p.dirty
			if depth := len(p.frames); depth > 0 {
				top := &p.frames[depth-1]
				sink += uint64(p.frames[0].call[0]) + uint64(top.call[0]) + uint64(top.arity)
			}
		}
	}
	for i, p := range c.warmProcs {
		for p != nil && (p.key.PID != evs[i].PID || p.key.Origin != evs[i].Origin) {
			p = p.nextSame
		}
		c.warmProcs[i] = p
	}
	c.warmSink += sink
}

// boundAttributes keeps the first MaxAttributes attributes in key order and
// drops over-long keys/values. Validate rejects such events at ingest; this
// guard keeps a bad proposal from growing state or storage without bound.
func (c *Correlator) boundAttributes(e *Event) {
	lim := c.cfg.Limits
	over := len(e.Attributes) > lim.MaxAttributes
	if !over {
		for k, v := range e.Attributes {
			if len(k) > lim.MaxAttributeKeyBytes || len(v) > lim.MaxAttributeValueBytes {
				over = true
				break
			}
		}
	}
	if !over {
		return
	}
	keys := make([]string, 0, len(e.Attributes))
	for k := range e.Attributes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	kept := make(map[string]string, min(len(keys), lim.MaxAttributes))
	for _, k := range keys {
		v := e.Attributes[k]
		if len(kept) == lim.MaxAttributes || len(k) > lim.MaxAttributeKeyBytes || len(v) > lim.MaxAttributeValueBytes {
			c.cur.AttributesDropped++
			continue
		}
		kept[k] = v
	}
	e.Attributes = kept
}

// orderBySeq sorts, for each process, the events that carry a seq by seq
// (stably), leaving them in the batch positions that process's seq-carrying
// events occupied; events without seq do not move. It counts events whose
// seq is below the largest seq seen before them for their process.
func (c *Correlator) orderBySeq(evs []Event) {
	if len(c.seqMax) > 4096 {
		c.seqMax = make(map[Process]uint64) // do not keep a huge batch's map
	} else {
		clear(c.seqMax)
	}
	var disordered []Process
	var positions map[Process][]int // the disordered processes' event positions, made at the first disorder
	for i := range evs {
		e := &evs[i]
		if e.Seq == 0 {
			continue
		}
		k := Process{e.Origin, e.PID}
		last, seen := c.seqMax[k]
		switch {
		case !seen || e.Seq >= last:
			c.seqMax[k] = e.Seq
		default:
			c.cur.OutOfOrder++
			if positions == nil {
				positions = make(map[Process][]int)
			}
			if _, listed := positions[k]; !listed {
				positions[k] = nil
				disordered = append(disordered, k)
			}
		}
	}
	if len(disordered) == 0 {
		return
	}
	// One pass collects the positions of every disordered process's
	// seq-carrying events (a batch where many processes are out of order
	// cost events × processes scanning once per process).
	for i := range evs {
		if evs[i].Seq == 0 {
			continue
		}
		k := Process{evs[i].Origin, evs[i].PID}
		if pos, ok := positions[k]; ok {
			positions[k] = append(pos, i)
		}
	}
	// Positions are sorted, not events (hundreds of bytes each): every
	// event then moves twice, whatever the sort does.
	var order []int
	var sorted []Event
	for _, k := range disordered {
		pos := positions[k]
		order = append(order[:0], pos...)
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(evs[a].Seq, evs[b].Seq) })
		sorted = sorted[:0]
		for _, i := range order {
			sorted = append(sorted, evs[i])
		}
		for j, i := range pos {
			evs[i] = sorted[j]
		}
	}
}

// addLink appends l to e.Links, cutting the first link of each event from
// the batch's arena so that the common one-link event costs no allocation.
func (c *Correlator) addLink(e *Event, l Link) {
	if e.Links != nil {
		e.Links = append(e.Links, l)
		return
	}
	n := len(c.linkArena)
	if n == cap(c.linkArena) {
		c.linkArena = make([]Link, 0, max(64, cap(c.linkArena)))
		n = 0
	}
	c.linkArena = append(c.linkArena, l)
	e.Links = c.linkArena[n : n+1 : n+1]
}

// link records from --t--> to. When the source event is in this batch
// (idx >= 0) the link goes on the event itself; otherwise it becomes an
// edge record, so stored events are never rewritten. fromShard is the
// shard that stored the source event; home is the shard that stores the
// record: the one that stored the link's end of this shard's process.
// That is this shard, unless the event came before a split: then the
// record is forwarded to the shard that stored it (docs/DECISIONS.md D41),
// which stores it as it would have without the split.
func (c *Correlator) link(idx int, from EventID, fromShard uint32, t LinkType, to EventID, home uint32) {
	if idx >= 0 {
		c.addLink(&c.batch[idx], Link{Type: t, Target: to})
		return
	}
	e := Edge{From: from, Type: t, To: to, FromOtherShard: fromShard != home}
	if home == c.cfg.Shard {
		c.res.Edges = append(c.res.Edges, e)
		return
	}
	c.forward(Notice{Kind: NoticeEdge, EventID: recordID(NoticeEdge, from, t, to), ToShard: home, Edge: &e})
}

// forward puts a record notice (NoticeEdge, NoticeFrameEnd) for the shard
// n.ToShard, which stored the event the record is about, in the outbox.
func (c *Correlator) forward(n Notice) {
	n.FromShard = c.cfg.Shard
	c.addOutbox(n)
	c.cur.RecordsForwarded++
}

// recordID is the id of the notice that forwards a record about event a
// (and, for a link of type t, event b): a's time and 80 bits of a digest of
// the record's identity. Every replica derives the same id, so the outbox
// and the destination's dedup window hold the record once, as they hold a
// SEND once; no event shares it (its random bits would have to equal the
// digest).
func recordID(k NoticeKind, a EventID, t LinkType, b EventID) EventID {
	var buf [len("scope-record") + 1 + 16 + 1 + 16]byte
	in := append(append(append(append(append(buf[:0], "scope-record"...), byte(k)), a[:]...), byte(t)), b[:]...)
	sum := sha256.Sum256(in)
	id := a
	copy(id[6:], sum[:10])
	return id
}

// idText returns id's 26-character text form. The bytes live in an
// append-only arena that is never overwritten, so the strings stay valid
// for as long as anyone holds them, without one allocation per id.
func (c *Correlator) idText(id EventID) string {
	const n = 26
	if cap(c.strArena)-len(c.strArena) < n {
		c.strArena = make([]byte, 0, n*256)
	}
	start := len(c.strArena)
	c.strArena = c.strArena[:start+n]
	_ = id.MarshalTextTo(c.strArena[start:])
	return bytesToString(c.strArena[start : start+n])
}

// intern returns a shared copy of s that does not pin the caller's buffer.
func (c *Correlator) intern(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := c.interned[s]; ok {
		return v
	}
	v := strings.Clone(s)
	if len(c.interned) < c.cfg.MaxInterned {
		c.interned[v] = v
	}
	return v
}

// internFunc interns a (module, function) pair with one map lookup.
func (c *Correlator) internFunc(module, function string) (string, string) {
	k := [2]string{module, function}
	if v, ok := c.funcs[k]; ok {
		return v[0], v[1]
	}
	v := [2]string{c.intern(module), c.intern(function)}
	if len(c.funcs) < c.cfg.MaxInterned {
		c.funcs[v] = v
	}
	return v[0], v[1]
}

// peer returns e's peer with strings safe to keep in state: a tracked
// process's own key, or an interned origin and a copied pid.
func (c *Correlator) peer(e *Event) Process {
	if p := c.procs.get(e.PeerOrigin, e.PeerPID); p != nil {
		return p.key
	}
	return Process{Origin: c.intern(e.PeerOrigin), PID: strings.Clone(e.PeerPID)}
}

// route sends a notice to the shard that owns its receiver: delivered in
// place when that is this shard, through the replicated outbox otherwise.
func (c *Correlator) route(n Notice, idx int) {
	n.FromShard = c.cfg.Shard
	n.ToShard = c.layout.ShardOf(n.Receiver.Origin, n.Receiver.PID)
	if n.ToShard == c.cfg.Shard {
		c.deliver(n, idx)
		return
	}
	c.addOutbox(n)
}

// expire drops everything whose TTL has passed at the current log time,
// oldest first. It runs at the start of every Apply.
func (c *Correlator) expire() {
	now := c.logTime
	for p := c.lru.oldest(); p != nil && now-p.lastActive > int64(c.cfg.ProcessTTL); p = c.lru.oldest() {
		c.dropProc(p, AbandonInactivity)
		c.cur.ProcessesExpired++
	}
	c.cur.NoticesExpired += c.expirePending(&c.sends, now)
	c.cur.NoticesExpired += c.expirePending(&c.spawns, now)
	c.cur.ReceivesExpired += c.expirePending(&c.recvs, now)
	for e := c.outbox.order.head; e != nil && now-e.logTime > int64(c.cfg.OutboxTTL); e = c.outbox.order.head {
		c.removeOutbox(e)
		c.cur.OutboxDropped++
	}
	c.dedupExpire(now)
}
