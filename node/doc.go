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
// A fixed set of writers (default GOMAXPROCS) drains the rings. Each shard is
// owned by exactly one writer for its whole life in the pool (the writer
// with the fewest shards when it was added), so a shard's proposals are made
// by one goroutine, in ring order. A writer takes up to BatchSize events
// into the shard's staged batch and proposes it when it is full, when its
// first event has waited FlushInterval, or at once when the pool is closing.
// Proposals are pipelined: up to MaxInflight per shard are outstanding, and
// a per-shard completion goroutine waits for their futures in order and
// resolves the tickets.
//
// Faults:
//   - A writer that panics is restarted. The staged batch and queued retries
//     live in the shard's state, not on the writer's stack, and a batch is
//     removed from them only after Propose returned, so the restarted writer
//     proposes exactly what was not proposed: nothing lost, nothing twice. A
//     panic counts as an attempt, so a batch that always panics is failed
//     back (ErrProposerPanic) instead of wedging its shard.
//   - A proposal failing with ErrNotLeader is failed back at once (the RPC
//     layer redirects the client). Any other failure is retried after an
//     exponential backoff, up to Retry.MaxAttempts attempts, then failed
//     back with the reason. While a failed batch waits for its retry, no
//     newer batch of the shard is proposed.
//   - Order: per shard, batches are proposed in ring order, and a ticket's
//     events stay in order. A retried batch can land in the log after
//     batches that were already in flight when it failed (a pipelined
//     proposer cannot undo those); the FSM's per-pid sequence sort is what
//     restores a process's order in that case.
//
// Bounds: ring capacity per shard, BatchSize per proposal, MaxInflight
// proposals plus queued retries per shard, MaxShards shards,
// Retry.MaxAttempts per batch.
//
// Shards come and go at run time (AddShard, RemoveShard); removing one fails
// its unproposed events with ErrShardClosed. Close stops accepting, flushes
// and proposes everything accepted, waits for the proposals to resolve, and
// stops the writers.
package node
