package node

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
)

// errApplyFuture is a raft.ApplyFuture resolved with err.
type errApplyFuture struct{ err error }

func (f errApplyFuture) Error() error          { return f.err }
func (f errApplyFuture) Index() uint64         { return 0 }
func (f errApplyFuture) Response() interface{} { return nil }

// A proposal raft never appended is refused; one appended and orphaned by
// a leadership change may still commit: its outcome is unknown, never
// "refused" (which the API defines as "not stored").
func TestRaftFutureOutcomes(t *testing.T) {
	for _, tc := range []struct {
		raftErr      error
		refused      bool
		redirectable bool
	}{
		{raft.ErrNotLeader, true, true},
		{raft.ErrLeadershipTransferInProgress, true, true},
		{raft.ErrLeadershipLost, false, true},
		{raft.ErrRaftShutdown, false, false},
	} {
		err := raftFuture{shard: 3, f: errApplyFuture{tc.raftErr}}.Wait()
		if got := Refused(err); got != tc.refused {
			t.Errorf("%v: Refused = %v, want %v (err %v)", tc.raftErr, got, tc.refused, err)
		}
		if got := errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost); got != tc.redirectable {
			t.Errorf("%v: redirectable = %v, want %v", tc.raftErr, got, tc.redirectable)
		}
		if !tc.refused && !errors.Is(err, ErrOutcomeUnknown) && tc.raftErr == raft.ErrLeadershipLost {
			t.Errorf("%v: %v does not say the outcome is unknown", tc.raftErr, err)
		}
	}
}

// A submission split over two proposals, one committed and one refused,
// was partly stored: its ticket must not report a refusal.
func TestTicketPartlyStoredIsNotRefused(t *testing.T) {
	var calls int
	prop := ProposerFunc(func(shard uint32, evs []correlate.Event) ProposalFuture {
		calls++ // one dispatcher per shard: no race
		if calls == 2 {
			return ResolvedFuture(&NotLeaderError{Shard: shard})
		}
		return ResolvedFuture(nil)
	})
	cfg := testConfig(1)
	cfg.BatchSize = 4
	cfg.FlushInterval = 0
	cfg.Retry.MaxAttempts = 1
	pool := newTestPool(t, cfg, prop, nil)
	tk, err := pool.Submit(context.Background(), 0, events("p", 0, 8), true) // two batches of 4
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	err = waitTicket(t, tk)
	if err == nil || Refused(err) || !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("ticket of a part half committed, half refused = %v (refused %v), want an unknown outcome",
			err, Refused(err))
	}
}
