package correlate

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// This file holds hand-written MessagePack primitives on byte slices. The
// reflection encoder of vmihailenco/msgpack costs 1.5–3 µs per event; these
// append/read functions produce the same wire format (any msgpack library
// can read what they write) at a small fraction of that cost. Every reader
// checks each length against the bytes that remain, so decoding untrusted
// input never panics and never allocates more than the input's size.

// MessagePack type bytes (https://github.com/msgpack/msgpack/blob/master/spec.md).
const (
	mpNil     = 0xc0
	mpFalse   = 0xc2
	mpTrue    = 0xc3
	mpBin8    = 0xc4
	mpBin16   = 0xc5
	mpBin32   = 0xc6
	mpUint8   = 0xcc
	mpUint16  = 0xcd
	mpUint32  = 0xce
	mpUint64  = 0xcf
	mpInt8    = 0xd0
	mpInt16   = 0xd1
	mpInt32   = 0xd2
	mpInt64   = 0xd3
	mpStr8    = 0xd9
	mpStr16   = 0xda
	mpStr32   = 0xdb
	mpArray16 = 0xdc
	mpArray32 = 0xdd
	mpMap16   = 0xde
	mpMap32   = 0xdf
)

func appendArrayHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return append(b, mpArray16, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, mpArray32), uint32(n))
	}
}

func appendMapHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return append(b, mpMap16, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, mpMap32), uint32(n))
	}
}

func appendString(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, mpStr8, byte(n))
	case n <= math.MaxUint16:
		b = append(b, mpStr16, byte(n>>8), byte(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, mpStr32), uint32(n))
	}
	return append(b, s...)
}

func appendBin(b []byte, p []byte) []byte {
	n := len(p)
	switch {
	case n <= math.MaxUint8:
		b = append(b, mpBin8, byte(n))
	case n <= math.MaxUint16:
		b = append(b, mpBin16, byte(n>>8), byte(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, mpBin32), uint32(n))
	}
	return append(b, p...)
}

// appendID writes an event id as bin8 of 16 bytes, or nil for the zero id
// (most ParentID/RootID values), which saves 17 bytes.
func appendID(b []byte, id EventID) []byte {
	if id == (EventID{}) {
		return append(b, mpNil)
	}
	b = append(b, mpBin8, 16)
	return append(b, id[:]...)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return append(b, mpUint16, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, mpUint32), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, mpUint64), v)
	}
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(b, uint64(v))
	}
	switch {
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, mpInt8, byte(v))
	case v >= math.MinInt16:
		return append(b, mpInt16, byte(v>>8), byte(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, mpInt32), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, mpInt64), uint64(v))
	}
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, mpTrue)
	}
	return append(b, mpFalse)
}

// reader decodes msgpack from a byte slice. The first error sticks: once
// err is set every read returns a zero value, so decoders can read a whole
// record and check err once. Strings are substrings of str, one copy of the
// input made by the caller, so decoding a record allocates one string, not
// one per field.
type reader struct {
	buf []byte
	str string // the same bytes as buf, as a string; "" when strings are copied
	off int
	err error
}

func newReader(b []byte, shareStrings bool) reader {
	r := reader{buf: b}
	if shareStrings && len(b) > 0 {
		r.str = string(b)
	}
	return r
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: at byte %d: %s", ErrCorrupt, r.off, fmt.Sprintf(format, args...))
	}
}

func (r *reader) remaining() int { return len(r.buf) - r.off }

func (r *reader) byte1() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.buf) {
		r.fail("unexpected end of input")
		return 0
	}
	c := r.buf[r.off]
	r.off++
	return c
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > r.remaining() {
		r.fail("length %d exceeds the %d bytes left", n, r.remaining())
		return nil
	}
	p := r.buf[r.off : r.off+n : r.off+n]
	r.off += n
	return p
}

func (r *reader) be(n int) uint64 {
	p := r.take(n)
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v
}

// count reads an array or map header and bounds the element count by the
// bytes left (every element takes at least min bytes), so a forged count
// can never make a caller allocate more than the input's size.
func (r *reader) count(fix, fixMask, c16, c32 byte, what string, min int) int {
	c := r.byte1()
	var n int
	switch {
	case r.err != nil:
		return 0
	case c&^fixMask == fix:
		n = int(c & fixMask)
	case c == c16:
		n = int(r.be(2))
	case c == c32:
		n = int(r.be(4))
	default:
		r.fail("want %s, got type byte %#x", what, c)
		return 0
	}
	if r.err == nil && n*min > r.remaining() {
		r.fail("%s of %d elements exceeds the %d bytes left", what, n, r.remaining())
		return 0
	}
	return n
}

func (r *reader) arrayLen(min int) int {
	return r.count(0x90, 0x0f, mpArray16, mpArray32, "array", min)
}
func (r *reader) mapLen(min int) int { return r.count(0x80, 0x0f, mpMap16, mpMap32, "map", min) }

// arrayOrNil reads an array header, or nil as an empty array (-1).
func (r *reader) arrayOrNil(min int) int {
	if r.err == nil && r.off < len(r.buf) && r.buf[r.off] == mpNil {
		r.off++
		return -1
	}
	return r.arrayLen(min)
}

func (r *reader) isNil() bool {
	if r.err == nil && r.off < len(r.buf) && r.buf[r.off] == mpNil {
		r.off++
		return true
	}
	return false
}

func (r *reader) string() string {
	c := r.byte1()
	var n int
	switch {
	case r.err != nil:
		return ""
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == mpStr8:
		n = int(r.be(1))
	case c == mpStr16:
		n = int(r.be(2))
	case c == mpStr32:
		n = int(r.be(4))
	default:
		r.fail("want string, got type byte %#x", c)
		return ""
	}
	start := r.off
	p := r.take(n)
	if r.err != nil || n == 0 {
		return ""
	}
	if r.str != "" {
		return r.str[start : start+n]
	}
	return string(p)
}

func (r *reader) bin() []byte {
	c := r.byte1()
	var n int
	switch {
	case r.err != nil:
		return nil
	case c == mpBin8:
		n = int(r.be(1))
	case c == mpBin16:
		n = int(r.be(2))
	case c == mpBin32:
		n = int(r.be(4))
	default:
		r.fail("want bin, got type byte %#x", c)
		return nil
	}
	return r.take(n)
}

func (r *reader) id() EventID {
	var id EventID
	if r.isNil() {
		return id
	}
	p := r.bin()
	if r.err == nil && len(p) != len(id) {
		r.fail("event id of %d bytes, want %d", len(p), len(id))
		return id
	}
	copy(id[:], p)
	return id
}

func (r *reader) uint() uint64 {
	c := r.byte1()
	switch {
	case r.err != nil:
		return 0
	case c <= 0x7f:
		return uint64(c)
	case c == mpUint8:
		return r.be(1)
	case c == mpUint16:
		return r.be(2)
	case c == mpUint32:
		return r.be(4)
	case c == mpUint64:
		return r.be(8)
	}
	r.fail("want unsigned integer, got type byte %#x", c)
	return 0
}

func (r *reader) uint32() uint32 {
	v := r.uint()
	if v > math.MaxUint32 {
		r.fail("value %d exceeds uint32", v)
		return 0
	}
	return uint32(v)
}

func (r *reader) uint8() uint8 {
	v := r.uint()
	if v > math.MaxUint8 {
		r.fail("value %d exceeds uint8", v)
		return 0
	}
	return uint8(v)
}

func (r *reader) int() int64 {
	c := r.byte1()
	switch {
	case r.err != nil:
		return 0
	case c <= 0x7f:
		return int64(c)
	case c >= 0xe0:
		return int64(int8(c))
	case c == mpInt8:
		return int64(int8(r.be(1)))
	case c == mpInt16:
		return int64(int16(r.be(2)))
	case c == mpInt32:
		return int64(int32(r.be(4)))
	case c == mpInt64:
		return int64(r.be(8))
	case c == mpUint8:
		return int64(r.be(1))
	case c == mpUint16:
		return int64(r.be(2))
	case c == mpUint32:
		return int64(r.be(4))
	case c == mpUint64:
		v := r.be(8)
		if v > math.MaxInt64 {
			r.fail("value %d exceeds int64", v)
			return 0
		}
		return int64(v)
	}
	r.fail("want integer, got type byte %#x", c)
	return 0
}

func (r *reader) bool() bool {
	switch c := r.byte1(); {
	case r.err != nil:
		return false
	case c == mpTrue:
		return true
	case c == mpFalse:
		return false
	default:
		r.fail("want bool, got type byte %#x", c)
		return false
	}
}

// done fails unless the whole input was consumed: trailing bytes mean the
// input is not what the writer produced.
func (r *reader) done() {
	if r.err == nil && r.off != len(r.buf) {
		r.fail("%d trailing bytes", len(r.buf)-r.off)
	}
}

// bytesToString returns a string sharing p's memory. The caller must never
// modify p afterwards.
func bytesToString(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	return unsafe.String(&p[0], len(p))
}
