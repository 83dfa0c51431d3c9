package store

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// Retention deletes a prefix of the shard's events in (timestamp, id)
// order: everything before a cut position. The cut is the larger of the age
// cut (BeforeNs) and the count cut (the position after the MaxEvents-th
// newest event, this batch's events included). Every bucket entirely before
// the cut is removed with one range deletion per bucketed section — the
// cost does not grow with the events in them. Only the one bucket the cut
// falls into is deleted event by event (its events' index keys, edges and
// frame records are read from the event). DESIGN.md has the reasoning.

// retain computes the cut for r and writes the deletions into the batch.
// It runs before the batch's events are written: events of this batch that
// fall before the cut are dropped instead of written.
func (a *applier) retain(r *correlate.Retention) error {
	cut, err := a.retentionCut(r)
	if err != nil || cut == nil {
		return err
	}
	a.cut, a.hasCut = cut, true
	a.cutB = bucketOf(unflip(binary.BigEndian.Uint64(cut)), a.s.shift)
	committed, err := a.committedDir()
	if err != nil {
		return err
	}
	// Whole buckets before the cut's bucket.
	if len(committed.buckets) > 0 && committed.buckets[0] < a.cutB {
		for _, sec := range bucketedSections {
			if err := a.b.DeleteRange(secPrefix(a.shard, sec), head(nil, a.shard, sec, a.cutB), nil); err != nil {
				return err
			}
		}
		if err := a.b.DeleteRange(secPrefix(a.shard, secBucket), bucketKey(a.shard, a.cutB), nil); err != nil {
			return err
		}
	}
	for b := range a.dir {
		if b < a.cutB {
			delete(a.dir, b)
		}
	}
	// This batch's events before the cut are not written.
	for i := range a.events {
		p := &a.events[i]
		if p.bucket < a.cutB {
			p.dropped = true
		} else if p.bucket == a.cutB && bytes.Compare(p.tail[:], cut) < 0 {
			p.dropped = true
			d := a.dir[p.bucket]
			d.count--
			d.bytes -= uint64(p.end - p.start)
			a.dir[p.bucket] = d
		}
	}
	return a.cutBucket()
}

// retentionCut returns the cut as a key tail (events whose ts|id tail sorts
// below it are deleted), or nil when the rule deletes nothing.
func (a *applier) retentionCut(r *correlate.Retention) ([]byte, error) {
	var cut []byte
	if r.BeforeNs != 0 {
		cut = appendTS(nil, r.BeforeNs)
	}
	if r.MaxEvents > 0 {
		c, err := a.countCut(r.MaxEvents)
		if err != nil {
			return nil, err
		}
		if c != nil && (cut == nil || bytes.Compare(c, cut) > 0) {
			cut = c
		}
	}
	return cut, nil
}

// countCut returns the cut that keeps the newest max events.
func (a *applier) countCut(max uint64) ([]byte, error) {
	committed, err := a.committedDir()
	if err != nil {
		return nil, err
	}
	// The directory as it will be after this batch's events.
	all := map[uint64]dirEntry{}
	for i, b := range committed.buckets {
		all[b] = committed.entries[i]
	}
	for b, d := range a.dir {
		all[b] = d
	}
	buckets := make([]uint64, 0, len(all))
	var total uint64
	for b, d := range all {
		buckets = append(buckets, b)
		total += d.count
	}
	if total <= max {
		return nil, nil
	}
	slices.Sort(buckets)
	excess := total - max
	for _, b := range buckets {
		n := all[b].count
		if excess > n {
			excess -= n
			continue
		}
		if excess == n {
			// The cut falls on the bucket's end: delete it whole, by range.
			if next := unflip(b + 1); b != math.MaxUint64 && next <= math.MaxInt64>>a.s.shift {
				return appendTS(nil, next<<a.s.shift), nil
			}
		}
		tail, err := a.kthOldest(b, excess)
		if err != nil {
			return nil, err
		}
		return append(tail, 0), nil // just after the k-th oldest
	}
	return nil, corruptKey(bucketKey(a.shard, 0), "bucket directory counts %d events but holds fewer", total)
}

// kthOldest returns the tail of the k-th oldest event (k >= 1) of bucket b
// among committed events and this batch's events, reading at most k keys.
func (a *applier) kthOldest(b uint64, k uint64) ([]byte, error) {
	var fresh [][]byte
	for i := range a.events {
		if p := &a.events[i]; p.bucket == b {
			fresh = append(fresh, p.tail[:])
		}
	}
	slices.SortFunc(fresh, bytes.Compare)
	lo := head(nil, a.shard, secEvent, b)
	it, err := a.s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	ok := it.First()
	next := make([]byte, 0, tailLen)
	for {
		switch {
		case ok && (len(fresh) == 0 || bytes.Compare(it.Key()[headLen:], fresh[0]) < 0):
			next = append(next[:0], it.Key()[headLen:]...) // the key is only valid until Next
			ok = it.Next()
		case len(fresh) > 0:
			next, fresh = append(next[:0], fresh[0]...), fresh[1:]
		default:
			if err := it.Error(); err != nil {
				return nil, err
			}
			return nil, corruptKey(lo, "bucket directory counts more events than the bucket holds")
		}
		if k--; k == 0 {
			return append([]byte(nil), next...), nil
		}
	}
}

// cutBucket deletes, one by one, the committed events of the cut's bucket
// that sort before the cut, with everything stored for them, and fixes the
// bucket's directory entry.
func (a *applier) cutBucket() error {
	lo := head(nil, a.shard, secEvent, a.cutB)
	it, err := a.s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return err
	}
	defer it.Close()
	d, err := a.dirEntry(a.cutB)
	if err != nil {
		return err
	}
	var e correlate.Event
	ok := it.First()
	for ; ok && bytes.Compare(it.Key()[headLen:], a.cut) < 0; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := decodeEvent(it.Key(), v, &e); err != nil {
			return err
		}
		if err := a.deleteEvent(&e); err != nil {
			return err
		}
		d.count--
		d.bytes -= uint64(len(v))
	}
	if err := it.Error(); err != nil {
		return err
	}
	if d.count > 0 {
		// The new oldest event: the first committed survivor or the oldest
		// surviving event of this batch.
		d.minTs = math.MaxInt64
		if ok {
			ts, _, _ := parseTail(it.Key())
			d.minTs = ts
		}
		for i := range a.events {
			if p := &a.events[i]; p.bucket == a.cutB && !p.dropped && p.e.TimestampNs < d.minTs {
				d.minTs = p.e.TimestampNs
			}
		}
	}
	a.dir[a.cutB] = d
	return nil
}

// deleteEvent deletes the committed event e of the cut bucket: its primary
// record, index entries, the edges anchored at it and its frame record.
func (a *applier) deleteEvent(e *correlate.Event) error {
	a.account(e, a.cutB, -1)
	var err error
	a.buf = eventKeys(a.buf, a.shard, a.cutB, e, func(k, _ []byte) {
		if err == nil {
			err = a.b.Delete(k, nil)
		}
	})
	if err != nil {
		return err
	}
	// Edges from e (anchored at their source) and edges from remote events
	// anchored at e (found through their back-references).
	for _, sec := range [...]byte{secEdge, secEdgeTo} {
		p := append(head(nil, a.shard, sec, a.cutB), e.ID[:]...)
		it, err := a.s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
		if err != nil {
			return err
		}
		for ok := it.First(); ok; ok = it.Next() {
			if err = a.b.Delete(it.Key(), nil); err != nil {
				break
			}
			if sec == secEdgeTo {
				k := it.Key()
				if len(k) != edgeKeyLen {
					err = corruptKey(k, "edge back-reference of %d bytes", len(k))
					break
				}
				var ed correlate.Edge
				copy(ed.To[:], k[headLen:])
				ed.Type = correlate.LinkType(k[headLen+idLen])
				copy(ed.From[:], k[headLen+idLen+1:])
				if err = a.b.Delete(edgeKey(nil, a.shard, a.cutB, ed), nil); err != nil {
					break
				}
			}
		}
		if err == nil {
			err = it.Error()
		}
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if e.Kind == correlate.KindCall {
		return a.b.Delete(frameKey(nil, a.shard, a.cutB, e.ID), nil)
	}
	return nil
}
