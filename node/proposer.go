package node

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elixirscope/scope/correlate"
)

// Proposer is where the writer pool sends each batch: the shard's Raft group
// on a real node (wrapping raft.Apply), a MemProposer or a FailingProposer in
// tests.
type Proposer interface {
	// Propose starts replicating events as one entry of shard's log and
	// returns without waiting for the commit, so that several proposals of
	// a shard can be in flight. It may block for backpressure (a full raft
	// queue): the pool calls it from a goroutine of the shard's own, so a
	// blocked shard delays only its own later batches.
	//
	// The pool calls Propose for a given shard from one goroutine at a time,
	// in the order the batches must appear in the log. events belongs to
	// the proposer until the future resolves; the pool never modifies it,
	// and passes the same slice again if it retries or redirects the batch.
	//
	// A panic in Propose means "not proposed": the pool proposes the same
	// batch again at once, before any later one (counted as an attempt). A
	// Proposer must therefore not panic after it has accepted a batch.
	Propose(shard uint32, events []correlate.Event) ProposalFuture
}

// ProposalFuture is the pending outcome of one Propose call.
type ProposalFuture interface {
	// Wait blocks until the proposal is committed (nil) or has failed. An
	// error wrapping ErrNotLeader or ErrLeadershipLost is redirected to the
	// shard's new leader when the Proposer is a Redirector, else failed back
	// to the submitters at once; any other error is retried per the pool's
	// RetryPolicy. Wait is called once, from a goroutine other than
	// the one that called Propose, and must eventually return (a Raft
	// group fails its pending futures when it shuts down).
	Wait() error
}

// DuplicateReporter is implemented by a ProposalFuture that knows, once
// Wait returned nil, which of the proposal's events the shard did not store
// because it had applied their ids already: their indexes in the proposed
// events, ascending. The pool charges them to the events' tickets
// (Ticket.Duplicates). The returned slice is owned by the caller.
type DuplicateReporter interface {
	Duplicates() []int
}

// RerouteReporter is implemented by a ProposalFuture that knows, once Wait
// returned nil, which of the proposal's events the shard did not apply
// because their process belongs to another shard now (it split,
// docs/DECISIONS.md D39): their indexes, ascending. The pool sends them on
// through the Redirector's Reroute and resolves their tickets with that
// outcome. The returned slice is owned by the caller.
type RerouteReporter interface {
	Rerouted() []int
}

// Redirector is optionally implemented by a Proposer (the node) that can
// hand a batch to the shard's leader elsewhere. When a proposal fails with
// ErrNotLeader or ErrLeadershipLost, the pool redirects the batch (same
// events, same ids) instead of failing it back, one batch at a time per
// shard, in log order, and resolves its tickets with the outcome.
type Redirector interface {
	// Redirect sends events to shard's current leader and waits for it to
	// take them: committed when commit is true (a submitter waits for the
	// commit), else accepted into its buffer. It returns nil when the
	// leader took every event, an error for which Refused holds when none
	// was stored, any other error when the outcome is unknown. It must
	// return when ctx is done (the pool's close deadline passed).
	//
	// dups is how many of events the shard did not store because it had
	// applied their ids already (known when commit is true; 0 otherwise).
	// The pool calls Redirect for one submitter's events at a time whenever
	// that submitter waits for the commit, so that the count can be charged
	// to its ticket exactly.
	Redirect(ctx context.Context, shard uint32, events []correlate.Event, commit bool) (dups int, err error)
}

// Rerouter is optionally implemented by a Proposer (the node) whose shards
// can split: the pool hands it the events a proposal's RerouteReporter
// lists, in log order, on the shard's redirector, and resolves their
// tickets with the outcome.
type Rerouter interface {
	// Reroute sends events a shard did not apply to the shards that own
	// them now, and waits as Redirect does. Refused holds for an error
	// when none of them was stored.
	Reroute(ctx context.Context, events []correlate.Event, commit bool) (dups int, err error)
}

// ProposerFunc adapts a function to the Proposer interface.
type ProposerFunc func(shard uint32, events []correlate.Event) ProposalFuture

// Propose calls f.
func (f ProposerFunc) Propose(shard uint32, events []correlate.Event) ProposalFuture {
	return f(shard, events)
}

// ResolvedFuture returns a future that is already resolved with err.
func ResolvedFuture(err error) ProposalFuture { return resolvedFuture{err} }

type resolvedFuture struct{ err error }

func (f resolvedFuture) Wait() error { return f.err }

// MemProposer commits every proposal, in proposal order, in memory, after an
// optional latency. It records the committed batches per shard so that tests
// can check for loss, duplicates and order. Safe for concurrent use.
type MemProposer struct {
	latency time.Duration

	proposals atomic.Uint64
	events    atomic.Uint64

	mu      sync.Mutex
	batches map[uint32][][]correlate.Event
	record  bool
}

// NewMemProposer returns a MemProposer whose futures resolve latency after
// Propose. With record false it only counts (for benchmarks).
func NewMemProposer(latency time.Duration, record bool) *MemProposer {
	return &MemProposer{latency: latency, record: record, batches: make(map[uint32][][]correlate.Event)}
}

// Propose records events as the next entry of shard's log.
func (m *MemProposer) Propose(shard uint32, events []correlate.Event) ProposalFuture {
	m.proposals.Add(1)
	m.events.Add(uint64(len(events)))
	if m.record {
		m.mu.Lock()
		m.batches[shard] = append(m.batches[shard], events)
		m.mu.Unlock()
	}
	if m.latency <= 0 {
		return resolvedFuture{}
	}
	return memFuture{at: time.Now().Add(m.latency)}
}

type memFuture struct{ at time.Time }

func (f memFuture) Wait() error {
	if d := time.Until(f.at); d > 0 {
		time.Sleep(d) // simulated replication latency
	}
	return nil
}

// Committed returns shard's committed events in log order (a copy).
func (m *MemProposer) Committed(shard uint32) []correlate.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []correlate.Event
	for _, b := range m.batches[shard] {
		out = append(out, b...)
	}
	return out
}

// Batches returns the sizes of shard's committed batches in log order.
func (m *MemProposer) Batches(shard uint32) []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int, len(m.batches[shard]))
	for i, b := range m.batches[shard] {
		out[i] = len(b)
	}
	return out
}

// Counts returns the proposals and events received so far, all shards.
func (m *MemProposer) Counts() (proposals, events uint64) {
	return m.proposals.Load(), m.events.Load()
}

// FailingProposer fails every proposal with Err. Safe for concurrent use.
type FailingProposer struct {
	Err   error
	calls atomic.Uint64
}

// Propose returns a future resolved with f.Err.
func (f *FailingProposer) Propose(uint32, []correlate.Event) ProposalFuture {
	f.calls.Add(1)
	return resolvedFuture{f.Err}
}

// Calls returns how many times Propose was called.
func (f *FailingProposer) Calls() uint64 { return f.calls.Load() }
