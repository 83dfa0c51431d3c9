package node

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// The value of a log key in the RaftLog is a versioned binary encoding of
// raft.Log (raft-boltdb uses msgpack with reflection; this is a fixed layout
// that costs no allocation to write and one to read):
//
//	version   byte     logCodecV1
//	index     uvarint  (also in the key; checked on read)
//	term      uvarint
//	type      byte     raft.LogType
//	flags     byte     bit 0: AppendedAt is set
//	[sec      varint   AppendedAt.Unix()      if bit 0]
//	[nsec     uvarint  AppendedAt.Nanosecond() if bit 0]
//	len(Data) uvarint, Data
//	len(Ext)  uvarint, Extensions
//
// A new field means a new version byte; decodeLog refuses versions it does
// not know rather than guessing.
const (
	logCodecV1      byte = 1
	logFlagAppended byte = 1 << 0
)

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

// encodedLogLen is the exact size encodeLog writes for l.
func encodedLogLen(l *raft.Log) int {
	n := 1 + uvarintLen(l.Index) + uvarintLen(l.Term) + 1 + 1
	if !l.AppendedAt.IsZero() {
		n += varintLen(l.AppendedAt.Unix()) + uvarintLen(uint64(l.AppendedAt.Nanosecond()))
	}
	n += uvarintLen(uint64(len(l.Data))) + len(l.Data)
	n += uvarintLen(uint64(len(l.Extensions))) + len(l.Extensions)
	return n
}

// encodeLog writes l into dst, which must be exactly encodedLogLen(l) long
// (a pebble deferred batch op hands out such a slice).
func encodeLog(dst []byte, l *raft.Log) {
	i := 0
	dst[i] = logCodecV1
	i++
	i += binary.PutUvarint(dst[i:], l.Index)
	i += binary.PutUvarint(dst[i:], l.Term)
	dst[i] = byte(l.Type)
	i++
	if l.AppendedAt.IsZero() {
		dst[i] = 0
		i++
	} else {
		dst[i] = logFlagAppended
		i++
		i += binary.PutVarint(dst[i:], l.AppendedAt.Unix())
		i += binary.PutUvarint(dst[i:], uint64(l.AppendedAt.Nanosecond()))
	}
	i += binary.PutUvarint(dst[i:], uint64(len(l.Data)))
	i += copy(dst[i:], l.Data)
	i += binary.PutUvarint(dst[i:], uint64(len(l.Extensions)))
	i += copy(dst[i:], l.Extensions)
	if i != len(dst) {
		panic(fmt.Sprintf("node: raft log codec: wrote %d bytes of %d for index %d", i, len(dst), l.Index))
	}
}

// decodeLog fills l from v. Data and Extensions are copied into one fresh
// allocation: v belongs to pebble and is only valid until its closer runs.
// Empty Data or Extensions decode as nil.
func decodeLog(v []byte, l *raft.Log) error {
	d := logDecoder{b: v}
	if ver := d.byte("version"); d.err == nil && ver != logCodecV1 {
		return fmt.Errorf("%w: log value version %d: this build reads version %d", ErrRaftLogCorrupt, ver, logCodecV1)
	}
	idx := d.uvarint("index")
	term := d.uvarint("term")
	typ := d.byte("type")
	flags := d.byte("flags")
	var at time.Time
	if flags&logFlagAppended != 0 {
		sec := d.varint("appended_at seconds")
		nsec := d.uvarint("appended_at nanoseconds")
		if d.err == nil && nsec >= 1e9 {
			d.fail("appended_at nanoseconds", fmt.Sprintf("%d is not below 1e9", nsec))
		}
		at = time.Unix(sec, int64(nsec))
	}
	if d.err == nil && flags&^logFlagAppended != 0 {
		d.fail("flags", fmt.Sprintf("unknown bits %#x", flags&^logFlagAppended))
	}
	data := d.bytes("data")
	ext := d.bytes("extensions")
	if d.err == nil && len(d.b) != 0 {
		d.fail("end", fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return d.err
	}
	var buf []byte
	if n := len(data) + len(ext); n > 0 {
		buf = make([]byte, n)
		copy(buf, data)
		copy(buf[len(data):], ext)
	}
	*l = raft.Log{Index: idx, Term: term, Type: raft.LogType(typ), AppendedAt: at}
	if len(data) > 0 {
		l.Data = buf[:len(data):len(data)]
	}
	if len(ext) > 0 {
		l.Extensions = buf[len(data):]
	}
	return nil
}

// logDecoder reads fields in order and keeps the first error, which names
// the field that did not decode.
type logDecoder struct {
	b   []byte
	err error
}

func (d *logDecoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: log value field %s: %s", ErrRaftLogCorrupt, field, why)
	}
}

func (d *logDecoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail(field, "truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(field, "truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *logDecoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(field, "truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns a sub-slice of the input (not a copy).
func (d *logDecoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(field, fmt.Sprintf("length %d exceeds the %d bytes left", n, len(d.b)))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
