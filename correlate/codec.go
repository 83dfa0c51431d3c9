package correlate

import (
	"bytes"
	"fmt"
	"slices"
)

// The codec writes events, notices and batches as MessagePack arrays with a
// leading format version, fields by position (see the field lists below).
// Positional arrays are both smaller and much faster than maps keyed by
// field name, and the version lets a later format add fields: a reader
// rejects versions it does not know with ErrVersion instead of misreading
// them. Attributes are written in sorted key order, so equal events encode
// to equal bytes, which the determinism of the whole system relies on.
//
// Decoders accept only what the encoders produce (canonical form): exact
// field counts, valid kinds, strictly increasing attribute keys, 16-byte ids.

const (
	codecVersion = 1

	eventFields  = 27 // version + 26 fields, in the order of appendEventFields
	noticeFields = 10 // send and spawn notices; a record notice has one more, its record
	batchFields  = 6
	// A batch with resharding fields is encoded as version 2 with three
	// more fields (Split, Adopt, HandedOff); every other batch stays
	// version 1, byte for byte, so that builds which do not know version 2
	// read everything but a reshard (docs/DECISIONS.md D39).
	reshardCodecVersion = 2
	reshardBatchFields  = 10
	edgeFields          = 3
)

// AppendEvent appends the encoding of e (all fields, client-given and
// Scope-set) to dst and returns the extended slice.
func AppendEvent(dst []byte, e *Event) []byte {
	dst = appendArrayHeader(dst, eventFields)
	dst = append(dst, codecVersion)
	dst = appendID(dst, e.ID)
	dst = appendString(dst, e.Origin)
	dst = appendString(dst, e.PID)
	dst = appendUint(dst, uint64(e.Kind))
	dst = appendInt(dst, e.TimestampNs)
	dst = appendUint(dst, e.Seq)
	dst = appendString(dst, e.Module)
	dst = appendString(dst, e.Function)
	dst = appendUint(dst, uint64(e.Arity))
	dst = appendString(dst, e.CallID)
	dst = appendString(dst, e.Payload)
	dst = appendString(dst, e.PeerOrigin)
	dst = appendString(dst, e.PeerPID)
	dst = appendUint(dst, e.MessageHash)
	dst = appendString(dst, e.Reason)
	dst = appendAttributes(dst, e.Attributes)
	dst = appendString(dst, e.CorrelationID)
	dst = appendID(dst, e.ParentID)
	dst = appendID(dst, e.RootID)
	dst = appendArrayHeader(dst, 2*len(e.Links))
	for _, l := range e.Links {
		dst = appendUint(dst, uint64(l.Type))
		dst = appendID(dst, l.Target)
	}
	dst = appendInt(dst, e.DurationNs)
	dst = appendUint(dst, uint64(e.Outcome))
	dst = appendBool(dst, e.Orphan)
	dst = appendUint(dst, uint64(e.Shard))
	dst = appendBool(dst, e.PayloadTruncated)
	dst = appendUint(dst, uint64(e.PayloadSize))
	return dst
}

func appendAttributes(dst []byte, m map[string]string) []byte {
	dst = appendMapHeader(dst, len(m))
	if len(m) == 0 {
		return dst
	}
	var stack [16]string
	keys := stack[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		dst = appendString(dst, k)
		dst = appendString(dst, m[k])
	}
	return dst
}

// DecodeEvent decodes one event encoded by AppendEvent into e, replacing
// all of e's fields. The decoded strings share one copy of b, so b may be
// reused by the caller afterwards. Any malformed input returns an error
// wrapping ErrCorrupt (or ErrVersion); it never panics.
func DecodeEvent(b []byte, e *Event) error {
	r := newReader(b, true)
	*e = Event{}
	decodeEvent(&r, e, nil)
	r.done()
	return r.err
}

// decodeEvent reads one event into e, which must be the zero Event (a
// fresh batch slice is, which spares rewriting 300 bytes per event). links,
// when not nil, is an arena from which Links slices are cut, so that a
// batch allocates its links once.
func decodeEvent(r *reader, e *Event, links *[]Link) {
	if n := r.arrayLen(1); r.err == nil && n != eventFields {
		r.fail("event has %d fields, want %d", n, eventFields)
	}
	if v := r.uint(); r.err == nil && v != codecVersion {
		r.err = fmt.Errorf("%w: event version %d, want %d", ErrVersion, v, codecVersion)
	}
	e.ID = r.id()
	e.Origin = r.string()
	e.PID = r.string()
	e.Kind = Kind(r.uint8())
	e.TimestampNs = r.int()
	e.Seq = r.uint()
	e.Module = r.string()
	e.Function = r.string()
	e.Arity = r.uint32()
	e.CallID = r.string()
	e.Payload = r.string()
	e.PeerOrigin = r.string()
	e.PeerPID = r.string()
	e.MessageHash = r.uint()
	e.Reason = r.string()
	if n := r.mapLen(2); n > 0 {
		e.Attributes = make(map[string]string, n)
		prev := ""
		for i := 0; i < n && r.err == nil; i++ {
			k, v := r.string(), r.string()
			if i > 0 && k <= prev {
				r.fail("attribute keys not in strictly increasing order at %q", k)
			}
			e.Attributes[k] = v
			prev = k
		}
	}
	e.CorrelationID = r.string()
	e.ParentID = r.id()
	e.RootID = r.id()
	if n := r.arrayLen(1); n > 0 {
		if n%2 != 0 {
			r.fail("links array of odd length %d", n)
			return
		}
		var ls []Link
		if links != nil && len(*links)+n/2 <= cap(*links) {
			start := len(*links)
			*links = (*links)[:start+n/2]
			ls = (*links)[start : start+n/2 : start+n/2]
		} else {
			ls = make([]Link, n/2)
		}
		for i := range ls {
			ls[i].Type = LinkType(r.uint8())
			ls[i].Target = r.id()
		}
		e.Links = ls
	}
	e.DurationNs = r.int()
	e.Outcome = Outcome(r.uint8())
	e.Orphan = r.bool()
	e.Shard = r.uint32()
	e.PayloadTruncated = r.bool()
	e.PayloadSize = r.uint32()
	if r.err == nil && e.Kind >= kindCount {
		r.fail("kind %d out of range", e.Kind)
	}
	if r.err == nil && e.Outcome >= outcomeCount {
		r.fail("outcome %d out of range", e.Outcome)
	}
}

// AppendNotice appends the encoding of n to dst.
func AppendNotice(dst []byte, n *Notice) []byte {
	fields := noticeFields
	if n.Kind.IsRecord() {
		fields++
	}
	dst = appendArrayHeader(dst, fields)
	dst = appendUint(dst, uint64(n.Kind))
	dst = appendID(dst, n.EventID)
	dst = appendUint(dst, uint64(n.FromShard))
	dst = appendUint(dst, uint64(n.ToShard))
	dst = appendString(dst, n.Sender.Origin)
	dst = appendString(dst, n.Sender.PID)
	dst = appendString(dst, n.Receiver.Origin)
	dst = appendString(dst, n.Receiver.PID)
	dst = appendUint(dst, n.MessageHash)
	dst = appendInt(dst, n.TimestampNs)
	switch {
	case n.Kind == NoticeEdge:
		e := n.Edge
		dst = appendArrayHeader(dst, 4)
		dst = appendID(dst, e.From)
		dst = appendUint(dst, uint64(e.Type))
		dst = appendID(dst, e.To)
		dst = appendBool(dst, e.FromOtherShard)
	case n.Kind == NoticeFrameEnd:
		f := n.Frame
		dst = appendArrayHeader(dst, 5)
		dst = appendID(dst, f.Call)
		dst = appendUint(dst, uint64(f.Outcome))
		dst = appendInt(dst, f.EndNs)
		dst = appendID(dst, f.By)
		dst = appendUint(dst, uint64(f.Reason))
	}
	return dst
}

// DecodeNotice decodes one notice encoded by AppendNotice.
func DecodeNotice(b []byte, n *Notice) error {
	r := newReader(b, true)
	decodeNotice(&r, n)
	r.done()
	return r.err
}

func decodeNotice(r *reader, n *Notice) {
	fields := r.arrayLen(1)
	n.Kind = NoticeKind(r.uint8())
	want := noticeFields
	if n.Kind.IsRecord() {
		want++
	}
	if r.err == nil && fields != want {
		r.fail("notice of kind %d has %d fields, want %d", n.Kind, fields, want)
	}
	n.EventID = r.id()
	n.FromShard = r.uint32()
	n.ToShard = r.uint32()
	n.Sender.Origin = r.string()
	n.Sender.PID = r.string()
	n.Receiver.Origin = r.string()
	n.Receiver.PID = r.string()
	n.MessageHash = r.uint()
	n.TimestampNs = r.int()
	n.Edge, n.Frame = nil, nil
	switch n.Kind {
	case NoticeSend, NoticeSpawn:
	case NoticeEdge:
		if c := r.arrayLen(1); r.err == nil && c != 4 {
			r.fail("edge notice record has %d fields, want 4", c)
		}
		e := &Edge{From: r.id(), Type: LinkType(r.uint8()), To: r.id(), FromOtherShard: r.bool()}
		if r.err == nil && !e.Type.Valid() {
			r.fail("edge notice: link type %d unknown", e.Type)
		}
		n.Edge = e
	case NoticeFrameEnd:
		if c := r.arrayLen(1); r.err == nil && c != 5 {
			r.fail("frame-end notice record has %d fields, want 5", c)
		}
		f := &ClosedFrame{Call: r.id(), Outcome: Outcome(r.uint8()), EndNs: r.int(), By: r.id(), Reason: AbandonReason(r.uint8())}
		if r.err == nil && f.Outcome != OutcomeUnwound && f.Outcome != OutcomeProcessExit && f.Outcome != OutcomeAbandoned {
			r.fail("frame-end notice: outcome %d is not a frame end", f.Outcome)
		}
		if r.err == nil && (f.Outcome == OutcomeAbandoned) != f.Reason.Valid() {
			r.fail("frame-end notice: outcome %d with abandon reason %d", f.Outcome, f.Reason)
		}
		n.Frame = f
	default:
		if r.err == nil {
			r.fail("notice kind %d unknown", n.Kind)
		}
	}
}

// AppendEdge appends the encoding of an edge record value to dst.
func AppendEdge(dst []byte, e *Edge) []byte {
	dst = appendArrayHeader(dst, edgeFields)
	dst = appendID(dst, e.From)
	dst = appendUint(dst, uint64(e.Type))
	return appendID(dst, e.To)
}

// DecodeEdge decodes one edge encoded by AppendEdge.
func DecodeEdge(b []byte, e *Edge) error {
	r := newReader(b, false)
	if c := r.arrayLen(1); r.err == nil && c != edgeFields {
		r.fail("edge has %d fields, want %d", c, edgeFields)
	}
	e.From = r.id()
	e.Type = LinkType(r.uint8())
	e.To = r.id()
	if r.err == nil && !e.Type.Valid() {
		r.fail("link type %d unknown", e.Type)
	}
	r.done()
	return r.err
}

// AppendBatch appends the encoding of b to dst: LogTime, Events, Notices,
// Acked and Retention. Index is not encoded: it is the Raft index of the
// entry that carries these bytes.
func AppendBatch(dst []byte, b *Batch) []byte {
	if IsReshard(b) {
		dst = appendArrayHeader(dst, reshardBatchFields)
		dst = append(dst, reshardCodecVersion)
	} else {
		dst = appendArrayHeader(dst, batchFields)
		dst = append(dst, codecVersion)
	}
	dst = appendInt(dst, b.LogTime)
	dst = appendArrayHeader(dst, len(b.Events))
	for i := range b.Events {
		dst = AppendEvent(dst, &b.Events[i])
	}
	dst = appendArrayHeader(dst, len(b.Notices))
	for i := range b.Notices {
		dst = AppendNotice(dst, &b.Notices[i])
	}
	dst = appendArrayHeader(dst, len(b.Acked))
	for _, id := range b.Acked {
		dst = appendID(dst, id)
	}
	if b.Retention == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendArrayHeader(dst, 2)
		dst = appendInt(dst, b.Retention.BeforeNs)
		dst = appendUint(dst, b.Retention.MaxEvents)
	}
	if !IsReshard(b) {
		return dst
	}
	dst = appendUint(dst, uint64(b.Split))
	if a := b.Adopt; a == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendArrayHeader(dst, 4)
		dst = appendUint(dst, uint64(a.From))
		dst = appendUint(dst, uint64(a.Chunk))
		dst = appendUint(dst, uint64(a.Of))
		dst = appendBin(dst, a.Records)
	}
	dst = appendArrayHeader(dst, len(b.HandedOff))
	for _, seq := range b.HandedOff {
		dst = appendUint(dst, seq)
	}
	if p := b.Prepare; p == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendArrayHeader(dst, 2)
		dst = appendUint(dst, uint64(p.Shards))
		dst = appendBin(dst, p.Voters)
	}
	return dst
}

// IsReshard reports whether b carries a resharding step (and is encoded as
// batch version 2).
func IsReshard(b *Batch) bool {
	return b.Split != 0 || b.Adopt != nil || len(b.HandedOff) > 0 || b.Prepare != nil
}

// DecodeBatch decodes a batch encoded by AppendBatch. All strings of all
// events share one copy of data, and all links one slice, so a batch costs
// a handful of allocations however many events it holds; data may be
// reused by the caller afterwards. Index is left zero.
func DecodeBatch(data []byte) (Batch, error) {
	var b Batch
	r := newReader(data, true)
	fields := r.arrayLen(1)
	v := r.uint()
	switch {
	case r.err != nil:
	case v != codecVersion && v != reshardCodecVersion:
		return Batch{}, fmt.Errorf("%w: batch version %d, want %d or %d", ErrVersion, v, codecVersion, reshardCodecVersion)
	case v == codecVersion && fields != batchFields:
		r.fail("batch has %d fields, want %d", fields, batchFields)
	case v == reshardCodecVersion && fields != reshardBatchFields:
		r.fail("batch has %d fields, want %d", fields, reshardBatchFields)
	}
	b.LogTime = r.int()
	// An encoded event is at least eventFields bytes, which bounds the count.
	if n := r.arrayLen(eventFields); n > 0 {
		b.Events = make([]Event, n)
		// Most events carry at most one link; the arena is sized for that
		// and events with more links fall back to their own slice.
		links := make([]Link, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			decodeEvent(&r, &b.Events[i], &links)
		}
	}
	if n := r.arrayLen(noticeFields); n > 0 {
		b.Notices = make([]Notice, n)
		for i := 0; i < n && r.err == nil; i++ {
			decodeNotice(&r, &b.Notices[i])
		}
	}
	if n := r.arrayLen(1); n > 0 {
		b.Acked = make([]EventID, n)
		for i := 0; i < n && r.err == nil; i++ {
			b.Acked[i] = r.id()
		}
	}
	if !r.isNil() {
		if n := r.arrayLen(1); r.err == nil && n != 2 {
			r.fail("retention has %d fields, want 2", n)
		}
		b.Retention = &Retention{BeforeNs: r.int(), MaxEvents: r.uint()}
	}
	if v == reshardCodecVersion && r.err == nil {
		b.Split = r.uint32()
		if !r.isNil() {
			if n := r.arrayLen(1); r.err == nil && n != 4 {
				r.fail("adoption has %d fields, want 4", n)
			}
			b.Adopt = &Adoption{From: r.uint32(), Chunk: r.uint32(), Of: r.uint32()}
			b.Adopt.Records = bytes.Clone(r.bin())
		}
		if n := r.arrayLen(1); n > 0 {
			b.HandedOff = make([]uint64, n)
			for i := 0; i < n && r.err == nil; i++ {
				b.HandedOff[i] = r.uint()
			}
		}
		if !r.isNil() {
			if n := r.arrayLen(1); r.err == nil && n != 2 {
				r.fail("preparation has %d fields, want 2", n)
			}
			b.Prepare = &Preparation{Shards: r.uint32()}
			b.Prepare.Voters = bytes.Clone(r.bin())
		}
		if r.err == nil && !IsReshard(&b) {
			r.fail("version 2 batch without a resharding step")
		}
	}
	r.done()
	if r.err != nil {
		return Batch{}, r.err
	}
	return b, nil
}
