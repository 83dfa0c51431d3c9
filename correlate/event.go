package correlate

import (
	"fmt"
	"unsafe"

	"github.com/oklog/ulid/v2"
)

// Kind is what an event records. The numbering is the wire numbering of
// scope.v1.Kind and is stored on disk: never renumber.
type Kind uint8

const (
	KindUnspecified Kind = iota
	KindCall
	KindReturn
	KindException
	KindSend
	KindReceive
	KindSpawn
	KindExit
	KindStateChange

	kindCount // one past the last valid kind
)

var kindNames = [...]string{
	KindUnspecified: "UNSPECIFIED",
	KindCall:        "CALL",
	KindReturn:      "RETURN",
	KindException:   "EXCEPTION",
	KindSend:        "SEND",
	KindReceive:     "RECEIVE",
	KindSpawn:       "SPAWN",
	KindExit:        "EXIT",
	KindStateChange: "STATE_CHANGE",
}

// Valid reports whether k is one of the eight event kinds (not UNSPECIFIED).
func (k Kind) Valid() bool { return k > KindUnspecified && k < kindCount }

func (k Kind) String() string {
	if k < kindCount {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ParseKind maps a kind name ("CALL", case-sensitive) to its Kind.
func ParseKind(s string) (Kind, bool) {
	for k := KindCall; k < kindCount; k++ {
		if kindNames[k] == s {
			return k, true
		}
	}
	return KindUnspecified, false
}

// Outcome says how a frame was closed. Wire numbering of scope.v1.Outcome.
type Outcome uint8

const (
	OutcomeUnspecified Outcome = iota
	OutcomeOK                  // a RETURN closed the frame
	OutcomeException           // an EXCEPTION closed the frame
	OutcomeUnwound             // a RETURN/EXCEPTION for a frame further down skipped it
	OutcomeProcessExit         // the process exited with the frame open
	// OutcomeAbandoned: the correlator stopped tracking the frame (see
	// AbandonReason); the call may have run on after the frame's end time.
	OutcomeAbandoned

	outcomeCount
)

var outcomeNames = [...]string{"UNSPECIFIED", "OK", "EXCEPTION", "UNWOUND", "PROCESS_EXIT", "ABANDONED"}

func (o Outcome) String() string {
	if o < outcomeCount {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// AbandonReason says why the correlator stopped tracking a frame it closed
// as OutcomeAbandoned. Wire numbering of scope.v1.AbandonReason, and stored
// on disk in frame-end records: never renumber.
type AbandonReason uint8

const (
	AbandonUnspecified AbandonReason = iota // not abandoned
	// AbandonInactivity: the process had no event for ProcessTTL of log
	// time and was dropped with its open frames.
	AbandonInactivity
	// AbandonProcessBound: the process was the least recently active one
	// when MaxProcesses was reached, and was evicted with its open frames.
	AbandonProcessBound
	// AbandonDepthBound: the CALL was refused a frame by MaxStackDepth, so
	// no RETURN can ever be matched to it.
	AbandonDepthBound

	abandonReasonCount
)

var abandonReasonNames = [...]string{"UNSPECIFIED", "INACTIVITY", "PROCESS_BOUND", "DEPTH_BOUND"}

// Valid reports whether r is one of the three reasons (not UNSPECIFIED).
func (r AbandonReason) Valid() bool { return r > AbandonUnspecified && r < abandonReasonCount }

func (r AbandonReason) String() string {
	if r < abandonReasonCount {
		return abandonReasonNames[r]
	}
	return fmt.Sprintf("AbandonReason(%d)", uint8(r))
}

// LinkType names the relation a link records. Wire numbering of scope.v1.LinkType.
type LinkType uint8

const (
	LinkUnspecified  LinkType = iota
	LinkCalledFrom            // CALL → the caller's CALL
	LinkCompletes             // RETURN/EXCEPTION → the CALL it closes
	LinkReceivedFrom          // RECEIVE → the SEND it consumed
	LinkDeliveredTo           // SEND → the RECEIVE that consumed it
	LinkSpawned               // SPAWN → the child's first event
	LinkSpawnedBy             // child's first event → the SPAWN
	// LinkFollows is a trace edge, never stored: an event → its
	// predecessor in its process's order (Trace with process_order).
	LinkFollows

	linkTypeCount
)

var linkTypeNames = [...]string{"UNSPECIFIED", "CALLED_FROM", "COMPLETES", "RECEIVED_FROM",
	"DELIVERED_TO", "SPAWNED", "SPAWNED_BY", "FOLLOWS"}

// Valid reports whether t is a real link type (not UNSPECIFIED).
func (t LinkType) Valid() bool { return t > LinkUnspecified && t < linkTypeCount }

func (t LinkType) String() string {
	if t < linkTypeCount {
		return linkTypeNames[t]
	}
	return fmt.Sprintf("LinkType(%d)", uint8(t))
}

// EventID is a 16-byte, time-ordered ULID. The zero value means "none".
type EventID = ulid.ULID

// ParseEventID parses the 26-character Crockford base32 form of an id.
func ParseEventID(s string) (EventID, error) {
	return ulid.ParseStrict(s)
}

// Link is one relation from an event to another event, by id.
type Link struct {
	Type   LinkType
	Target EventID
}

// Event is one execution event. The first group of fields is given by the
// client; the second is set by Scope (the correlator and the ingest path)
// and is ignored if a client sets it.
//
// Attributes is a map for convenience; every encoding of an Event writes it
// in sorted key order so that equal events encode to equal bytes.
type Event struct {
	// Given by the client.
	ID          EventID // assigned by the ingesting node when absent
	Origin      string  // application node, e.g. "app1@host"
	PID         string  // process id on the origin, e.g. "<0.123.0>"
	Kind        Kind
	TimestampNs int64 // wall clock at the origin
	Seq         uint64
	Module      string
	Function    string
	Arity       uint32
	CallID      string // optional client pairing of CALL and RETURN
	Payload     string
	PeerOrigin  string // SEND: receiver; RECEIVE: sender; SPAWN: child
	PeerPID     string
	MessageHash uint64 // SEND/RECEIVE; computed from Payload when zero
	Reason      string // EXCEPTION, EXIT
	Attributes  map[string]string

	// Set by Scope.
	CorrelationID    string  // the frame's call_id, or its CALL's event id
	ParentID         EventID // the caller frame's CALL
	RootID           EventID // the bottom frame's CALL
	Links            []Link
	DurationNs       int64
	Outcome          Outcome
	Orphan           bool // RETURN/EXCEPTION/RECEIVE that matched nothing
	Shard            uint32
	PayloadTruncated bool
	PayloadSize      uint32 // original payload size in bytes when truncated
}

// memSizeFixed is MemSize's estimate of an event's fields other than its
// strings, attributes and links (the struct itself and the string
// headers).
const memSizeFixed = 256

// MemSize estimates the bytes the event holds in memory: its strings, its
// attributes and links, and a fixed part for the rest. Query memory
// budgets count events with it; it is an estimate, not an exact size.
func (e *Event) MemSize() int {
	n := memSizeFixed + len(e.Origin) + len(e.PID) + len(e.Module) + len(e.Function) + len(e.CallID) +
		len(e.Payload) + len(e.PeerOrigin) + len(e.PeerPID) + len(e.Reason) + len(e.CorrelationID)
	for k, v := range e.Attributes {
		n += 48 + len(k) + len(v) // map entry and string headers
	}
	return n + len(e.Links)*int(unsafe.Sizeof(Link{}))
}

// Process identifies a traced process: the pair (origin, pid).
type Process struct {
	Origin string
	PID    string
}

// Process returns the event's own traced process.
func (e *Event) Process() Process { return Process{Origin: e.Origin, PID: e.PID} }

// Peer returns the event's peer process (receiver, sender or child).
func (e *Event) Peer() Process { return Process{Origin: e.PeerOrigin, PID: e.PeerPID} }

func (p Process) String() string { return p.Origin + "/" + p.PID }
