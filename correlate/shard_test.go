package correlate

import "testing"

func TestShardOfStableAndInRange(t *testing.T) {
	// Pinned values: a change here re-shards every stored cluster.
	for _, tc := range []struct {
		origin, pid string
		shards      uint32
		want        uint32
	}{
		{"app1@host", "<0.123.0>", 16, 6},
		{"nonode@nohost", "<0.90.0>", 16, 13},
		{"n@h", "<0.1.0>", 1024, 323},
		{"a", "b", 1, 0},
	} {
		if got := ShardOf(tc.origin, tc.pid, tc.shards); got != tc.want || got >= tc.shards {
			t.Errorf("ShardOf(%q,%q,%d) = %d, want %d", tc.origin, tc.pid, tc.shards, got, tc.want)
		}
	}
	// The separator matters: ("ab","c") and ("a","bc") are different processes.
	diff := 0
	for i := range 64 {
		o := string(rune('a' + i%26))
		if ShardOf(o+"x", "y", 1<<20) != ShardOf(o, "xy", 1<<20) {
			diff++
		}
	}
	if diff == 0 {
		t.Fatal("origin/pid boundary does not affect the shard")
	}
}

func TestJumpHashMovesOnlyToNewBucket(t *testing.T) {
	const keys = 10000
	moved := 0
	for k := uint64(0); k < keys; k++ {
		before, after := jumpHash(k*0x9E3779B97F4A7C15, 16), jumpHash(k*0x9E3779B97F4A7C15, 17)
		if before != after {
			if after != 16 {
				t.Fatalf("key %d moved from %d to %d, not to the new bucket", k, before, after)
			}
			moved++
		}
	}
	// Expect about keys/17 moves.
	if moved < keys/17/2 || moved > keys/17*2 {
		t.Fatalf("moved %d of %d keys, want about %d", moved, keys, keys/17)
	}
}

func TestJumpHashKnownValues(t *testing.T) {
	// Vectors published with other implementations of the paper's algorithm.
	for _, tc := range []struct {
		key     uint64
		buckets uint32
		want    uint32
	}{
		{0, 1, 0}, {0, 100, 0}, {10863919174838991, 11, 6}, {2016238256797177309, 11, 3},
	} {
		if got := jumpHash(tc.key, tc.buckets); got != tc.want {
			t.Errorf("jumpHash(%#x, %d) = %d, want %d", tc.key, tc.buckets, got, tc.want)
		}
	}
}
