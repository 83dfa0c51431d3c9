package clustertest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Flap damping and bounded background work (docs/DECISIONS.md D23).

// groupConfig returns shard's configuration as its leader has it, as
// sorted "name/suffrage" strings, or nil if no leader is known.
func (c *Cluster) groupConfig(shard uint32) []string {
	l := c.ShardLeader(shard)
	if l == nil {
		return nil
	}
	r := l.Node.Replica(shard)
	if r == nil {
		return nil
	}
	f := r.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []string
	for _, s := range f.Configuration().Servers {
		out = append(out, fmt.Sprintf("%s/%v", s.ID, s.Suffrage))
	}
	sort.Strings(out)
	return out
}

// moveCounts sums every live node's membership changes.
func moveCounts(c *Cluster) (additions, promotions, removals uint64) {
	for _, n := range c.Live() {
		st := n.Cluster.Stats()
		additions += st.Additions
		promotions += st.Promotions
		removals += st.Removals
	}
	return additions, promotions, removals
}

// waitRounds waits until each of nodes has started k more reconciliation
// rounds than when called: steps of the rounds before have been started.
func waitRounds(t *testing.T, nodes []*Node, k uint64) {
	t.Helper()
	start := make(map[*Node]uint64)
	for _, n := range nodes {
		start[n] = n.Cluster.Stats().Rounds
	}
	for _, n := range nodes {
		WaitFor(t, fmt.Sprintf("%d reconciliation rounds on %s", k, n.Name), 20*time.Second, func() bool {
			return n.Cluster.Stats().Rounds >= start[n]+k
		})
	}
}

// TestFlappingNodeMovesNothing cuts one node's gossip until the others
// declare it dead, heals it until they see it alive, three times, with a
// spare node that placement would give its replicas. The node's raft links
// stay up: its groups never needed a change. With the damping, no group
// changes: no non-voter added, nothing promoted or removed, the same
// configurations throughout. (Without it — StabilizationTime 0 — each
// death adds the spare to the flapping node's groups and each return
// removes it again.)
func TestFlappingNodeMovesNothing(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 4, Shards: shards, Replicas: 3, StabilizationTime: 20 * time.Second})
	flapper := c.Nodes[3]
	others := othersThan(c, flapper)
	waitRounds(t, c.Nodes, 2)
	before := make(map[uint32][]string)
	for s := range uint32(shards) {
		WaitFor(t, fmt.Sprintf("shard %d led", s), 20*time.Second, func() bool { before[s] = c.groupConfig(s); return before[s] != nil })
	}
	a0, p0, r0 := moveCounts(c)
	for flap := range 3 {
		c.PartitionLinks(flapper, LinkGossip)
		waitMemberState(t, others, flapper.Name, cluster.MemberDead)
		// Every other node has run rounds that saw the flapper dead: a
		// reconciler without damping adds the spare by now.
		waitRounds(t, others, 3)
		c.Heal(flapper)
		waitMemberState(t, others, flapper.Name, cluster.MemberAlive)
		for _, o := range others {
			waitMemberState(t, []*Node{flapper}, o.Name, cluster.MemberAlive)
		}
		waitRounds(t, c.Nodes, 3)
		if a, p, r := moveCounts(c); a != a0 || p != p0 || r != r0 {
			t.Fatalf("flap %d: %d additions, %d promotions, %d removals; want none", flap+1, a-a0, p-p0, r-r0)
		}
	}
	for s := range uint32(shards) {
		var got []string
		WaitFor(t, fmt.Sprintf("shard %d led", s), 20*time.Second, func() bool { got = c.groupConfig(s); return got != nil })
		if !slices.Equal(got, before[s]) {
			t.Fatalf("shard %d: configuration %v after the flaps, was %v", s, got, before[s])
		}
	}
}

// stalledCallsBound is how long the work that does not involve a stalled
// peer may take: far below the 10 s RPCTimeout a call to the stalled peer
// waits for.
const stalledCallsBound = 4 * time.Second

// crossShardSend returns a SEND from a process on shard from to one on
// shard to (origin app@host), with a payload unique to tag.
func crossShardSend(from, to uint32, shards uint32, tag string) *scopev1.Event {
	return &scopev1.Event{Origin: "app@host", Pid: pidOnShard(from, shards), Kind: scopev1.Kind_KIND_SEND,
		TimestampNs: time.Now().UnixNano(), PeerOrigin: "app@host", PeerPid: pidOn(to, shards), Payload: tag}
}

// outboxHolds reports whether r's outbox holds a notice for shard dest.
func outboxHolds(n *Node, src, dest uint32) bool {
	r := n.Node.Replica(src)
	if r == nil {
		return false
	}
	return slices.ContainsFunc(r.Outbox(), func(nt correlate.Notice) bool { return nt.ToShard == dest })
}

// TestStalledPeerDoesNotStallNotices: node P answers gossip (alive) but
// never answers a node-to-node call. Node A, the leader of a source shard,
// has notices for a shard P leads and is waiting on P; a notice from A's
// shard to a shard P does not lead must still be delivered (and removed
// from the outbox) within stalledCallsBound. Then A's node closes during
// the stall within its context's deadline.
func TestStalledPeerDoesNotStallNotices(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	// Leadership settled: no node leads two more shards than another.
	WaitFor(t, "leadership balanced", 20*time.Second, func() bool {
		led := make(map[string]int)
		for s := range uint32(shards) {
			l := c.ShardLeader(s)
			if l == nil {
				return false
			}
			led[l.Name]++
		}
		lo, hi := shards, 0
		for _, n := range c.Nodes {
			lo, hi = min(lo, led[n.Name]), max(hi, led[n.Name])
		}
		return hi-lo <= 1
	})
	// P leads d1; A (another node) leads src; d2 is neither src nor led
	// by P.
	var a, p *Node
	var src, d1, d2 uint32
	found := false
	for s := uint32(0); s < shards && !found; s++ {
		for t1 := uint32(0); t1 < shards && !found; t1++ {
			for t2 := uint32(0); t2 < shards && !found; t2++ {
				ls, l1, l2 := c.ShardLeader(s), c.ShardLeader(t1), c.ShardLeader(t2)
				if ls != nil && l1 != nil && l2 != nil && ls != l1 && l2 != l1 && t2 != s && t1 != s {
					a, p, src, d1, d2, found = ls, l1, s, t1, t2, true
				}
			}
		}
	}
	if !found {
		t.Fatal("no (source, stalled destination, free destination) shards with distinct leaders")
	}
	t.Logf("A=%s leads source shard %d; P=%s leads shard %d (stalled); shard %d led by %s", a.Name, src, p.Name, d1,
		d2, c.ShardLeader(d2).Name)

	c.StallNodeService(p.Name, true)
	ingest(t, a, crossShardSend(src, d1, shards, "to-stalled"))
	WaitFor(t, "A's notice delivery waiting on P", 10*time.Second, func() bool {
		held, _ := c.StalledCalls(p.Name, nodev1connect.NodeServiceDeliverNoticesProcedure)
		return held > 0
	})
	start := time.Now()
	ingest(t, a, crossShardSend(src, d2, shards, "to-free"))
	WaitFor(t, "notice to the shard P does not lead delivered", 3*stalledCallsBound, func() bool {
		return !outboxHolds(a, src, d2)
	})
	if took := time.Since(start); took > stalledCallsBound {
		t.Fatalf("a notice to shard %d took %v with P stalled: want under %v", d2, took, stalledCallsBound)
	} else {
		t.Logf("notice to shard %d delivered in %v while P stalls", d2, took.Round(time.Millisecond))
	}
	if !outboxHolds(a, src, d1) {
		t.Fatalf("the notice for stalled P's shard %d left the outbox", d1)
	}

	// A closes while its delivery to P waits: bounded by the context.
	if held, _ := c.StalledCalls(p.Name, nodev1connect.NodeServiceDeliverNoticesProcedure); held == 0 {
		WaitFor(t, "A's notice delivery waiting on P again", 15*time.Second, func() bool {
			held, _ := c.StalledCalls(p.Name, nodev1connect.NodeServiceDeliverNoticesProcedure)
			return held > 0
		})
	}
	closeWithin(t, a, 2*time.Second)
	c.StallNodeService(p.Name, false)
	c.Stop(a)
}

// closeWithin closes n's cluster, then its node, each with a context of
// deadline d, and fails if either takes longer than d.
func closeWithin(t *testing.T, n *Node, d time.Duration) {
	t.Helper()
	for _, step := range []struct {
		what  string
		close func(context.Context) error
	}{{"Cluster.Close", n.Cluster.Close}, {"Node.Close", n.Node.Close}} {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		start := time.Now()
		err := step.close(ctx)
		took := time.Since(start)
		cancel()
		// A deadline error is allowed (what was left is reported); taking
		// longer than the deadline is not.
		if took > d+500*time.Millisecond {
			t.Fatalf("%s %s took %v (err %v): want within its %v deadline", n.Name, step.what, took, err, d)
		}
		t.Logf("%s %s returned in %v (err %v)", n.Name, step.what, took.Round(time.Millisecond), err)
	}
}

// TestStalledPeerDoesNotStallReconcile adds to a 3-node cluster n4, alive
// in gossip but answering no node-to-node call, and once leaders are
// waiting on n4, n5, healthy. Every shard whose placement never wanted n4
// and now wants n5 must get n5 as a voter within stalledCallsBound, though
// the same leaders keep calling n4 for their other shards (each call waits
// out the 10 s RPCTimeout). Then a leader closes its cluster and node
// while its calls to n4 wait, within the contexts' deadline.
func TestStalledPeerDoesNotStallReconcile(t *testing.T) {
	const shards = 8
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3})
	c.StallNodeService("n4", true)
	n4 := c.AddNode()
	WaitFor(t, "a leader waiting on n4's OpenReplica", 15*time.Second, func() bool {
		held, _ := c.StalledCalls(n4.Name, nodev1connect.NodeServiceOpenReplicaProcedure)
		return held > 0
	})
	n5 := c.AddNode()
	added := time.Now()
	four := []string{"n1", "n2", "n3", n4.Name}
	five := append(slices.Clone(four), n5.Name)
	var want []uint32 // shards that never wanted n4 and now want n5
	stuck := 0
	for s := range uint32(shards) {
		p4, p5 := cluster.Placement(s, four, 3), cluster.Placement(s, five, 3)
		if slices.Contains(p5, n4.Name) {
			stuck++
		}
		if !slices.Contains(p4, n4.Name) && !slices.Contains(p5, n4.Name) && slices.Contains(p5, n5.Name) {
			want = append(want, s)
		}
	}
	if len(want) == 0 || stuck == 0 {
		t.Fatalf("placement gives n5 alone %d shards and n4 %d: the test needs both", len(want), stuck)
	}
	WaitFor(t, fmt.Sprintf("n5 a voter of shards %v", want), 3*stalledCallsBound, func() bool {
		for _, s := range want {
			if !slices.Contains(c.groupConfig(s), n5.Name+"/"+raft.Voter.String()) {
				return false
			}
		}
		return true
	})
	// n5 became a candidate after the stabilization time (300 ms here).
	if took := time.Since(added); took > stalledCallsBound {
		t.Fatalf("n5 joined shards %v in %v while n4 stalls: want under %v", want, took, stalledCallsBound)
	} else {
		t.Logf("n5 a voter of shards %v in %v while n4 stalls (%d shards want n4)", want, took.Round(time.Millisecond), stuck)
	}

	// A leader waiting on n4 closes within its deadline.
	var l *Node
	WaitFor(t, "a leader of a shard that wants n4, waiting on n4", 15*time.Second, func() bool {
		held, _ := c.StalledCalls(n4.Name, nodev1connect.NodeServiceOpenReplicaProcedure)
		for s := range uint32(shards) {
			if slices.Contains(cluster.Placement(s, five, 3), n4.Name) {
				if l = c.ShardLeader(s); l != nil && held > 0 {
					return true
				}
			}
		}
		return false
	})
	closeWithin(t, l, 2*time.Second)
	c.StallNodeService(n4.Name, false)
	c.Stop(l)
}
