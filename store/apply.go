package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// Apply persists res for shard in one Pebble batch: every event (primary
// record and all index entries), an edge record for each link of each event
// and for each res.Edges, the correlator state mutations, res.Retention (if
// set) and res.Index as the shard's applied index. Either all of it becomes
// visible or none of it.
//
// If res.Index <= AppliedIndex(shard), Apply does nothing and returns nil:
// Raft replays entries after a crash and the store has already applied
// them. Raft indexes start at 1, so Index 0 is always a no-op.
//
// Apply is deterministic: replicas applying the same Results in the same
// order hold byte-identical shard spans. It must be called by one goroutine
// per shard at a time (the Raft FSM); concurrent calls for one shard are
// serialized.
func (s *Store) Apply(shard uint32, res *correlate.Result) error {
	if err := s.check(shard); err != nil {
		return err
	}
	mu := s.lock(shard)
	mu.Lock()
	defer mu.Unlock()
	applied, err := readApplied(s.db, shard)
	if err != nil {
		return err
	}
	if res.Index <= applied {
		return nil
	}
	a := newApplier(s, shard)
	defer a.release()
	if err := a.run(res); err != nil {
		return err
	}
	if err := s.commit(a.b); err != nil {
		return fmt.Errorf("store: apply shard %d index %d: %w", shard, res.Index, err)
	}
	return nil
}

// commit commits b. Pebble treats a failed WAL write as fatal (it calls
// Logger.Fatalf, which panics with a fatalError): the batch may or may not
// be in the WAL. commit turns that into ErrFailed and fails the store
// (fail-stop), so that no later write builds on an unknown state.
func (s *Store) commit(b *pebble.Batch) (err error) {
	if s.failed.Load() {
		return ErrFailed
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			s.failed.Store(true)
			err = fmt.Errorf("%w: %s", ErrFailed, string(f))
		}
	}()
	opt := pebble.NoSync
	if s.opts.Sync {
		opt = pebble.Sync
	}
	return b.Commit(opt)
}

// pendingEvent is an event of the Result that will be written.
type pendingEvent struct {
	e          *correlate.Event
	bucket     uint64
	tail       [tailLen]byte
	start, end int // its value in applier.arena
	dropped    bool
}

// applier builds the batch of one Apply.
type applier struct {
	s     *Store
	shard uint32
	b     *pebble.Batch
	buf   []byte
	arena []byte

	events []pendingEvent
	byID   map[correlate.EventID]int // index in events
	cands  []candidate
	probes []probeKey

	// dir holds the directory entries of the buckets this batch touches,
	// committed state plus this batch's events.
	dir map[uint64]dirEntry
	// committed is the whole committed directory, loaded on first need.
	committed *bucketDir

	cut    []byte // retention cut (tail): events with tail < cut are deleted; nil: none
	cutB   uint64 // bucket of cut
	hasCut bool

	// writes holds the point writes that follow retention, in the order
	// Apply makes them; flush hands them to the batch sorted by key (see
	// flush). wbuf holds their keys and values.
	writes []pointWrite
	wbuf   []byte

	// old holds the buckets that held committed events before this batch
	// (only those can have committed aggregates); kinds and funcs are the
	// batch's aggregate deltas (aggregates.go): funcs maps a 1C key to
	// its delta in fagg, whose keys are in fbuf.
	old   map[uint64]bool
	kinds map[uint64][numKinds]int64
	funcs map[string]int
	fagg  []pendingAgg
	fbuf  []byte
	fkb   []byte
	vbuf  []byte
}

// pointWrite is one Set or Delete of the batch: key wbuf[k0:k1], value
// wbuf[k1:v1].
type pointWrite struct {
	k0, k1, v1 int
	del        bool
}

// appliers recycles the scratch space of Apply (encoded events, pending
// events, maps, probe keys): without it every Apply regrows them from
// nothing, which was ~4x the bytes the raw-Pebble baseline allocates.
// pebble recycles its batches itself.
var appliers = sync.Pool{New: func() any {
	return &applier{byID: map[correlate.EventID]int{}, dir: map[uint64]dirEntry{},
		old: map[uint64]bool{}, kinds: map[uint64][numKinds]int64{}, funcs: map[string]int{}}
}}

// maxPooledArena bounds the scratch an applier keeps between Applies, so
// that one huge batch does not pin its memory in the pool.
const maxPooledArena = 4 << 20

func newApplier(s *Store, shard uint32) *applier {
	a := appliers.Get().(*applier)
	a.s, a.shard, a.b = s, shard, s.db.NewBatch()
	return a
}

// release closes the batch and returns the scratch space to the pool,
// dropping every reference into the applied Result.
func (a *applier) release() {
	_ = a.b.Close()
	if cap(a.arena) > maxPooledArena {
		return
	}
	clear(a.events)
	clear(a.cands)
	clear(a.byID)
	clear(a.dir)
	clear(a.old)
	clear(a.kinds)
	clear(a.funcs)
	if cap(a.wbuf) > maxPooledArena {
		return
	}
	*a = applier{
		buf: a.buf[:0], arena: a.arena[:0],
		events: a.events[:0], cands: a.cands[:0], probes: a.probes[:0],
		byID: a.byID, dir: a.dir,
		writes: a.writes[:0], wbuf: a.wbuf[:0],
		old: a.old, kinds: a.kinds, funcs: a.funcs, fagg: a.fagg[:0], fbuf: a.fbuf[:0], fkb: a.fkb[:0], vbuf: a.vbuf[:0],
	}
	appliers.Put(a)
}

func (a *applier) run(res *correlate.Result) error {
	if err := a.collect(res.Events); err != nil {
		return err
	}
	if r := res.Retention; r != nil {
		if err := a.retain(r); err != nil {
			return err
		}
	}
	for i := range a.events {
		if err := a.writeEvent(&a.events[i]); err != nil {
			return err
		}
	}
	for _, e := range res.Edges {
		if err := a.writeEdge(e); err != nil {
			return err
		}
	}
	for i, c := range res.Closed {
		switch {
		case c.Outcome != correlate.OutcomeUnwound && c.Outcome != correlate.OutcomeProcessExit &&
			c.Outcome != correlate.OutcomeAbandoned:
			return fmt.Errorf("%w: Closed[%d].Outcome %s: must be UNWOUND, PROCESS_EXIT or ABANDONED",
				ErrInvalidResult, i, c.Outcome)
		case (c.Outcome == correlate.OutcomeAbandoned) != c.Reason.Valid():
			return fmt.Errorf("%w: Closed[%d]: outcome %s with reason %s: ABANDONED needs a reason, others none",
				ErrInvalidResult, i, c.Outcome, c.Reason)
		}
		if err := a.writeFrame(c.Call, frameEnd{outcome: c.Outcome, endNs: c.EndNs, by: c.By, reason: c.Reason}); err != nil {
			return err
		}
	}
	if err := a.writeAggregates(); err != nil {
		return err
	}
	touched := make([]uint64, 0, len(a.dir))
	for b := range a.dir {
		touched = append(touched, b)
	}
	slices.Sort(touched) // a fixed write order: replicas build identical batches
	for _, b := range touched {
		d := a.dir[b]
		if d.count == 0 {
			a.del(bucketKey(a.shard, b))
		} else {
			a.set(bucketKey(a.shard, b), d.append(a.buf[:0]))
		}
	}
	for _, r := range res.State {
		if r.Value == nil {
			a.del(stateKey(a.shard, r.Key))
		} else {
			a.set(stateKey(a.shard, r.Key), r.Value)
		}
	}
	a.set(appliedKey(a.shard), binary.BigEndian.AppendUint64(a.buf[:0], res.Index))
	return a.flush()
}

// set and del buffer a point write; flush adds them to the batch.
func (a *applier) set(k, v []byte) {
	k0 := len(a.wbuf)
	a.wbuf = append(append(a.wbuf, k...), v...)
	a.writes = append(a.writes, pointWrite{k0: k0, k1: k0 + len(k), v1: len(a.wbuf)})
}

func (a *applier) del(k []byte) {
	k0 := len(a.wbuf)
	a.wbuf = append(a.wbuf, k...)
	a.writes = append(a.writes, pointWrite{k0: k0, k1: len(a.wbuf), v1: len(a.wbuf), del: true})
}

// flush adds the buffered point writes to the batch in key order. Pebble
// inserts a committed batch into the memtable's skiplist key by key, and
// its inserter starts each search from the previous key's position: keys
// in order land next to each other and skip most of the descent, whereas
// the order Apply produces them in (section after section, event after
// event) makes every insert a full search through a cold skiplist. The
// order is stable, so writes to one key keep their order (a state record
// set and then deleted stays deleted), and deterministic, so replicas
// still build identical batches. Retention's range and point deletions
// were added to the batch before any buffered write, as before.
func (a *applier) flush() error {
	wb := a.wbuf
	// Writes are appended to wbuf in order, so k0 is their order: ties
	// broken by it give a stable sort's result with an unstable sort's
	// cost (pdqsort, where the stable one merges in O(n log² n)).
	slices.SortFunc(a.writes, func(x, y pointWrite) int {
		if c := bytes.Compare(wb[x.k0:x.k1], wb[y.k0:y.k1]); c != 0 {
			return c
		}
		return cmp.Compare(x.k0, y.k0)
	})
	for _, w := range a.writes {
		var err error
		if w.del {
			err = a.b.Delete(wb[w.k0:w.k1], nil)
		} else {
			err = a.b.Set(wb[w.k0:w.k1], wb[w.k1:w.v1], nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// collect encodes the Result's events, skipping any whose id is already
// stored (or repeated in the batch) so that the bucket statistics stay
// exact, and accounts them in the touched directory entries.
//
// The node's FSM already drops stored ids before correlating (Stored),
// but counts and aggregates are exact only if Apply never trusts its
// caller for that, so Apply checks every event against the store. The check is cheap by construction: an
// event in a bucket with no committed event is new without a read, and the
// others are looked up together, in key order, through one iterator (see
// stored).
func (a *applier) collect(events []correlate.Event) error {
	cands := slices.Grow(a.cands[:0], len(events))
	for i := range events {
		e := &events[i]
		if e.ID == (correlate.EventID{}) {
			return fmt.Errorf("%w: Events[%d].ID: an event id is required", ErrInvalidResult, i)
		}
		if !e.Kind.Valid() {
			return fmt.Errorf("%w: Events[%d].Kind %d: must be one of CALL..STATE_CHANGE", ErrInvalidResult, i, e.Kind)
		}
		if _, dup := a.byID[e.ID]; dup {
			a.s.counters.duplicates.Add(1)
			continue
		}
		a.byID[e.ID] = -1 // seen; set to its index in a.events once kept
		c := candidate{e: e, bucket: bucketOf(e.TimestampNs, a.s.shift)}
		d, err := a.dirEntry(c.bucket)
		if err != nil {
			return err
		}
		a.dir[c.bucket] = d // committed entry: only this batch's events are added below
		c.probe = d.count > 0
		cands = append(cands, c)
	}
	a.cands = cands
	if err := a.stored(cands); err != nil {
		return err
	}
	a.events = slices.Grow(a.events, len(cands))
	for i := range cands {
		c := &cands[i]
		if c.found {
			delete(a.byID, c.e.ID) // stored before: locate finds it in the store
			a.s.counters.duplicates.Add(1)
			continue
		}
		e := c.e
		p := pendingEvent{e: e, bucket: c.bucket, start: len(a.arena)}
		appendTail(p.tail[:0], e.TimestampNs, e.ID)
		a.arena = encodeEvent(a.arena, e, a.shard)
		p.end = len(a.arena)
		d := a.dir[c.bucket]
		d.add(e.TimestampNs, p.end-p.start)
		a.dir[c.bucket] = d
		a.byID[e.ID] = len(a.events)
		a.events = append(a.events, p)
	}
	return nil
}

// candidate is an event of the Result not repeated earlier in the batch.
type candidate struct {
	e      *correlate.Event
	bucket uint64
	probe  bool // its bucket holds committed events: it may be stored already
	found  bool // its id is stored in its bucket
}

// probeKey is the id entry key of candidate i.
type probeKey struct {
	k [headLen + idLen]byte
	i int
}

// stored sets found on every candidate to probe whose id entry (section 11)
// exists (see seekIDs).
func (a *applier) stored(cands []candidate) error {
	keys := a.probes[:0]
	for i := range cands {
		if cands[i].probe {
			var pk probeKey
			idKey(pk.k[:0], a.shard, cands[i].bucket, cands[i].e.ID)
			pk.i = i
			keys = append(keys, pk)
		}
	}
	a.probes = keys
	return seekIDs(a.s.db, keys, func(i int) { cands[i].found = true })
}

// seekIDs calls found(k.i) for every key of keys (id entries, section 11)
// that exists; it sorts keys. The keys are looked up with SeekGE through
// one iterator: opening the levels is paid once per call instead of once
// per event (a db.Get per event was ~2/3 of Apply's time), and the keys of
// one batch are neighbours (ids are time-ordered and share a few buckets),
// so consecutive seeks land in the same, already loaded, index and data
// blocks and pebble turns them into short forward steps. SeekPrefixGE
// with the bloom filters was measured slower: each new sstable's whole
// filter block must be loaded before it saves anything, and flushes and
// compactions keep making new sstables (docs/bench/store.md).
func seekIDs(r pebble.Reader, keys []probeKey, found func(i int)) error {
	if len(keys) == 0 {
		return nil
	}
	slices.SortFunc(keys, func(x, y probeKey) int { return bytes.Compare(x.k[:], y.k[:]) })
	it, err := r.NewIter(&pebble.IterOptions{
		LowerBound: keys[0].k[:],
		UpperBound: prefixEnd(keys[len(keys)-1].k[:]),
	})
	if err != nil {
		return err
	}
	for j := range keys {
		k := keys[j].k[:]
		if it.SeekGE(k) && bytes.Equal(it.Key(), k) {
			found(keys[j].i)
		}
	}
	if err := it.Error(); err != nil {
		_ = it.Close()
		return err
	}
	return it.Close()
}

// Stored sets found[i] (len(found) >= len(events)) when events[i]'s id is
// stored in the shard in the bucket of events[i]'s timestamp: exactly the
// events Apply would skip as duplicates. It reads committed state only; a
// caller that applies several Results must itself remember the ids of
// those it has not applied yet (Bucket gives the bucket for that). The
// cost is Apply's own duplicate check: no read for an event whose bucket
// holds no committed event, one sorted iterator pass for the others.
//
// It is safe to call concurrently with Apply; the FSM calls it between its
// applies, so the answer is the state at its applied index on every
// replica.
func (s *Store) Stored(shard uint32, events []correlate.Event, found []bool) error {
	if err := s.check(shard); err != nil {
		return err
	}
	var occupied map[uint64]bool // bucket → holds committed events
	var keys []probeKey
	for i := range events {
		found[i] = false
		b := bucketOf(events[i].TimestampNs, s.shift)
		has, ok := occupied[b]
		if !ok {
			d, err := readDirEntry(s.db, shard, b)
			if err != nil {
				return err
			}
			if occupied == nil {
				occupied = make(map[uint64]bool, 4)
			}
			has = d.count > 0
			occupied[b] = has
		}
		if has {
			var pk probeKey
			idKey(pk.k[:0], shard, b, events[i].ID)
			pk.i = i
			keys = append(keys, pk)
		}
	}
	return seekIDs(s.db, keys, func(i int) { found[i] = true })
}

// Bucket returns the time bucket of an event with timestamp ts: Apply's
// duplicate check is per (bucket, id), since an id's entry lives in its
// event's bucket.
func (s *Store) Bucket(ts int64) uint64 { return bucketOf(ts, s.shift) }

// dirEntry returns the current entry of bucket: this batch's if touched,
// else the committed one.
func (a *applier) dirEntry(bucket uint64) (dirEntry, error) {
	if d, ok := a.dir[bucket]; ok {
		return d, nil
	}
	d, err := readDirEntry(a.s.db, a.shard, bucket)
	if err == nil && d.count > 0 {
		a.old[bucket] = true
	}
	return d, err
}

// readDirEntry reads bucket's committed directory entry (zero if none).
func readDirEntry(r pebble.Reader, shard uint32, bucket uint64) (dirEntry, error) {
	k := bucketKey(shard, bucket)
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return dirEntry{}, nil
	}
	if err != nil {
		return dirEntry{}, err
	}
	defer closer.Close()
	return decodeDirEntry(k, v)
}

func (a *applier) committedDir() (*bucketDir, error) {
	if a.committed == nil {
		d, err := readDir(a.s.db, a.shard, 0, math.MaxUint64)
		if err != nil {
			return nil, err
		}
		a.committed = &d
	}
	return a.committed, nil
}

func (a *applier) writeEvent(p *pendingEvent) error {
	if p.dropped {
		return nil
	}
	a.account(p.e, p.bucket, 1)
	val := a.arena[p.start:p.end]
	a.buf = eventKeys(a.buf, a.shard, p.bucket, p.e, func(k, v []byte) {
		if k[shardLen] == secEvent {
			v = val
		}
		a.set(k, v)
	})
	for i, l := range p.e.Links {
		if !l.Type.Valid() {
			return fmt.Errorf("%w: event %s: Links[%d].Type %d: must be a valid link type",
				ErrInvalidResult, p.e.ID, i, l.Type)
		}
		a.buf = edgeKey(a.buf[:0], a.shard, p.bucket, correlate.Edge{From: p.e.ID, Type: l.Type, To: l.Target})
		a.set(a.buf, nil)
	}
	return nil
}

// writeEdge stores an edge whose source is not among the batch's events.
// It lives in the bucket of its source if the source is stored on this
// shard, else (remote source) in the bucket of its target with a
// back-reference, so that retention deletes it with the event it hangs on.
// An edge touching no event of this shard has nothing to hang on: it is
// counted and dropped. A source the correlator says is on another shard is
// not looked for: the lookup probes every live bucket before it fails
// (BenchmarkApplyRemoteEdges).
func (a *applier) writeEdge(e correlate.Edge) error {
	if !e.Type.Valid() {
		return fmt.Errorf("%w: edge %s→%s: Type %d: must be a valid link type", ErrInvalidResult, e.From, e.To, e.Type)
	}
	if e.FromOtherShard {
		return a.writeEdgeOnTarget(e)
	}
	if b, ok, err := a.locate(e.From); err != nil || ok {
		if err != nil {
			return err
		}
		a.buf = edgeKey(a.buf[:0], a.shard, b, e)
		a.set(a.buf, nil)
		return nil
	}
	return a.writeEdgeOnTarget(e)
}

// writeEdgeOnTarget stores e, whose source is not stored on this shard, in
// its target's bucket with a back-reference.
func (a *applier) writeEdgeOnTarget(e correlate.Edge) error {
	b, ok, err := a.locate(e.To)
	if err != nil {
		return err
	}
	if !ok {
		a.s.counters.edgesDropped.Add(1)
		return nil
	}
	a.buf = edgeKey(a.buf[:0], a.shard, b, e)
	a.set(a.buf, nil)
	a.buf = edgeToKey(a.buf[:0], a.shard, b, e)
	a.set(a.buf, nil)
	return nil
}

// locate returns the bucket of event id if it is stored on the shard after
// this batch: written by this batch, or committed and not deleted by this
// batch's retention.
func (a *applier) locate(id correlate.EventID) (uint64, bool, error) {
	if i, ok := a.byID[id]; ok {
		p := &a.events[i]
		return p.bucket, !p.dropped, nil
	}
	d, err := a.committedDir()
	if err != nil {
		return 0, false, err
	}
	b, ts, ok, err := probe(a.s.db, a.shard, id, a.s.shift, d.buckets)
	if err != nil || !ok {
		return 0, false, err
	}
	if a.hasCut {
		var tail [tailLen]byte
		appendTail(tail[:0], ts, id)
		if bytes.Compare(tail[:], a.cut) < 0 {
			return 0, false, nil
		}
	}
	return b, true, nil
}

// probe finds event id among the given live buckets: first the bucket of
// the id's own ULID time (ids are usually assigned near the event's time),
// then the others newest first. Each probe is a point lookup that bloom
// filters answer without reading data when the id is absent.
func probe(r pebble.Reader, shard uint32, id correlate.EventID, shift uint8, buckets []uint64) (uint64, int64, bool, error) {
	var kb [headLen + idLen]byte
	try := func(b uint64) (int64, bool, error) {
		k := idKey(kb[:0], shard, b, id)
		v, closer, err := r.Get(k)
		if errors.Is(err, pebble.ErrNotFound) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		defer closer.Close()
		if len(v) != tsLen {
			return 0, false, corruptKey(k, "id record of %d bytes", len(v))
		}
		return unflip(binary.BigEndian.Uint64(v)), true, nil
	}
	guess := uint64(math.MaxUint64)
	if ms := id.Time(); ms <= math.MaxInt64/1_000_000 {
		guess = bucketOf(int64(ms)*1_000_000, shift)
		if _, live := slices.BinarySearch(buckets, guess); live {
			ts, ok, err := try(guess)
			if err != nil || ok {
				return guess, ts, ok, err
			}
		}
	}
	for i := len(buckets) - 1; i >= 0; i-- {
		if buckets[i] == guess {
			continue
		}
		ts, ok, err := try(buckets[i])
		if err != nil || ok {
			return buckets[i], ts, ok, err
		}
	}
	return 0, 0, false, nil
}

// writeFrame stores the frame record of a frame closed without an event of
// its own (UNWOUND, PROCESS_EXIT, ABANDONED) in its CALL's bucket; CallTree and
// CallStackAt read it. A record whose CALL is not stored (deleted by
// retention) has nothing to annotate: it is counted and dropped.
func (a *applier) writeFrame(call correlate.EventID, f frameEnd) error {
	b, ok, err := a.locate(call)
	if err != nil {
		return err
	}
	if !ok {
		a.s.counters.framesLost.Add(1)
		return nil
	}
	a.buf = frameKey(a.buf[:0], a.shard, b, call)
	a.set(a.buf, f.append(nil))
	return nil
}
