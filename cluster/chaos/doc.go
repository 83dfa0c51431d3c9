// Package chaos is Scope's nemesis harness: it runs a cluster of real
// `scope agent` processes, drives a concurrent workload through the public
// API while injecting faults, and checks what the clients saw and what the
// replicas hold (docs/DECISIONS.md D30).
//
// Faults (nemesis.go), one at a time on a seeded schedule: SIGKILL and
// restart, SIGSTOP/SIGCONT pauses longer than an election timeout,
// partitions (one node, a shard's leader, majority/minority, a bridge) cut
// with blackhole routes between network namespaces (net.go), a wiped data
// directory restarted with its old flags, and a Leave followed by an empty
// rejoin under the same name.
//
// Workload (workload.go, clients.go): conversations between pairs of
// processes — nested calls, returns and exceptions, a message each way —
// ingested one event per request with COMMITTED durability; LEADER reads
// of a process's events, of a call tree and of a message flow.
//
// Checks (history.go, verify.go): the history of each process is checked
// for linearizability with porcupine against a model of its stored event
// set; the final state is read once more and every correlation of
// acknowledged events is checked; then the agents are stopped and every
// replica's store is opened directly to compare the replicas of each shard
// and find every acknowledged event on each of them, exactly once.
//
// Run is the entry point; `scope chaos` and `make chaos` call it, and the
// package's tests run a short campaign plus two deliberately broken builds
// the checks must catch.
package chaos
