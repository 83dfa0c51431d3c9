package rpc

// Conversions between the wire form of events (scopev1, generated from
// rpc/proto/scope/v1/scope.proto) and the domain form (package correlate).
//
// The enums share their numbering by design: correlate.Kind, Outcome,
// LinkType and AbandonReason are the wire numbers of the scope.v1 enums of
// the same names (convert_test.go asserts it value by value), so converting a known value
// is a cast. Proto3 enums are open, though: a client may send any int32, so
// every conversion from the wire checks the value before casting, and a
// value that would wrap around the uint8 domain types is never accepted.
//
// EventFromProto converts what a client may give (event fields 1–16) and
// ignores the fields Scope sets (20 and up): the correlator and the ingest
// path own those, and the API contract says a client setting them is
// ignored, not refused. EventToProto writes every field.

import (
	"errors"
	"unicode/utf8"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// maxErrorValue bounds how much of a client's value an error message
// repeats, so that a megabyte of garbage in one field does not come back as
// a megabyte of error text. Same bound as correlate's own validation.
const maxErrorValue = 64

// fieldError is the conversion's refusal of one field, in the form the whole
// ingest path uses: *correlate.FieldError (errors.Is(err,
// correlate.ErrInvalid) holds), which the RPC edge maps to INVALID_ARGUMENT
// naming events[Index].Field. Index is -1 until EventsFromProto sets it.
func fieldError(field, value, rule string) *correlate.FieldError {
	return &correlate.FieldError{Index: -1, Field: field, Value: clip(value), Rule: rule}
}

// clip cuts s to at most maxErrorValue bytes without splitting a rune.
func clip(s string) string {
	if len(s) <= maxErrorValue {
		return s
	}
	cut := maxErrorValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// EventFromProto converts a client-given wire event to its domain form.
// Only the client's fields are read; Scope's own fields (correlation and
// parent/root ids, links, duration, outcome, orphan, shard, payload
// truncation) are left zero for the ingest path to set. A nil p converts
// like an empty event. The event is not validated beyond what the
// conversion needs (a parseable event_id, a defined kind); required fields
// are checked by the ingest path's validation.
//
// The returned event shares p's strings; Attributes is a fresh map (nil when
// p has none), so later changes to p do not reach it.
func EventFromProto(p *scopev1.Event) (correlate.Event, error) {
	var id correlate.EventID
	if s := p.GetEventId(); s != "" {
		parsed, err := correlate.ParseEventID(s)
		if err != nil {
			return correlate.Event{}, fieldError("event_id", s,
				"must be a 26-character ULID in Crockford base32, or empty (or all zeros) to have one derived from the event")
		}
		id = parsed
	}
	kind, ok := KindFromProto(p.GetKind())
	if !ok {
		return correlate.Event{}, fieldError("kind", p.GetKind().String(),
			"must be one of KIND_CALL, KIND_RETURN, KIND_EXCEPTION, KIND_SEND, KIND_RECEIVE, KIND_SPAWN, KIND_EXIT, KIND_STATE_CHANGE")
	}
	peerOrigin := p.GetPeerOrigin()
	if peerOrigin == "" && p.GetPeerPid() != "" {
		// A pid printed <0.X.Y> is local to the node that printed it: a
		// peer given by its pid alone is on the event's own origin.
		peerOrigin = p.GetOrigin()
	}
	return correlate.Event{
		ID:          id,
		Origin:      p.GetOrigin(),
		PID:         p.GetPid(),
		Kind:        kind,
		TimestampNs: p.GetTimestampNs(),
		Seq:         p.GetSeq(),
		Module:      p.GetModule(),
		Function:    p.GetFunction(),
		Arity:       p.GetArity(),
		CallID:      p.GetCallId(),
		Payload:     p.GetPayload(),
		PeerOrigin:  peerOrigin,
		PeerPID:     p.GetPeerPid(),
		MessageHash: p.GetMessageHash(),
		Reason:      p.GetReason(),
		Attributes:  copyAttributes(p.GetAttributes()),
	}, nil
}

// EventsFromProto converts a request's events, stopping at the first that
// cannot be converted; the error's Index is that event's position.
func EventsFromProto(ps []*scopev1.Event) ([]correlate.Event, error) {
	out := make([]correlate.Event, len(ps))
	for i, p := range ps {
		e, err := EventFromProto(p)
		if err != nil {
			var fe *correlate.FieldError
			if errors.As(err, &fe) {
				fe.Index = i
			}
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}

// EventToProto converts a stored or correlated event to its wire form,
// every field included. Zero event ids become empty strings. The result
// shares e's strings; Attributes and Links are fresh.
func EventToProto(e *correlate.Event) *scopev1.Event {
	p := &scopev1.Event{
		EventId:          idString(e.ID),
		Origin:           e.Origin,
		Pid:              e.PID,
		Kind:             KindToProto(e.Kind),
		TimestampNs:      e.TimestampNs,
		Seq:              e.Seq,
		Module:           e.Module,
		Function:         e.Function,
		Arity:            e.Arity,
		CallId:           e.CallID,
		Payload:          e.Payload,
		PeerOrigin:       e.PeerOrigin,
		PeerPid:          e.PeerPID,
		MessageHash:      e.MessageHash,
		Reason:           e.Reason,
		Attributes:       copyAttributes(e.Attributes),
		CorrelationId:    e.CorrelationID,
		ParentId:         idString(e.ParentID),
		RootId:           idString(e.RootID),
		DurationNs:       e.DurationNs,
		Outcome:          OutcomeToProto(e.Outcome),
		Orphan:           e.Orphan,
		Shard:            e.Shard,
		PayloadTruncated: e.PayloadTruncated,
		PayloadSize:      e.PayloadSize,
	}
	if len(e.Links) > 0 {
		// One backing array for all links: one allocation instead of one per
		// link.
		backing := make([]scopev1.Link, len(e.Links))
		p.Links = make([]*scopev1.Link, len(e.Links))
		for i, l := range e.Links {
			backing[i].Type = LinkTypeToProto(l.Type)
			backing[i].TargetEventId = idString(l.Target)
			p.Links[i] = &backing[i]
		}
	}
	return p
}

// EventsToProto converts a slice of events with EventToProto.
func EventsToProto(es []correlate.Event) []*scopev1.Event {
	out := make([]*scopev1.Event, len(es))
	for i := range es {
		out[i] = EventToProto(&es[i])
	}
	return out
}

// KindFromProto maps a wire kind to the domain kind. ok is false for a
// number scope.v1.Kind does not define; KIND_UNSPECIFIED converts (to
// correlate.KindUnspecified) so that validation can name it as missing.
func KindFromProto(k scopev1.Kind) (kind correlate.Kind, ok bool) {
	if k < 0 || k > scopev1.Kind_KIND_STATE_CHANGE {
		return correlate.KindUnspecified, false
	}
	return correlate.Kind(k), true
}

// KindToProto maps a domain kind to the wire kind.
func KindToProto(k correlate.Kind) scopev1.Kind { return scopev1.Kind(k) }

// OutcomeFromProto maps a wire outcome to the domain outcome; ok is false
// for a number scope.v1.Outcome does not define.
func OutcomeFromProto(o scopev1.Outcome) (outcome correlate.Outcome, ok bool) {
	if o < 0 || o > scopev1.Outcome_OUTCOME_ABANDONED {
		return correlate.OutcomeUnspecified, false
	}
	return correlate.Outcome(o), true
}

// OutcomeToProto maps a domain outcome to the wire outcome.
func OutcomeToProto(o correlate.Outcome) scopev1.Outcome { return scopev1.Outcome(o) }

// AbandonReasonToProto maps a domain abandon reason to the wire one.
func AbandonReasonToProto(r correlate.AbandonReason) scopev1.AbandonReason {
	return scopev1.AbandonReason(r)
}

// LinkTypeFromProto maps a wire link type to the domain link type; ok is
// false for a number scope.v1.LinkType does not define.
func LinkTypeFromProto(t scopev1.LinkType) (linkType correlate.LinkType, ok bool) {
	if t < 0 || t > scopev1.LinkType_LINK_TYPE_FOLLOWS {
		return correlate.LinkUnspecified, false
	}
	return correlate.LinkType(t), true
}

// LinkTypeToProto maps a domain link type to the wire link type.
func LinkTypeToProto(t correlate.LinkType) scopev1.LinkType { return scopev1.LinkType(t) }

// idString is the wire form of an event id: empty for the zero id.
func idString(id correlate.EventID) string {
	if id == (correlate.EventID{}) {
		return ""
	}
	return id.String()
}

func copyAttributes(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
