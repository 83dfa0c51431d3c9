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
package cluster
