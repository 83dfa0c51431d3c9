package correlate

// Counters count what happened while applying batches: every bound that was
// hit and every event that could not be paired is counted here, so that it
// is visible in metrics rather than silent. A Result carries the counts for
// its own batch; the node adds them up.
type Counters struct {
	Events            uint64 // events applied (stored)
	Duplicates        uint64 // events skipped: id already stored (screened by the node) or applied within the dedup window
	OutOfOrder        uint64 // events whose seq was below their process's previous seq in the batch
	Orphans           uint64 // RETURN/EXCEPTION with no open frame
	Unwound           uint64 // frames closed as UNWOUND
	ExitClosed        uint64 // frames closed by process EXIT
	Matched           uint64 // RECEIVEs paired with a SEND
	NoticesApplied    uint64 // notices applied from other shards
	NoticesExpired    uint64 // send/spawn notices that expired unmatched
	ReceivesExpired   uint64 // receives that expired waiting for their notice
	StackOverflows    uint64 // CALLs refused a frame: stack depth bound
	ProcessEvictions  uint64 // processes evicted: open-process bound
	PendingEvictions  uint64 // pending notices/receives evicted: pending entry or byte bound
	DedupEvictions    uint64 // dedup entries evicted by count before their age
	PayloadsTruncated uint64 // payloads truncated to the payload bound
	AttributesDropped uint64 // attributes dropped: attribute bounds
	Malformed         uint64 // events with kind unknown: stored uncorrelated by Apply; the node's FSM drops them (and all-zero ids) first
	ProcessesExpired  uint64 // processes dropped after ProcessTTL of log time without events
	OutboxDropped     uint64 // outbox notices dropped unacknowledged: outbox entry or byte bound, or OutboxTTL
	SpawnsLinked      uint64 // spawn notices linked to the child's event
	// Frames closed as ABANDONED with their process: dropped after
	// ProcessTTL (AbandonedInactivity) or evicted by MaxProcesses
	// (AbandonedProcessBound). Frames abandoned by the depth bound are the
	// refused CALLs, counted in StackOverflows.
	AbandonedInactivity   uint64
	AbandonedProcessBound uint64
	// Resharding (docs/DECISIONS.md D39). Rerouted counts events not
	// applied because the shard no longer owns their process, or does not
	// yet (a split child awaiting its parent's handoff): the node sends
	// them on to the owner. NoticesForwarded counts notices for a process
	// the shard no longer owns, put in the outbox toward its owner.
	Rerouted         uint64
	NoticesForwarded uint64
	// RecordsForwarded counts frame ends and links about events a shard
	// this one split from stored, sent to that shard's outbox notices
	// (NoticeEdge, NoticeFrameEnd; docs/DECISIONS.md D41).
	RecordsForwarded uint64
}

// Add adds o to c.
func (c *Counters) Add(o Counters) {
	c.Events += o.Events
	c.Duplicates += o.Duplicates
	c.OutOfOrder += o.OutOfOrder
	c.Orphans += o.Orphans
	c.Unwound += o.Unwound
	c.ExitClosed += o.ExitClosed
	c.Matched += o.Matched
	c.NoticesApplied += o.NoticesApplied
	c.NoticesExpired += o.NoticesExpired
	c.ReceivesExpired += o.ReceivesExpired
	c.StackOverflows += o.StackOverflows
	c.ProcessEvictions += o.ProcessEvictions
	c.PendingEvictions += o.PendingEvictions
	c.DedupEvictions += o.DedupEvictions
	c.PayloadsTruncated += o.PayloadsTruncated
	c.AttributesDropped += o.AttributesDropped
	c.Malformed += o.Malformed
	c.ProcessesExpired += o.ProcessesExpired
	c.OutboxDropped += o.OutboxDropped
	c.SpawnsLinked += o.SpawnsLinked
	c.AbandonedInactivity += o.AbandonedInactivity
	c.AbandonedProcessBound += o.AbandonedProcessBound
	c.Rerouted += o.Rerouted
	c.NoticesForwarded += o.NoticesForwarded
	c.RecordsForwarded += o.RecordsForwarded
}
