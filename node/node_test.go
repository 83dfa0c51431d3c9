package node_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

// testNode is a node on a real raft mux over loopback TCP.
type testNode struct {
	*node.Node
	mux *cluster.Mux
	dir string
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fastTiming keeps elections short for tests.
func fastTiming() node.RaftTiming {
	t := node.DefaultRaftTiming()
	t.HeartbeatTimeout = 100 * time.Millisecond
	t.ElectionTimeout = 100 * time.Millisecond
	t.LeaderLeaseTimeout = 50 * time.Millisecond
	t.CommitTimeout = 5 * time.Millisecond
	return t
}

func openTestNode(t testing.TB, id, dir string, shards uint32, edit func(*node.Config)) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux, err := cluster.NewMux(ln, cluster.DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig(id, dir)
	cfg.RaftAddr = mux.Addr().String()
	cfg.Shards = shards
	cfg.Raft = fastTiming()
	cfg.Logger = quietLogger()
	cfg.Store.Logger = cfg.Logger
	cfg.Transport = func(shard uint32) (raft.Transport, error) {
		stream, err := mux.StreamLayer(shard)
		if err != nil {
			return nil, err
		}
		return raft.NewNetworkTransport(stream, 2, 2*time.Second, io.Discard), nil
	}
	if edit != nil {
		edit(&cfg)
	}
	n, err := node.Open(cfg)
	if err != nil {
		_ = mux.Close()
		t.Fatal(err)
	}
	tn := &testNode{Node: n, mux: mux, dir: dir}
	t.Cleanup(func() { tn.close(t) })
	return tn
}

func (tn *testNode) close(t testing.TB) {
	if tn.Node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.Node.Close(ctx); err != nil {
		t.Errorf("close node: %v", err)
	}
	_ = tn.mux.Close()
	tn.Node = nil
}

func bootstrapped(t testing.TB, id, dir string, shards uint32) *testNode {
	t.Helper()
	tn := openTestNode(t, id, dir, shards, nil)
	if err := tn.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "every shard led", 10*time.Second, func() bool {
		for _, r := range tn.Replicas() {
			if !r.IsLeader() {
				return false
			}
		}
		return true
	})
	return tn
}

func mustIngest(t *testing.T, n *node.Node, d node.Durability, events ...correlate.Event) node.IngestResult {
	t.Helper()
	res := n.Ingest(context.Background(), events, d)
	for _, s := range res.Shards {
		if s.Err != nil || s.Accepted+s.Duplicates+s.Repeats != s.Events {
			t.Fatalf("shard %d: accepted %d (duplicates %d, repeats %d) of %d: %v", s.Shard, s.Accepted,
				s.Duplicates, s.Repeats, s.Events, s.Err)
		}
	}
	return res
}

func call(origin, pid, m, f string, ts int64) correlate.Event {
	return correlate.Event{Origin: origin, PID: pid, Kind: correlate.KindCall, TimestampNs: ts,
		Module: m, Function: f, Arity: 1}
}

func ret(origin, pid, m, f string, ts int64) correlate.Event {
	return correlate.Event{Origin: origin, PID: pid, Kind: correlate.KindReturn, TimestampNs: ts,
		Module: m, Function: f, Arity: 1}
}

func get(t *testing.T, n *node.Node, e correlate.Event, id correlate.EventID) correlate.Event {
	t.Helper()
	got, err := n.Store().Get(correlate.ShardOf(e.Origin, e.PID, n.Shards()), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return got
}

// TestCorrelationSurvivesRestart ingests a CALL, closes the node, reopens it
// on the same data dir and checks that a RETURN sent afterwards closes the
// CALL: the correlator state was restored from the store.
func TestCorrelationSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	n := bootstrapped(t, "n1", dir, 4)
	c := call("app@h", "<0.1.0>", "m", "f", 1000)
	callID := mustIngest(t, n.Node, node.Committed, c).IDs[0]
	n.close(t)

	n = bootstrapped(t, "n1", dir, 4)
	if got := get(t, n.Node, c, callID); got.Kind != correlate.KindCall {
		t.Fatalf("CALL after restart: %+v", got)
	}
	r := ret("app@h", "<0.1.0>", "m", "f", 1500)
	retID := mustIngest(t, n.Node, node.Committed, r).IDs[0]
	got := get(t, n.Node, r, retID)
	if got.CorrelationID != callID.String() || got.DurationNs != 500 || got.Orphan ||
		got.Outcome != correlate.OutcomeOK {
		t.Fatalf("RETURN after restart not matched to the CALL: %+v", got)
	}
	if !hasLink(got, correlate.LinkCompletes, callID) {
		t.Fatalf("RETURN has no COMPLETES link to %s: %+v", callID, got.Links)
	}
}

func hasLink(e correlate.Event, typ correlate.LinkType, to correlate.EventID) bool {
	for _, l := range e.Links {
		if l.Type == typ && l.Target == to {
			return true
		}
	}
	return false
}

// twoProcessesOnDifferentShards finds a sender and a receiver that live on
// different shards.
func twoProcessesOnDifferentShards(shards uint32) (a, b correlate.Process) {
	a = correlate.Process{Origin: "app@h", PID: "<0.10.0>"}
	for i := 11; ; i++ {
		b = correlate.Process{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		if correlate.ShardOf(a.Origin, a.PID, shards) != correlate.ShardOf(b.Origin, b.PID, shards) {
			return a, b
		}
	}
}

// TestCrossShardMessagesPair sends a message between processes on different
// shards of one node: the send notice travels through the sender shard's
// outbox, and the receive is linked to the send whichever arrives first.
func TestCrossShardMessagesPair(t *testing.T) {
	n := bootstrapped(t, "n1", t.TempDir(), 4)
	a, b := twoProcessesOnDifferentShards(4)
	send := correlate.Event{Origin: a.Origin, PID: a.PID, Kind: correlate.KindSend, TimestampNs: 10,
		PeerOrigin: b.Origin, PeerPID: b.PID, Payload: "{ping,1}"}
	// BEAM's receive trace carries no sender.
	recv := correlate.Event{Origin: b.Origin, PID: b.PID, Kind: correlate.KindReceive, TimestampNs: 20,
		Payload: "{ping,1}"}
	// The receive is ingested first: it must wait for the notice.
	recvID := mustIngest(t, n.Node, node.Committed, recv).IDs[0]
	sendID := mustIngest(t, n.Node, node.Committed, send).IDs[0]

	recvShard := correlate.ShardOf(b.Origin, b.PID, 4)
	testwait.For(t, "receive linked to send", 10*time.Second, func() bool {
		got, err := n.Store().Get(recvShard, recvID)
		return err == nil && hasLink(got, correlate.LinkReceivedFrom, sendID)
	})
	links, err := n.Store().Edges(recvShard, sendID)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0] != (correlate.Link{Type: correlate.LinkDeliveredTo, Target: recvID}) {
		t.Fatalf("DELIVERED_TO edges of the send on the receiver's shard: %+v", links)
	}
	// The outbox drains once the notice is acknowledged.
	sendShard := n.Replica(correlate.ShardOf(a.Origin, a.PID, 4))
	testwait.For(t, "outbox drained", 10*time.Second, func() bool { return len(sendShard.Outbox()) == 0 })
}

// TestIngestIsIdempotent sends the same batch twice: stored once.
func TestIngestIsIdempotent(t *testing.T) {
	n := bootstrapped(t, "n1", t.TempDir(), 2)
	batch := []correlate.Event{call("a@h", "<0.1.0>", "m", "f", 1), ret("a@h", "<0.1.0>", "m", "f", 2)}
	ids := mustIngest(t, n.Node, node.Committed, batch...).IDs
	again := []correlate.Event{call("a@h", "<0.1.0>", "m", "f", 1), ret("a@h", "<0.1.0>", "m", "f", 2)}
	again[0].ID, again[1].ID = ids[0], ids[1]
	if res := mustIngest(t, n.Node, node.Committed, again...); res.Shards[0].Duplicates != 2 || res.Shards[0].Accepted != 0 {
		t.Fatalf("resend: %+v, want both events reported as duplicates", res.Shards)
	}

	shard := correlate.ShardOf("a@h", "<0.1.0>", 2)
	page, err := n.Store().Events(shard, store.Query{FromNs: -1 << 63, ToNs: 1<<63 - 1, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 2 {
		t.Fatalf("stored %d events after a retried batch, want 2", len(page.Events))
	}
}

// TestSnapshotInstallsOnNewReplica grows a one-voter group, snapshots and
// truncates its log, then adds a replica on a second node: the new replica
// can only catch up through the snapshot (store span + correlator state),
// and must end byte-identical, with call stacks intact.
func TestSnapshotInstallsOnNewReplica(t *testing.T) {
	const shards = 1
	tiny := func(c *node.Config) {
		c.Raft.TrailingLogs = 1
		c.Raft.SnapshotThreshold = 1
		c.Raft.SnapshotInterval = time.Hour
	}
	a := openTestNode(t, "a", t.TempDir(), shards, tiny)
	if err := a.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ra := a.Replica(0)
	testwait.For(t, "leader", 10*time.Second, ra.IsLeader)
	c := call("app@h", "<0.7.0>", "m", "f", 100)
	callID := mustIngest(t, a.Node, node.Committed, c).IDs[0]
	for i := range 20 {
		mustIngest(t, a.Node, node.Committed, call("app@h", fmt.Sprintf("<0.%d.1>", i), "m", "g", int64(200+i)))
	}
	if err := ra.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	// The snapshot is a marker of the applied index, not the shard's data.
	if size := newestSnapshotBytes(t, a.dir); size != 21 {
		t.Fatalf("snapshot file of %d bytes, want the 21-byte marker", size)
	}
	// Applied after the snapshot: the span sent to b is read when b needs
	// it, holds these too, and raft then sends b the entries after the
	// snapshot's index, which b must skip, not apply twice.
	for i := range 5 {
		mustIngest(t, a.Node, node.Committed, call("app@h", fmt.Sprintf("<0.%d.2>", i), "m", "h", int64(300+i)))
	}

	b := openTestNode(t, "b", t.TempDir(), shards, tiny)
	rb, err := b.OpenReplica(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Raft().AddVoter("b", raft.ServerAddress(b.mux.Addr().String()), 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b catches up", 20*time.Second, func() bool {
		ai, _, _ := ra.Status()
		bi, _, _ := rb.Status()
		return bi == ai
	})
	da, err := a.Store().Digest(0)
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Store().Digest(0)
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Fatalf("span digests differ after snapshot install: %x vs %x", da, db)
	}
	if sent := counter(t, a.Node, "scope_raft_snapshots_sent_total"); sent != 1 {
		t.Errorf("scope_raft_snapshots_sent_total %v, want 1", sent)
	}

	// The call stack travelled with the snapshot: hand leadership to b and
	// close the CALL there.
	if err := ra.Raft().LeadershipTransferToServer("b", raft.ServerAddress(b.mux.Addr().String())).Error(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b leads", 10*time.Second, rb.IsLeader)
	r := ret("app@h", "<0.7.0>", "m", "f", 400)
	retID := mustIngest(t, b.Node, node.Committed, r).IDs[0]
	if got := get(t, b.Node, r, retID); got.CorrelationID != callID.String() || got.DurationNs != 300 {
		t.Fatalf("RETURN on the new replica did not match the CALL from before the snapshot: %+v", got)
	}
}
