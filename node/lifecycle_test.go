package node_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// TestDropAndReopenAreSerialized parks a DropReplica after it closed the
// replica and before it deleted its data, and opens the same shard again
// meanwhile. The open must wait for the drop and then start an empty
// replica whose directory, log and store survive: an open that ran inside
// the drop would reopen the dying replica's log and then have its
// directory, log span and store span deleted underneath it.
func TestDropAndReopenAreSerialized(t *testing.T) {
	const shards = 2
	dir := t.TempDir()
	n := bootstrapped(t, "n1", dir, shards)
	a, _ := twoProcessesOnDifferentShards(shards) // a is on shard 0
	mustIngest(t, n.Node, node.Committed, call(a.Origin, a.PID, "m", "f", 1))

	parked, release := make(chan struct{}), make(chan struct{})
	node.SetDropHook(n.Node, func(uint32) { close(parked); <-release })
	dropped := make(chan error, 1)
	go func() { dropped <- n.DropReplica(0) }()
	<-parked

	type opened struct {
		r   *node.Replica
		err error
	}
	reopened := make(chan opened, 1)
	go func() {
		r, err := n.OpenReplica(0)
		reopened <- opened{r, err}
	}()
	// Either the open ran inside the drop (the bug) or it waits for it.
	testwait.For(t, "the open to finish or to wait for the drop", 10*time.Second, func() bool {
		return len(reopened) > 0 || node.LifecycleWaits(n.Node) > 0
	})
	// Shard 1 is not held up by shard 0's drop.
	if _, err := n.OpenReplica(1); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-dropped; err != nil {
		t.Fatal(err)
	}
	o := <-reopened
	node.SetDropHook(n.Node, nil)
	if o.err != nil {
		t.Fatal(o.err)
	}
	if last := o.r.Raft().LastIndex(); last != 0 {
		t.Fatalf("reopened replica starts at index %d: it opened the dropped replica's log", last)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft", "shard-0000")); err != nil {
		t.Fatalf("reopened replica's directory: %v", err)
	}

	// The new replica works and keeps what it is given.
	self := []raft.Server{{ID: "n1", Address: raft.ServerAddress(n.mux.Addr().String())}}
	if err := o.r.Bootstrap(self); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "shard 0 led again", 10*time.Second, o.r.IsLeader)
	e := call(a.Origin, a.PID, "m", "g", 2)
	id := mustIngest(t, n.Node, node.Committed, e).IDs[0]
	get(t, n.Node, e, id)
	if hosted, err := n.HostedShards(); err != nil || len(hosted) != 2 {
		t.Fatalf("hosted shards %v, %v: want both", hosted, err)
	}
}
