package main

import "errors"

// Errors of the scope binary.
var (
	// errUsage marks an error in the command line: the command exits with
	// exitUsage and prints its flags.
	errUsage = errors.New("scope: usage")
	// errShardsMismatch: -shards differs from the data directory's count.
	errShardsMismatch = errors.New("scope: shard count differs from the data directory's")
	// errBadMeta: the data directory's metadata file cannot be used.
	errBadMeta = errors.New("scope: unreadable data directory metadata")
	// errNotReady: the agent's shards did not all elect a leader in time.
	errNotReady = errors.New("scope: agent not ready")
)
