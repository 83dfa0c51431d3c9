package correlate

// This file holds the correlator's input and output as data: the contract
// between the correlator (pure, in this package), the store (which persists
// a Result in one atomic write) and the node (which replicates Batches
// through Raft and delivers notices between shards).

// Batch is one unit of replicated input to a shard's correlator: the
// contents of one committed Raft log entry.
type Batch struct {
	// Index is the Raft log index of the entry. The correlator does not
	// interpret it; it is carried so that the store can record the applied
	// index in the same write as the Result.
	Index uint64
	// LogTime is the leader's wall clock (Unix ns) when it proposed the
	// entry. All expiry inside the correlator is measured against log time,
	// never against a local clock. The correlator uses
	// max(LogTime, the largest LogTime it has seen) so that a leader with a
	// slower clock cannot move time backwards.
	LogTime int64
	// Events are new events for processes owned by this shard, in the order
	// the client sent them.
	Events []Event
	// Notices are send/spawn notices delivered from other shards' outboxes
	// (or from this shard's own outbox) to this shard.
	Notices []Notice
	// Acked lists outbox notices (by their event id) that their destination
	// shard has durably received; the correlator deletes them from its
	// outbox.
	Acked []EventID
	// Retention, when set, asks the store to delete events older than the
	// rule allows. The correlator passes it through unchanged so that it is
	// applied at the same point in the log on every replica.
	Retention *Retention

	// Resharding (docs/DECISIONS.md D39; split.go), applied before the
	// rest of the batch. Split, when not 0, splits the shard into the
	// layout of that many shards (its current count doubled). Adopt is a
	// handoff chunk from the parent, for a split child. HandedOff lists
	// the handoff chunks (by Handoff.Seq) the child has adopted.
	Split     uint32
	Adopt     *Adoption
	HandedOff []uint64
	// Prepare, when set, records that the child of the next split is to be
	// created (Result.Prepared), once: a later Prepare for the same split
	// changes nothing, so the child's group is created from one list of
	// voters whichever leader asks.
	Prepare *Preparation
}

// Preparation asks for the child of the split to Shards shards. Voters is
// opaque to the correlator: who creates the child's group (the node's
// encoding).
type Preparation struct {
	Shards uint32
	Voters []byte
}

// Prepared is the first Preparation of a split, as applied: the child shard
// to create and who creates it.
type Prepared struct {
	Child  uint32
	Voters []byte
}

// NoticeKind says what a notice announces.
type NoticeKind uint8

const (
	NoticeUnspecified NoticeKind = iota
	NoticeSend                   // a SEND to a process owned by the destination shard
	NoticeSpawn                  // a SPAWN of a process owned by the destination shard
	// A record about an event the destination stored, made by a shard that
	// split from it (or from a shard that did) for a process it took over
	// (docs/DECISIONS.md D41). The destination stores it as its own.
	NoticeEdge     // Edge: a link whose end on the destination is the process's
	NoticeFrameEnd // Frame: how a frame whose CALL the destination stored ended
	noticeKinds
)

// IsRecord reports whether notices of kind k carry a record for the
// destination's store (NoticeEdge, NoticeFrameEnd) rather than announce an
// event to a process's owner.
func (k NoticeKind) IsRecord() bool { return k == NoticeEdge || k == NoticeFrameEnd }

// Notice tells the shard that owns a receiver (or spawned child) that a SEND
// (or SPAWN) was applied on another shard, or (NoticeEdge, NoticeFrameEnd)
// gives a shard a record about an event it stored. It travels through the
// sender shard's replicated outbox and is idempotent by EventID: the SEND
// or SPAWN, or for a record an id derived from it (recordID).
type Notice struct {
	Kind        NoticeKind
	EventID     EventID // the SEND or SPAWN event
	FromShard   uint32
	ToShard     uint32
	Sender      Process // SEND: sender; SPAWN: parent
	Receiver    Process // SEND: receiver; SPAWN: child
	MessageHash uint64  // SEND only
	TimestampNs int64   // the SEND/SPAWN event's timestamp; a record's: its end or 0
	// The record of a NoticeEdge or NoticeFrameEnd (whose Sender and
	// Receiver are zero); nil for the other kinds. Shared by copies of the
	// notice: never modified.
	Edge  *Edge
	Frame *ClosedFrame
}

// Edge is a link stored as its own record: From --Type--> To. Links are kept
// as edge records so that linking a new event to an already stored one never
// rewrites the stored event.
type Edge struct {
	From EventID
	Type LinkType
	To   EventID
	// FromOtherShard says From is stored on another shard (the SEND or
	// SPAWN of a notice from it), so the store need not look for it here.
	FromOtherShard bool
}

// StateRecord is one mutation of the correlator's persisted state: put Key
// to Value, or delete Key when Value is nil. Keys are opaque to the store,
// which keeps them in the shard's correlator-state span. Restoring a
// correlator from the full set of live records reproduces its state exactly.
type StateRecord struct {
	Key   []byte
	Value []byte // nil: delete Key
}

// Retention is a deterministic deletion rule for one shard, carried in the
// log so that every replica deletes the same events at the same point.
type Retention struct {
	// BeforeNs deletes events with TimestampNs < BeforeNs (0: no age rule).
	BeforeNs int64
	// MaxEvents keeps at most this many of the newest events (0: no count rule).
	MaxEvents uint64
}

// Result is everything the store must persist for one applied Batch, in one
// atomic write, together with Batch.Index as the shard's applied index.
//
// The store writes an edge record for every link of every event in Events
// and for every element of Edges. Edges holds only links whose source event
// is not in Events (for example DELIVERED_TO from a SEND applied on another
// shard); Events carry their own links in Event.Links.
type Result struct {
	Index     uint64
	Events    []Event       // events to store, in apply order, Scope fields set
	Edges     []Edge        // links from events not in Events
	Outbox    []Notice      // notices newly placed in this shard's outbox
	State     []StateRecord // correlator state mutations, in key order
	Retention *Retention    // passed through from the Batch
	Counters  Counters      // what happened while applying the batch
	// Closed lists frames that ended without an event of their own: frames
	// skipped by a RETURN/EXCEPTION for a frame further down (UNWOUND),
	// frames open when their process exited (PROCESS_EXIT), and frames the
	// correlator stopped tracking (ABANDONED: their process was dropped for
	// inactivity or evicted by the process bound, or the CALL was refused
	// by the depth bound). Nothing is invented: no event is stored for
	// them; the store keeps each as a frame-end record keyed by Call so that
	// a query can tell how the frame ended. Frames closed by their own
	// RETURN/EXCEPTION are not listed: that event carries Outcome,
	// DurationNs and a COMPLETES link. Every CALL the correlator outputs is
	// eventually closed exactly once, by its event or here, unless it is
	// still open on its process's tracked stack.
	Closed []ClosedFrame

	// Rerouted are the batch's events the shard did not apply because it
	// does not own their process in its layout (it split), or owns nothing
	// yet (a split child awaiting its handoff): the proposer sends them to
	// their owner. As the batch held them, unnormalized.
	Rerouted []Event
	// NoticesRefused counts the batch's notices not applied because the
	// shard awaits its handoff: the sender must deliver them again.
	NoticesRefused int
	// Prepared is set when the batch's Prepare was the first for its
	// split: the child's group is to be created.
	Prepared *Prepared
	// ReshardErr says why the batch's split or adoption was refused
	// (ErrReshard); the state did not change for it.
	ReshardErr error
}

// ClosedFrame records how a frame without a closing event of its own ended.
type ClosedFrame struct {
	Call    EventID // the frame's CALL
	Outcome Outcome // OutcomeUnwound, OutcomeProcessExit or OutcomeAbandoned
	// EndNs is when the frame ended: the timestamp of the event that closed
	// it (UNWOUND, PROCESS_EXIT) or was refused (ABANDONED by the depth
	// bound), or the log time at which the correlator dropped the process
	// (ABANDONED by inactivity or the process bound).
	EndNs int64
	By    EventID // the RETURN/EXCEPTION/EXIT that closed it; zero when ABANDONED
	// Reason is why an ABANDONED frame was abandoned; unspecified otherwise.
	Reason AbandonReason
}
