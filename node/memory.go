package node

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Block cache sizing: a quarter of the memory the process may use, as
// TiKV and CockroachDB recommend for their Pebble/RocksDB caches. Queries
// on a store much larger than the cache read most index and data blocks
// from the OS (docs/bench/queries.md).
const (
	blockCacheShare   = 4 // 1/4 of memory
	minBlockCacheSize = 64 << 20
	// FallbackBlockCacheSize is the block cache when the memory cannot
	// be read (not Linux, or no /proc).
	FallbackBlockCacheSize = 128 << 20
)

// DefaultBlockCacheSize returns the store's default block cache for a
// process that shares the machine's memory with shareWith-1 others like it
// (`scope dev-cluster` runs several agents on one machine): a quarter of
// the memory available, divided among them, at least 64 MiB.
func DefaultBlockCacheSize(shareWith int) uint64 {
	mem, ok := MemoryAvailable()
	if !ok {
		return FallbackBlockCacheSize
	}
	return max(mem/blockCacheShare/uint64(max(shareWith, 1)), minBlockCacheSize)
}

// MemoryAvailable returns the memory the process may use: the cgroup
// (v2, then v1) limit if one is set and below the machine's, else the
// machine's total. false: neither could be read.
func MemoryAvailable() (uint64, bool) {
	total, ok := memTotal("/proc/meminfo")
	if !ok {
		return 0, false
	}
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if limit, ok := cgroupLimit(path); ok && limit < total {
			return limit, true
		}
	}
	return total, true
}

// memTotal reads MemTotal (kB) from a /proc/meminfo file.
func memTotal(path string) (uint64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("MemTotal:"))
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
		if err != nil || kb == 0 {
			return 0, false
		}
		return kb << 10, true
	}
	return 0, false
}

// cgroupLimit reads a cgroup memory limit file: a byte count, or "max"
// (v2) for none. v1 writes a huge number for none, which the caller's
// comparison with the machine's total drops.
func cgroupLimit(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v == 0 {
		return 0, false
	}
	return v, true
}
