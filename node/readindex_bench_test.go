package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkReadIndex measures one linearizable read's confirmation
// (Replica.ReadIndex, read by read: no batching) on a group of one voter
// and of two voters over loopback TCP (a heartbeat round trip).
func BenchmarkReadIndex(b *testing.B) {
	for _, voters := range []int{1, 2} {
		b.Run(map[int]string{1: "voters=1", 2: "voters=2"}[voters], func(b *testing.B) {
			a := bootstrapped(b, "a", b.TempDir(), 1)
			if voters == 2 {
				f := openTestNode(b, "b", b.TempDir(), 1, nil)
				if _, err := f.OpenReplica(0); err != nil {
					b.Fatal(err)
				}
				if err := a.Replica(0).Raft().AddVoter("b", raft.ServerAddress(f.mux.Addr().String()), 0, 10*time.Second).Error(); err != nil {
					b.Fatal(err)
				}
			}
			r := a.Replica(0)
			ctx := context.Background()
			if err := r.ReadIndex(ctx); err != nil { // the term's barrier
				b.Fatal(err)
			}
			for b.Loop() {
				if err := r.ReadIndex(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
