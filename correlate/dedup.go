package correlate

// dedupWindow remembers the ids applied recently, bounded by count
// (DedupWindow) and by log-time age (DedupTTL). It is the correlator's own
// guard, and the only one for notices; events reach it from a node already
// screened against the store's id index (node/fsm.go), since at a busy
// shard's rate an id leaves the count window long before its TTL, and a
// retry that got through would be correlated a second time. Ids are numbered in apply
// order; the window holds numbers [head, next). They are persisted one
// chunk per batch (the ids that batch added), plus head in the meta
// record: a chunk is written once and deleted once all its ids have left
// the window, so the window costs one state record per batch, not one per
// event, and restoring skips ids numbered below head.
type dedupWindow struct {
	ids    idSet
	chunks []*dedupChunk // oldest first
	head   uint64        // number of the oldest id still in the window
	next   uint64        // number of the next id to add

	deleted []uint64 // chunk numbers to delete in the current batch's state
}

type dedupChunk struct {
	start   uint64 // number of ids[0]
	logTime int64
	ids     []EventID
	born    uint64
}

func (d *dedupWindow) contains(id EventID) bool { return d.ids.contains(id) }

// dedupAdd adds id to the window and reports whether it was new; the zero
// id is never deduplicated (always new, never added). hint is how many more
// ids the batch may add, to size the batch's chunk once.
func (c *Correlator) dedupAdd(id EventID, hint int) bool {
	if id == (EventID{}) {
		return true
	}
	d := &c.dedup
	if !d.ids.add(id) {
		return false
	}
	var ch *dedupChunk
	if n := len(d.chunks); n > 0 && d.chunks[n-1].born == c.epoch {
		ch = d.chunks[n-1]
	} else {
		ch = &dedupChunk{start: d.next, logTime: c.logTime, ids: make([]EventID, 0, max(hint, 1)), born: c.epoch}
		d.chunks = append(d.chunks, ch)
	}
	ch.ids = append(ch.ids, id)
	d.next++
	for d.next-d.head > uint64(c.cfg.DedupWindow) || d.ids.full() {
		c.dedupEvictOne()
		c.cur.DedupEvictions++
	}
	return true
}

func (c *Correlator) dedupEvictOne() {
	d := &c.dedup
	ch := d.chunks[0]
	d.ids.remove(ch.ids[d.head-ch.start])
	d.head++
	if d.head == ch.start+uint64(len(ch.ids)) {
		c.dedupDropChunk()
	}
}

func (c *Correlator) dedupDropChunk() {
	d := &c.dedup
	ch := d.chunks[0]
	d.chunks[0] = nil
	d.chunks = d.chunks[1:]
	if ch.born != c.epoch { // written by an earlier batch: delete its record
		d.deleted = append(d.deleted, ch.start)
	}
}

func (c *Correlator) dedupExpire(now int64) {
	d := &c.dedup
	for len(d.chunks) > 0 && now-d.chunks[0].logTime > int64(c.cfg.DedupTTL) {
		ch := d.chunks[0]
		for n := ch.start + uint64(len(ch.ids)); d.head < n; d.head++ {
			d.ids.remove(ch.ids[d.head-ch.start])
		}
		c.dedupDropChunk()
	}
}
