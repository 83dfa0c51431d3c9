package correlate

import (
	"fmt"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// MaxLayoutShards bounds a layout's shard count.
const MaxLayoutShards = 1 << 16

// Layout maps processes to shards. A cluster starts with Base shards, where
// a process lives on jump_hash(xxhash64(origin + "\x00" + pid), Base) (see
// ShardOf). Online resharding doubles the count (docs/DECISIONS.md D39):
// the k-th doubling, from Base<<k to Base<<(k+1) shards, splits every shard
// s in two, s and its child s + Base<<k, by bit k of a second mix of the same
// hash. So every process either stays where it was or moves to the child of
// its shard: a child takes its processes from exactly one parent, and the
// parent can hand them over through its own log at one point.
//
// With no doubling (Shards == Base) a layout is exactly ShardOf.
type Layout struct {
	Base   uint32 // shards at bootstrap
	Shards uint32 // shards now: Base << (number of doublings)
}

// Validate reports whether l is a layout: Base at least 1, Shards Base
// doubled zero or more times, at most MaxLayoutShards.
func (l Layout) Validate() error {
	if l.Base == 0 || l.Shards < l.Base || l.Shards > MaxLayoutShards {
		return fmt.Errorf("%w: layout %d of base %d: need 1 <= base <= shards <= %d", ErrConfig, l.Shards, l.Base, MaxLayoutShards)
	}
	if l.Shards%l.Base != 0 || bits.OnesCount32(l.Shards/l.Base) != 1 {
		return fmt.Errorf("%w: layout %d of base %d: shards must be base doubled", ErrConfig, l.Shards, l.Base)
	}
	return nil
}

// MaxShardsFrom returns the largest shard count base can be doubled to
// (base itself when doubling it passes MaxLayoutShards).
func MaxShardsFrom(base uint32) uint32 { return MaxShardsWithin(base, MaxLayoutShards) }

// MaxShardsWithin returns base doubled as often as it stays within limit
// (base itself when doubling it passes limit).
func MaxShardsWithin(base, limit uint32) uint32 {
	n := base
	for n > 0 && 2*n <= limit {
		n *= 2
	}
	return n
}

// Doublings returns how many times the layout was doubled from its base.
func (l Layout) Doublings() int { return bits.TrailingZeros32(l.Shards / l.Base) }

// Doubled returns the layout after one more doubling.
func (l Layout) Doubled() Layout { return Layout{Base: l.Base, Shards: 2 * l.Shards} }

// Parent returns the shard that shard was split from, and false for a shard
// of the base layout. shard must be below l.Shards.
func (l Layout) Parent(shard uint32) (uint32, bool) {
	if shard < l.Base {
		return 0, false
	}
	half := (uint32(1) << (bits.Len32(shard/l.Base) - 1)) * l.Base // the count before shard was created
	return shard - half, true
}

// ShardOf returns the shard that owns process (origin, pid) in l.
func (l Layout) ShardOf(origin, pid string) uint32 {
	return l.shardOfHash(processHash(origin, pid))
}

func (l Layout) shardOfHash(h uint64) uint32 {
	s := jumpHash(h, l.Base)
	if l.Shards == l.Base {
		return s
	}
	m := mix64(h)
	for k, n := 0, l.Base; n < l.Shards; k, n = k+1, n*2 {
		if m&(1<<k) != 0 {
			s += n
		}
	}
	return s
}

// History lists every shard a process may have lived on since the base
// layout: its shard in l and in every layout l was doubled from, newest
// first (each appears once). A query for one process reads all of them,
// since events stored before a split stay on the shard that stored them.
func (l Layout) History(origin, pid string) []uint32 {
	h := processHash(origin, pid)
	out := make([]uint32, 0, 1+l.Doublings())
	for cur := l; ; cur.Shards /= 2 {
		s := cur.shardOfHash(h)
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
		if cur.Shards == cur.Base {
			return out
		}
	}
}

// processHash is the hash every layout places a process by.
func processHash(origin, pid string) uint64 {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(origin)
	_, _ = d.WriteString("\x00")
	_, _ = d.WriteString(pid)
	return d.Sum64()
}

// mix64 is SplitMix64's finalizer: its bits decide the doublings, and are
// independent of the jump hash's use of the same key.
func mix64(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
