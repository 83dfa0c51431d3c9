package store

import "errors"

var (
	// ErrNotFound: no event with the given id is stored in the shard.
	ErrNotFound = errors.New("store: not found")
	// ErrCorrupt: a stored record (or an imported stream) does not decode;
	// the error names the key.
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrInvalidShard: the shard id is the reserved metadata shard.
	ErrInvalidShard = errors.New("store: invalid shard")
	// ErrInvalidQuery: a query or argument is out of its allowed range.
	ErrInvalidQuery = errors.New("store: invalid query")
	// ErrInvalidOptions: Options.Validate failed.
	ErrInvalidOptions = errors.New("store: invalid options")
	// ErrIncompatible: the store on disk (or an imported stream) was made
	// with a different layout parameter (bucket width, format).
	ErrIncompatible = errors.New("store: incompatible layout")
	// ErrInvalidResult: a Result handed to Apply breaks its contract (for
	// example an event without an id); nothing is written.
	ErrInvalidResult = errors.New("store: invalid result")
	// ErrScanLimit: a call examined Options.MaxScan keys without being able
	// to answer (CallStackAt of a process with a very long history).
	ErrScanLimit = errors.New("store: scan limit reached")
	// ErrFailed: pebble hit an unrecoverable error (a failed WAL write
	// leaves the database in an unknown state). The store refuses further
	// writes; the node must close and reopen it, and Raft replays from the
	// applied index.
	ErrFailed = errors.New("store: failed")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
)
