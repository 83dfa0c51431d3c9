package main

import (
	"context"
	"time"

	"connectrpc.com/connect"
)

// Ingest requests that fail with UNAVAILABLE (no leader known for a shard,
// a leadership changing hands: what the API tells clients to retry), or
// that a shard refused for backpressure (ingestRetryable), are sent again,
// the same request, after a growing pause. Every event has an id (the
// client's, or one the server derives from its content), so a resend
// stores nothing twice: what an earlier attempt stored comes back as
// duplicates. `scope ingest` and `scope bench` both resend through
// resendRetryable, so they agree on what is worth resending and how long
// to wait.
const (
	ingestAttempts     = 6 // `scope ingest`: attempts per request, the first included
	ingestFirstBackoff = 100 * time.Millisecond
	ingestMaxBackoff   = 2 * time.Second
)

// resendRetryable calls send until it succeeds, fails with an error
// ingestRetryable does not resend, has been called attempts times, or ctx
// ends. It waits ingestFirstBackoff after the first failure, twice as long
// after each next one, at most ingestMaxBackoff. It returns send's last
// error and how many times it called send again (resends).
//
// send is called on the caller's goroutine, one call at a time; it should
// bound its own attempt by ctx (a resend loop is no longer than ctx).
func resendRetryable(ctx context.Context, attempts int, send func() error) (resends int, err error) {
	backoff := ingestFirstBackoff
	for attempt := 1; ; attempt++ {
		err = send()
		if err == nil || !ingestRetryable(err) || attempt >= attempts || ctx.Err() != nil {
			return attempt - 1, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return attempt - 1, err
		case <-t.C:
		}
		backoff = min(2*backoff, ingestMaxBackoff)
	}
}

// ingestRetryable reports whether a failed Ingest is worth sending again:
// UNAVAILABLE, and RESOURCE_EXHAUSTED from the shards (a full ingest
// buffer, a part shed because its shard's queue would outlast the
// deadline, a full disk: the answer carries the per-shard counts), but not
// a RESOURCE_EXHAUSTED the request itself caused (larger than the size
// limit: it carries no counts).
func ingestRetryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable:
		return true
	case connect.CodeResourceExhausted:
		return ingestDetail(err) != nil
	}
	return false
}
