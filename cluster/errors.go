package cluster

import "errors"

// Errors of the cluster package, classified with errors.Is.
var (
	// Cluster.
	ErrConfig      = errors.New("cluster: invalid config")
	ErrNoLeader    = errors.New("cluster: shard has no known leader")
	ErrUnknownPeer = errors.New("cluster: unknown peer")
	ErrClosed      = errors.New("cluster: closed")
	ErrPeerBusy    = errors.New("cluster: too many background calls in flight to peer")
	// ErrShardCount: this node was started with another shard count than
	// the cluster's (ShardCountError).
	ErrShardCount = errors.New("cluster: shard count differs from the cluster's")

	// Raft mux.
	ErrMuxClosed       = errors.New("cluster: mux closed")
	ErrShardRegistered = errors.New("cluster: shard already has a raft stream layer")

	// Membership and gossip metadata.
	ErrMembershipConfig = errors.New("cluster: invalid membership config")
	ErrMembershipClosed = errors.New("cluster: membership shut down or left")
	ErrTooManySubs      = errors.New("cluster: too many membership subscribers")
	ErrMetaInvalid      = errors.New("cluster: invalid node metadata")
	ErrMetaTooLarge     = errors.New("cluster: node metadata too large for gossip")
	ErrMetaCorrupt      = errors.New("cluster: corrupt node metadata")
	ErrMetaVersion      = errors.New("cluster: unknown node metadata format")
	// ErrProtocol: this node, or a request, does not speak the protocol
	// version the cluster does (protocol.go).
	ErrProtocol = errors.New("cluster: protocol version mismatch")
)
