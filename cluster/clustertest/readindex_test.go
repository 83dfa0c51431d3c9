package clustertest

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestLeaderReadOnNewLeaderSeesAcknowledged: a replica can become leader
// before its store has applied everything committed (here its applies are
// held; a stalled disk or a slow apply does the same, and a new
// leader's commit index can lag its predecessor's until its first entry
// commits). A LEADER read through it must not answer from the stale store:
// it waits (and here times out) until the store has applied what was
// committed before the read, then answers with it.
func TestLeaderReadOnNewLeaderSeesAcknowledged(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 1, Replicas: 3})
	var old *Node
	WaitFor(t, "shard 0 has a leader", 30*time.Second, func() bool {
		old = c.ShardLeader(0)
		return old != nil
	})
	next := othersThan(c, old)[0]
	ingest(t, old, ev(scopev1.Kind_KIND_CALL, "<0.1.0>", 1))
	WaitFor(t, "replicas identical", 30*time.Second, func() bool {
		states, err := c.ShardStates(0)
		return err == nil && len(states) == 3 && identical(states)
	})

	release := next.HoldApplies()
	defer release()
	id := ingest(t, old, ev(scopev1.Kind_KIND_CALL, "<0.2.0>", 2))[0]
	// next has the entry in its raft log (the transfer waits for that) but
	// cannot store it.
	err := old.Node.Replica(0).Raft().LeadershipTransferToServer(raft.ServerID(next.Name), raft.ServerAddress(next.raftAddr)).Error()
	if err != nil {
		t.Fatalf("transfer to %s: %v", next.Name, err)
	}
	WaitFor(t, next.Name+" leads", 30*time.Second, func() bool { return next.Node.Replica(0).IsLeader() })

	get := func(via *Node, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := via.Query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: id,
			Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
		return err
	}
	// Through the new leader itself (a local read), and through the old
	// one (the read goes to the leader's node).
	for _, via := range []*Node{next, old} {
		switch err := get(via, 500*time.Millisecond); Code(err) {
		case connect.CodeDeadlineExceeded, connect.CodeUnavailable:
		case 0:
			t.Fatalf("via %s: the event was found while %s's applies were held", via.Name, next.Name)
		default:
			t.Fatalf("LEADER read via %s before the leader's store applied an acknowledged event: %v (%v); want it to wait",
				via.Name, Code(err), err)
		}
	}

	release()
	for _, via := range []*Node{next, old} {
		WaitFor(t, "the LEADER read via "+via.Name+" answers with the event", 30*time.Second, func() bool {
			err := get(via, 5*time.Second)
			if err != nil && Code(err) != connect.CodeUnavailable && Code(err) != connect.CodeDeadlineExceeded {
				t.Fatalf("LEADER read via %s after the store caught up: %v", via.Name, err)
			}
			return err == nil
		})
	}
}
