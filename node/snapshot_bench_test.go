package node_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// BenchmarkSnapshot: a raft snapshot of a one-shard node holding N events
// of ~200-byte payloads. ms/snapshot is the time raft's Snapshot takes;
// bytes/snapshot the size of the snapshot file it leaves (what a snapshot
// writes to disk).
func BenchmarkSnapshot(b *testing.B) {
	for _, events := range []int{50_000, 200_000} {
		b.Run(fmt.Sprintf("events=%d", events), func(b *testing.B) {
			dir := b.TempDir()
			n := openTestNode(b, "a", dir, 1, func(c *node.Config) {
				c.Raft.SnapshotInterval = time.Hour
				c.Raft.SnapshotThreshold = 1 << 40
			})
			if err := n.Bootstrap(); err != nil {
				b.Fatal(err)
			}
			r := n.Replica(0)
			testwait.For(b, "leader", 10*time.Second, r.IsLeader)
			payload := strings.Repeat("x", 200)
			ingest := func(from, count int) {
				batch := make([]correlate.Event, 0, count)
				for i := from; i < from+count; i++ {
					batch = append(batch, correlate.Event{Origin: "a@h", PID: fmt.Sprintf("<0.%d.0>", i%1000), Kind: correlate.KindStateChange,
						TimestampNs: int64(1_000_000 + i), Seq: uint64(i + 1), Payload: payload})
				}
				for _, s := range n.Ingest(context.Background(), batch, node.Committed).Shards {
					if s.Err != nil {
						b.Fatal(s.Err)
					}
				}
			}
			for i := 0; i < events; i += 500 {
				ingest(i, 500)
			}
			var took time.Duration
			next := events
			for b.Loop() {
				ingest(next, 1) // raft refuses a snapshot with nothing new
				next++
				start := time.Now()
				if err := r.Raft().Snapshot().Error(); err != nil {
					b.Fatal(err)
				}
				took += time.Since(start)
			}
			b.ReportMetric(float64(took.Microseconds())/1000/float64(b.N), "ms/snapshot")
			b.ReportMetric(float64(newestSnapshotBytes(b, dir)), "bytes/snapshot")
		})
	}
}

// newestSnapshotBytes is the size of the newest snapshot file under dir.
func newestSnapshotBytes(b testing.TB, dir string) int64 {
	var newest time.Time
	var size int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "state.bin" {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.ModTime().After(newest) {
			newest, size = info.ModTime(), info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return size
}
