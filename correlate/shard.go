package correlate

// ShardOf returns the shard that owns process (origin, pid) among shards
// shards: jump_hash(xxhash64(origin + "\x00" + pid), shards), as fixed by
// docs/ARCHITECTURE.md. shards must be at least 1. The result never changes for a
// given input, on any machine, so it may be stored. It is the base layout
// of Layout, which online resharding doubles.
func ShardOf(origin, pid string, shards uint32) uint32 {
	return jumpHash(processHash(origin, pid), shards)
}

// jumpHash is Lamping and Veach's jump consistent hash ("A Fast, Minimal
// Memory, Consistent Hash Algorithm", 2014): growing buckets from n to n+1
// moves only 1/(n+1) of the keys.
func jumpHash(key uint64, buckets uint32) uint32 {
	var b, j int64 = -1, 0
	for j < int64(buckets) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return uint32(b)
}
