package correlate

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
)

// State records. Every key is one tag byte followed, except for the single
// meta record, by a big-endian uint64: a dedup chunk's first id number, a
// process's record number, or a pending/outbox entry's sequence number. So
// byte order of keys is (tag, number) order, and Snapshot and Result.State
// are sorted by key without comparing strings.
//
//	M                 meta: [version, logTime, seq, nextProcNo, dedupHead, dedupNext, counters...]
//	D<start>          dedup chunk: [logTime, ids as one bin of 16-byte ids]
//	H<seq>            handoff chunk to a split child: [child, chunk, of, records] (split.go)
//	L                 layout and adoption: [base, shards, adopted, of]; absent: base layout, nothing adopted
//	O<seq>            outbox notice: [logTime, notice]
//	P<no>             process: [origin, pid, tick, lastActive, first, overflow, frames (6 fields each)]
//	R/S/W<seq>        pending receive / send notice / spawn notice: [logTime, notice]
//
// Values are written with the same MessagePack primitives as events. A
// record's value is a pure function of the entry it describes, so the
// records put by successive Apply calls equal what Snapshot writes.

const stateVersion = 1

func appendKey(b []byte, tag byte, num uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, tag), num)
}

var metaKey = []byte{tagMeta}

// counterFields lists the counters in their persisted order: append only.
func counterFields(c *Counters) []*uint64 {
	return []*uint64{&c.Events, &c.Duplicates, &c.OutOfOrder, &c.Orphans, &c.Unwound, &c.ExitClosed,
		&c.Matched, &c.NoticesApplied, &c.NoticesExpired, &c.ReceivesExpired, &c.StackOverflows,
		&c.ProcessEvictions, &c.PendingEvictions, &c.DedupEvictions, &c.PayloadsTruncated,
		&c.AttributesDropped, &c.Malformed, &c.ProcessesExpired, &c.OutboxDropped, &c.SpawnsLinked,
		&c.AbandonedInactivity, &c.AbandonedProcessBound, &c.Rerouted, &c.NoticesForwarded, &c.RecordsForwarded}
}

// minMetaCounters is how many counters the oldest meta record this version
// reads has. Counters are only ever appended, so a meta record written
// before the later ones existed restores with those at zero.
const minMetaCounters = 20

func (c *Correlator) appendMeta(b []byte) []byte { return c.appendMetaOf(b, &c.totals) }

// appendMetaOf appends the meta record with totals as its counters.
func (c *Correlator) appendMetaOf(b []byte, totals *Counters) []byte {
	fields := counterFields(totals)
	b = appendArrayHeader(b, 6+len(fields))
	b = appendUint(b, stateVersion)
	b = appendInt(b, c.logTime)
	b = appendUint(b, c.seq)
	b = appendUint(b, c.nextProcNo)
	b = appendUint(b, c.dedup.head)
	b = appendUint(b, c.dedup.next)
	for _, f := range fields {
		b = appendUint(b, *f)
	}
	return b
}

func appendChunk(b []byte, ch *dedupChunk) []byte {
	b = appendArrayHeader(b, 2)
	b = appendInt(b, ch.logTime)
	n := 16 * len(ch.ids)
	switch {
	case n <= 0xff:
		b = append(b, mpBin8, byte(n))
	case n <= 0xffff:
		b = append(b, mpBin16, byte(n>>8), byte(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, mpBin32), uint32(n))
	}
	for i := range ch.ids {
		b = append(b, ch.ids[i][:]...)
	}
	return b
}

func appendEntry(b []byte, logTime int64, n *Notice) []byte {
	b = appendArrayHeader(b, 2)
	b = appendInt(b, logTime)
	return AppendNotice(b, n)
}

// appendProc appends p's record as the shard self keeps it. A process
// whose first event and CALLs are all stored on self has 7 fields; one that
// came from a split (some of them stored on the parent, docs/DECISIONS.md
// D41) has two more: the shard of its first event and of each frame.
func appendProc(b []byte, p *proc, self uint32) []byte {
	homes := p.firstHome != self
	for i := 0; i < len(p.frames) && !homes; i++ {
		homes = p.frames[i].home != self
	}
	fields := 7
	if homes {
		fields = 9
	}
	b = appendArrayHeader(b, fields)
	b = appendString(b, p.key.Origin)
	b = appendString(b, p.key.PID)
	b = appendUint(b, p.tick)
	b = appendInt(b, p.lastActive)
	b = appendID(b, p.first)
	b = appendUint(b, uint64(p.overflow))
	b = appendArrayHeader(b, 6*len(p.frames))
	for i := range p.frames {
		f := &p.frames[i]
		b = appendID(b, f.call)
		b = appendString(b, f.callID)
		b = appendString(b, f.module)
		b = appendString(b, f.function)
		b = appendUint(b, uint64(f.arity))
		b = appendInt(b, f.startNs)
	}
	if homes {
		b = appendUint(b, uint64(p.firstHome))
		b = appendArrayHeader(b, len(p.frames))
		for i := range p.frames {
			b = appendUint(b, uint64(p.frames[i].home))
		}
	}
	return b
}

// recs accumulates state records whose keys and values are cut from one
// growing buffer (never overwritten, so earlier slices stay valid).
type recs struct {
	buf []byte
	out []StateRecord
}

func (r *recs) put(tag byte, num uint64, value func([]byte) []byte) {
	start := len(r.buf)
	if tag == tagMeta || tag == tagLayout {
		r.buf = append(r.buf, tag)
	} else {
		r.buf = appendKey(r.buf, tag, num)
	}
	mid := len(r.buf)
	r.buf = value(r.buf)
	r.out = append(r.out, StateRecord{Key: r.buf[start:mid:mid], Value: r.buf[mid:len(r.buf):len(r.buf)]})
}

func (r *recs) del(tag byte, num uint64) {
	start := len(r.buf)
	r.buf = appendKey(r.buf, tag, num)
	r.out = append(r.out, StateRecord{Key: r.buf[start:len(r.buf):len(r.buf)]})
}

// stateRecords returns the records created, changed or deleted by the
// current batch, in key order. An entry created and removed within the
// batch was never written, so it yields nothing.
func (c *Correlator) stateRecords() []StateRecord {
	n := 1 + len(c.dedup.deleted) + len(c.dirtyOut) + len(c.dirtyProc) + len(c.dirtyPend) + 1
	// Size the buffer once: ~48 bytes of key and fixed fields per record,
	// ~64 per open frame, 16 per new dedup id.
	size := 48*n + 16*len(c.batch) + 256
	for _, d := range c.dirtyProc {
		p := d.p
		size += 64*len(p.frames) + len(p.key.Origin) + len(p.key.PID)
	}
	r := recs{buf: make([]byte, 0, size), out: make([]StateRecord, 0, n)}

	// D: chunks dropped (written earlier) and chunks born in this batch.
	var born []*dedupChunk
	for i := len(c.dedup.chunks) - 1; i >= 0 && c.dedup.chunks[i].born == c.epoch; i-- {
		born = append(born, c.dedup.chunks[i])
	}
	slices.Reverse(born)
	slices.Sort(c.dedup.deleted)
	for _, start := range c.dedup.deleted { // all deleted chunks precede live ones
		r.del(tagDedup, start)
	}
	c.dedup.deleted = c.dedup.deleted[:0]
	for _, ch := range born {
		r.put(tagDedup, ch.start, func(b []byte) []byte { return appendChunk(b, ch) })
	}

	if !c.awaiting() { // an awaiting child's meta is its handoff's (split.go)
		r.put(tagMeta, 0, c.appendMeta)
	}

	slices.SortFunc(c.dirtyOut, func(a, b *outEntry) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range c.dirtyOut {
		switch {
		case !e.dead:
			r.put(tagOutbox, e.seq, func(b []byte) []byte { return appendEntry(b, e.logTime, &e.n) })
		case e.born != c.epoch:
			r.del(tagOutbox, e.seq)
		}
	}

	c.sortTmp = sortProcRefs(c.dirtyProc, c.sortTmp)
	for _, d := range c.dirtyProc {
		p := d.p
		switch {
		case !p.dead:
			r.put(tagProc, p.no, func(b []byte) []byte { return appendProc(b, p, c.cfg.Shard) })
		case p.born != c.epoch:
			r.del(tagProc, p.no)
		}
	}

	slices.SortFunc(c.dirtyPend, func(a, b *pending) int {
		return cmp.Or(cmp.Compare(a.tag, b.tag), cmp.Compare(a.seq, b.seq))
	})
	for _, p := range c.dirtyPend {
		switch {
		case !p.dead:
			r.put(p.tag, p.seq, func(b []byte) []byte { return appendEntry(b, p.logTime, &p.n) })
		case p.born != c.epoch:
			r.del(p.tag, p.seq)
		}
	}
	return r.out
}

// Snapshot returns every live state record, sorted by key. Restoring them
// reproduces the correlator exactly, and equals the result of applying all
// Result.State records ever returned, in order, to an empty key space.
func (c *Correlator) Snapshot() []StateRecord {
	var r recs
	if c.awaiting() && c.adoptOf > 0 {
		r.put(tagLayout, 0, c.appendLayout)
		return mergeRecords(c.adopting, r.out)
	}
	for _, ch := range c.dedup.chunks {
		r.put(tagDedup, ch.start, func(b []byte) []byte { return appendChunk(b, ch) })
	}
	for _, h := range c.handoffs {
		r.put(tagHandoff, h.Seq, func(b []byte) []byte { return appendHandoff(b, h) })
	}
	if c.layout.Shards != c.layout.Base || c.adoptOf != 0 || c.prepared != 0 {
		r.put(tagLayout, 0, c.appendLayout)
	}
	r.put(tagMeta, 0, c.appendMeta)
	for e := c.outbox.order.head; e != nil; e = e.lk.next {
		r.put(tagOutbox, e.seq, func(b []byte) []byte { return appendEntry(b, e.logTime, &e.n) })
	}
	procs := c.procs.appendAll(make([]*proc, 0, c.procs.len()))
	slices.SortFunc(procs, func(a, b *proc) int { return cmp.Compare(a.no, b.no) })
	for _, p := range procs {
		r.put(tagProc, p.no, func(b []byte) []byte { return appendProc(b, p, c.cfg.Shard) })
	}
	for _, t := range []*pendingTable{&c.recvs, &c.sends, &c.spawns} { // R < S < W
		for p := t.order.head; p != nil; p = p.lk.next {
			r.put(p.tag, p.seq, func(b []byte) []byte { return appendEntry(b, p.logTime, &p.n) })
		}
	}
	return r.out
}

// Restore replaces the correlator's state with the one described by
// records (as returned by Snapshot, or every live record written from
// Result.State). On error the correlator is left empty.
func (c *Correlator) Restore(records []StateRecord) error {
	c.reset()
	if i := slices.IndexFunc(records, func(r StateRecord) bool { return len(r.Key) == 1 && r.Key[0] == tagLayout }); i >= 0 {
		r := newReader(records[i].Value, false)
		c.readLayout(&r)
		if r.done(); r.err != nil {
			c.reset()
			return fmt.Errorf("state key %x: %w", records[i].Key, r.err)
		}
		if c.awaiting() {
			// A split child part way through its handoff: its state is
			// the chunks adopted so far, restored once all are in.
			c.adopting = slices.Delete(slices.Clone(records), i, i+1)
			return nil
		}
	}
	if err := c.restore(records); err != nil {
		c.reset()
		return err
	}
	return nil
}

func (c *Correlator) restore(records []StateRecord) error {
	var procs []*proc
	var pend []*pending
	var outs []*outEntry
	sawMeta := false
	for _, rec := range records {
		k := rec.Key
		single := len(k) > 0 && (k[0] == tagMeta || k[0] == tagLayout)
		if len(k) == 0 || (!single && len(k) != 9) || (single && len(k) != 1) {
			return fmt.Errorf("%w: state key %x", ErrCorrupt, k)
		}
		var num uint64
		if !single {
			num = binary.BigEndian.Uint64(k[1:])
		}
		r := newReader(rec.Value, false)
		switch k[0] {
		case tagMeta:
			sawMeta = true
			c.readMeta(&r)
		case tagLayout: // read first, above
			r.off = len(r.buf)
		case tagHandoff:
			c.handoffs = append(c.handoffs, readHandoff(&r, num))
		case tagDedup:
			if n := r.arrayLen(1); r.err == nil && n != 2 {
				r.fail("dedup chunk has %d fields", n)
			}
			ch := &dedupChunk{start: num, logTime: r.int()}
			raw := r.bin()
			if r.err == nil && len(raw)%16 != 0 {
				r.fail("dedup chunk of %d bytes", len(raw))
			}
			for i := 0; i+16 <= len(raw); i += 16 {
				ch.ids = append(ch.ids, EventID(raw[i:i+16]))
			}
			c.dedup.chunks = append(c.dedup.chunks, ch)
		case tagOutbox:
			e := &outEntry{seq: num}
			e.logTime = readEntry(&r, &e.n)
			outs = append(outs, e)
		case tagProc:
			procs = append(procs, c.readProc(&r, num))
		case tagReceive, tagSend, tagSpawn:
			p := &pending{tag: k[0], seq: num, idx: -1}
			p.logTime = readEntry(&r, &p.n)
			pend = append(pend, p)
		default:
			return fmt.Errorf("%w: state key %x: unknown tag", ErrCorrupt, k)
		}
		r.done()
		if r.err != nil {
			return fmt.Errorf("state key %x: %w", k, r.err)
		}
	}
	if !sawMeta && len(records) > 0 {
		return fmt.Errorf("%w: state has no meta record", ErrCorrupt)
	}

	d := &c.dedup
	total := 0
	for _, ch := range d.chunks {
		total += len(ch.ids)
	}
	if live := d.next - d.head; live > uint64(total) {
		return fmt.Errorf("%w: dedup window of %d ids, %d stored", ErrCorrupt, live, total)
	} else if live > uint64(c.cfg.DedupWindow) {
		// Written under a larger DedupWindow: size the table for what was
		// persisted; the count bound trims it as new ids arrive.
		d.ids = newIDSet(int(live))
	}
	slices.SortFunc(d.chunks, func(a, b *dedupChunk) int { return cmp.Compare(a.start, b.start) })
	for _, ch := range d.chunks {
		for i, id := range ch.ids {
			if n := ch.start + uint64(i); n >= d.head && n < d.next {
				d.ids.add(id)
			}
		}
	}
	slices.SortFunc(c.handoffs, func(a, b *Handoff) int { return cmp.Compare(a.Seq, b.Seq) })
	slices.SortFunc(procs, func(a, b *proc) int { return cmp.Compare(a.tick, b.tick) })
	for _, p := range procs {
		if c.procs.get(p.key.Origin, p.key.PID) != nil {
			return fmt.Errorf("%w: process %s stored twice", ErrCorrupt, p.key)
		}
		c.procs.put(p)
		c.lru.push(p, len(procs))
	}
	slices.SortFunc(outs, func(a, b *outEntry) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range outs {
		c.outbox.insert(e)
	}
	slices.SortFunc(pend, func(a, b *pending) int { return cmp.Compare(a.seq, b.seq) })
	for _, p := range pend {
		t := map[byte]*pendingTable{tagReceive: &c.recvs, tagSend: &c.sends, tagSpawn: &c.spawns}[p.tag]
		t.insert(p)
	}
	return nil
}

func (c *Correlator) readMeta(r *reader) {
	fields := counterFields(&c.totals)
	n := r.arrayLen(1)
	if r.err == nil && (n < 6+minMetaCounters || n > 6+len(fields)) {
		r.fail("meta has %d fields, want %d to %d", n, 6+minMetaCounters, 6+len(fields))
	}
	if r.err == nil {
		fields = fields[:n-6]
	}
	if v := r.uint(); r.err == nil && v != stateVersion {
		r.fail("state version %d, want %d", v, stateVersion)
	}
	c.logTime = r.int()
	c.seq = r.uint()
	c.nextProcNo = r.uint()
	c.dedup.head = r.uint()
	c.dedup.next = r.uint()
	for _, f := range fields {
		*f = r.uint()
	}
	if r.err == nil && c.dedup.head > c.dedup.next {
		r.fail("dedup head %d beyond next %d", c.dedup.head, c.dedup.next)
	}
}

func readEntry(r *reader, n *Notice) (logTime int64) {
	if c := r.arrayLen(1); r.err == nil && c != 2 {
		r.fail("entry has %d fields, want 2", c)
	}
	logTime = r.int()
	decodeNotice(r, n)
	return logTime
}

func (c *Correlator) readProc(r *reader, no uint64) *proc {
	fields := r.arrayLen(1)
	if r.err == nil && fields != 7 && fields != 9 {
		r.fail("process has %d fields, want 7 or 9", fields)
	}
	p := &proc{no: no, firstIdx: -1, firstHome: c.cfg.Shard}
	p.key.Origin = c.intern(r.string())
	p.setPID(r.string())
	p.tick = r.uint()
	p.lastActive = r.int()
	p.first = r.id()
	p.overflow = r.uint32()
	n := r.arrayLen(1)
	if r.err == nil && n%6 != 0 {
		r.fail("frames array of %d fields", n)
	}
	if n > 0 && r.err == nil {
		p.frames = make([]frame, n/6)
		for i := range p.frames {
			f := &p.frames[i]
			f.call = r.id()
			f.callID = r.string()
			f.module = c.intern(r.string())
			f.function = c.intern(r.string())
			f.arity = r.uint32()
			f.home = c.cfg.Shard
			f.startNs = r.int()
		}
	}
	if fields == 9 && r.err == nil {
		p.firstHome = c.readHome(r)
		if m := r.arrayLen(1); r.err == nil && m != len(p.frames) {
			r.fail("process has %d frame homes for %d frames", m, len(p.frames))
		}
		for i := 0; i < len(p.frames) && r.err == nil; i++ {
			p.frames[i].home = c.readHome(r)
		}
	}
	return p
}

// readHome reads the shard that stored one of a process's events: this
// one or one it split from, so one of the process's shards in the layout's
// history.
func (c *Correlator) readHome(r *reader) uint32 {
	h := r.uint32()
	if r.err == nil && h >= c.layout.Shards {
		r.fail("home shard %d outside the layout of %d shards", h, c.layout.Shards)
	}
	return h
}
