package correlate

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
)

// Online resharding (docs/DECISIONS.md D39). A shard splits at one entry of
// its log (Batch.Split): the processes the doubled layout gives its child,
// with their open stacks and the pending receives and notices that wait on
// them, leave the shard's state and become handoff chunks (state records
// tagged H), kept until the child has adopted them. The child is a new raft
// group that applies nothing until its log holds every chunk
// (Batch.Adopt); its state is then exactly what the parent gave. Both
// sides keep the dedup window; the parent keeps its outbox (it applied those
// sends and delivers them). From the split on, the parent reroutes the
// events of processes it no longer owns (Result.Rerouted) and forwards
// their notices to the child through its outbox.

// Handoff is one chunk of the state a split shard gives its child, kept in
// the parent's state until the child has adopted it.
type Handoff struct {
	Seq     uint64 // state-record number; Batch.HandedOff names it
	Child   uint32
	Chunk   uint32 // 0 .. Of-1, adopted in order
	Of      uint32
	Records []byte // the chunk's state records (see appendRecords)
}

// Adoption is one handoff chunk proposed to the child's log.
type Adoption struct {
	From    uint32 // the parent shard
	Chunk   uint32
	Of      uint32
	Records []byte
}

// ReshardState is where a shard stands in resharding.
type ReshardState struct {
	Layout Layout
	// Awaiting says the shard is a split child that has not adopted its
	// whole handoff: it applies nothing, and rerouting finds it again.
	Awaiting bool
	// Adopted and Of count the handoff chunks a child applied and expects
	// (0 and 0 for a base shard, and for a child before its first chunk).
	Adopted, Of uint32
	// Handoffs counts the chunks this shard gave a child that the child has
	// not confirmed (Batch.HandedOff).
	Handoffs int
	// Prepared is the shard count of the split whose child was prepared
	// (Batch.Prepare), 0 if none was.
	Prepared uint32
}

const (
	tagLayout  = 'L' // layout, adoption progress, split prepared: [base, shards, adopted, of, prepared]
	tagHandoff = 'H' // handoff chunk: [child, chunk, of, records]
)

// handoffChunkBytes bounds the records of one handoff chunk (one raft
// entry). A variable so that tests can split small states into many chunks.
var handoffChunkBytes = 1 << 20

// Reshard returns the shard's layout and handoff progress.
func (c *Correlator) Reshard() ReshardState {
	return ReshardState{Layout: c.layout, Awaiting: c.awaiting(), Adopted: c.adoptGot, Of: c.adoptOf, Handoffs: len(c.handoffs), Prepared: c.prepared}
}

// Layout returns the layout the shard routes by.
func (c *Correlator) Layout() Layout { return c.layout }

// Handoffs returns the handoff chunks not yet confirmed, oldest first. The
// slice is the caller's; Records are shared and must not be modified.
func (c *Correlator) Handoffs() []Handoff {
	out := make([]Handoff, len(c.handoffs))
	for i, h := range c.handoffs {
		out[i] = *h
	}
	return out
}

// awaiting says the shard is a split child without its whole handoff.
func (c *Correlator) awaiting() bool {
	return c.cfg.Shard >= c.layout.Base && (c.adoptOf == 0 || c.adoptGot < c.adoptOf)
}

// layoutRecord is the L record of the current layout and adoption.
func (c *Correlator) appendLayout(b []byte) []byte {
	b = appendArrayHeader(b, 5)
	b = appendUint(b, uint64(c.layout.Base))
	b = appendUint(b, uint64(c.layout.Shards))
	b = appendUint(b, uint64(c.adoptGot))
	b = appendUint(b, uint64(c.adoptOf))
	return appendUint(b, uint64(c.prepared))
}

func (c *Correlator) readLayout(r *reader) {
	if n := r.arrayLen(1); r.err == nil && n != 5 {
		r.fail("layout has %d fields, want 5", n)
	}
	l := Layout{Base: r.uint32(), Shards: r.uint32()}
	got, of, prepared := r.uint32(), r.uint32(), r.uint32()
	if r.err != nil {
		return
	}
	if err := l.Validate(); err != nil || l.Base != c.cfg.Shards || c.cfg.Shard >= l.Shards || got > of || prepared > 2*l.Shards {
		r.fail("layout %d of base %d (adopted %d of %d, prepared %d) for shard %d of base %d", l.Shards, l.Base, got, of, prepared, c.cfg.Shard, c.cfg.Shards)
		return
	}
	c.layout, c.adoptGot, c.adoptOf, c.prepared = l, got, of, prepared
}

func appendHandoff(b []byte, h *Handoff) []byte {
	b = appendArrayHeader(b, 4)
	b = appendUint(b, uint64(h.Child))
	b = appendUint(b, uint64(h.Chunk))
	b = appendUint(b, uint64(h.Of))
	return appendBin(b, h.Records)
}

func readHandoff(r *reader, seq uint64) *Handoff {
	if n := r.arrayLen(1); r.err == nil && n != 4 {
		r.fail("handoff has %d fields, want 4", n)
	}
	h := &Handoff{Seq: seq, Child: r.uint32(), Chunk: r.uint32(), Of: r.uint32()}
	h.Records = bytes.Clone(r.bin())
	if r.err == nil && h.Chunk >= h.Of {
		r.fail("handoff chunk %d of %d", h.Chunk, h.Of)
	}
	return h
}

// appendRecords encodes records as one array of [key, value] bins.
func appendRecords(b []byte, recs []StateRecord) []byte {
	b = appendArrayHeader(b, len(recs))
	for _, r := range recs {
		b = appendArrayHeader(b, 2)
		b = appendBin(b, r.Key)
		b = appendBin(b, r.Value)
	}
	return b
}

func decodeRecords(data []byte) ([]StateRecord, error) {
	r := newReader(data, false)
	n := r.arrayLen(3)
	out := make([]StateRecord, 0, max(n, 0))
	for i := 0; i < n && r.err == nil; i++ {
		if m := r.arrayLen(2); r.err == nil && m != 2 {
			r.fail("record has %d fields", m)
		}
		k, v := bytes.Clone(r.bin()), bytes.Clone(r.bin())
		if r.err == nil && len(k) == 0 {
			r.fail("empty record key")
		}
		out = append(out, StateRecord{Key: k, Value: v})
	}
	r.done()
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}

// reshardStep applies a batch's resharding fields, before anything else of
// the batch, and returns the state records they put or delete, and why a
// split or adoption was refused (nil if none was). It runs between batches
// (epoch not yet advanced), so the Restores it makes leave nothing
// half-applied.
func (c *Correlator) reshardStep(b *Batch) ([]StateRecord, error) {
	var out []StateRecord
	var refused error
	if len(b.HandedOff) > 0 {
		for _, seq := range b.HandedOff {
			i := slices.IndexFunc(c.handoffs, func(h *Handoff) bool { return h.Seq == seq })
			if i < 0 {
				continue // confirmed twice
			}
			c.handoffs = slices.Delete(c.handoffs, i, i+1)
			out = append(out, StateRecord{Key: appendKey(nil, tagHandoff, seq)})
		}
	}
	if b.Prepare != nil {
		recs, err := c.prepare(b.Prepare)
		out, refused = mergeRecords(out, recs), err
	}
	if b.Split != 0 {
		recs, err := c.split(b.Split)
		out, refused = mergeRecords(out, recs), err
	}
	if b.Adopt != nil {
		recs, err := c.adopt(b.Adopt)
		out, refused = mergeRecords(out, recs), cmp.Or(refused, err)
	}
	return out, refused
}

// prepare records the first preparation of the next split's child and
// reports it (Result.Prepared); a later one for the same split changes
// nothing.
func (c *Correlator) prepare(p *Preparation) ([]StateRecord, error) {
	next := c.layout.Doubled()
	switch {
	case p.Shards != next.Shards || next.Shards > MaxLayoutShards:
		return nil, fmt.Errorf("%w: preparing shard %d's split to %d shards: the layout has %d", ErrReshard, c.cfg.Shard, p.Shards, c.layout.Shards)
	case c.awaiting():
		return nil, fmt.Errorf("%w: preparing shard %d's split: it has not adopted its own handoff", ErrReshard, c.cfg.Shard)
	case c.prepared >= p.Shards:
		return nil, nil // prepared by an earlier entry: its voters create the child
	}
	c.prepared = p.Shards
	c.res.Prepared = &Prepared{Child: c.cfg.Shard + c.layout.Shards, Voters: bytes.Clone(p.Voters)}
	var add recs
	add.put(tagLayout, 0, c.appendLayout)
	return add.out, nil
}

// split doubles the layout at this point of the log. A split asked for any
// other count, or of a shard that has not adopted its own handoff, or while
// the shard still holds undelivered handoff chunks, changes nothing: every
// replica sees the same log and refuses the same way.
func (c *Correlator) split(shards uint32) ([]StateRecord, error) {
	next := c.layout.Doubled()
	switch {
	case shards != next.Shards || next.Shards > MaxLayoutShards:
		return nil, fmt.Errorf("%w: split of shard %d to %d shards: the layout has %d (a split doubles it, to at most %d)",
			ErrReshard, c.cfg.Shard, shards, c.layout.Shards, MaxLayoutShards)
	case c.awaiting():
		return nil, fmt.Errorf("%w: split of shard %d: it has not adopted its own handoff", ErrReshard, c.cfg.Shard)
	case len(c.handoffs) > 0:
		return nil, fmt.Errorf("%w: split of shard %d: its child has not adopted the last split's %d chunks", ErrReshard, c.cfg.Shard, len(c.handoffs))
	}
	child := c.cfg.Shard + c.layout.Shards
	moves := func(p Process) bool { return next.ShardOf(p.Origin, p.PID) == child }

	// The child's records: meta (its counters start at zero), layout, the
	// dedup window, and the processes and pending entries it now owns.
	var give recs
	for _, ch := range c.dedup.chunks {
		give.put(tagDedup, ch.start, func(b []byte) []byte { return appendChunk(b, ch) })
	}
	childLayout := &Correlator{layout: next}
	give.put(tagLayout, 0, childLayout.appendLayout)
	give.put(tagMeta, 0, func(b []byte) []byte { return c.appendMetaOf(b, &Counters{}) })
	moved := map[string]bool{}
	procs := c.procs.appendAll(make([]*proc, 0, c.procs.len()))
	slices.SortFunc(procs, func(a, b *proc) int { return cmp.Compare(a.no, b.no) })
	for _, p := range procs {
		if moves(p.key) {
			give.put(tagProc, p.no, func(b []byte) []byte { return appendProc(b, p, child) })
			moved[string(appendKey(nil, tagProc, p.no))] = true
		}
	}
	for _, t := range []*pendingTable{&c.recvs, &c.sends, &c.spawns} {
		for p := t.order.head; p != nil; p = p.lk.next {
			if moves(p.n.Receiver) {
				give.put(p.tag, p.seq, func(b []byte) []byte { return appendEntry(b, p.logTime, &p.n) })
				moved[string(appendKey(nil, p.tag, p.seq))] = true
			}
		}
	}
	// The layout and meta records go first, so that a child restarted
	// mid-adoption knows its layout; each chunk is then sorted by key.
	slices.SortFunc(give.out, func(a, b StateRecord) int {
		return cmp.Or(cmp.Compare(len(a.Key), len(b.Key)), bytes.Compare(a.Key, b.Key)) // L, M: one byte
	})

	// Chunks of at most handoffChunkBytes of records (at least one each).
	var chunks [][]StateRecord
	size := 0
	for _, r := range give.out {
		n := len(r.Key) + len(r.Value) + 16
		if len(chunks) == 0 || size+n > handoffChunkBytes && len(chunks[len(chunks)-1]) > 0 {
			chunks = append(chunks, nil)
			size = 0
		}
		chunks[len(chunks)-1] = append(chunks[len(chunks)-1], r)
		size += n
	}

	for _, ch := range chunks {
		slices.SortFunc(ch, func(a, b StateRecord) int { return bytes.Compare(a.Key, b.Key) })
	}

	// The parent keeps everything else, with the new layout and the chunks.
	var keep []StateRecord
	var out []StateRecord
	for _, r := range c.Snapshot() {
		if moved[string(r.Key)] {
			out = append(out, StateRecord{Key: r.Key})
			continue
		}
		if r.Key[0] != tagLayout {
			keep = append(keep, r)
		}
	}
	c.layout = next
	var add recs
	add.put(tagLayout, 0, c.appendLayout)
	for i, ch := range chunks {
		h := &Handoff{Seq: c.seq, Child: child, Chunk: uint32(i), Of: uint32(len(chunks)), Records: appendRecords(nil, ch)}
		c.seq++
		add.put(tagHandoff, h.Seq, func(b []byte) []byte { return appendHandoff(b, h) })
	}
	// The meta record carries seq, advanced by the chunks.
	add.put(tagMeta, 0, c.appendMeta)
	keep = mergeRecords(keep, add.out)
	if err := c.Restore(keep); err != nil {
		panic(fmt.Sprintf("correlate: split: restoring the parent's own records: %v", err)) // a bug, not input
	}
	return mergeRecords(out, add.out), nil
}

// adopt applies one handoff chunk to a child awaiting it. A chunk that is
// not the next one (a repeat, or from the wrong parent) changes nothing.
func (c *Correlator) adopt(a *Adoption) ([]StateRecord, error) {
	parent, ok := c.layout.Parent(c.cfg.Shard)
	switch {
	case !ok || a.From != parent:
		return nil, fmt.Errorf("%w: shard %d adopts from its parent only, not from shard %d", ErrReshard, c.cfg.Shard, a.From)
	case !c.awaiting():
		return nil, fmt.Errorf("%w: shard %d adopted its whole handoff already", ErrReshard, c.cfg.Shard)
	case a.Chunk != c.adoptGot || a.Of == 0 || a.Chunk >= a.Of || (c.adoptOf != 0 && a.Of != c.adoptOf):
		return nil, fmt.Errorf("%w: shard %d: handoff chunk %d of %d, expected chunk %d", ErrReshard, c.cfg.Shard, a.Chunk, a.Of, c.adoptGot)
	}
	chunk, err := decodeRecords(a.Records)
	if err == nil {
		for _, r := range chunk {
			if r.Key[0] == tagHandoff || r.Key[0] == tagOutbox || r.Key[0] == tagLayout && a.Chunk != 0 {
				err = fmt.Errorf("%w: handoff record %x in chunk %d", ErrCorrupt, r.Key, a.Chunk)
				break
			}
		}
	}
	if err != nil {
		// Every replica decodes the same bytes: all refuse it.
		return nil, fmt.Errorf("%w: shard %d: handoff chunk %d: %w", ErrReshard, c.cfg.Shard, a.Chunk, err)
	}
	isLayout := func(r StateRecord) bool { return r.Key[0] == tagLayout }
	adopting := mergeRecords(c.adopting, chunk)
	if a.Chunk == 0 {
		// Chunk 0 carries the layout record; the rest of the child's
		// state is kept as records until the last chunk (a partial state
		// is not one Restore accepts).
		i := slices.IndexFunc(chunk, isLayout)
		if i < 0 {
			return nil, fmt.Errorf("%w: shard %d: handoff chunk 0 has no layout record", ErrReshard, c.cfg.Shard)
		}
		r := newReader(chunk[i].Value, false)
		c.readLayout(&r)
		if r.done(); r.err != nil {
			c.layout = Layout{Base: c.cfg.Shards, Shards: c.cfg.Shards}
			return nil, fmt.Errorf("%w: shard %d: handoff chunk 0: %w", ErrReshard, c.cfg.Shard, r.err)
		}
		adopting = slices.DeleteFunc(adopting, isLayout)
	}
	c.adoptGot, c.adoptOf = a.Chunk+1, a.Of
	var add recs
	add.put(tagLayout, 0, c.appendLayout)
	if c.adoptGot < c.adoptOf {
		c.adopting = adopting
	} else if err := c.Restore(mergeRecords(adopting, add.out)); err != nil {
		// The parent gave a state that does not restore: a bug, but one
		// every replica meets alike. Stay awaiting, without this chunk.
		c.adoptGot = a.Chunk
		prev := mergeRecords(c.adopting, nil)
		var l recs
		l.put(tagLayout, 0, c.appendLayout)
		if rerr := c.Restore(mergeRecords(prev, l.out)); rerr != nil {
			panic(fmt.Sprintf("correlate: adopt: restoring the previous state: %v", rerr))
		}
		return nil, fmt.Errorf("%w: shard %d: the handoff does not restore: %w", ErrReshard, c.cfg.Shard, err)
	}
	return mergeRecords(chunk, add.out), nil
}

// mergeRecords merges two lists of records sorted by key; where both have a
// key, over's record wins. The result is sorted by key.
func mergeRecords(base, over []StateRecord) []StateRecord {
	if len(base) == 0 {
		return over
	}
	if len(over) == 0 {
		return base
	}
	out := make([]StateRecord, 0, len(base)+len(over))
	i, j := 0, 0
	for i < len(base) || j < len(over) {
		switch {
		case j == len(over):
			out = append(out, base[i])
			i++
		case i == len(base):
			out = append(out, over[j])
			j++
		default:
			switch d := bytes.Compare(base[i].Key, over[j].Key); {
			case d < 0:
				out = append(out, base[i])
				i++
			case d > 0:
				out = append(out, over[j])
				j++
			default:
				out = append(out, over[j])
				i++
				j++
			}
		}
	}
	return out
}
