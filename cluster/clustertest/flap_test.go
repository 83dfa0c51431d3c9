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
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Flap damping and bounded background work (docs/DECISIONS.md D25).

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

// Stalled-peer tests run with stalledRPCTimeout, so that a call to the
// stalled peer waits far longer than the work that does not involve it
// may take (stalledCallsBound), even on a loaded machine.
const (
	stalledRPCTimeout = 60 * time.Second
	stalledCallsBound = 15 * time.Second
)

// crossShardSend returns a SEND from a process on shard from to one on
// shard to (origin app@host), with a payload unique to tag.
func crossShardSend(from, to uint32, shards uint32, tag string) *scopev1.Event {
	return &scopev1.Event{Origin: "app@host", Pid: pidOnShard(from, shards), Kind: scopev1.Kind_KIND_SEND,
		TimestampNs: time.Now().UnixNano(), PeerOrigin: "app@host", PeerPid: pidOn(to, shards), Payload: tag}
}

// pendingNotices returns the destination shards of the notices in the
// outbox of n's replica of src.
func pendingNotices(n *Node, src uint32) []uint32 {
	var out []uint32
	if r := n.Node.Replica(src); r != nil {
		for _, nt := range r.Outbox() {
			if !slices.Contains(out, nt.ToShard) {
				out = append(out, nt.ToShard)
			}
		}
	}
	return out
}

// ledBy returns the shards whose leader is n.
func ledBy(c *Cluster, n *Node, shards uint32) []uint32 {
	var out []uint32
	for s := range shards {
		if c.ShardLeader(s) == n {
			out = append(out, s)
		}
	}
	return out
}

// stuckOnlyOn reports whether every notice waiting in the outbox of a
// shard not led by p is for a shard p leads (false while a shard has no
// leader).
func stuckOnlyOn(c *Cluster, p *Node, shards uint32) bool {
	for s := range shards {
		l := c.ShardLeader(s)
		if l == nil {
			return false
		}
		if l == p {
			continue
		}
		for _, d := range pendingNotices(l, s) {
			if c.ShardLeader(d) != p {
				return false
			}
		}
	}
	return true
}

// sendAll ingests, through n, one SEND from every shard to every other.
func sendAll(t *testing.T, n *Node, shards uint32, tag string) {
	t.Helper()
	for s := range shards {
		for d := range shards {
			if d != s {
				ingest(t, n, crossShardSend(s, d, shards, fmt.Sprintf("%s-%d-%d", tag, s, d)))
			}
		}
	}
}

// TestStalledPeerDoesNotStallNotices: node P answers gossip (alive) but
// never answers a node-to-node call. Every shard sends to every other, so
// the other nodes' leaders have notices waiting on P; notices sent next,
// from shards P does not lead to shards P does not lead, must be delivered
// (and leave the outboxes) within stalledCallsBound. Then a node whose
// delivery waits on P closes its cluster and node, each within its
// context's deadline. (Leadership may move meanwhile: only the current
// leaders count.)
func TestStalledPeerDoesNotStallNotices(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3, RPCTimeout: stalledRPCTimeout})
	var p *Node
	WaitFor(t, "a node P leading a shard, another node leading another", 20*time.Second, func() bool {
		for _, n := range c.Nodes {
			if led := len(ledBy(c, n, shards)); led > 0 && led < shards {
				p = n
				return true
			}
		}
		return false
	})
	c.StallNodeService(p.Name, true)
	held := func() bool {
		h, _ := c.StalledCalls(p.Name, nodev1connect.NodeServiceDeliverNoticesProcedure)
		return h > 0
	}
	sendAll(t, c.Nodes[0], shards, "first")
	WaitFor(t, "a notice delivery waiting on P", 20*time.Second, held)
	start := time.Now()
	sendAll(t, c.Nodes[0], shards, "second")
	WaitFor(t, "notices between shards P does not lead delivered", 2*stalledCallsBound, func() bool {
		return stuckOnlyOn(c, p, shards)
	})
	if took := time.Since(start); took > stalledCallsBound {
		t.Fatalf("notices between shards P does not lead took %v with P stalled: want under %v", took, stalledCallsBound)
	} else {
		t.Logf("notices between shards P (%s, leading %v) does not lead delivered in %v", p.Name, ledBy(c, p, shards),
			took.Round(time.Millisecond))
	}

	// A node whose delivery waits on P closes, bounded by the context.
	var a *Node
	WaitFor(t, "a node's notice delivery waiting on P", 15*time.Second, func() bool {
		if !held() {
			return false
		}
		for s := range uint32(shards) {
			if l := c.ShardLeader(s); l != nil && l != p && slices.ContainsFunc(pendingNotices(l, s), func(d uint32) bool {
				return c.ShardLeader(d) == p
			}) {
				a = l
				return true
			}
		}
		return false
	})
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
// out stalledRPCTimeout). Then a leader closes its cluster and node
// while its calls to n4 wait, within the contexts' deadline.
func TestStalledPeerDoesNotStallReconcile(t *testing.T) {
	const shards = 8
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 3, RPCTimeout: stalledRPCTimeout})
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
	WaitFor(t, fmt.Sprintf("n5 a voter of shards %v", want), 2*stalledCallsBound, func() bool {
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
