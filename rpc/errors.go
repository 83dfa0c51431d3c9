package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

var (
	// ErrConfig: Config.Validate failed.
	ErrConfig = errors.New("rpc: invalid config")
	// ErrTailSource: no replica of a tailed shard could be followed for
	// Config.TailReplanTimeout (UNAVAILABLE).
	ErrTailSource = errors.New("rpc: tail: no replica of the shard can be followed")
	// ErrCursor: an Events cursor is malformed or was made for another
	// filter.
	ErrCursor = errors.New("rpc: invalid cursor")
	// ErrInvalidRequest: a request field is missing or out of range; the
	// error names the field, the value and what is allowed.
	ErrInvalidRequest = errors.New("rpc: invalid request")
	// ErrEventIDConflict: one event id names stored events of different
	// processes, on different shards (FAILED_PRECONDITION); the error names
	// them, and the caller chooses one by passing origin and pid.
	ErrEventIDConflict = errors.New("rpc: event id names several stored events")
)

// leaderHeader carries the known leader of a shard on UNAVAILABLE errors
// caused by a replica that is not the leader.
const leaderHeader = "Scope-Leader"

// codeOf classifies an internal error. It is the one place where the
// node's, the store's and this package's errors meet Connect codes; every
// handler error passes through toConnect, which uses it.
func codeOf(err error) connect.Code {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code()
	case errors.Is(err, node.ErrOutcomeUnknown) && !errors.Is(err, node.ErrTimeout) &&
		!errors.Is(err, context.DeadlineExceeded):
		// A leadership change or a broken link to the leader while the
		// events were in flight (whatever the cause's own class): the
		// per-shard `unknown` count says which events to resend.
		return connect.CodeUnavailable
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrCursor), errors.Is(err, store.ErrInvalidQuery),
		errors.Is(err, node.ErrBatchTooLarge):
		return connect.CodeInvalidArgument
	case errors.Is(err, store.ErrNotFound):
		return connect.CodeNotFound
	case errors.Is(err, ErrEventIDConflict):
		return connect.CodeFailedPrecondition
	case errors.Is(err, node.ErrFull), errors.Is(err, node.ErrDiskFull), errors.Is(err, store.ErrScanLimit), errors.Is(err, node.ErrTooManySubscribers):
		return connect.CodeResourceExhausted
	case errors.Is(err, node.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled
	case errors.Is(err, node.ErrNotLeader), errors.Is(err, node.ErrNoShard), errors.Is(err, node.ErrClosed),
		errors.Is(err, node.ErrShardClosed), errors.Is(err, node.ErrReplicaFailed), errors.Is(err, store.ErrClosed),
		errors.Is(err, node.ErrPoolClosed), errors.Is(err, node.ErrUnknownShard):
		return connect.CodeUnavailable
	}
	return connect.CodeInternal
}

// toConnect maps err to the Connect error a client sees. Errors of known
// classes keep their message (they name what the client can act on);
// anything else is INTERNAL with a generic message, and the cause is
// logged rather than leaked.
func toConnect(logger *slog.Logger, procedure string, err error) *connect.Error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	code := codeOf(err)
	if code == connect.CodeInternal {
		logger.Error("rpc: internal error", "procedure", procedure, "err", err)
		return connect.NewError(code, fmt.Errorf("internal error in %s (logged on the server)", procedure))
	}
	out := connect.NewError(code, err)
	var nl *node.NotLeaderError
	if errors.As(err, &nl) && nl.LeaderID != "" {
		out.Meta().Set(leaderHeader, nl.LeaderID+"@"+nl.LeaderAddr)
	}
	return out
}

// invalid returns an INVALID_ARGUMENT error naming field and value.
func invalid(field string, value any, rule string) error {
	return fmt.Errorf("%w: %s: %v: %s", ErrInvalidRequest, field, value, rule)
}

// missing returns an INVALID_ARGUMENT error for a required field.
func missing(field string) error {
	return fmt.Errorf("%w: %s: required", ErrInvalidRequest, field)
}

func itoa(i int) string      { return strconv.Itoa(i) }
func itoa64(i int64) string  { return strconv.FormatInt(i, 10) }
func quoted(s string) string { return strconv.Quote(clip(s)) }

// parseUint reads a raft stats number; 0 when absent or malformed.
func parseUint(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}
