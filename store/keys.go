package store

import (
	"encoding/binary"
	"math"

	"github.com/elixirscope/scope/correlate"
)

// This file is the key layout (store/DESIGN.md explains the reasoning).
//
//	shard(4, BE) | section(1) | ...
//
// Every key of a shard starts with the shard id, so a shard is the single
// span [shardPrefix(s), shardPrefix(s+1)). Unbucketed sections hold the
// shard's bookkeeping; bucketed sections hold everything derived from one
// event and continue with bucket(8) = the event's time bucket, so that
// retention deletes whole buckets with one range deletion per section.

// Sections. The numbering is on disk: never renumber.
const (
	secApplied byte = 0x01 // shard|01 → applied index (8, BE)
	secState   byte = 0x02 // shard|02|key → correlator state value
	secBucket  byte = 0x03 // shard|03|bucket → bucket statistics (dirEntry)

	secEvent   byte = 0x10 // shard|10|bucket|ts|id → event value (correlate codec, Links omitted)
	secID      byte = 0x11 // shard|11|bucket|id → ts (8, flipped)
	secProcess byte = 0x12 // shard|12|bucket|esc(origin)|esc(pid)|ts|id → ""
	secFunc    byte = 0x13 // shard|13|bucket|esc(module)|esc(function)|ts|id → arity (4, BE)
	secCorr    byte = 0x14 // shard|14|bucket|esc(correlation id)|ts|id → ""
	secRoot    byte = 0x15 // shard|15|bucket|root id|ts|id → ""
	secKind    byte = 0x16 // shard|16|bucket|kind|ts|id → ""
	secState2  byte = 0x17 // shard|17|bucket|esc(origin)|esc(pid)|ts|id → "" (STATE_CHANGE only)
	secEdge    byte = 0x18 // shard|18|bucket|from|type|to → ""
	secFrame   byte = 0x19 // shard|19|bucket|call id → frame end (outcome, end ns, by)
	secEdgeTo  byte = 0x1A // shard|1A|bucket|to|type|from → "" (back-reference of an edge anchored at its target)
	secKinds   byte = 0x1B // shard|1B|bucket → events per kind (8 × 8, BE, CALL..STATE_CHANGE)
	secFuncAgg byte = 0x1C // shard|1C|bucket|esc(module)|esc(function)|arity(4) → calls, exceptions, duration ns (3 × 8)
)

// bucketedSections lists every section whose keys continue with a bucket;
// retention range-deletes each of them.
var bucketedSections = [...]byte{secEvent, secID, secProcess, secFunc, secCorr, secRoot, secKind,
	secState2, secEdge, secFrame, secEdgeTo, secKinds, secFuncAgg}

// metaShard is reserved for store-wide metadata (the bucket width). It is
// never a valid shard id.
const metaShard = math.MaxUint32

const (
	shardLen  = 4
	bucketLen = 8
	tsLen     = 8
	idLen     = 16
	// headLen is shard|section|bucket, the prefix of every bucketed key.
	headLen = shardLen + 1 + bucketLen
	// tailLen is ts|id, the suffix of every time-ordered index key.
	tailLen = tsLen + idLen
)

func appendShard(b []byte, shard uint32) []byte { return binary.BigEndian.AppendUint32(b, shard) }

// shardPrefix returns the first key of the shard's span.
func shardPrefix(shard uint32) []byte { return appendShard(make([]byte, 0, shardLen), shard) }

// shardEnd returns the exclusive end of the shard's span.
func shardEnd(shard uint32) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(shard)+1)[4:]
}

// flip maps a signed int64 onto uint64 preserving order.
func flip(v int64) uint64 { return uint64(v) ^ (1 << 63) }

// unflip inverts flip.
func unflip(u uint64) int64 { return int64(u ^ (1 << 63)) }

func appendTS(b []byte, ts int64) []byte { return binary.BigEndian.AppendUint64(b, flip(ts)) }

// bucketOf returns the time bucket of ts for a bucket width of 2^shift ns.
// The arithmetic shift floors toward -inf, so negative timestamps bucket
// correctly; the result is flipped so buckets sort like timestamps.
func bucketOf(ts int64, shift uint8) uint64 { return flip(ts >> shift) }

// bucketStart returns the smallest timestamp in bucket b.
func bucketStart(b uint64, shift uint8) int64 { return unflip(b) << shift }

// appendEsc appends s so that byte order of the encodings equals byte order
// of the strings and no encoding is a prefix of another: 0x00 is escaped as
// 0x00 0xFF and the string ends with 0x00 0x01.
func appendEsc(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		b = append(b, c)
		if c == 0 {
			b = append(b, 0xFF)
		}
	}
	return append(b, 0x00, 0x01)
}

// head appends shard|section|bucket.
func head(b []byte, shard uint32, sec byte, bucket uint64) []byte {
	b = appendShard(b, shard)
	b = append(b, sec)
	return binary.BigEndian.AppendUint64(b, bucket)
}

// secPrefix returns shard|section.
func secPrefix(shard uint32, sec byte) []byte {
	return append(appendShard(make([]byte, 0, shardLen+1), shard), sec)
}

// appendTail appends ts|id.
func appendTail(b []byte, ts int64, id correlate.EventID) []byte {
	b = appendTS(b, ts)
	return append(b, id[:]...)
}

// parseTail returns the ts and id at the end of a time-ordered index key.
func parseTail(k []byte) (int64, correlate.EventID, bool) {
	if len(k) < headLen+tailLen {
		return 0, correlate.EventID{}, false
	}
	t := k[len(k)-tailLen:]
	var id correlate.EventID
	copy(id[:], t[tsLen:])
	return unflip(binary.BigEndian.Uint64(t)), id, true
}

// keyBucket returns the bucket of a bucketed key.
func keyBucket(k []byte) uint64 { return binary.BigEndian.Uint64(k[shardLen+1 : headLen]) }

func appliedKey(shard uint32) []byte { return secPrefix(shard, secApplied) }

func stateKey(shard uint32, key []byte) []byte { return append(secPrefix(shard, secState), key...) }

func bucketKey(shard uint32, b uint64) []byte {
	return binary.BigEndian.AppendUint64(secPrefix(shard, secBucket), b)
}

func eventKey(b []byte, shard uint32, bucket uint64, ts int64, id correlate.EventID) []byte {
	return appendTail(head(b, shard, secEvent, bucket), ts, id)
}

func idKey(b []byte, shard uint32, bucket uint64, id correlate.EventID) []byte {
	return append(head(b, shard, secID, bucket), id[:]...)
}

func processGroup(b []byte, p correlate.Process) []byte {
	return appendEsc(appendEsc(b, p.Origin), p.PID)
}

func funcGroup(b []byte, module, function string) []byte {
	return appendEsc(appendEsc(b, module), function)
}

func edgeKey(b []byte, shard uint32, bucket uint64, e correlate.Edge) []byte {
	b = head(b, shard, secEdge, bucket)
	b = append(b, e.From[:]...)
	b = append(b, byte(e.Type))
	return append(b, e.To[:]...)
}

// edgeToKey is the back-reference of an edge anchored at its target (the
// source lives on another shard): retention finds it by the target's id.
func edgeToKey(b []byte, shard uint32, bucket uint64, e correlate.Edge) []byte {
	b = head(b, shard, secEdgeTo, bucket)
	b = append(b, e.To[:]...)
	b = append(b, byte(e.Type))
	return append(b, e.From[:]...)
}

const edgeKeyLen = headLen + idLen + 1 + idLen

func parseEdgeKey(k []byte) (correlate.Edge, bool) {
	if len(k) != edgeKeyLen {
		return correlate.Edge{}, false
	}
	var e correlate.Edge
	copy(e.From[:], k[headLen:])
	e.Type = correlate.LinkType(k[headLen+idLen])
	copy(e.To[:], k[headLen+idLen+1:])
	return e, e.Type.Valid()
}

func frameKey(b []byte, shard uint32, bucket uint64, call correlate.EventID) []byte {
	return append(head(b, shard, secFrame, bucket), call[:]...)
}

// eventKeys calls fn with every key of event e stored in bucket: the
// primary record, the id entry and each secondary index entry, with the
// index value (nil for all but the primary, which the caller supplies, and
// the function index, which carries the arity). The order is fixed so that
// every replica writes identical batches. buf is scratch space; fn must not
// retain key or value (pebble's Batch copies them).
func eventKeys(buf []byte, shard uint32, bucket uint64, e *correlate.Event, fn func(key, value []byte)) []byte {
	var tsb [tsLen]byte
	binary.BigEndian.PutUint64(tsb[:], flip(e.TimestampNs))
	tail := func(b []byte) []byte { return append(append(b, tsb[:]...), e.ID[:]...) }

	buf = tail(head(buf[:0], shard, secEvent, bucket))
	fn(buf, nil)
	buf = append(head(buf[:0], shard, secID, bucket), e.ID[:]...)
	fn(buf, tsb[:])
	buf = tail(processGroup(head(buf[:0], shard, secProcess, bucket), e.Process()))
	fn(buf, nil)
	if e.Module != "" || e.Function != "" {
		var ar [4]byte
		binary.BigEndian.PutUint32(ar[:], e.Arity)
		buf = tail(funcGroup(head(buf[:0], shard, secFunc, bucket), e.Module, e.Function))
		fn(buf, ar[:])
	}
	if e.CorrelationID != "" {
		buf = tail(appendEsc(head(buf[:0], shard, secCorr, bucket), e.CorrelationID))
		fn(buf, nil)
	}
	if e.RootID != (correlate.EventID{}) {
		buf = tail(append(head(buf[:0], shard, secRoot, bucket), e.RootID[:]...))
		fn(buf, nil)
	}
	buf = tail(append(head(buf[:0], shard, secKind, bucket), byte(e.Kind)))
	fn(buf, nil)
	if e.Kind == correlate.KindStateChange {
		buf = tail(processGroup(head(buf[:0], shard, secState2, bucket), e.Process()))
		fn(buf, nil)
	}
	return buf
}

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil if there is none (p is all 0xFF).
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}
