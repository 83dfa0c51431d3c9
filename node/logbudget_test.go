package node_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// TestRaftLogStaysWithinItsSize: with snapshots by entry count and by time
// out of reach, a shard's raft log grows with every entry unless
// RaftTiming.LogBytes bounds it; with the bound it ends within it (the
// applied half exact, the trailing half by the mean entry size) and the
// snapshots it took are counted. The events are all stored either way.
func TestRaftLogStaysWithinItsSize(t *testing.T) {
	const (
		logBytes = 256 << 10
		entries  = 60
		perEntry = 8 // events of a 4 KiB payload: ~33 KiB per entry
	)
	for _, bounded := range []bool{false, true} {
		t.Run(fmt.Sprintf("bounded=%v", bounded), func(t *testing.T) {
			n := openTestNode(t, "a", t.TempDir(), 1, func(c *node.Config) {
				c.Raft.SnapshotThreshold = 1 << 40
				c.Raft.SnapshotInterval = time.Hour
				c.Raft.LogBytes = 0
				if bounded {
					c.Raft.LogBytes = logBytes
				}
			})
			if err := n.Bootstrap(); err != nil {
				t.Fatal(err)
			}
			testwait.For(t, "leader", 10*time.Second, n.Replica(0).IsLeader)
			payload := strings.Repeat("x", 4<<10)
			for i := range entries {
				batch := make([]correlate.Event, perEntry)
				for j := range batch {
					batch[j] = call("app@h", fmt.Sprintf("<0.%d.%d>", i, j), "m", "f", int64(1000*i+j))
					batch[j].Payload = payload
				}
				mustIngest(t, n.Node, node.Committed, batch...)
			}
			count, size, err := node.RaftLogSize(n.Node, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !bounded {
				if size < entries*perEntry*(4<<10) {
					t.Fatalf("unbounded log holds %d bytes in %d entries, want every entry's", size, count)
				}
				return
			}
			// The last snapshot's request may still be running: wait for
			// the log to come within the bound rather than read it once.
			testwait.For(t, "log within its size", 10*time.Second, func() bool {
				count, size, err = node.RaftLogSize(n.Node, 0)
				return err == nil && size <= logBytes
			})
			if got := counter(t, n.Node, "scope_raft_log_size_snapshots_total"); got < 2 {
				t.Errorf("scope_raft_log_size_snapshots_total %v, want at least 2 (%d entries of ~33 KiB in a %d-byte log)", got, entries, logBytes)
			}
			if st, err := n.Store().Stats(0); err != nil || st.Events != entries*perEntry {
				t.Errorf("stored %d events (%v), want %d", st.Events, err, entries*perEntry)
			}
			t.Logf("log: %d entries, %d bytes", count, size)
		})
	}
}
