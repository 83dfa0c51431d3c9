package store

import (
	"encoding/binary"

	"github.com/cockroachdb/pebble/v2"
)

// dirEntry is the statistics record of one time bucket of a shard: the
// bucket directory is what retention plans with (which whole buckets to
// range-delete, where the count cut falls) and what Stats sums.
type dirEntry struct {
	count uint64 // events stored in the bucket
	bytes uint64 // sum of their primary record value sizes
	minTs int64
	maxTs int64
}

const dirEntryLen = 32

func (d dirEntry) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, d.count)
	b = binary.BigEndian.AppendUint64(b, d.bytes)
	b = binary.BigEndian.AppendUint64(b, flip(d.minTs))
	return binary.BigEndian.AppendUint64(b, flip(d.maxTs))
}

func decodeDirEntry(k, v []byte) (dirEntry, error) {
	if len(v) != dirEntryLen || len(k) != shardLen+1+bucketLen {
		return dirEntry{}, corruptKey(k, "bucket record of %d bytes", len(v))
	}
	return dirEntry{
		count: binary.BigEndian.Uint64(v),
		bytes: binary.BigEndian.Uint64(v[8:]),
		minTs: unflip(binary.BigEndian.Uint64(v[16:])),
		maxTs: unflip(binary.BigEndian.Uint64(v[24:])),
	}, nil
}

// add accounts one event in the entry.
func (d *dirEntry) add(ts int64, size int) {
	if d.count == 0 || ts < d.minTs {
		d.minTs = ts
	}
	if d.count == 0 || ts > d.maxTs {
		d.maxTs = ts
	}
	d.count++
	d.bytes += uint64(size)
}

// bucketDir is a shard's bucket directory in bucket order.
type bucketDir struct {
	buckets []uint64
	entries []dirEntry
}

// readDir reads the directory entries of buckets in [lo, hi] from r.
func readDir(r pebble.Reader, shard uint32, lo, hi uint64) (bucketDir, error) {
	var d bucketDir
	it, err := r.NewIter(&pebble.IterOptions{
		LowerBound: bucketKey(shard, lo),
		UpperBound: prefixEnd(bucketKey(shard, hi)),
	})
	if err != nil {
		return d, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return d, err
		}
		e, err := decodeDirEntry(it.Key(), v)
		if err != nil {
			return d, err
		}
		d.buckets = append(d.buckets, binary.BigEndian.Uint64(it.Key()[shardLen+1:]))
		d.entries = append(d.entries, e)
	}
	return d, it.Error()
}
