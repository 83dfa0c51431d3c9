package main

import "errors"

// Errors of the scope binary.
var (
	// errUsage marks an error in the command line: the command exits with
	// exitUsage and prints its flags.
	errUsage = errors.New("scope: usage")
	// errShardsMismatch: -shards differs from the data directory's count.
	errShardsMismatch = errors.New("scope: shard count differs from the data directory's")
	// errModeMismatch: -dev on a cluster node's data directory, or the
	// reverse.
	errModeMismatch = errors.New("scope: data directory mode differs")
	// errReplicasMismatch: -replicas differs from the data directory's R.
	errReplicasMismatch = errors.New("scope: replication factor differs from the data directory's")
	// errNewDataDir: a cluster node on a new data directory was told
	// neither to form a cluster nor to join one.
	errNewDataDir = errors.New("scope: new data directory needs -bootstrap-expect, -join or -dev")
	// errBadMeta: the data directory's metadata file cannot be used.
	errBadMeta = errors.New("scope: unreadable data directory metadata")
	// errInsecure: an agent without TLS was told to listen on a
	// non-loopback address without -insecure. It exits with exitUsage
	// and one line, no flag listing.
	errInsecure = errors.New("scope: plaintext on a non-loopback address")
	// errNotReady: the agent's shards did not all elect a leader in time.
	errNotReady = errors.New("scope: agent not ready")
)
