package cluster

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
)

// Meta is what a node tells the cluster about itself through gossip. It is
// advisory: routing uses Led as a first guess (a wrong guess is answered
// with a leader hint), and Raft configurations, not Meta, decide who
// replicates a shard.
type Meta struct {
	Name     string // node name; equals the memberlist node name
	HTTPAddr string // public Connect/HTTP address
	RaftAddr string // internal TCP mux address (raft and internal RPC)
	Version  string // software version
	// Protocol is the range of protocol versions the node reads and writes
	// (protocol.go). Decoded from a node older than protocol versions, it
	// is 1-1, what such a node speaks; zero encodes no protocol section.
	Protocol ProtocolRange
	Shards   uint32 // the cluster's shard count S, as this node knows it (its newest layout)
	// Base is the cluster's shard count at bootstrap, which online
	// resharding doubled to Shards (docs/DECISIONS.md D39); 0 when it
	// equals Shards (no section is sent then, and a node older than
	// resharding sends none). BaseShards tells it either way.
	Base uint32
	// Led lists the shards this node currently leads, ascending, each
	// below Shards. Decoded values are ascending and unique.
	Led []uint32
	// LedPartial says Led was cut to fit the gossip size limit: a shard
	// missing from Led may still be led by this node. Set by the decoder.
	LedPartial bool
	Ready      bool // the node serves ingest and queries
	// Leaving says the node is departing gracefully: set by
	// Membership.Leave just before it announces the departure, so peers
	// list it as left rather than dead (memberlist's events do not carry
	// the difference).
	Leaving bool
	// Formed says the cluster existed before this node's current run, or
	// for longer than the formation window: a node must join it rather
	// than bootstrap a new one (see Cluster.bootstrap).
	Formed bool
	// HoldsReplicas says the node hosts at least one replica. A member
	// that is a voter of groups and holds none lost its data
	// (Cluster.replaceLostVoter).
	HoldsReplicas bool

	// Identity (docs/DECISIONS.md D27), all zero from a node older than
	// it. NodeID is the data directory's id, random and written once;
	// ClusterID the cluster's, 0 until this node learns it; Epoch counts
	// the starts of the data directory; Run is random per start, so that
	// two starts at the same epoch (a restored old copy) differ.
	NodeID, ClusterID, Epoch, Run uint64
	// Stale lists, at most MaxStaleRuns, the members whose current run this
	// node takes for a start from an old copy of their data directory.
	Stale []StaleRun
	// ReadsIdentity says the node decodes the identity section: nodes
	// older than D27 reject it, so a node sends its own only while every
	// live member reads it (Membership). Set whenever NodeID is.
	ReadsIdentity bool
	// omitIdentity leaves the identity section out of the encoding.
	omitIdentity bool
	// legacy encodes format version 1 (no protocol), for members that
	// read no other (Membership.encodeLocked).
	legacy bool
}

// BaseShards is the cluster's shard count at bootstrap as m tells it.
func (m Meta) BaseShards() uint32 {
	if m.Base == 0 {
		return m.Shards
	}
	return m.Base
}

// StaleRun names a member started from an old copy of its data directory:
// its node id, and the highest epoch seen for that id (the member must
// resynchronize and take a higher one, see identity.go).
type StaleRun struct {
	NodeID, Epoch uint64
}

// MaxStaleRuns bounds Meta.Stale.
const MaxStaleRuns = 4

// Gossip metadata wire format, versions 1 and 2 (all integers unsigned
// varints unless stated):
//
//	byte    format version (1 or 2)
//	byte    flags: bit 0 Ready, bit 3 Led partial, bit 4 Leaving, bit 5
//	        Formed, bit 6 HoldsReplicas, bits 1-2
//	        the Led form (0 list, 1 bitmap, 2 ranges); readers ignore
//	        unknown bits, so a flag can be added without a new version
//	4× len + bytes: Name, HTTPAddr, RaftAddr, Version
//	Shards
//	Led, in the smallest of three forms:
//	  list:   count, then each shard as the gap from the previous one
//	          (the first as its value): small for sparse sets
//	  bitmap: byte count n, then n bytes, bit i%8 of byte i/8 = shard i:
//	          ceil(S/8) bytes whatever the set
//	  ranges: count, then per run of consecutive shards (gap from the end
//	          of the previous run, length-1): tiny for "all shards" (-dev)
//	version 1: the identity section, optional (D27), present only with
//	flag bit 7:
//	  NodeID, ClusterID: 8 bytes each, big-endian; Epoch; Run: 8 bytes;
//	  stale count (at most MaxStaleRuns), then per entry NodeID (8
//	  bytes) and Epoch
//	version 2: sections to the end, each a tag, a byte length and the
//	body; readers skip tags they do not know, so a field can be added
//	without a new format version:
//	  tag 1, identity: the version 1 identity section
//	  tag 2, protocol: Min, Max
//	  tag 3, base: the shard count at bootstrap (only when Shards was
//	         doubled from it, D39)
//
// Flag bit 7 says the sender reads identity sections. Readers of version 1
// older than the section reject it as trailing bytes, so a node appends its
// own only while every live member sets bit 7 (Membership.encodeLocked);
// the Led gets the room the sections leave. Version 1 readers reject
// version 2, so a node sends version 2 only while every live member reads
// it (memberlist's delegate protocol maximum, see metaFormatRead).
//
// If no form fits the limit (memberlist allows 512 bytes, and a balanced
// node of a 4096-shard cluster leads ~1/N of 4096 scattered shards: the
// bitmap alone is 512 bytes), the bitmap is truncated to the room left and
// the partial flag set: routing then falls back to leader hints for the
// shards it does not cover. The encoding is deterministic.
// MaxMetaShards bounds the shard count Meta carries, and so the size of a
// decoded Led, whatever a peer sends.
const MaxMetaShards = 1 << 20

const (
	metaFormatV1 = 1
	metaFormatV2 = 2

	// metaFormatRead is the newest format this build reads.
	metaFormatRead = metaFormatV2

	metaSectionIdentity = 1
	metaSectionProtocol = 2
	metaSectionBase     = 3

	metaFlagReady   = 1 << 0
	metaFormShift   = 1
	metaFormMask    = 3 << metaFormShift
	metaFlagPartial = 1 << 3
	metaFlagLeaving = 1 << 4
	metaFlagFormed  = 1 << 5
	metaFlagHolds   = 1 << 6
	metaFlagIdent   = 1 << 7

	ledList   = 0
	ledBitmap = 1
	ledRanges = 2
)

// Encode returns m's gossip encoding, at most limit bytes. It fails if the
// fixed part (names, addresses, version) alone exceeds limit, or if Led is
// not a set of distinct shards below Shards.
func (m Meta) Encode(limit int) ([]byte, error) {
	if m.Shards > MaxMetaShards {
		return nil, fmt.Errorf("%w: Shards %d: at most %d", ErrMetaInvalid, m.Shards, MaxMetaShards)
	}
	led := slices.Clone(m.Led)
	slices.Sort(led)
	for i, s := range led {
		if s >= m.Shards {
			return nil, fmt.Errorf("%w: Led shard %d: must be below Shards (%d)", ErrMetaInvalid, s, m.Shards)
		}
		if i > 0 && led[i-1] == s {
			return nil, fmt.Errorf("%w: Led shard %d listed twice", ErrMetaInvalid, s)
		}
	}
	var flags byte
	if m.Ready {
		flags |= metaFlagReady
	}
	if m.Leaving {
		flags |= metaFlagLeaving
	}
	if m.Formed {
		flags |= metaFlagFormed
	}
	if m.HoldsReplicas {
		flags |= metaFlagHolds
	}
	if m.ReadsIdentity || m.NodeID != 0 {
		flags |= metaFlagIdent
	}
	if len(m.Stale) > MaxStaleRuns {
		return nil, fmt.Errorf("%w: %d Stale entries: at most %d", ErrMetaInvalid, len(m.Stale), MaxStaleRuns)
	}
	if m.Protocol != (ProtocolRange{}) && !m.Protocol.Valid() {
		return nil, fmt.Errorf("%w: Protocol %d-%d: want 1 <= Min <= Max", ErrMetaInvalid, m.Protocol.Min, m.Protocol.Max)
	}
	format := byte(metaFormatV2)
	var ident []byte // what follows the Led
	switch {
	case m.legacy:
		format = metaFormatV1
		if m.NodeID != 0 && !m.omitIdentity {
			ident = m.appendIdentity(nil)
		}
	default:
		if m.NodeID != 0 {
			ident = appendSection(ident, metaSectionIdentity, m.appendIdentity(nil))
		}
		if m.Protocol != (ProtocolRange{}) {
			ident = appendSection(ident, metaSectionProtocol, []byte{m.Protocol.Min, m.Protocol.Max})
		}
		if m.Base != 0 && m.Base != m.Shards {
			ident = appendSection(ident, metaSectionBase, binary.AppendUvarint(nil, uint64(m.Base)))
		}
	}
	buf := []byte{format, 0}
	for _, s := range []string{m.Name, m.HTTPAddr, m.RaftAddr, m.Version} {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	buf = binary.AppendUvarint(buf, uint64(m.Shards))
	// The +1 keeps room for the shortest Led (an empty list or bitmap).
	if len(buf)+1+len(ident) > limit {
		return nil, fmt.Errorf("%w: name, addresses, version, identity and protocol take %d bytes: the limit is %d",
			ErrMetaTooLarge, len(buf)+1+len(ident), limit)
	}

	form, body := ledList, encodeLedList(led)
	if b := encodeLedBitmap(led, m.Shards); len(b) < len(body) {
		form, body = ledBitmap, b
	}
	if r := encodeLedRanges(led); len(r) < len(body) {
		form, body = ledRanges, r
	}
	if room := limit - len(buf) - len(ident); len(body) > room {
		// Partial: whichever prefix names more of the shards led, a
		// bitmap's (dense sets) or a list's (sparse ones).
		form, body = ledBitmap, truncatedBitmap(led, room)
		covered := bitmapCount(led, body)
		if l, k := truncatedList(led, room); k > covered {
			form, body, covered = ledList, l, k
		}
		if covered < len(led) { // a bitmap cut after the last shard led names them all
			flags |= metaFlagPartial
		}
	}
	buf[1] = flags | byte(form)<<metaFormShift
	return append(append(buf, body...), ident...), nil
}

func (m Meta) appendIdentity(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.NodeID)
	b = binary.BigEndian.AppendUint64(b, m.ClusterID)
	b = binary.AppendUvarint(b, m.Epoch)
	b = binary.BigEndian.AppendUint64(b, m.Run)
	b = binary.AppendUvarint(b, uint64(len(m.Stale)))
	for _, s := range m.Stale {
		b = binary.BigEndian.AppendUint64(b, s.NodeID)
		b = binary.AppendUvarint(b, s.Epoch)
	}
	return b
}

func appendSection(b []byte, tag byte, body []byte) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

func encodeLedList(led []uint32) []byte {
	b := binary.AppendUvarint(nil, uint64(len(led)))
	prev := uint32(0)
	for i, s := range led {
		gap := s
		if i > 0 {
			gap = s - prev
		}
		b = binary.AppendUvarint(b, uint64(gap))
		prev = s
	}
	return b
}

func bitmapOf(led []uint32, nbytes int) []byte {
	bm := make([]byte, nbytes)
	for _, s := range led {
		if int(s/8) < nbytes {
			bm[s/8] |= 1 << (s % 8)
		}
	}
	return bm
}

func encodeLedBitmap(led []uint32, shards uint32) []byte {
	n := int((uint64(shards) + 7) / 8)
	return append(binary.AppendUvarint(nil, uint64(n)), bitmapOf(led, n)...)
}

// truncatedList is the list form of the longest prefix of led (ascending)
// that fits in room bytes, and the prefix's length.
func truncatedList(led []uint32, room int) ([]byte, int) {
	var tmp [binary.MaxVarintLen64]byte
	k, gaps := 0, 0 // the longest fitting prefix, and its gaps' bytes
	prev := uint32(0)
	for i, s := range led {
		gap := s
		if i > 0 {
			gap = s - prev
		}
		prev = s
		gaps += binary.PutUvarint(tmp[:], uint64(gap))
		if binary.PutUvarint(tmp[:], uint64(i+1))+gaps > room {
			break
		}
		k = i + 1
	}
	return encodeLedList(led[:k]), k
}

// bitmapCount is how many of led a truncated bitmap body names.
func bitmapCount(led []uint32, body []byte) int {
	n, w := binary.Uvarint(body)
	if w <= 0 {
		return 0
	}
	k := 0
	for _, s := range led {
		if uint64(s/8) < n {
			k++
		}
	}
	return k
}

// truncatedBitmap is the longest bitmap prefix that fits in room bytes
// together with its length prefix; shards beyond it are simply not listed.
func truncatedBitmap(led []uint32, room int) []byte {
	n := max(room-binary.PutUvarint(make([]byte, binary.MaxVarintLen64), uint64(max(room, 0))), 0)
	return append(binary.AppendUvarint(nil, uint64(n)), bitmapOf(led, n)...)
}

func encodeLedRanges(led []uint32) []byte {
	type run struct{ start, n uint32 }
	var runs []run
	for _, s := range led {
		if k := len(runs); k > 0 && runs[k-1].start+runs[k-1].n == s {
			runs[k-1].n++
			continue
		}
		runs = append(runs, run{s, 1})
	}
	b := binary.AppendUvarint(nil, uint64(len(runs)))
	end := uint32(0)
	for _, r := range runs {
		b = binary.AppendUvarint(b, uint64(r.start-end))
		b = binary.AppendUvarint(b, uint64(r.n-1))
		end = r.start + r.n
	}
	return b
}

// DecodeMeta parses a gossip encoding produced by Encode. It rejects
// unknown format versions, truncated or trailing bytes and shards out of
// range, so a corrupt or foreign payload is reported, never half-trusted.
func DecodeMeta(b []byte) (Meta, error) {
	d := metaDecoder{b: b}
	var m Meta
	if len(b) < 2 {
		return m, fmt.Errorf("%w: %d bytes, want at least 2", ErrMetaCorrupt, len(b))
	}
	format := b[0]
	if format != metaFormatV1 && format != metaFormatV2 {
		return m, fmt.Errorf("%w: format version %d, this node reads %d and %d", ErrMetaVersion, format, metaFormatV1, metaFormatV2)
	}
	flags := b[1]
	d.b = b[2:]
	m.Ready = flags&metaFlagReady != 0
	m.LedPartial = flags&metaFlagPartial != 0
	m.Leaving = flags&metaFlagLeaving != 0
	m.Formed = flags&metaFlagFormed != 0
	m.HoldsReplicas = flags&metaFlagHolds != 0
	m.ReadsIdentity = flags&metaFlagIdent != 0
	m.Name, m.HTTPAddr, m.RaftAddr, m.Version = d.str(), d.str(), d.str(), d.str()
	m.Shards = d.u32()
	if m.Shards > MaxMetaShards {
		// Bounds what the ranges form can expand to.
		d.fail(fmt.Sprintf("Shards %d beyond %d", m.Shards, MaxMetaShards))
	}
	switch form := (flags & metaFormMask) >> metaFormShift; form {
	case ledList:
		n := d.count()
		prev := uint32(0)
		for i := 0; i < n && d.err == nil; i++ {
			gap := d.u32()
			if i > 0 && gap == 0 {
				d.fail("Led list not strictly ascending")
			}
			s := prev + gap
			if s < prev {
				d.fail("Led list overflows")
			}
			m.Led = append(m.Led, s)
			prev = s
		}
	case ledBitmap:
		n := d.count()
		bm := d.take(n)
		for i, by := range bm {
			for by != 0 {
				bit := bits.TrailingZeros8(by)
				m.Led = append(m.Led, uint32(i*8+bit))
				by &^= 1 << bit
			}
		}
	case ledRanges:
		n := d.count()
		end := uint32(0)
		for i := 0; i < n && d.err == nil; i++ {
			start := end + d.u32()
			length := d.u32() + 1
			if start < end || start+length < start || (i > 0 && start == end) {
				d.fail("Led ranges overlap, touch or overflow")
			}
			for s := start; s < start+length && d.err == nil; s++ {
				if s >= m.Shards {
					d.fail("Led range beyond Shards")
				}
				m.Led = append(m.Led, s)
			}
			end = start + length
		}
	default:
		d.fail(fmt.Sprintf("unknown Led form %d", form))
	}
	m.Protocol = legacyProtocol
	switch {
	case format == metaFormatV1:
		if d.err == nil && len(d.b) != 0 && m.ReadsIdentity {
			d.identity(&m)
		}
	default:
		d.sections(&m)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err == nil && len(m.Led) > 0 && m.Led[len(m.Led)-1] >= m.Shards {
		d.fail(fmt.Sprintf("Led shard %d beyond Shards %d", m.Led[len(m.Led)-1], m.Shards))
	}
	if d.err != nil {
		return Meta{}, d.err
	}
	return m, nil
}

// identity reads an identity section into m.
func (d *metaDecoder) identity(m *Meta) {
	m.NodeID, m.ClusterID, m.Epoch, m.Run = d.u64(), d.u64(), d.uvarint(), d.u64()
	if d.err == nil && m.NodeID == 0 {
		d.fail("identity section with node id 0")
	}
	n := d.count()
	if n > MaxStaleRuns {
		d.fail(fmt.Sprintf("%d stale entries, at most %d", n, MaxStaleRuns))
	}
	for i := 0; i < n && d.err == nil; i++ {
		m.Stale = append(m.Stale, StaleRun{NodeID: d.u64(), Epoch: d.uvarint()})
	}
}

// sections reads format 2's sections to the end, skipping unknown tags.
// Each known section must be whole and appear once.
func (d *metaDecoder) sections(m *Meta) {
	var seen [256]bool
	for d.err == nil && len(d.b) > 0 {
		tag := d.take(1)[0]
		body := metaDecoder{b: d.take(d.count())}
		if d.err != nil {
			return
		}
		if seen[tag] {
			d.fail(fmt.Sprintf("section %d twice", tag))
			return
		}
		seen[tag] = true
		switch tag {
		case metaSectionIdentity:
			body.identity(m)
		case metaSectionProtocol:
			b := body.take(2)
			if b != nil {
				m.Protocol = ProtocolRange{Min: b[0], Max: b[1]}
				if !m.Protocol.Valid() {
					body.fail(fmt.Sprintf("protocol %d-%d: want 1 <= Min <= Max", b[0], b[1]))
				}
			}
		case metaSectionBase:
			m.Base = body.u32()
			if body.err == nil && (m.Base == 0 || m.Base > m.Shards || m.Shards%m.Base != 0) {
				body.fail(fmt.Sprintf("base %d of %d shards", m.Base, m.Shards))
			}
		default:
			continue // a section from a newer node
		}
		if body.err == nil && len(body.b) != 0 {
			body.fail(fmt.Sprintf("%d trailing bytes in section %d", len(body.b), tag))
		}
		if body.err != nil {
			d.err = body.err
		}
	}
}

// metaDecoder reads varints and strings, remembering the first error so
// the parsing code reads straight through.
type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) fail(why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMetaCorrupt, why)
	}
}

func (d *metaDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *metaDecoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("value beyond 32 bits")
		return 0
	}
	return uint32(v)
}

// count reads a length that must not exceed the bytes left (every counted
// element takes at least one byte), which bounds any allocation by the
// input size.
func (d *metaDecoder) count() int {
	v := d.uvarint()
	if v > uint64(len(d.b)) {
		d.fail(fmt.Sprintf("count %d beyond the %d bytes left", v, len(d.b)))
		return 0
	}
	return int(v)
}

func (d *metaDecoder) take(n int) []byte {
	if d.err != nil || n > len(d.b) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *metaDecoder) u64() uint64 {
	b := d.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *metaDecoder) str() string { return string(d.take(d.count())) }
