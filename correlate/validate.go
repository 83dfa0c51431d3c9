package correlate

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
)

// Limits bound the size of one event. Validate rejects events beyond them,
// except for the payload, which Normalize truncates (and marks) instead:
// a long argument list or message is normal, and losing its tail is better
// than losing the event.
type Limits struct {
	MaxPayloadBytes        int // payload kept per event; longer payloads are truncated
	MaxNameBytes           int // origin, pid, module, function, call_id, peer_origin, peer_pid
	MaxReasonBytes         int // reason
	MaxAttributes          int // attributes per event
	MaxAttributeKeyBytes   int
	MaxAttributeValueBytes int
}

// DefaultLimits returns the limits used unless configured otherwise.
func DefaultLimits() Limits {
	return Limits{
		MaxPayloadBytes:        4 << 10,
		MaxNameBytes:           256,
		MaxReasonBytes:         4 << 10,
		MaxAttributes:          32,
		MaxAttributeKeyBytes:   128,
		MaxAttributeValueBytes: 1 << 10,
	}
}

// Validate reports whether every limit is positive.
func (l Limits) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxPayloadBytes", l.MaxPayloadBytes}, {"MaxNameBytes", l.MaxNameBytes},
		{"MaxReasonBytes", l.MaxReasonBytes}, {"MaxAttributes", l.MaxAttributes},
		{"MaxAttributeKeyBytes", l.MaxAttributeKeyBytes}, {"MaxAttributeValueBytes", l.MaxAttributeValueBytes},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%w: Limits.%s = %d, must be > 0", ErrConfig, f.name, f.v)
		}
	}
	return nil
}

// FieldError says which field of which event broke which rule. Field is
// the proto (snake_case) field name, Value a printable prefix of the
// offending value ("" when the field is missing), Rule what is allowed.
// errors.Is(err, ErrInvalid) holds for every FieldError.
type FieldError struct {
	Index int // the event's index in its request; -1 when not known
	Field string
	Value string
	Rule  string
}

func (e *FieldError) Error() string {
	where := "event"
	if e.Index >= 0 {
		where = "event[" + strconv.Itoa(e.Index) + "]"
	}
	if e.Value == "" {
		return where + "." + e.Field + ": " + e.Rule
	}
	return where + "." + e.Field + ": " + strconv.Quote(e.Value) + ": " + e.Rule
}

func (e *FieldError) Unwrap() error { return ErrInvalid }

// quoteValue keeps error messages bounded: at most 64 bytes of a value,
// cut on a rune boundary.
func quoteValue(s string) string {
	if len(s) <= 64 {
		return s
	}
	return truncateUTF8(s, 64) + "…"
}

// Validate checks the client-given fields of e against the rules of
// docs/API.md and the limits. It returns nil or a *FieldError with
// Index -1 (ValidateEvents sets the index). Scope-set fields are not
// checked: Normalize clears them.
func Validate(e *Event, lim Limits) error {
	fe := validate(e, lim)
	if fe == nil {
		return nil
	}
	fe.Index = -1
	return fe
}

// ValidateEvents validates each event and returns the first failure, with
// its index in events.
func ValidateEvents(events []Event, lim Limits) error {
	for i := range events {
		if fe := validate(&events[i], lim); fe != nil {
			fe.Index = i
			return fe
		}
	}
	return nil
}

func validate(e *Event, lim Limits) *FieldError {
	bad := func(field, value, rule string) *FieldError {
		return &FieldError{Field: field, Value: quoteValue(value), Rule: rule}
	}
	if e.Origin == "" {
		return bad("origin", "", "required")
	}
	if e.PID == "" {
		return bad("pid", "", "required")
	}
	if e.Kind == KindUnspecified {
		return bad("kind", "", "required")
	}
	if !e.Kind.Valid() {
		return bad("kind", e.Kind.String(), "must be one of CALL, RETURN, EXCEPTION, SEND, RECEIVE, SPAWN, EXIT, STATE_CHANGE")
	}
	if e.TimestampNs == 0 {
		return bad("timestamp_ns", "", "required (nonzero)")
	}
	names := [...]struct {
		field string
		v     string
		max   int
	}{
		{"origin", e.Origin, lim.MaxNameBytes}, {"pid", e.PID, lim.MaxNameBytes},
		{"module", e.Module, lim.MaxNameBytes}, {"function", e.Function, lim.MaxNameBytes},
		{"call_id", e.CallID, lim.MaxNameBytes}, {"peer_origin", e.PeerOrigin, lim.MaxNameBytes},
		{"peer_pid", e.PeerPID, lim.MaxNameBytes}, {"reason", e.Reason, lim.MaxReasonBytes},
		{"payload", e.Payload, -1},
	}
	for _, n := range names {
		if !utf8.ValidString(n.v) {
			return bad(n.field, n.v, "must be valid UTF-8")
		}
		if n.max >= 0 && len(n.v) > n.max {
			return bad(n.field, n.v, fmt.Sprintf("%d bytes, at most %d allowed", len(n.v), n.max))
		}
	}
	switch e.Kind {
	case KindCall:
		if e.Module == "" {
			return bad("module", "", "required for CALL")
		}
		if e.Function == "" {
			return bad("function", "", "required for CALL")
		}
	case KindSpawn:
		if e.PeerOrigin == "" {
			return bad("peer_origin", "", "required for SPAWN (the child's origin)")
		}
		if e.PeerPID == "" {
			return bad("peer_pid", "", "required for SPAWN (the child's pid)")
		}
	}
	// A peer is a pair: a pid means nothing without its origin. A peer
	// origin alone is allowed (a SEND to a registered name on that node).
	if e.PeerPID != "" && e.PeerOrigin == "" {
		return bad("peer_origin", "", "required when peer_pid is set")
	}
	if len(e.Attributes) > lim.MaxAttributes {
		return bad("attributes", strconv.Itoa(len(e.Attributes)), fmt.Sprintf("at most %d attributes allowed", lim.MaxAttributes))
	}
	for k, v := range e.Attributes {
		switch {
		case k == "":
			return bad("attributes", "", "keys must be non-empty")
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return bad("attributes", k, "keys and values must be valid UTF-8")
		case len(k) > lim.MaxAttributeKeyBytes:
			return bad("attributes", k, fmt.Sprintf("key of %d bytes, at most %d allowed", len(k), lim.MaxAttributeKeyBytes))
		case len(v) > lim.MaxAttributeValueBytes:
			return bad("attributes", k, fmt.Sprintf("value of %d bytes, at most %d allowed", len(v), lim.MaxAttributeValueBytes))
		}
	}
	return nil
}

// Normalize prepares a valid event for proposing. It is idempotent, so the
// correlator can run it again as a guard:
//   - clears the Scope-set correlation fields a client may have sent;
//   - for SEND/RECEIVE with MessageHash 0, sets it to xxhash64 of the whole
//     payload (before truncation, so a truncated message still pairs);
//   - truncates a payload longer than lim.MaxPayloadBytes on a UTF-8 rune
//     boundary, sets PayloadTruncated and PayloadSize (the original size).
//
// It reports whether it truncated the payload.
func Normalize(e *Event, lim Limits) (truncated bool) {
	e.CorrelationID, e.ParentID, e.RootID, e.Links = "", EventID{}, EventID{}, nil
	e.DurationNs, e.Outcome, e.Orphan, e.Shard = 0, OutcomeUnspecified, false, 0
	if (e.Kind == KindSend || e.Kind == KindReceive) && e.MessageHash == 0 {
		e.MessageHash = xxhash.Sum64String(e.Payload)
	}
	if lim.MaxPayloadBytes > 0 && len(e.Payload) > lim.MaxPayloadBytes {
		size := len(e.Payload)
		if e.PayloadTruncated && int(e.PayloadSize) > size {
			size = int(e.PayloadSize) // already truncated once: keep the first original size
		}
		e.Payload = truncateUTF8(e.Payload, lim.MaxPayloadBytes)
		e.PayloadTruncated = true
		e.PayloadSize = uint32(min(size, 1<<32-1))
		return true
	}
	if !e.PayloadTruncated {
		e.PayloadSize = 0
	}
	return false
}

// truncateUTF8 returns the longest prefix of s of at most n bytes that does
// not end inside a multi-byte rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	// Back up at most 3 continuation bytes to the start of a rune.
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
