package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
)

func openRaftLogAt(t *testing.T, dataDir string, shards uint32) *node.RaftLog {
	t.Helper()
	o := node.DefaultRaftLogOptions(shards)
	o.Logger = quietLogger()
	l, err := node.OpenRaftLog(filepath.Join(dataDir, "raftlog"), o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func lastIndexIn(t *testing.T, l *node.RaftLog, shard uint32) uint64 {
	t.Helper()
	v, err := l.For(shard)
	if err != nil {
		t.Fatal(err)
	}
	last, _ := v.LastIndex()
	return last
}

// TestLegacyReplicaKeepsBoltLog opens a node on a data dir where shard 0's
// replica already has a raft-boltdb file (a data dir from before the shared
// log): shard 0 keeps logging there, across a restart, while shard 1 logs
// into the shared RaftLog.
func TestLegacyReplicaKeepsBoltLog(t *testing.T) {
	const shards = 2
	dir := t.TempDir()
	legacy := filepath.Join(dir, "raft", "shard-0000")
	if err := os.MkdirAll(legacy, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := raftboltdb.NewBoltStore(filepath.Join(legacy, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// One event per shard, before and after a restart.
	a, c := twoProcessesOnDifferentShards(shards)
	n := bootstrapped(t, "n1", dir, shards)
	mustIngest(t, n.Node, node.Committed, call(a.Origin, a.PID, "m", "f", 1), call(c.Origin, c.PID, "m", "f", 2))
	n.close(t)
	n = bootstrapped(t, "n1", dir, shards)
	ids := mustIngest(t, n.Node, node.Committed, call(a.Origin, a.PID, "m", "g", 3), call(c.Origin, c.PID, "m", "g", 4)).IDs
	for i, e := range []correlate.Event{call(a.Origin, a.PID, "m", "g", 3), call(c.Origin, c.PID, "m", "g", 4)} {
		get(t, n.Node, e, ids[i])
	}
	applied := [shards]uint64{}
	for _, r := range n.Replicas() {
		applied[r.Shard()], _, _ = r.Status()
	}
	n.close(t)

	b, err = raftboltdb.NewBoltStore(filepath.Join(legacy, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	boltLast, err := b.LastIndex()
	_ = b.Close()
	if err != nil || boltLast < applied[0] || applied[0] == 0 {
		t.Fatalf("shard 0's raft.db ends at %d (%v), its replica applied %d", boltLast, err, applied[0])
	}
	l := openRaftLogAt(t, dir, shards)
	defer l.Close()
	if got := lastIndexIn(t, l, 0); got != 0 {
		t.Fatalf("legacy shard 0 wrote %d entries into the shared log", got)
	}
	if got := lastIndexIn(t, l, 1); got < applied[1] || applied[1] == 0 {
		t.Fatalf("shard 1's shared log ends at %d, its replica applied %d", got, applied[1])
	}
	if _, err := os.Stat(filepath.Join(dir, "raft", "shard-0001", "raft.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("new replica has a raft.db: %v", err)
	}
}

// TestDropReplicaDeletesSharedLog drops a replica: its span in the shared
// log is gone. A span left by a drop interrupted after the directory was
// removed is cleared when the shard's replica is opened again, so a new
// replica never starts from a dead one's term and log.
func TestDropReplicaDeletesSharedLog(t *testing.T) {
	const shards = 2
	dir := t.TempDir()
	a, c := twoProcessesOnDifferentShards(shards)
	n := bootstrapped(t, "n1", dir, shards)
	mustIngest(t, n.Node, node.Committed, call(a.Origin, a.PID, "m", "f", 1), call(c.Origin, c.PID, "m", "f", 2))
	if err := n.DropReplica(0); err != nil {
		t.Fatal(err)
	}
	n.close(t)

	l := openRaftLogAt(t, dir, shards)
	if got := lastIndexIn(t, l, 0); got != 0 {
		t.Fatalf("dropped shard 0 still has entries up to %d", got)
	}
	if got := lastIndexIn(t, l, 1); got == 0 {
		t.Fatal("shard 1 lost its log")
	}
	// What an interrupted drop leaves behind: entries and a term, no dir.
	v, err := l.For(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.StoreLogs([]*raft.Log{{Index: 1, Term: 7, Type: raft.LogNoop}, {Index: 2, Term: 7, Type: raft.LogNoop}}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	n = openTestNode(t, "n1", dir, shards, nil)
	r, err := n.OpenReplica(0)
	if err != nil {
		t.Fatal(err)
	}
	if last := r.Raft().LastIndex(); last != 0 {
		t.Fatalf("reopened replica starts at index %d, want an empty log", last)
	}
	if term := r.Raft().Stats()["term"]; term != "0" {
		t.Fatalf("reopened replica starts in term %s, want 0", term)
	}
}
