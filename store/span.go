package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
)

// A shard stream (ExportShard → ImportShard) is:
//
//	magic "SCOPESPN" | version (1) | bucket shift (1) | shard (4, BE)
//	records: uvarint len(key suffix) | key suffix | uvarint len(value) | value
//	end: uvarint 0 | record count (8, BE) | xxhash64 of every byte before it (8, BE)
//
// Key suffixes are keys without their shard prefix, strictly increasing.
// A stream is only accepted whole: a bad header, order, length or checksum
// rejects it before the store changes.

const (
	spanMagic   = "SCOPESPN"
	spanVersion = 2 // 2: spans carry the aggregate sections 1B, 1C
	// Bounds of one record: nothing the store writes comes near them, and a
	// corrupt length cannot make the reader allocate more.
	maxSpanKey   = 1 << 16
	maxSpanValue = 256 << 20
)

// ErrCorruptStream wraps ErrCorrupt for rejected shard streams.
func corruptStream(format string, args ...any) error {
	return fmt.Errorf("%w: shard stream: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// ExportShard writes a consistent snapshot of the shard's whole span
// (events, indexes, edges, correlator state, applied index) to w.
func (s *Store) ExportShard(shard uint32, w io.Writer) error {
	snap, err := s.SnapshotShard(shard)
	if err != nil {
		return err
	}
	defer snap.Close()
	return snap.Write(w)
}

// ShardSnapshot is a point-in-time view of one shard's span, taken at once
// and written out later: raft's FSM takes it on the apply goroutine (so it
// is exactly the state at the applied index) and streams it while applies
// continue.
type ShardSnapshot struct {
	shard uint32
	shift uint8
	snap  *pebble.Snapshot
}

// SnapshotShard takes a snapshot of the shard's span. Close releases it.
func (s *Store) SnapshotShard(shard uint32) (*ShardSnapshot, error) {
	if err := s.check(shard); err != nil {
		return nil, err
	}
	return &ShardSnapshot{shard: shard, shift: s.shift, snap: s.db.NewSnapshot()}, nil
}

// Close releases the snapshot.
func (ss *ShardSnapshot) Close() { _ = ss.snap.Close() }

// Write writes the snapshot as a shard stream (the format ImportShard
// reads) to w.
func (ss *ShardSnapshot) Write(w io.Writer) error {
	shard := ss.shard
	it, err := ss.snap.NewIter(&pebble.IterOptions{LowerBound: shardPrefix(shard), UpperBound: shardEnd(shard)})
	if err != nil {
		return err
	}
	defer it.Close()
	h := xxhash.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	hdr := append([]byte(spanMagic), spanVersion, ss.shift)
	if _, err := bw.Write(appendShard(hdr, shard)); err != nil {
		return err
	}
	var n uint64
	var lb []byte
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		k := it.Key()[shardLen:]
		lb = binary.AppendUvarint(lb[:0], uint64(len(k)))
		lb = append(lb, k...)
		lb = binary.AppendUvarint(lb, uint64(len(v)))
		if _, err := bw.Write(lb); err != nil {
			return err
		}
		if _, err := bw.Write(v); err != nil {
			return err
		}
		n++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if _, err := bw.Write(binary.BigEndian.AppendUint64([]byte{0}, n)); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err = w.Write(binary.BigEndian.AppendUint64(nil, h.Sum64()))
	return err
}

var importSeq atomic.Uint64

// ImportShard replaces the shard's span with the stream r (written by
// ExportShard of the same shard on a store with the same bucket width). The
// stream is validated while it is written to a temporary sstable; only a
// whole, valid stream is ingested, atomically replacing the span (Pebble's
// ingest-and-excise). A rejected stream changes nothing.
func (s *Store) ImportShard(shard uint32, r io.Reader) error {
	if err := s.check(shard); err != nil {
		return err
	}
	mu := s.lock(shard)
	mu.Lock()
	defer mu.Unlock()
	path := s.fs.PathJoin(s.dir, fmt.Sprintf("import-%d-%d.sst.tmp", shard, importSeq.Add(1)))
	n, err := s.writeImport(shard, r, path)
	defer func() { _ = s.fs.Remove(path) }()
	if err != nil {
		return err
	}
	if n == 0 {
		return s.deleteShardLocked(shard)
	}
	span := pebble.KeyRange{Start: shardPrefix(shard), End: shardEnd(shard)}
	if _, err := s.db.IngestAndExcise(context.Background(), []string{path}, nil, nil, span); err != nil {
		return fmt.Errorf("store: import shard %d: %w", shard, err)
	}
	return nil
}

// writeImport validates the stream into an sstable at path and returns the
// number of records.
func (s *Store) writeImport(shard uint32, r io.Reader, path string) (uint64, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	tr := &hashReader{r: br, h: xxhash.New()}
	hdr := make([]byte, len(spanMagic)+2+shardLen)
	if _, err := io.ReadFull(tr, hdr); err != nil {
		return 0, corruptStream("header: %v", err)
	}
	if string(hdr[:len(spanMagic)]) != spanMagic || hdr[len(spanMagic)] != spanVersion {
		return 0, corruptStream("header %x: not a version %d shard stream", hdr, spanVersion)
	}
	if sh := hdr[len(spanMagic)+1]; sh != s.shift {
		return 0, fmt.Errorf("%w: stream BucketShift %d: this store uses %d", ErrIncompatible, sh, s.shift)
	}
	if from := binary.BigEndian.Uint32(hdr[len(spanMagic)+2:]); from != shard {
		return 0, fmt.Errorf("%w: stream of shard %d: cannot import into shard %d", ErrIncompatible, from, shard)
	}
	f, err := s.fs.Create(path, "")
	if err != nil {
		return 0, err
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), s.po.MakeWriterOptions(0, s.db.TableFormat()))
	n, err := copyRecords(shard, tr, w)
	if err != nil {
		_ = w.Close()
		return 0, err
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	var tail [16]byte
	if _, err := io.ReadFull(tr, tail[:8]); err != nil {
		return 0, corruptStream("record count: %v", err)
	}
	sum := tr.h.Sum64()
	if _, err := io.ReadFull(br, tail[8:]); err != nil {
		return 0, corruptStream("checksum: %v", err)
	}
	if c := binary.BigEndian.Uint64(tail[:8]); c != n {
		return 0, corruptStream("%d records, trailer says %d", n, c)
	}
	if c := binary.BigEndian.Uint64(tail[8:]); c != sum {
		return 0, corruptStream("checksum %x, computed %x", c, sum)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return 0, corruptStream("bytes after the checksum")
	}
	return n, nil
}

// hashReader reads from a bufio.Reader and hashes what it consumed.
type hashReader struct {
	r *bufio.Reader
	h *xxhash.Digest
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	_, _ = h.h.Write(p[:n])
	return n, err
}

func (h *hashReader) ReadByte() (byte, error) {
	c, err := h.r.ReadByte()
	if err == nil {
		_, _ = h.h.Write([]byte{c})
	}
	return c, err
}

// copyRecords copies the stream's records into w until the end marker,
// checking lengths and strict key order.
func copyRecords(shard uint32, r *hashReader, w *sstable.Writer) (uint64, error) {
	var n uint64
	var prev, key, val []byte
	for {
		kl, err := binary.ReadUvarint(r)
		if err != nil {
			return 0, corruptStream("record %d: key length: %v", n, err)
		}
		if kl == 0 {
			return n, nil
		}
		if kl > maxSpanKey {
			return 0, corruptStream("record %d: key of %d bytes (at most %d)", n, kl, maxSpanKey)
		}
		key = append(appendShard(key[:0], shard), make([]byte, kl)...)
		if _, err := io.ReadFull(r, key[shardLen:]); err != nil {
			return 0, corruptStream("record %d: key: %v", n, err)
		}
		if n > 0 && bytes.Compare(key, prev) <= 0 {
			return 0, corruptStream("record %d: key %x not after %x", n, key, prev)
		}
		vl, err := binary.ReadUvarint(r)
		if err != nil {
			return 0, corruptStream("record %d: value length: %v", n, err)
		}
		if vl > maxSpanValue {
			return 0, corruptStream("record %d: value of %d bytes (at most %d)", n, vl, maxSpanValue)
		}
		val = append(val[:0], make([]byte, vl)...)
		if _, err := io.ReadFull(r, val); err != nil {
			return 0, corruptStream("record %d: value: %v", n, err)
		}
		if err := w.Set(key, val); err != nil {
			return 0, err
		}
		prev = append(prev[:0], key...)
		n++
	}
}

// DeleteShard deletes the shard's whole span (a replica removed from the
// shard's group) with one range deletion, synced.
func (s *Store) DeleteShard(shard uint32) error {
	if err := s.check(shard); err != nil {
		return err
	}
	mu := s.lock(shard)
	mu.Lock()
	defer mu.Unlock()
	return s.deleteShardLocked(shard)
}

func (s *Store) deleteShardLocked(shard uint32) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(shardPrefix(shard), shardEnd(shard), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}
