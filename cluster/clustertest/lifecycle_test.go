package clustertest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// pidOn returns a pid of origin "app@host" (the one ev uses) on shard.
func pidOn(shard, shards uint32) string {
	for i := 0; ; i++ {
		pid := fmt.Sprintf("<0.%d.1>", i)
		if correlate.ShardOf("app@host", pid, shards) == shard {
			return pid
		}
	}
}

// httpBody GETs url and returns the status and body.
func httpBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestFailedStoreRetiresReplicas fails the store of shard 0's leader: its
// replicas stop applying, and must leave their groups' work. Leadership
// moves to a healthy replica and ingest continues; the failed node reports
// itself not ready and counts its failed replicas; its ANY reads are
// answered by a healthy replica, and it refuses to serve its stale copy to
// other nodes.
func TestFailedStoreRetiresReplicas(t *testing.T) {
	const shards = 2
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3, StoreFaults: true})
	var bad *Node
	WaitFor(t, "shard 0 led", 10*time.Second, func() bool { bad = c.ShardLeader(0); return bad != nil })
	var healthy *Node
	for _, n := range c.Nodes {
		if n != bad {
			healthy = n
		}
	}
	pid := pidOn(0, shards)
	before := ingest(t, healthy, ev(scopev1.Kind_KIND_CALL, pid, 1))

	bad.FailStore()
	// The next applies on bad fail (the client may see the error: the
	// entry committed on the healthy replicas, the client retries by id).
	ts := int64(10)
	poke := func() { // one more entry for shard 0, so that bad has an apply to fail
		ts++
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _ = healthy.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{
			Events: []*scopev1.Event{ev(scopev1.Kind_KIND_CALL, pid, ts)}}))
	}
	WaitFor(t, "shard 0 led by a healthy replica", 15*time.Second, func() bool {
		poke()
		l := c.ShardLeader(0)
		return l != nil && l != bad
	})
	// Leadership may have moved before the fault (the balancer), leaving
	// bad a follower with nothing new to apply: keep writing until it
	// failed an apply and retired.
	WaitFor(t, "the failed replica of shard 0 retired", 15*time.Second, func() bool {
		if r := bad.Node.Replica(0); r != nil && r.Retired() {
			return true
		}
		poke()
		return false
	})
	after := ingest(t, healthy, ev(scopev1.Kind_KIND_CALL, pid, 1000))
	after = append(after, ingest(t, bad, ev(scopev1.Kind_KIND_CALL, pid, 1001))...)

	if code, body := httpBody(t, bad.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "replica failed") {
		t.Fatalf("failed node /readyz: %d %q", code, body)
	}
	if _, body := httpBody(t, bad.URL+"/metrics"); !strings.Contains(body, "\nscope_replicas_failed ") ||
		strings.Contains(body, "\nscope_replicas_failed 0\n") {
		t.Fatalf("failed node /metrics does not count its failed replica:\n%s", grepLines(body, "scope_replicas_failed"))
	}

	// ANY reads through the failed node are answered by healthy replicas:
	// the events written after the failure are found.
	for _, id := range append(before, after...) {
		resp, err := bad.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{
			EventId: id, Consistency: scopev1.Consistency_CONSISTENCY_ANY, Origin: "app@host", Pid: pid}))
		if err != nil {
			t.Fatalf("ANY read of %s via the failed node: %v", id, err)
		}
		if resp.Msg.GetEvent().GetEventId() != id {
			t.Fatalf("ANY read of %s: got %s", id, resp.Msg.GetEvent().GetEventId())
		}
	}
	// Other nodes may list it as a replica holder: it refuses to answer.
	args, err := msgpack.Marshal(struct{ ID correlate.EventID }{correlate.EventID{}})
	if err != nil {
		t.Fatal(err)
	}
	nc := nodev1connect.NewNodeServiceClient(http.DefaultClient, bad.URL)
	_, err = nc.ShardRead(context.Background(), connect.NewRequest(&nodev1.ShardReadRequest{Shard: 0, Method: "get", Args: args}))
	if Code(err) != connect.CodeUnavailable {
		t.Fatalf("ShardRead of the failed replica: %v, want Unavailable", err)
	}
	st, err := nc.ReplicaStatus(context.Background(), connect.NewRequest(&nodev1.ReplicaStatusRequest{Shard: 0}))
	if err != nil || !st.Msg.GetFailed() {
		t.Fatalf("ReplicaStatus of the failed replica: %v %v", st, err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// orphanCase picks a shard count, a shard and one of n1..n3 that placement
// over n1..n4 leaves out of that shard: once n4 has joined, that node's
// replica of the shard is wanted nowhere, so the cluster never adds it
// back.
func orphanCase(t *testing.T) (shards, shard uint32, name string) {
	all := []string{"n1", "n2", "n3", "n4"}
	for shards = 2; shards <= 8; shards++ {
		for s := range shards {
			want := cluster.Placement(s, all, 3)
			for _, n := range all[:3] {
				if !slices.Contains(want, n) {
					return shards, s, n
				}
			}
		}
	}
	t.Fatal("no shard leaves one of n1..n3 out")
	return 0, 0, ""
}

// groupNames reports whether the leader of shard lists name in its
// configuration.
func (c *Cluster) groupNames(shard uint32, name string) (known, listed bool) {
	l := c.ShardLeader(shard)
	if l == nil {
		return false, false
	}
	r := l.Node.Replica(shard)
	if r == nil {
		return false, false
	}
	f := r.Raft().GetConfiguration()
	if f.Error() != nil {
		return false, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == name {
			return true, true
		}
	}
	return true, false
}

// describeGroup says who leads shard, its configuration and which live
// nodes hold a replica of it: what a test waiting for a membership change
// reports when the change does not come.
func (c *Cluster) describeGroup(shard uint32) string {
	var b strings.Builder
	l := c.ShardLeader(shard)
	var r *node.Replica
	if l != nil {
		r = l.Node.Replica(shard) // nil if dropped since ShardLeader looked
	}
	if r == nil {
		b.WriteString("no leader")
	} else {
		fmt.Fprintf(&b, "leader %s, configuration", l.Name)
		if f := r.Raft().GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				fmt.Fprintf(&b, " %s:%v", s.ID, s.Suffrage)
			}
		}
	}
	b.WriteString("; replicas on")
	for _, n := range c.Live() {
		if r := n.Node.Replica(shard); r != nil {
			applied, _, _ := r.Status()
			fmt.Fprintf(&b, " %s(applied %d)", n.Name, applied)
		}
	}
	return b.String()
}

// TestOrphanedReplicaIsDropped stops a node, lets a new node replace its
// replica of a shard that placement then no longer gives it (the leader
// removes the dead node without being able to tell it), and restarts it:
// the replica it reopens is an orphan. The node must find and drop it, so
// that its ANY reads go to a real replica (the stale copy lacks what was
// written meanwhile) and its Leave completes.
func TestOrphanedReplicaIsDropped(t *testing.T) {
	shards, shard, name := orphanCase(t)
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	var x *Node
	for _, n := range c.Nodes {
		if n.Name == name {
			x = n
		}
	}
	pid := pidOn(shard, shards)
	ingest(t, c.Nodes[0], ev(scopev1.Kind_KIND_CALL, pid, 1))

	start := time.Now()
	c.Stop(x)
	// Every live node sees it dead before its replacement joins, so the
	// leader that removes it cannot tell it to drop its copy.
	WaitFor(t, name+" dead to every live node", 20*time.Second, func() bool {
		for _, n := range c.Live() {
			for _, m := range n.Members.Members() {
				if m.Name == name && m.State == cluster.MemberAlive {
					return false
				}
			}
		}
		return true
	})
	c.AddNode()
	WaitForWhy(t, name+" removed from shard's group", 30*time.Second, func() string {
		if known, listed := c.groupNames(shard, name); known && !listed {
			return ""
		}
		return c.describeGroup(shard)
	})
	t.Logf("replaced after %v", time.Since(start))
	var via *Node
	for _, n := range c.Live() {
		via = n
	}
	written := ingest(t, via, ev(scopev1.Kind_KIND_CALL, pid, 2))[0]

	x = c.Restart(x)
	if x.Node.Replica(shard) == nil {
		t.Fatalf("%s did not reopen its replica of shard %d", name, shard)
	}
	WaitFor(t, "the orphaned replica dropped", 20*time.Second, func() bool { return x.Node.Replica(shard) == nil })
	t.Logf("orphan dropped after %v", time.Since(start))
	// Usually dropped as an orphan. Under load gossip may briefly see the
	// new node dead, placement then gives the shard back to this node, and
	// its leader re-adds and later removes it the ordinary way (counter 0):
	// the outcome checked here is the same.
	_, body := httpBody(t, x.URL+"/metrics")
	t.Logf("%s: %s", name, grepLines(body, "scope_cluster_orphans_dropped_total "))
	// The group may be between leaders just now (the restart made the
	// balancer move leadership): wait for one, which must not name it.
	WaitFor(t, fmt.Sprintf("shard %d led by a group that does not name %s", shard, name), 20*time.Second, func() bool {
		known, listed := c.groupNames(shard, name)
		return known && !listed
	})

	resp, err := x.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{
		EventId: written, Consistency: scopev1.Consistency_CONSISTENCY_ANY, Origin: "app@host", Pid: pid}))
	if err != nil || resp.Msg.GetEvent().GetEventId() != written {
		t.Fatalf("ANY read via %s of an event written while it was down: %v %v", name, resp, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := x.Admin.Leave(ctx, connect.NewRequest(&scopev1.LeaveRequest{Name: x.Name})); err != nil {
		t.Fatalf("leave %s: %v", name, err)
	}
	t.Logf("left after %v", time.Since(start))
	if n := len(x.Node.Replicas()); n != 0 {
		t.Fatalf("%s left with %d replicas", name, n)
	}
}

// TestTransferLeadershipOnRequest: ClusterService.TransferLeadership sent
// to a node that does not lead the shard is carried out by the leader,
// which hands the leadership to the named voter; a target that is not a
// voter and a shard out of range are INVALID_ARGUMENT.
func TestTransferLeadershipOnRequest(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	const shard = 2
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Leader balancing may move the leadership between the look and the
	// call: then the call finds the target leading already (from = the
	// target), and the test picks again.
	var old, target, asked *Node
	for attempt := 0; ; attempt++ {
		old, target, asked = c.ShardLeader(shard), nil, nil
		if old == nil {
			t.Fatal("shard 2 has no leader")
		}
		for _, n := range c.Nodes {
			if n != old && (target == nil || len(ledBy(c, n, 4)) < len(ledBy(c, target, 4))) {
				target = n
			}
		}
		for _, n := range c.Nodes {
			if n != old && n != target {
				asked = n
			}
		}
		resp, err := asked.Admin.TransferLeadership(ctx, connect.NewRequest(&scopev1.TransferLeadershipRequest{Shard: shard, To: target.Name}))
		if err != nil {
			t.Fatalf("transfer through %s: %v", asked.Name, err)
		}
		if resp.Msg.GetFrom() == old.Name {
			break
		}
		if attempt == 5 {
			t.Fatalf("from %q, want the old leader %s (the leadership kept moving)", resp.Msg.GetFrom(), old.Name)
		}
	}
	if got := counterValue(t, old, "scope_cluster_requested_transfers_total"); got != 1 {
		t.Fatalf("%s counted %v requested transfers, want 1", old.Name, got)
	}
	WaitFor(t, "the named voter leading the shard", 10*time.Second, func() bool {
		l := c.ShardLeader(shard)
		return l != nil && l.Name == target.Name
	})
	for _, tc := range []struct {
		req  *scopev1.TransferLeadershipRequest
		want connect.Code
	}{
		{&scopev1.TransferLeadershipRequest{Shard: shard, To: "nobody"}, connect.CodeInvalidArgument},
		{&scopev1.TransferLeadershipRequest{Shard: 4}, connect.CodeInvalidArgument},
	} {
		// Only the leader can tell whether `to` is a voter: while the node
		// asked does not yet know the new leader, the call is UNAVAILABLE.
		var err error
		WaitFor(t, "an answer from the shard's leader", 10*time.Second, func() bool {
			_, err = asked.Admin.TransferLeadership(ctx, connect.NewRequest(tc.req))
			return connect.CodeOf(err) != connect.CodeUnavailable
		})
		if connect.CodeOf(err) != tc.want {
			t.Errorf("%v: %v, want %v", tc.req, err, tc.want)
		}
	}
	// A node that does not lead the shard, asked by another (which found
	// it the leader a moment before), answers UNAVAILABLE so that the
	// caller asks again: it was FAILED_PRECONDITION, which the forwarding
	// node passed on as final (this test failed so in CI).
	for _, n := range c.Nodes {
		r := n.Node.Replica(shard)
		if r == nil || r.IsLeader() {
			continue
		}
		client := nodev1connect.NewNodeServiceClient(http.DefaultClient, n.URL)
		_, err := client.TransferLeadership(ctx, connect.NewRequest(&nodev1.TransferLeadershipRequest{Shard: shard, To: "nobody"}))
		if code := connect.CodeOf(err); code != connect.CodeUnavailable && !(code == connect.CodeInvalidArgument && r.IsLeader()) {
			t.Fatalf("%s, not the leader of shard %d, asked to transfer it: %v, want unavailable", n.Name, shard, err)
		}
		break
	}
}
