package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// Per-bucket aggregates (sections 1B and 1C, DESIGN.md "Aggregates"): what
// Stats sums instead of scanning events. Each is a function of the events
// stored in its bucket and nothing else, so it stays exact whatever removes
// or repeats events: Apply adds only events it writes (never a duplicate,
// never one its own retention drops), a retention cut through a bucket
// subtracts every event it deletes, and a whole-bucket range deletion takes
// the aggregates with it. An aggregate that falls to zero is deleted, so a
// bucket's aggregates exist exactly when it has events.

// numKinds indexes kind counts by correlate.Kind (index 0 unused).
const numKinds = int(correlate.KindStateChange) + 1

// kindCountsLen is the value of a 1B record: one count per valid kind.
const kindCountsLen = (numKinds - 1) * 8

// funcAggLen is the value of a 1C record: calls, exceptions, duration.
const funcAggLen = 24

// funcAgg is one function's aggregate in one bucket.
type funcAgg struct {
	calls      int64 // CALL events
	exceptions int64 // EXCEPTION events that closed a call
	durationNs int64 // sum of DurationNs of RETURN/EXCEPTION events that closed a call
}

func (f funcAgg) zero() bool { return f == funcAgg{} }

func (f funcAgg) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(f.calls))
	b = binary.BigEndian.AppendUint64(b, uint64(f.exceptions))
	return binary.BigEndian.AppendUint64(b, uint64(f.durationNs))
}

func decodeFuncAgg(k, v []byte) (funcAgg, error) {
	if len(v) != funcAggLen {
		return funcAgg{}, corruptKey(k, "function aggregate of %d bytes", len(v))
	}
	return funcAgg{
		calls:      int64(binary.BigEndian.Uint64(v)),
		exceptions: int64(binary.BigEndian.Uint64(v[8:])),
		durationNs: int64(binary.BigEndian.Uint64(v[16:])),
	}, nil
}

func kindsKey(b []byte, shard uint32, bucket uint64) []byte { return head(b, shard, secKinds, bucket) }

func funcAggKey(b []byte, shard uint32, bucket uint64, module, function string, arity uint32) []byte {
	b = funcGroup(head(b, shard, secFuncAgg, bucket), module, function)
	return binary.BigEndian.AppendUint32(b, arity)
}

// parseFuncAggKey returns the function of a 1C key.
func parseFuncAggKey(k []byte) (module, function string, arity uint32, ok bool) {
	rest := k[headLen:]
	var m, f []byte
	if m, rest, ok = unesc(rest); !ok {
		return "", "", 0, false
	}
	if f, rest, ok = unesc(rest); !ok || len(rest) != 4 {
		return "", "", 0, false
	}
	return string(m), string(f), binary.BigEndian.Uint32(rest), true
}

// unesc decodes the appendEsc string at the start of b.
func unesc(b []byte) (s, rest []byte, ok bool) {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != 0 {
			continue
		}
		switch b[i+1] {
		case 0x01:
			return append(s, b[:i]...), b[i+2:], true
		case 0xFF:
			s = append(s, b[:i+1]...)
			b, i = b[i+2:], -1
		default:
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// contributes reports how event e changes its function's aggregate.
func contributes(e *correlate.Event) (funcAgg, bool) {
	if e.Module == "" && e.Function == "" {
		return funcAgg{}, false
	}
	switch {
	case e.Kind == correlate.KindCall:
		return funcAgg{calls: 1}, true
	case e.Kind == correlate.KindReturn && e.Outcome == correlate.OutcomeOK:
		return funcAgg{durationNs: e.DurationNs}, true
	case e.Kind == correlate.KindException && e.Outcome == correlate.OutcomeException:
		return funcAgg{exceptions: 1, durationNs: e.DurationNs}, true
	}
	return funcAgg{}, false
}

// account adds (sign 1) or subtracts (sign -1) event e, stored in bucket,
// to this batch's aggregate deltas.
func (a *applier) account(e *correlate.Event, bucket uint64, sign int64) {
	k := a.kinds[bucket]
	k[e.Kind] += sign
	a.kinds[bucket] = k
	d, ok := contributes(e)
	if !ok {
		return
	}
	a.fkb = funcAggKey(a.fkb[:0], a.shard, bucket, e.Module, e.Function, e.Arity)
	i, ok := a.funcs[string(a.fkb)]
	if !ok {
		i = len(a.fagg)
		k0 := len(a.fbuf)
		a.fbuf = append(a.fbuf, a.fkb...)
		a.fagg = append(a.fagg, pendingAgg{k0: k0, k1: len(a.fbuf)})
		a.funcs[string(a.fkb)] = i
	}
	f := &a.fagg[i].agg
	f.calls += sign * d.calls
	f.exceptions += sign * d.exceptions
	f.durationNs += sign * d.durationNs
}

// pendingAgg is a function aggregate delta of the batch: key fbuf[k0:k1].
type pendingAgg struct {
	k0, k1 int
	agg    funcAgg
}

// writeAggregates merges this batch's deltas into the committed aggregates
// of their buckets. A bucket that held no committed event has no committed
// aggregate (they are deleted with its last event): no read. The others
// are read through one iterator per section in key order, like the
// duplicate check.
func (a *applier) writeAggregates() error {
	if len(a.kinds) == 0 {
		return nil
	}
	buckets := make([]uint64, 0, len(a.kinds))
	for b := range a.kinds {
		buckets = append(buckets, b)
	}
	slices.Sort(buckets)
	for _, b := range buckets {
		k := kindsKey(a.buf[:0], a.shard, b)
		delta := a.kinds[b]
		var cur [numKinds]int64
		if a.old[b] {
			v, closer, err := a.s.db.Get(k)
			switch {
			case errors.Is(err, pebble.ErrNotFound):
			case err != nil:
				return err
			default:
				if len(v) != kindCountsLen {
					_ = closer.Close()
					return corruptKey(k, "kind counts of %d bytes", len(v))
				}
				for i := 1; i < numKinds; i++ {
					cur[i] = int64(binary.BigEndian.Uint64(v[(i-1)*8:]))
				}
				_ = closer.Close()
			}
		}
		zero := true
		v := a.vbuf[:0]
		for i := 1; i < numKinds; i++ {
			cur[i] += delta[i]
			if cur[i] < 0 {
				return corruptKey(k, "kind %s count falls to %d", correlate.Kind(i), cur[i])
			}
			zero = zero && cur[i] == 0
			v = binary.BigEndian.AppendUint64(v, uint64(cur[i]))
		}
		a.vbuf = v
		if zero {
			a.del(k)
		} else {
			a.set(k, v)
		}
	}
	if len(a.fagg) == 0 {
		return nil
	}
	fb := a.fbuf
	slices.SortFunc(a.fagg, func(x, y pendingAgg) int { return bytes.Compare(fb[x.k0:x.k1], fb[y.k0:y.k1]) })
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			_ = it.Close()
		}
	}()
	for _, p := range a.fagg {
		kb, f := fb[p.k0:p.k1], p.agg
		if a.old[keyBucket(kb)] {
			if it == nil {
				last := a.fagg[len(a.fagg)-1]
				var err error
				it, err = a.s.db.NewIter(&pebble.IterOptions{LowerBound: kb, UpperBound: prefixEnd(fb[last.k0:last.k1])})
				if err != nil {
					return err
				}
			}
			if it.SeekGE(kb) && bytes.Equal(it.Key(), kb) {
				v, err := it.ValueAndErr()
				if err != nil {
					return err
				}
				c, err := decodeFuncAgg(kb, v)
				if err != nil {
					return err
				}
				f.calls += c.calls
				f.exceptions += c.exceptions
				f.durationNs += c.durationNs
			} else if err := it.Error(); err != nil {
				return err
			}
		}
		if f.calls < 0 || f.exceptions < 0 {
			return corruptKey(kb, "function aggregate falls to %d calls, %d exceptions", f.calls, f.exceptions)
		}
		if f.zero() {
			a.del(kb)
		} else {
			a.set(kb, f.append(a.vbuf[:0]))
		}
	}
	return nil
}
