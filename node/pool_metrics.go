package node

import "time"

// PoolMetrics receives the writer pool's measurements. The node backs it
// with Prometheus. Every method may be called concurrently from submitters,
// writers and completion goroutines, and must not block.
type PoolMetrics interface {
	// EventsIn counts events accepted into a shard's ring.
	EventsIn(shard uint32, n int)
	// EventsRefused counts events refused at submission (ring full,
	// deadline, shard or pool closed, batch too large, shed).
	EventsRefused(shard uint32, n int)
	// EventsShed counts the refused events that admission control turned
	// away because the shard's queue would have kept them past their
	// deadline (ErrOverloaded); they are also in EventsRefused.
	EventsShed(shard uint32, n int)
	// EventsCommitted counts events whose proposal committed.
	EventsCommitted(shard uint32, n int)
	// EventsFailed counts events failed back to their submitters after
	// they had been accepted.
	EventsFailed(shard uint32, n int)
	// Batch observes the size of one proposal (batch-size histogram).
	Batch(shard uint32, events int)
	// ApplyLatency observes the time from a proposal to its resolution.
	ApplyLatency(shard uint32, d time.Duration)
	// ProposalError counts a proposal that resolved with an error, whether
	// or not it is retried.
	ProposalError(shard uint32, err error)
	// Retry counts a batch scheduled to be proposed again.
	Retry(shard uint32)
	// Redirected counts events whose proposal failed because this node
	// lost the shard's leadership and that were handed to the new leader;
	// err is the redirect's outcome (nil: the new leader took them).
	Redirected(shard uint32, n int, err error)
	// Rerouted counts events the shard committed but gave away (it split)
	// and that were sent to their owner; err is the outcome.
	Rerouted(shard uint32, n int, err error)
	// RedirectBacklog reports the events of a shard waiting to be
	// redirected or being redirected.
	RedirectBacklog(shard uint32, events int)
	// WriterRestart counts a writer restarted after a panic.
	WriterRestart(writer int)
	// RingFill reports a shard's ring occupancy after a writer took from it.
	RingFill(shard uint32, used, capacity int)
	// ShardAdded tells that the pool hosts shard from now on (a metrics
	// backend creates its per-shard series at zero).
	ShardAdded(shard uint32)
	// WritersActive reports the writers running and not retiring.
	WritersActive(n int)
	// WritersScaled counts a scaling decision: a writer added (up) or
	// retired.
	WritersScaled(up bool)
	// WriterUtilisation reports the writers' mean busy fraction (0..1)
	// over the scaler's last sample.
	WriterUtilisation(busy float64)
	// ShardMoved counts a shard handed from one writer to another.
	ShardMoved(shard uint32)
	// AcceptedToApplied observes, per submission and batch, the time from
	// the events' acceptance into the ring to their proposal's commit and
	// apply on this node (where a LEADER read sees them).
	AcceptedToApplied(shard uint32, d time.Duration)
}

// NopPoolMetrics discards every measurement.
type NopPoolMetrics struct{}

var _ PoolMetrics = NopPoolMetrics{}

func (NopPoolMetrics) EventsIn(uint32, int)                    {}
func (NopPoolMetrics) EventsRefused(uint32, int)               {}
func (NopPoolMetrics) EventsShed(uint32, int)                  {}
func (NopPoolMetrics) EventsCommitted(uint32, int)             {}
func (NopPoolMetrics) EventsFailed(uint32, int)                {}
func (NopPoolMetrics) Batch(uint32, int)                       {}
func (NopPoolMetrics) ApplyLatency(uint32, time.Duration)      {}
func (NopPoolMetrics) ProposalError(uint32, error)             {}
func (NopPoolMetrics) Retry(uint32)                            {}
func (NopPoolMetrics) Redirected(uint32, int, error)           {}
func (NopPoolMetrics) Rerouted(uint32, int, error)             {}
func (NopPoolMetrics) RedirectBacklog(uint32, int)             {}
func (NopPoolMetrics) WriterRestart(int)                       {}
func (NopPoolMetrics) RingFill(uint32, int, int)               {}
func (NopPoolMetrics) ShardAdded(uint32)                       {}
func (NopPoolMetrics) WritersActive(int)                       {}
func (NopPoolMetrics) WritersScaled(bool)                      {}
func (NopPoolMetrics) WriterUtilisation(float64)               {}
func (NopPoolMetrics) ShardMoved(uint32)                       {}
func (NopPoolMetrics) AcceptedToApplied(uint32, time.Duration) {}
