package correlate

import (
	"errors"
	"fmt"
	"testing"
)

func TestLayoutDoublingMovesToTheChildOnly(t *testing.T) {
	const procs = 20000
	for _, base := range []uint32{1, 3, 16} {
		l := Layout{Base: base, Shards: base}
		for range 4 {
			next := l.Doubled()
			if err := next.Validate(); err != nil {
				t.Fatal(err)
			}
			moved := 0
			perShard := make([]int, next.Shards)
			for i := range procs {
				pid := fmt.Sprintf("<0.%d.0>", i)
				from, to := l.ShardOf("node@h", pid), next.ShardOf("node@h", pid)
				perShard[to]++
				switch to {
				case from:
				case from + l.Shards:
					moved++
					if p, ok := next.Parent(to); !ok || p != from {
						t.Fatalf("%v: parent of %d = %d %v, want %d", next, to, p, ok, from)
					}
				default:
					t.Fatalf("%v -> %v: %s moved from %d to %d, not to its child %d", l, next, pid, from, to, from+l.Shards)
				}
				if h := next.History("node@h", pid); h[0] != to || h[len(h)-1] != ShardOf("node@h", pid, base) {
					t.Fatalf("history of %s in %v = %v", pid, next, h)
				}
			}
			// Half the processes move, within 3% of all.
			if d := moved - procs/2; d > procs*3/100 || d < -procs*3/100 {
				t.Fatalf("%v -> %v: %d of %d processes moved", l, next, moved, procs)
			}
			// Every shard's count within 5 standard deviations of the mean
			// (binomial: deterministic here, but not tuned to the seed).
			mean := float64(procs) / float64(next.Shards)
			for s, n := range perShard {
				if d := float64(n) - mean; d*d > 25*mean {
					t.Fatalf("%v: shard %d has %d processes, mean %.0f", next, s, n, mean)
				}
			}
			l = next
		}
	}
}

func TestLayoutBaseIsShardOf(t *testing.T) {
	for i := range 1000 {
		pid := fmt.Sprintf("<0.%d.0>", i)
		for _, n := range []uint32{1, 2, 7, 16, 4096} {
			if got, want := (Layout{Base: n, Shards: n}).ShardOf("o", pid), ShardOf("o", pid, n); got != want {
				t.Fatalf("layout %d: %d, ShardOf %d", n, got, want)
			}
		}
	}
}

func TestLayoutValidateAndParent(t *testing.T) {
	for _, l := range []Layout{{0, 0}, {3, 4}, {3, 12 + 3}, {4, 2}, {1, MaxLayoutShards * 2}} {
		if err := l.Validate(); !errors.Is(err, ErrConfig) {
			t.Fatalf("%v: err = %v", l, err)
		}
	}
	l := Layout{Base: 3, Shards: 24}
	for shard, want := range map[uint32]int64{0: -1, 2: -1, 3: 0, 5: 2, 6: 0, 11: 5, 12: 0, 23: 11} {
		p, ok := l.Parent(shard)
		if got := int64(p); !ok {
			got = -1
		} else if want >= 0 && got != want {
			t.Fatalf("parent of %d = %d, want %d", shard, got, want)
		}
		if ok != (want >= 0) {
			t.Fatalf("parent of %d: ok = %v", shard, ok)
		}
	}
	if MaxShardsFrom(3) != 3<<14 || MaxShardsFrom(16) != MaxLayoutShards || MaxShardsFrom(MaxLayoutShards) != MaxLayoutShards {
		t.Fatal("MaxShardsFrom")
	}
}
