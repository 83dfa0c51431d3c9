package clustertest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http keeps idle client connections to the test servers.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// A memberlist probe under way when its member shuts down waits out
		// its timeout (up to a probe interval) before it returns. A member
		// that was not shut down leaves its listeners and timers, which are
		// still reported.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

func ev(kind scopev1.Kind, pid string, ts int64) *scopev1.Event {
	e := &scopev1.Event{Origin: "app@host", Pid: pid, Kind: kind, TimestampNs: ts}
	if kind == scopev1.Kind_KIND_CALL || kind == scopev1.Kind_KIND_RETURN {
		e.Module, e.Function, e.Arity = "worker", "handle", 1
	}
	return e
}

// ingest sends events through n with COMMITTED durability and returns
// their ids. UNAVAILABLE (no leader known for a shard, an election under
// way) is the transient the API tells clients to retry, so it is retried
// until the deadline, as a client would; the request is the same each time
// and event ids make a retry idempotent. Any other error fails the test.
func ingest(t *testing.T, n *Node, events ...*scopev1.Event) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		resp, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events}))
		if err == nil {
			return resp.Msg.GetEventIds()
		}
		if Code(err) != connect.CodeUnavailable || ctx.Err() != nil {
			t.Fatalf("ingest via %s: %v", n.Name, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// allEvents pages through every event via n's Events (cross-shard merge).
func allEvents(t *testing.T, n *Node) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for {
		resp, err := n.Query.Events(context.Background(), connect.NewRequest(&scopev1.EventsRequest{Limit: 7, Cursor: cursor}))
		if err != nil {
			t.Fatalf("events via %s: %v", n.Name, err)
		}
		for _, e := range resp.Msg.GetEvents() {
			ids = append(ids, e.GetEventId())
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			return ids
		}
	}
}

// TestClusterFormsAndAnswersEverywhere forms a 3-node cluster, ingests
// through every node (parts for shards led elsewhere are forwarded), and
// checks that every node answers every query the same way, with a
// message between processes on different nodes paired.
func TestClusterFormsAndAnswersEverywhere(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	var want []string
	for i, n := range c.Nodes {
		pid := fmt.Sprintf("<0.%d.0>", 100+i)
		want = append(want, ingest(t, n,
			ev(scopev1.Kind_KIND_CALL, pid, int64(1000*i+1)),
			ev(scopev1.Kind_KIND_RETURN, pid, int64(1000*i+5)))...)
	}
	// A message from a process on one shard to one on another.
	a, b := "<0.200.0>", "<0.201.0>"
	for i := 202; correlate.ShardOf("app@host", a, 4) == correlate.ShardOf("app@host", b, 4); i++ {
		b = fmt.Sprintf("<0.%d.0>", i)
	}
	send := &scopev1.Event{Origin: "app@host", Pid: a, Kind: scopev1.Kind_KIND_SEND, TimestampNs: 5000,
		PeerOrigin: "app@host", PeerPid: b, Payload: "{job,1}"}
	recv := &scopev1.Event{Origin: "app@host", Pid: b, Kind: scopev1.Kind_KIND_RECEIVE, TimestampNs: 5001, Payload: "{job,1}"}
	sendID := ingest(t, c.Nodes[0], send)[0]
	recvID := ingest(t, c.Nodes[1], recv)[0]
	want = append(want, sendID, recvID)

	// A resend through every node (forwarded where the node does not lead
	// the shard) stores nothing and is reported as duplicates: the clients
	// set no ids, the ids derive from the content.
	// UNAVAILABLE (leadership moving right after formation: nothing was
	// taken) is retried, as a client would.
	for _, n := range c.Nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var resp *connect.Response[scopev1.IngestResponse]
		var err error
		for {
			resp, err = n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{send, recv}}))
			if Code(err) != connect.CodeUnavailable || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		cancel()
		if err != nil || resp.Msg.GetAccepted() != 0 || resp.Msg.GetDuplicates() != 2 ||
			!slices.Equal(resp.Msg.GetEventIds(), []string{sendID, recvID}) {
			t.Fatalf("resend via %s: %v %v, want 2 duplicates with the first ids", n.Name, resp, err)
		}
	}
	sort.Strings(want) // ULIDs from one process are time ordered; timestamps here are too

	for _, n := range c.Nodes {
		got := allEvents(t, n)
		if len(got) != len(want) {
			t.Fatalf("%s answers %d events, want %d: %v", n.Name, len(got), len(want), got)
		}
		gotSorted := slices.Clone(got)
		sort.Strings(gotSorted)
		if !slices.Equal(gotSorted, want) {
			t.Fatalf("%s answers %v, want %v", n.Name, got, want)
		}
	}
	for _, n := range c.Nodes {
		WaitFor(t, "receive linked to its send via "+n.Name, 20*time.Second, func() bool {
			resp, err := n.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{EventId: recvID}))
			if err != nil {
				return false
			}
			for _, l := range resp.Msg.GetEvent().GetLinks() {
				if l.GetType() == scopev1.LinkType_LINK_TYPE_RECEIVED_FROM && l.GetTargetEventId() == sendID {
					return true
				}
			}
			return false
		})
	}
}

// TestLeaderLossKeepsCallStacks opens a call, stops the node leading its
// shard without warning, and sends the RETURN to another node: the call
// stack survived on the other replicas, so the RETURN closes the CALL.
func TestLeaderLossKeepsCallStacks(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4, Replicas: 3})
	pid := "<0.77.0>"
	shard := correlate.ShardOf("app@host", pid, 4)
	callID := ingest(t, c.Nodes[0], ev(scopev1.Kind_KIND_CALL, pid, 100))[0]

	leader := c.WaitShardLeader(shard)
	c.Stop(leader)
	var survivor *Node
	for _, n := range c.Live() {
		survivor = n
	}
	WaitFor(t, "new leader elected", 30*time.Second, func() bool { return c.ShardLeader(shard) != nil })
	var retIDs []string
	WaitFor(t, "RETURN accepted after failover", 30*time.Second, func() bool {
		resp, err := survivor.Ingest.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{
			Events: []*scopev1.Event{ev(scopev1.Kind_KIND_RETURN, pid, 350)}}))
		if err != nil {
			return false
		}
		retIDs = resp.Msg.GetEventIds()
		return true
	})
	resp, err := survivor.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{EventId: retIDs[0]}))
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Msg.GetEvent()
	if got.GetCorrelationId() != callID || got.GetDurationNs() != 250 || got.GetOrphan() {
		t.Fatalf("RETURN after failover not matched to the CALL %s: %v", callID, got)
	}
	// The acknowledged CALL is still there.
	if _, err := survivor.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{EventId: callID})); err != nil {
		t.Fatalf("CALL acknowledged before the failover is gone: %v", err)
	}
}

// TestJoinMovesShardsToPlacement joins a fourth node to a 3-node cluster
// with R=3: every shard's group converges to its placement over four
// nodes, nothing acknowledged is lost, and every replica of a shard ends
// with an identical span.
func TestJoinMovesShardsToPlacement(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	var want []string
	for i := range 20 {
		pid := fmt.Sprintf("<0.%d.0>", i)
		want = append(want, ingest(t, c.Nodes[i%3], ev(scopev1.Kind_KIND_CALL, pid, int64(i*10+1)))...)
	}
	c.AddNode()
	names := []string{"n1", "n2", "n3", "n4"}
	WaitFor(t, "groups converge to the 4-node placement", 60*time.Second, func() bool {
		for s := range uint32(shards) {
			leader := c.ShardLeader(s)
			if leader == nil {
				return false
			}
			f := leader.Node.Replica(s).Raft().GetConfiguration()
			if f.Error() != nil {
				return false
			}
			var voters []string
			for _, srv := range f.Configuration().Servers {
				if srv.Suffrage != raft.Voter {
					return false
				}
				voters = append(voters, string(srv.ID))
			}
			desired := cluster.Placement(s, names, 3)
			sort.Strings(voters)
			sort.Strings(desired)
			if !slices.Equal(voters, desired) {
				return false
			}
			// Removed replicas are dropped from their old node.
			for _, n := range c.Live() {
				if (n.Node.Replica(s) != nil) != slices.Contains(desired, n.Name) {
					return false
				}
			}
		}
		return true
	})
	// Leadership spreads: no shard's leader leads two or more shards more
	// than another voter of its group (the joiner starts leading nothing).
	WaitFor(t, "leaders balanced", 60*time.Second, func() bool {
		led := map[string]int{}
		for s := range uint32(shards) {
			l := c.ShardLeader(s)
			if l == nil {
				return false
			}
			led[l.Name]++
		}
		for s := range uint32(shards) {
			l := c.ShardLeader(s)
			if l == nil {
				return false
			}
			f := l.Node.Replica(s).Raft().GetConfiguration()
			if f.Error() != nil {
				return false
			}
			for _, srv := range f.Configuration().Servers {
				if led[l.Name]-led[string(srv.ID)] >= 2 {
					return false
				}
			}
		}
		return true
	})
	for s := range uint32(shards) {
		var digests []uint64
		WaitFor(t, fmt.Sprintf("shard %d replicas identical", s), 30*time.Second, func() bool {
			digests = digests[:0]
			for _, n := range c.Live() {
				if n.Node.Replica(s) == nil {
					continue
				}
				d, err := n.Node.Store().Digest(s)
				if err != nil {
					return false
				}
				digests = append(digests, d)
			}
			return len(digests) == 3 && digests[0] == digests[1] && digests[1] == digests[2]
		})
	}
	sort.Strings(want)
	c.WaitReady(30 * time.Second) // every node has learned the new leaders
	for _, n := range c.Live() {
		got := allEvents(t, n)
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Fatalf("%s answers %d events after the join, want %d", n.Name, len(got), len(want))
		}
	}
}

// TestJoinTwoNodesUnderLoad joins nodes 4 and 5 to a 3-node cluster (R=3)
// while a loader ingests through the first three: every shard's group
// converges to its placement over five nodes (replicas moved away are
// dropped), every acknowledged event is stored exactly once, and all
// replicas of each shard end at the same applied index with equal span
// digests. The joiners then take ingest themselves. SCOPE_SOAK: 16 shards
// and ten times the load.
func TestJoinTwoNodesUnderLoad(t *testing.T) {
	shards := uint32(4)
	if faultSoak() {
		shards = 16
	}
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	l := startLoader(t, LoaderOptions{Via: slices.Clone(c.Nodes), Workers: 3})
	waitAcked(t, l, loadTarget(100), "before the joins")

	n4 := c.AddNode()
	n5 := c.AddNode()
	names := nodeNames(c.Nodes)
	waitAcked(t, l, l.Acked()+loadTarget(100), "while 4 and 5 join")
	// Convergence happens under load: the loader keeps running.
	c.WaitPlacement(names, 90*time.Second)
	moved := l.Acked()
	waitAcked(t, l, moved+loadTarget(100), "after the groups moved")
	res := l.Stop()

	// The joiners take ingest, too (forwarded to the leaders).
	l = startLoader(t, LoaderOptions{Via: []*Node{n4, n5}})
	waitAcked(t, l, loadTarget(50), "through the joiners")
	res.Merge(l.Stop())

	c.WaitReplicasIdentical(3, 90*time.Second)
	c.WaitReady(60 * time.Second)
	stored := c.CheckLoad(n5, res)
	for _, n := range []*Node{n4, n5} {
		if len(n.Node.Replicas()) == 0 {
			t.Errorf("%s joined but hosts no replica", n.Name)
		}
	}
	dc, ds := c.Duplicates()
	t.Logf("join 4+5: %d acknowledged, %d stored, %d requests, %d failed, duplicates skipped %d+%d; replicas per node %v",
		len(res.Acked), stored, res.Requests, res.Failures, dc, ds, replicasPerNode(c))
}

func replicasPerNode(c *Cluster) map[string]int {
	out := make(map[string]int)
	for _, n := range c.Live() {
		out[n.Name] = len(n.Node.Replicas())
	}
	return out
}
