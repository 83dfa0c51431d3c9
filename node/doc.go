// Package node hosts a node's shard replicas and, in front of them, the
// ingest path's ring buffers and writer pool.
//
// # Writer pool
//
// Every hosted shard has a bounded lock-free ring (package ring). Submit
// puts one request's events for a shard into the ring all or nothing:
// with wait (durable ingest) it waits for room until its context is done,
// without (fire-and-forget) it is refused at once; every refusal is counted
// and reported as ErrFull naming the shard. Submit returns a Ticket that
// resolves when each of its events is committed or failed.
//
// A set of writers drains the rings: a fixed number (default GOMAXPROCS), or,
// with MaxWriters, between MinWriters and MaxWriters as the scaler decides
// (pool_scale.go). Each shard is owned by exactly one writer at a time (the
// writer with the fewest shards when it was added; the scaler may hand it to
// another between two of its batches, never while a batch is staged), so a
// shard's batches are made by one goroutine at a time, in ring order. A writer takes up to BatchSize events
// into the shard's staged batch and hands it on when it is full, when its
// first event has waited FlushInterval, or at once when the pool is closing.
// A writer never calls the Proposer itself: a per-shard dispatcher proposes
// the shard's batches in order, so a shard whose raft queue is full
// (Propose blocking up to CommitTimeout) delays only its own batches, never
// the other shards of its writer. Proposals are pipelined: up to MaxInflight
// per shard are outstanding, and a per-shard completion goroutine waits for
// their futures in order and resolves the tickets.
//
// Faults:
//   - A writer that panics is restarted. The staged batch and queued retries
//     live in the shard's state, not on the writer's stack, and a batch is
//     removed from them only once handed to the dispatcher, so the
//     restarted writer hands on exactly what was not: nothing lost, nothing
//     twice. A Propose that panics did not propose: the dispatcher proposes
//     the same batch again at once, before any later one. Panics count as
//     attempts, so a batch that always panics is failed back
//     (ErrProposerPanic) instead of wedging its shard.
//   - Leadership changes: a proposal failing with ErrNotLeader (raft never
//     appended it) or ErrLeadershipLost (appended, then leadership moved
//     before it committed: it may still commit) is redirected to the new
//     leader with the same event ids (the shard skips ids it has applied) by
//     a per-shard redirector, one batch at a time, in log order (the
//     pipeline hands batches to it and never waits for it); while the
//     pool still holds events of the shard, the node routes new parts of it
//     through the pool, behind them. A COMMITTED part that another node
//     forwarded here is failed back instead (that node retries it). The
//     events of a submitter waiting for the commit go in a redirect of
//     their own, so that the new leader's count of duplicates among them
//     is charged to its ticket exactly (Ticket.Duplicates).
//   - Any other failure is retried after an exponential backoff, up to
//     Retry.MaxAttempts attempts, but only if no later batch of the shard
//     was proposed after it; otherwise (or once the attempts are used) it
//     is failed back with the reason. The node uses MaxAttempts 1.
//   - Outcomes: a ticket's error is a refusal (Refused) only when none of
//     its events can have been stored; a submission split over several
//     proposals that was partly stored, or whose outcome is unknown, fails
//     with ErrOutcomeUnknown.
//   - Order: per shard, batches are proposed in ring order and a retry never
//     lands behind a later batch, so one node's pipeline never reorders a
//     process's events. The FSM's per-pid sequence sort orders events within
//     one batch only. What the client must do for order across failures is
//     in docs/API.md: send a process's next events only after the previous
//     request for it was answered, and resend a failed part first.
//
// Bounds: ring capacity per shard, BatchSize per proposal, MaxInflight
// proposals plus queued retries per shard, MaxShards shards,
// Retry.MaxAttempts per batch, CommitTimeout per redirect. The events
// waiting for a redirect are bounded at admission, not by making the
// pipeline wait (the new leader may be waiting on this node's pipeline):
// while a shard's redirect backlog holds a ring's worth, submissions that
// could join it are refused with ErrFull (PoolShardStats.Redirecting,
// scope_writer_redirect_backlog_events).
//
// Shards come and go at run time (AddShard, RemoveShard); removing one fails
// its unproposed events with ErrShardClosed. Close stops accepting, flushes
// and proposes everything accepted, waits for the proposals to resolve, and
// stops the writers.
package node
