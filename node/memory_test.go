package node

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMemoryFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	meminfo := write("meminfo", "MemFree:         1000 kB\nMemTotal:       24576000 kB\nBuffers: 1 kB\n")
	if got, ok := memTotal(meminfo); !ok || got != 24576000<<10 {
		t.Errorf("memTotal %d %v, want %d", got, ok, uint64(24576000)<<10)
	}
	for _, bad := range []string{"MemFree: 1 kB\n", "MemTotal: lots kB\n", "MemTotal: 0 kB\n"} {
		if got, ok := memTotal(write("bad", bad)); ok {
			t.Errorf("memTotal of %q: %d, want not ok", bad, got)
		}
	}
	if _, ok := memTotal(filepath.Join(dir, "absent")); ok {
		t.Error("memTotal of a missing file: ok")
	}
	for text, want := range map[string]uint64{"2147483648\n": 2 << 30, "max\n": 0, "0\n": 0, "": 0} {
		got, ok := cgroupLimit(write("limit", text))
		if ok != (want > 0) || got != want {
			t.Errorf("cgroupLimit(%q) = %d %v, want %d", text, got, ok, want)
		}
	}
}

func TestDefaultBlockCacheSize(t *testing.T) {
	mem, ok := MemoryAvailable()
	if !ok {
		if got := DefaultBlockCacheSize(1); got != FallbackBlockCacheSize {
			t.Fatalf("no memory figure: %d, want the fallback", got)
		}
		return
	}
	if got, want := DefaultBlockCacheSize(1), max(mem/4, minBlockCacheSize); got != want {
		t.Errorf("DefaultBlockCacheSize(1) = %d, want %d (memory %d)", got, want, mem)
	}
	if got, want := DefaultBlockCacheSize(3), max(mem/12, minBlockCacheSize); got != want {
		t.Errorf("DefaultBlockCacheSize(3) = %d, want %d", got, want)
	}
	if got := DefaultBlockCacheSize(1 << 30); got != minBlockCacheSize {
		t.Errorf("DefaultBlockCacheSize(huge) = %d, want the floor %d", got, minBlockCacheSize)
	}
}
