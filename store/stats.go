package store

import (
	"encoding/binary"
	"math"

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
}

// Stats reads the shard's bucket directory: its cost grows with the number
// of time buckets, not of events.
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
	st.AppliedIndex, err = readApplied(v.snap, shard)
	return st, err
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
