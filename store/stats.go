package store

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// ShardStats summarizes a shard. Bytes is the size of the stored event
// records (encoded values), not of the index keys or of files on disk.
type ShardStats struct {
	Events       uint64
	Bytes        uint64
	OldestNs     int64 // 0 when the shard is empty
	NewestNs     int64
	Buckets      int
	AppliedIndex uint64
	// Kinds counts the stored events by kind, indexed by correlate.Kind
	// (index 0, UNSPECIFIED, is always 0). They sum to Events.
	Kinds [numKinds]uint64
	// Functions aggregates every function with a stored CALL or closing
	// RETURN/EXCEPTION, ordered by module, function, arity; at most
	// MaxStatsFunctions (the most called, FunctionsTruncated set).
	Functions          []FunctionStats
	FunctionsTruncated bool
	// Node names the node whose replica answered. The store leaves it
	// empty; the reader that carried the answer fills it in.
	Node string
}

// FunctionStats is one function's aggregate over a shard's stored events.
type FunctionStats struct {
	Module   string
	Function string
	Arity    uint32
	// Calls counts stored CALL events.
	Calls uint64
	// Exceptions counts stored EXCEPTION events that closed a call.
	Exceptions uint64
	// DurationNs sums DurationNs of the stored RETURN and EXCEPTION events
	// that closed a call.
	DurationNs int64
}

// MaxStatsFunctions bounds ShardStats.Functions: a shard with more distinct
// functions reports the most called ones.
const MaxStatsFunctions = 100_000

// Stats reads the shard's bucket directory and per-bucket aggregates: its
// cost grows with the number of time buckets and of distinct functions per
// bucket, not of events.
func (s *Store) Stats(shard uint32) (ShardStats, error) {
	v, err := s.newView(shard)
	if err != nil {
		return ShardStats{}, err
	}
	defer v.close()
	var st ShardStats
	d, err := readDir(v.snap, shard, 0, math.MaxUint64)
	if err != nil {
		return st, err
	}
	for i, e := range d.entries {
		if i == 0 || e.minTs < st.OldestNs {
			st.OldestNs = e.minTs
		}
		if i == 0 || e.maxTs > st.NewestNs {
			st.NewestNs = e.maxTs
		}
		st.Events += e.count
		st.Bytes += e.bytes
	}
	st.Buckets = len(d.buckets)
	if err := v.kindCounts(&st.Kinds); err != nil {
		return st, err
	}
	if st.Functions, st.FunctionsTruncated, err = v.functions(); err != nil {
		return st, err
	}
	st.AppliedIndex, err = readApplied(v.snap, shard)
	return st, err
}

// kindCounts sums the kind counts of every bucket.
func (v *view) kindCounts(out *[numKinds]uint64) error {
	p := secPrefix(v.shard, secKinds)
	it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(val) != kindCountsLen || len(it.Key()) != headLen {
			return corruptKey(it.Key(), "kind counts of %d bytes", len(val))
		}
		for k := 1; k < numKinds; k++ {
			out[k] += binary.BigEndian.Uint64(val[(k-1)*8:])
		}
	}
	return it.Error()
}

// functions sums the function aggregates of every bucket.
func (v *view) functions() ([]FunctionStats, bool, error) {
	type fn struct {
		module, function string
		arity            uint32
	}
	sums := map[fn]*FunctionStats{}
	p := secPrefix(v.shard, secFuncAgg)
	it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		m, f, ar, ok := parseFuncAggKey(it.Key())
		if !ok {
			return nil, false, corruptKey(it.Key(), "function aggregate key")
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		agg, err := decodeFuncAgg(it.Key(), val)
		if err != nil {
			return nil, false, err
		}
		s := sums[fn{m, f, ar}]
		if s == nil {
			s = &FunctionStats{Module: m, Function: f, Arity: ar}
			sums[fn{m, f, ar}] = s
		}
		s.Calls += uint64(agg.calls)
		s.Exceptions += uint64(agg.exceptions)
		s.DurationNs += agg.durationNs
	}
	if err := it.Error(); err != nil {
		return nil, false, err
	}
	if len(sums) == 0 {
		return nil, false, nil
	}
	out := make([]FunctionStats, 0, len(sums))
	for _, s := range sums {
		out = append(out, *s)
	}
	truncated := len(out) > MaxStatsFunctions
	if truncated {
		SortFunctionsByCalls(out)
		out = out[:MaxStatsFunctions]
	}
	slices.SortFunc(out, compareFunction)
	return out, truncated, nil
}

func compareFunction(a, b FunctionStats) int {
	return cmp.Or(cmp.Compare(a.Module, b.Module), cmp.Compare(a.Function, b.Function), cmp.Compare(a.Arity, b.Arity))
}

// SortFunctionsByCalls orders fs by calls, most first, ties by module,
// function, arity.
func SortFunctionsByCalls(fs []FunctionStats) {
	slices.SortFunc(fs, func(a, b FunctionStats) int {
		return cmp.Or(cmp.Compare(b.Calls, a.Calls), compareFunction(a, b))
	})
}

// State returns every live correlator state record of the shard in key
// order (what Correlator.Restore is fed on restart).
func (s *Store) State(shard uint32) ([]correlate.StateRecord, error) {
	if err := s.check(shard); err != nil {
		return nil, err
	}
	p := secPrefix(shard, secState)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []correlate.StateRecord
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		out = append(out, correlate.StateRecord{
			Key:   append([]byte(nil), it.Key()[len(p):]...),
			Value: append([]byte{}, v...),
		})
	}
	return out, it.Error()
}

// Digest hashes every key and value of the shard's span in key order.
// Replicas that applied the same log have equal digests.
func (s *Store) Digest(shard uint32) (uint64, error) {
	if err := s.check(shard); err != nil {
		return 0, err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: shardPrefix(shard), UpperBound: shardEnd(shard)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	h := xxhash.New()
	var n [8]byte
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, err
		}
		binary.BigEndian.PutUint64(n[:], uint64(len(it.Key())))
		_, _ = h.Write(n[:])
		_, _ = h.Write(it.Key())
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		_, _ = h.Write(n[:])
		_, _ = h.Write(v)
	}
	return h.Sum64(), it.Error()
}
