package store

import (
	"bytes"
	"encoding/binary"

	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// view is one consistent read of a shard: every query reads through one
// Pebble snapshot, so an index entry it sees always has its primary record.
type view struct {
	s       *Store
	shard   uint32
	snap    *pebble.Snapshot
	prim    *pebble.Iterator // over the shard's primary records, for lookups
	edges   *pebble.Iterator // over the shard's edge records (18), opened on first use
	scanned int              // index keys examined (the bound of MaxScan)
	budget  int
	kb      []byte
	// ekb is the edge prefix links looked up last and ekbNext scratch for
	// the next; edgesAfter says the edges iterator stands on the first key
	// after every key with prefix ekb, or is exhausted (see seekEdges).
	ekb, ekbNext []byte
	edgesAfter   bool
}

// maxEdgeSteps bounds how many keys seekEdges steps over before it seeks.
const maxEdgeSteps = 16

func (s *Store) newView(shard uint32) (*view, error) {
	if err := s.check(shard); err != nil {
		return nil, err
	}
	v := &view{s: s, shard: shard, snap: s.db.NewSnapshot(), budget: s.opts.MaxScan}
	lo := secPrefix(shard, secEvent)
	it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		_ = v.snap.Close()
		return nil, err
	}
	v.prim = it
	return v, nil
}

func (v *view) close() {
	if v.edges != nil {
		_ = v.edges.Close()
	}
	_ = v.prim.Close()
	_ = v.snap.Close()
}

// event reads the primary record (bucket, ts, id) into e.
func (v *view) event(b uint64, ts int64, id correlate.EventID, e *correlate.Event) (bool, error) {
	v.kb = eventKey(v.kb[:0], v.shard, b, ts, id)
	if !v.prim.SeekGE(v.kb) || !bytes.Equal(v.prim.Key(), v.kb) {
		return false, v.prim.Error()
	}
	val, err := v.prim.ValueAndErr()
	if err != nil {
		return false, err
	}
	return true, decodeEvent(v.kb, val, e)
}

// links returns the edges stored in bucket b whose source is id. One
// iterator serves every call of the view: a page of 100 events used to
// open 100 iterators, which was most of a by-process query's time.
func (v *view) links(b uint64, id correlate.EventID) ([]correlate.Link, error) {
	if v.edges == nil {
		lo := secPrefix(v.shard, secEdge)
		it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
		if err != nil {
			return nil, err
		}
		v.edges = it
	}
	key := append(head(v.ekbNext[:0], v.shard, secEdge, b), id[:]...)
	var out []correlate.Link
	ok := v.seekEdges(key)
	for ; ok && bytes.HasPrefix(v.edges.Key(), key); ok = v.edges.Next() {
		e, ok := parseEdgeKey(v.edges.Key())
		if !ok {
			v.edgesAfter = false
			return nil, corruptKey(v.edges.Key(), "edge key of %d bytes", len(v.edges.Key()))
		}
		out = append(out, correlate.Link{Type: e.Type, Target: e.To})
	}
	v.ekb, v.ekbNext = key, v.ekb
	if err := v.edges.Error(); err != nil {
		v.edgesAfter = false
		return nil, err
	}
	v.edgesAfter = true
	return out, nil
}

// seekEdges positions the edges iterator at the first key >= key and
// reports whether there is one. An ascending walk (a page in time order:
// event ids, ULIDs, mostly ascend with time, so do their edge keys) need
// not seek at all: the iterator already stands on the first key after the
// previous prefix, and when key lies beyond that prefix no key lies
// between the two, so a few Next steps (at most maxEdgeSteps) reach it. A
// seek per event missed the block cache on most of a time range's reads.
// Edge prefixes all have one length, so none is a prefix of another.
func (v *view) seekEdges(key []byte) bool {
	if v.edgesAfter && bytes.Compare(v.ekb, key) < 0 {
		if !v.edges.Valid() {
			return false // nothing after the previous prefix
		}
		for range maxEdgeSteps {
			if bytes.Compare(v.edges.Key(), key) >= 0 {
				return true
			}
			if !v.edges.Next() {
				return false
			}
		}
	}
	return v.edges.SeekGE(key)
}

// locate finds the bucket and timestamp of event id on the shard.
func (v *view) locate(id correlate.EventID) (uint64, int64, bool, error) {
	d, err := readDir(v.snap, v.shard, 0, ^uint64(0))
	if err != nil {
		return 0, 0, false, err
	}
	return probe(v.snap, v.shard, id, v.s.shift, d.buckets)
}

// scanSpec is one ordered walk over a time-ordered section: the keys of
// group in [from, to], in (ts, id) order, strictly after `after` if set.
type scanSpec struct {
	sec      byte
	group    []byte
	from, to int64
	desc     bool
	after    *Position
}

// visit is called with each index key in order; it returns true to stop.
type visit func(b uint64, ts int64, id correlate.EventID, val []byte) (stop bool, err error)

// scanResult says how a scan ended.
type scanResult struct {
	stopped   bool     // the visitor stopped it
	more      bool     // keys may remain after where it ended
	last      Position // the last key examined
	exhausted bool     // the MaxScan budget ran out
}

// scan walks sp bucket by bucket, charging every key examined to the view's
// budget. When the budget runs out it ends with exhausted=true, more=true
// and last = the last key examined (a resumable position).
func (v *view) scan(sp scanSpec, fn visit) (scanResult, error) {
	var r scanResult
	if sp.from > sp.to {
		return r, nil
	}
	loB, hiB := bucketOf(sp.from, v.s.shift), bucketOf(sp.to, v.s.shift)
	if a := sp.after; a != nil {
		ab := bucketOf(a.TimestampNs, v.s.shift)
		if !sp.desc && ab > loB {
			loB = ab
		}
		if sp.desc && ab < hiB {
			hiB = ab
		}
		if loB > hiB {
			return r, nil
		}
	}
	dir, err := readDir(v.snap, v.shard, loB, hiB)
	if err != nil {
		return r, err
	}
	it, err := v.snap.NewIter(nil)
	if err != nil {
		return r, err
	}
	defer it.Close()
	n := len(dir.buckets)
	for i := 0; i < n; i++ {
		j := i
		if sp.desc {
			j = n - 1 - i
		}
		b, d := dir.buckets[j], dir.entries[j]
		if d.maxTs < sp.from || d.minTs > sp.to {
			continue
		}
		pre := append(head(nil, v.shard, sp.sec, b), sp.group...)
		lower := appendTS(append([]byte(nil), pre...), sp.from)
		upper := prefixEnd(appendTS(append([]byte(nil), pre...), sp.to))
		if a := sp.after; a != nil {
			ak := appendTail(append([]byte(nil), pre...), a.TimestampNs, a.ID)
			if !sp.desc && bytes.Compare(ak, lower) >= 0 {
				lower = append(ak, 0) // strictly after
			}
			if sp.desc && bytes.Compare(ak, upper) < 0 {
				upper = ak
			}
		}
		if bytes.Compare(lower, upper) >= 0 {
			continue
		}
		it.SetBounds(lower, upper)
		var ok bool
		if sp.desc {
			ok = it.Last()
		} else {
			ok = it.First()
		}
		for ; ok; ok = step(it, sp.desc) {
			if v.scanned >= v.budget {
				r.exhausted, r.more = true, true
				return r, nil
			}
			v.scanned++
			k := it.Key()
			if len(k) != len(pre)+tailLen {
				return r, corruptKey(k, "index key of %d bytes in group of %d", len(k), len(pre))
			}
			ts, id, _ := parseTail(k)
			r.last = Position{TimestampNs: ts, ID: id}
			val, err := it.ValueAndErr()
			if err != nil {
				return r, err
			}
			stop, err := fn(b, ts, id, val)
			if err != nil {
				return r, err
			}
			if stop {
				r.stopped = true
				r.more = step(it, sp.desc) || i < n-1
				return r, it.Error()
			}
		}
		if err := it.Error(); err != nil {
			return r, err
		}
	}
	return r, nil
}

func step(it *pebble.Iterator, desc bool) bool {
	if desc {
		return it.Prev()
	}
	return it.Next()
}

// tsOf reads the flipped timestamp value of an id record.
func tsOf(v []byte) int64 { return unflip(binary.BigEndian.Uint64(v)) }
