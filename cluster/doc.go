// Package cluster turns nodes into a cluster: membership (memberlist),
// shard placement, the multiplexed TCP transport that carries every shard's
// Raft group over one listener, and reconciliation of replica sets.
//
// The transport: each node has one internal TCP listener (the -raft
// address). A connection starts with a protocol byte and, for raft, a
// 4-byte big-endian shard id; the Mux hands the rest of the connection to
// that shard's raft.NetworkTransport. Connections for shards the node does
// not host are closed and counted, so a stale peer can never reach the
// wrong group.
//
// Placement (placement.go) is a pure function: rendezvous hashing of
// (shard, node name) over the shard's candidates; the top R are a shard's
// desired replicas. Flap damping (stability.go) picks the candidates:
// members whose state has lasted the stabilization time. Moves diffs two placements into per-shard add/remove
// lists for the reconciler.
//
// Membership (membership*.go) wraps hashicorp/memberlist: each node gossips
// its Meta (addresses, version, shards it leads, readiness), compactly
// encoded within memberlist's 512-byte limit (meta.go). Subscribers get a
// coalesced "something changed" signal and read a snapshot with Members.
// A rejoin loop contacts the seeds and the last known addresses of dead
// members, because memberlist never heals a partition by itself.
// Membership is advisory: Raft configurations decide who replicates what.
package cluster
