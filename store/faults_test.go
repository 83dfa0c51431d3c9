package store

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/elixirscope/scope/correlate"
)

// TestRetentionDifferential applies age and count rules at different points
// and checks the store against the reference: same events left, nothing
// else left behind (indexes, edges, bucket records).
func TestRetentionDifferential(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule correlate.Retention
	}{
		{"age", correlate.Retention{BeforeNs: 3_000_000}},
		{"count", correlate.Retention{MaxEvents: 150}},
		{"count exact bucket", correlate.Retention{MaxEvents: 1}},
		{"both", correlate.Retention{BeforeNs: 1_000_000, MaxEvents: 400}},
		{"nothing", correlate.Retention{MaxEvents: 1 << 40}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openMem(t)
			g := newGen(9, 5)
			r := fill(t, s, 6, g, 10, 60)
			res := g.batch(11, 60)
			rule := tc.rule
			res.Retention = &rule
			mustApply(t, s, 6, res)
			r.apply(res)
			q := Unbounded(10_000)
			page, err := s.Events(6, q)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ids(page.Events), ids(r.query(q))) {
				t.Fatalf("after retention: %d events, want %d", len(page.Events), len(r.events))
			}
			st := checkStats(t, s, 6, r)
			if st.Events != uint64(len(r.events)) {
				t.Fatalf("stats count %d, want %d", st.Events, len(r.events))
			}
			if all := r.sorted(); len(all) > 0 && (st.OldestNs != all[0].TimestampNs || st.NewestNs != all[len(all)-1].TimestampNs) {
				t.Fatalf("stats %+v, oldest %d newest %d", st, all[0].TimestampNs, all[len(all)-1].TimestampNs)
			}
			// Every index entry and edge left must belong to a live event.
			fresh := openMem(t)
			r2 := newRef()
			rebuilt := &correlate.Result{Index: 11, State: nil}
			for _, e := range r.sorted() {
				rebuilt.Events = append(rebuilt.Events, e)
			}
			mustApply(t, fresh, 6, rebuilt)
			r2.apply(rebuilt)
			if a, b := sectionCounts(t, s, 6), sectionCounts(t, fresh, 6); !reflect.DeepEqual(a, b) {
				t.Fatalf("records per section after retention %v, a fresh store with the survivors has %v", a, b)
			}
		})
	}
}

// sectionCounts counts the keys of each bucketed section of a shard.
func sectionCounts(t *testing.T, s *Store, shard uint32) map[byte]int {
	t.Helper()
	out := map[byte]int{}
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	p := shardPrefix(shard)
	for ok := it.SeekGE(p); ok && bytes.HasPrefix(it.Key(), p); ok = it.Next() {
		if sec := it.Key()[shardLen]; sec >= secEvent {
			out[sec]++
		}
	}
	return out
}

// TestCrashRecovery crashes the filesystem (keeping only synced data, or
// random unsynced parts) after many unsynced applies and checks that the
// store reopens at an applied index whose events are all there: no half
// batch is ever visible.
func TestCrashRecovery(t *testing.T) {
	for seed := range uint64(4) {
		fs := vfs.NewCrashableMem()
		opts := testOptions(fs)
		s, err := Open("db", opts)
		if err != nil {
			t.Fatal(err)
		}
		g := newGen(seed, 4)
		var results []*correlate.Result
		for i := 1; i <= 30; i++ {
			res := g.batch(uint64(i), 20)
			results = append(results, res)
			mustApply(t, s, 1, res)
			if i == 10 {
				if err := s.Sync(); err != nil {
					t.Fatal(err)
				}
			}
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: int(seed * 30), RNG: rng})
		_ = s.Close()
		s2, err := Open("db", testOptions(crashed))
		if err != nil {
			t.Fatalf("seed %d: reopen: %v", seed, err)
		}
		ai, err := s2.AppliedIndex(1)
		if err != nil {
			t.Fatal(err)
		}
		if ai < 10 || ai > 30 {
			t.Fatalf("seed %d: applied index %d after crash, synced 10", seed, ai)
		}
		want := newRef()
		for _, res := range results[:ai] {
			want.apply(res)
		}
		q := Unbounded(10_000)
		page, err := s2.Events(1, q)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids(page.Events), ids(want.query(q))) {
			t.Fatalf("seed %d: %d events at applied index %d, want %d", seed, len(page.Events), ai, len(want.events))
		}
		// Raft replays from the applied index: the rest applies cleanly.
		for _, res := range results[ai:] {
			mustApply(t, s2, 1, res)
		}
		if ai2, _ := s2.AppliedIndex(1); ai2 != 30 {
			t.Fatalf("seed %d: after replay applied index %d", seed, ai2)
		}
		_ = s2.Close()
	}
}

// TestInjectedErrors injects I/O errors. A failed read while Apply builds
// its batch is returned and nothing is written. A failed WAL write is fatal
// to pebble: Apply returns ErrFailed, the store refuses further writes, and
// after a crash the store reopens with the batch either whole or absent.
func TestInjectedErrors(t *testing.T) {
	var failReads, failWAL atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failReads.Load() && strings.HasSuffix(op.Path, ".sst") && op.Kind.ReadOrWrite() == errorfs.OpIsRead {
			return errorfs.ErrInjected
		}
		if failWAL.Load() && strings.HasSuffix(op.Path, ".log") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return errorfs.ErrInjected
		}
		return nil
	})
	mem := vfs.NewCrashableMem()
	opts := testOptions(errorfs.Wrap(mem, inj))
	opts.Sync = true
	opts.CacheSize = 0 // every read reaches the filesystem
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	g := newGen(11, 3)
	mustApply(t, s, 0, g.batch(1, 200))
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Digest(0)

	failReads.Store(true)
	res := g.batch(2, 10)
	res.Retention = &correlate.Retention{MaxEvents: 50} // reads the bucket being cut
	err = s.Apply(0, res)
	failReads.Store(false)
	if !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Apply with failing reads: %v", err)
	}
	if d, _ := s.Digest(0); d != before {
		t.Fatal("a failed Apply changed the shard")
	}

	failWAL.Store(true)
	err = s.Apply(0, g.batch(3, 10))
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Apply with a failing WAL: %v", err)
	}
	if err := s.Apply(0, g.batch(4, 1)); !errors.Is(err, ErrFailed) {
		t.Fatalf("Apply on a failed store: %v", err)
	}
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	s2, err := Open("db", testOptions(crashed))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s2.Close() }()
	if ai, _ := s2.AppliedIndex(0); ai != 1 {
		t.Fatalf("after the crash: applied index %d, want 1", ai)
	}
	if d, _ := s2.Digest(0); d != before {
		t.Fatal("after the crash the shard differs from the last good batch")
	}
}

// TestExportImport moves a shard to a fresh store: identical answers and
// digest, other shards untouched, corrupt streams rejected with no change.
func TestExportImport(t *testing.T) {
	src := openMem(t)
	g := newGen(12, 5)
	r := fill(t, src, 7, g, 8, 40)
	var buf bytes.Buffer
	if err := src.ExportShard(7, &buf); err != nil {
		t.Fatal(err)
	}
	dst := openMem(t)
	other := fill(t, dst, 8, newGen(13, 2), 3, 10)
	mustApply(t, dst, 7, newGen(14, 2).batch(99, 10)) // stale data replaced by the import
	otherDigest, _ := dst.Digest(8)

	stream := buf.Bytes()
	for name, bad := range map[string][]byte{
		"truncated":  stream[:len(stream)/2],
		"bit flip":   flipByte(stream, len(stream)/3),
		"bad header": flipByte(stream, 2),
		"empty":      nil,
	} {
		d0, _ := dst.Digest(7)
		if err := dst.ImportShard(7, bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s stream: %v", name, err)
		}
		if d1, _ := dst.Digest(7); d0 != d1 {
			t.Fatalf("%s stream changed the shard", name)
		}
	}
	if err := dst.ImportShard(9, bytes.NewReader(stream)); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("import into another shard id: %v", err)
	}
	if err := dst.ImportShard(7, bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	d1, _ := src.Digest(7)
	d2, _ := dst.Digest(7)
	if d1 != d2 {
		t.Fatal("imported shard digest differs")
	}
	checkStats(t, src, 7, r)
	if st := checkStats(t, dst, 7, r); len(st.Functions) == 0 || st.Kinds[correlate.KindCall] == 0 {
		t.Fatalf("imported stats %+v: the fixture must have calls", st)
	}
	for name, q := range queries(g, r) {
		a, err1 := src.Events(7, q)
		b, err2 := dst.Events(7, q)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: answers differ after import (%v, %v)", name, err1, err2)
		}
	}
	if d, _ := dst.Digest(8); d != otherDigest || len(other.events) == 0 {
		t.Fatal("import touched another shard")
	}
	if err := dst.DeleteShard(7); err != nil {
		t.Fatal(err)
	}
	if st, _ := dst.Stats(7); st.Events != 0 || st.AppliedIndex != 0 {
		t.Fatalf("after DeleteShard: %+v", st)
	}
	if d, _ := dst.Digest(8); d != otherDigest {
		t.Fatal("DeleteShard touched another shard")
	}
}

func flipByte(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}
