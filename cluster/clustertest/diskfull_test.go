package clustertest

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestDiskFullCluster fills the disks of a 3-node cluster under load (the
// guards' measurements are faked; node tests and cmd/scope's tmpfs test
// cover the real thing). With every disk below the minimum, ingest is
// refused with RESOURCE_EXHAUSTED naming the full disk, while reads,
// /readyz and every replica go on: a full disk is not a replica failure,
// nothing retires. Space back, the load resumes by itself. Then one node
// is critically full: it refuses to append what its groups' leaders send,
// the groups commit on the other two, and it catches up once space is
// back. Every acknowledged event is stored once, and replicas end equal.
func TestDiskFullCluster(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	c.WaitReady(30 * time.Second)
	l := startLoader(t, LoaderOptions{Via: c.Nodes, MaxEvents: 1 << 30})
	waitAcked(t, l, loadTarget(400), "before the disks fill")

	for _, n := range c.Nodes {
		n.SetDiskFree(200 << 20) // below the 256 MiB minimum, above the critical 128 MiB
	}
	WaitFor(t, "every node refusing writes", 10*time.Second, func() bool {
		for _, n := range c.Nodes {
			if n.Node.DiskCondition() == nil {
				return false
			}
		}
		return true
	})
	for _, n := range c.Nodes {
		// UNAVAILABLE (leadership moving: the balancer) is transient; the
		// refusal is what must come.
		var err error
		WaitFor(t, "ingest via "+n.Name+" refused", 10*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{
				Events: []*scopev1.Event{ev(scopev1.Kind_KIND_CALL, pidOn(0, shards), 1)}}))
			return Code(err) != connect.CodeUnavailable
		})
		if Code(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("ingest via %s with every disk full: %v, want RESOURCE_EXHAUSTED (disk full)", n.Name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 100,
			Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
		cancel()
		if err != nil {
			t.Fatalf("LEADER read via %s with every disk full: %v", n.Name, err)
		}
		if code, body := httpBody(t, n.URL+"/readyz"); code != http.StatusOK || !strings.Contains(body, "writes refused: node: disk full") {
			t.Fatalf("%s /readyz with a full disk: %d %q", n.Name, code, body)
		}
	}
	checkNoneFailed(t, c)

	for _, n := range c.Nodes {
		n.SetDiskFree(-1)
	}
	waitAcked(t, l, l.Acked()+loadTarget(400), "after space came back")

	// One node critically full.
	bad := c.Nodes[2]
	bad.SetDiskFree(64 << 20)
	var direct []string
	ts := int64(1000)
	WaitFor(t, "a group committing without the critically full node, which lags", 30*time.Second, func() bool {
		for s := range uint32(shards) {
			leader := c.ShardLeader(s)
			if leader == nil || leader == bad || bad.Node.Replica(s) == nil {
				continue
			}
			ts++
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := leader.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{
				Events: []*scopev1.Event{ev(scopev1.Kind_KIND_CALL, pidOn(s, shards), ts)}}))
			cancel()
			if err != nil {
				continue // leadership moving; try again
			}
			direct = append(direct, resp.Msg.GetEventIds()...)
			commit := leader.Node.Replica(s).Raft().CommitIndex()
			if last := bad.Node.Replica(s).Raft().LastIndex(); commit >= last+3 {
				return true
			}
		}
		return false
	})
	checkNoneFailed(t, c)
	bad.SetDiskFree(-1)

	res := l.Stop()
	for _, id := range direct {
		res.Sent[id], res.Acked[id] = true, true
	}
	c.WaitReplicasIdentical(3, 60*time.Second)
	stored := c.CheckLoad(c.Nodes[0], res)
	t.Logf("%d events acknowledged, %d stored, %d requests (%d failed, retried)", len(res.Acked), stored, res.Requests, res.Failures)
}

// checkNoneFailed fails the test if any replica failed or retired.
func checkNoneFailed(t *testing.T, c *Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		for _, r := range n.Node.Replicas() {
			if _, _, failed := r.Status(); failed != nil || r.Retired() {
				t.Fatalf("%s shard %d: replica failed or retired on a full disk: %v", n.Name, r.Shard(), failed)
			}
		}
	}
}
