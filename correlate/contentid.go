package correlate

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
)

// An event id names one event. A client that omits it still gets an id that
// names the event rather than the request: ContentID derives it from the
// event's client fields, so a resend of the same event (after a timeout, a
// reconnect, a replayed buffer) gets the same id and the shard's
// deduplication drops it instead of storing the event twice. A random id
// per request would make every resend a new event.
//
// The id is ULID-shaped so it sorts and reads like an assigned one: the
// first 48 bits are the event's timestamp in Unix milliseconds (0 for a
// timestamp before 1970), the other 80 bits are the first 80 bits of a
// SHA-256 of every client field (fields 2–16 of scope.v1.Event) in a fixed,
// length-prefixed encoding with attributes in sorted key order, so that
// equal events hash equally and no two field layouts encode alike. Two
// different events collide only if their hashes agree in 80 bits within one
// millisecond: with n such events the chance is about n²/2⁸¹, nil in
// practice. SHA-256 rather than a faster hash because nothing then depends
// on inputs being well-behaved, and its cost (about 1 µs for a 1 KiB event)
// is paid only by clients that do not name their events.
//
// Two events whose client fields are all equal are one event: they get one
// id and are stored once. A client that can emit indistinguishable events
// (same process, kind, timestamp, names and payload) and wants each kept
// must set seq or event_id.

// contentIDVersion starts the hashed encoding, so that a future change of
// the encoding cannot give an old event's id to a different new event.
const contentIDVersion = "scope.event-id.v1\x00"

// ContentID returns the id derived from e's client fields (e.ID, and every
// field Scope sets, are ignored). Call it before Normalize, so that the id
// depends only on what the client sent, not on this node's limits. It
// never returns the zero id.
func ContentID(e *Event) EventID {
	b := make([]byte, 0, 128+len(e.Payload))
	b = append(b, contentIDVersion...)
	b = appendField(b, e.Origin)
	b = appendField(b, e.PID)
	b = append(b, byte(e.Kind))
	b = binary.BigEndian.AppendUint64(b, uint64(e.TimestampNs))
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = appendField(b, e.Module)
	b = appendField(b, e.Function)
	b = binary.BigEndian.AppendUint32(b, e.Arity)
	b = appendField(b, e.CallID)
	b = appendField(b, e.PeerOrigin)
	b = appendField(b, e.PeerPID)
	b = binary.BigEndian.AppendUint64(b, e.MessageHash)
	b = appendField(b, e.Reason)
	b = binary.AppendUvarint(b, uint64(len(e.Attributes)))
	if len(e.Attributes) > 0 {
		keys := make([]string, 0, len(e.Attributes))
		for k := range e.Attributes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b = appendField(b, k)
			b = appendField(b, e.Attributes[k])
		}
	}
	b = appendField(b, e.Payload)
	sum := sha256.Sum256(b)

	var id EventID
	ms := uint64(0)
	if e.TimestampNs > 0 {
		ms = uint64(e.TimestampNs / 1_000_000)
	}
	_ = id.SetTime(ms) // fails only past year 10889: an int64 of ns cannot get there
	copy(id[6:], sum[:10])
	if id.IsZero() {
		id[15] = 1 // timestamp 0 and 80 zero bits: keep "no id" meaning none
	}
	return id
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// SameContent reports whether a and b have equal client fields (ids and
// the fields Scope sets are not compared): whether they are one event.
func SameContent(a, b *Event) bool {
	if a.Origin != b.Origin || a.PID != b.PID || a.Kind != b.Kind || a.TimestampNs != b.TimestampNs ||
		a.Seq != b.Seq || a.Module != b.Module || a.Function != b.Function || a.Arity != b.Arity ||
		a.CallID != b.CallID || a.Payload != b.Payload || a.PeerOrigin != b.PeerOrigin ||
		a.PeerPID != b.PeerPID || a.MessageHash != b.MessageHash || a.Reason != b.Reason ||
		len(a.Attributes) != len(b.Attributes) {
		return false
	}
	for k, v := range a.Attributes {
		if w, ok := b.Attributes[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// CheckRepeatedIDs refuses a request in which one id names two different
// events: the later one's event_id is the FieldError (Index set). An id
// repeated with the same content is one event sent twice and is allowed;
// the ingest path stores it once and counts the repeat as a duplicate.
// Events without an id are skipped (their ids, derived from content, cannot
// name two different events). Bounded by the request: one map entry per
// event.
func CheckRepeatedIDs(events []Event) error {
	first := make(map[EventID]int, len(events))
	for i := range events {
		id := events[i].ID
		if id.IsZero() {
			continue
		}
		j, seen := first[id]
		if !seen {
			first[id] = i
			continue
		}
		if !SameContent(&events[j], &events[i]) {
			return &FieldError{Index: i, Field: "event_id", Value: id.String(),
				Rule: fmt.Sprintf("already names events[%d], a different event: an id names one event", j)}
		}
	}
	return nil
}
