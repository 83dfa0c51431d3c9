package clustertest

import (
	"context"
	"math"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestForgedDropReplicaKeepsLiveReplica: a DropReplica that no leader
// sent (a forged or stale removedAt: the largest index, or a small one)
// must not delete a follower's live replica. The node confirms with the
// shard's leader that its group no longer names it before dropping; here
// it does, so the call is refused and the replica keeps replicating.
func TestForgedDropReplicaKeepsLiveReplica(t *testing.T) {
	const shards = 2
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	const shard = 0
	leader := c.WaitShardLeader(shard)
	var follower *Node
	for _, n := range c.Nodes {
		if n != leader && n.Node.Replica(shard) != nil {
			follower = n
		}
	}
	if follower == nil {
		t.Fatal("no follower with a replica")
	}
	pid := pidOn(shard, shards)
	ingest(t, leader, ev(scopev1.Kind_KIND_CALL, pid, 1))

	nc := nodev1connect.NewNodeServiceClient(http.DefaultClient, follower.URL)
	for _, removedAt := range []uint64{math.MaxUint64, 1} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := nc.DropReplica(ctx, connect.NewRequest(&nodev1.DropReplicaRequest{Shard: shard, RemovedAt: removedAt}))
		cancel()
		if Code(err) != connect.CodeFailedPrecondition {
			t.Errorf("forged DropReplica{removedAt %d} on %s: %v, want FAILED_PRECONDITION", removedAt, follower.Name, err)
		}
		if follower.Node.Replica(shard) == nil {
			t.Fatalf("forged DropReplica{removedAt %d} deleted %s's live replica of shard %d", removedAt, follower.Name, shard)
		}
	}
	// Still a working member: it applies what is written next.
	id := ingest(t, leader, ev(scopev1.Kind_KIND_CALL, pid, 2))[0]
	WaitFor(t, follower.Name+" applies a new event", 20*time.Second, func() bool {
		resp, err := follower.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{
			EventId: id, Consistency: scopev1.Consistency_CONSISTENCY_ANY, Origin: "app@host", Pid: pid}))
		return err == nil && resp.Msg.GetEvent().GetEventId() == id
	})
}
