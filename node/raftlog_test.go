package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"pgregory.net/rapid"
)

func testRaftLogOptions(fs vfs.FS, shards uint32) RaftLogOptions {
	o := DefaultRaftLogOptions(shards)
	o.FS = fs
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	o.MemTableSize = 1 << 20
	return o
}

func openTestRaftLog(t *testing.T, fs vfs.FS, shards uint32) *RaftLog {
	t.Helper()
	l, err := OpenRaftLog("raftlog", testRaftLogOptions(fs, shards))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustFor(t *testing.T, l *RaftLog, shard uint32) *RaftLogShard {
	t.Helper()
	s, err := l.For(shard)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testLog(index, term uint64) *raft.Log {
	return &raft.Log{Index: index, Term: term, Type: raft.LogCommand,
		Data: fmt.Appendf(nil, "entry %d/%d", index, term), Extensions: []byte{byte(index)},
		AppendedAt: time.Unix(1_700_000_000+int64(index), int64(index)*1000)}
}

func logsRange(lo, hi, term uint64) []*raft.Log {
	var out []*raft.Log
	for i := lo; ; i++ { // hi may be math.MaxUint64
		out = append(out, testLog(i, term))
		if i == hi {
			return out
		}
	}
}

func sameLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type && bytes.Equal(a.Data, b.Data) &&
		bytes.Equal(a.Extensions, b.Extensions) && a.AppendedAt.Equal(b.AppendedAt)
}

func TestRaftLogCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		l := raft.Log{
			Index: rapid.Uint64().Draw(t, "index"),
			Term:  rapid.Uint64().Draw(t, "term"),
			Type:  raft.LogType(rapid.Byte().Draw(t, "type")),
			Data:  rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "data"),
		}
		if rapid.Bool().Draw(t, "ext") {
			l.Extensions = rapid.SliceOfN(rapid.Byte(), 1, 40).Draw(t, "extensions")
		}
		if rapid.Bool().Draw(t, "appended") {
			l.AppendedAt = time.Unix(rapid.Int64Range(-1<<40, 1<<40).Draw(t, "sec"), rapid.Int64Range(0, 999_999_999).Draw(t, "nsec"))
		}
		if len(l.Data) == 0 {
			l.Data = nil
		}
		buf := make([]byte, encodedLogLen(&l))
		encodeLog(buf, &l)
		var got raft.Log
		if err := decodeLog(buf, &got); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !sameLog(&l, &got) || (l.Data == nil) != (got.Data == nil) || (l.Extensions == nil) != (got.Extensions == nil) ||
			l.AppendedAt.IsZero() != got.AppendedAt.IsZero() {
			t.Fatalf("round trip: %+v became %+v", l, got)
		}
		// Every truncation and any trailing byte is refused as corrupt,
		// never a panic or a silently shorter entry.
		for n := range len(buf) {
			if err := decodeLog(buf[:n], &got); !errors.Is(err, ErrRaftLogCorrupt) {
				t.Fatalf("decode of %d of %d bytes: %v, want ErrRaftLogCorrupt", n, len(buf), err)
			}
		}
		if err := decodeLog(append(buf, 0), &got); !errors.Is(err, ErrRaftLogCorrupt) {
			t.Fatalf("decode with a trailing byte: %v", err)
		}
	})
	var got raft.Log
	if err := decodeLog([]byte{2, 1, 1, 0, 0, 0, 0}, &got); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("unknown version: %v", err)
	}
}

// logStores is what raft asks of a log and stable store.
type logStores interface {
	raft.LogStore
	raft.StableStore
}

// storeImpl opens one implementation and can close and reopen it on the
// same files.
type storeImpl struct {
	name   string
	open   func(t *testing.T) logStores
	reopen func(t *testing.T) logStores
}

func boltImpl() storeImpl {
	var path string
	var cur *raftboltdb.BoltStore
	open := func(t *testing.T) logStores {
		b, err := raftboltdb.New(raftboltdb.Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		cur = b
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	return storeImpl{
		name: "raft-boltdb",
		open: func(t *testing.T) logStores { path = filepath.Join(t.TempDir(), "raft.db"); return open(t) },
		reopen: func(t *testing.T) logStores {
			if err := cur.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t)
		},
	}
}

// raftLogImpl runs the semantics on shard 3 of a RaftLog whose shards 2
// and 4 (the neighbouring key spans) hold entries and stable keys of
// their own: any bleed across a shard boundary changes an answer.
func raftLogImpl() storeImpl {
	var fs vfs.FS
	var cur *RaftLog
	open := func(t *testing.T) logStores {
		cur = openTestRaftLog(t, fs, 8)
		l := cur
		t.Cleanup(func() { _ = l.Close() })
		return mustFor(t, cur, 3)
	}
	return storeImpl{
		name: "RaftLog",
		open: func(t *testing.T) logStores {
			fs = vfs.NewMem()
			s := open(t)
			for _, n := range []uint32{2, 4} {
				v := mustFor(t, cur, n)
				if err := v.StoreLogs(logsRange(1, 40, 9)); err != nil {
					t.Fatal(err)
				}
				if err := v.SetUint64([]byte("CurrentTerm"), 9); err != nil {
					t.Fatal(err)
				}
				if err := v.Set([]byte("k"), []byte("neighbour")); err != nil {
					t.Fatal(err)
				}
			}
			return s
		},
		reopen: func(t *testing.T) logStores {
			if err := cur.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t)
		},
	}
}

type semStep struct {
	do   func(s logStores) string
	want string
}

func observeBounds(s logStores) string {
	f, err1 := s.FirstIndex()
	l, err2 := s.LastIndex()
	return fmt.Sprintf("first=%d last=%d %v", f, l, errors.Join(err1, err2))
}

func stepStore(lo, hi, term uint64) semStep {
	return semStep{func(s logStores) string {
		logs := logsRange(lo, hi, term)
		var err error
		if len(logs) == 1 {
			err = s.StoreLog(logs[0])
		} else {
			err = s.StoreLogs(logs)
		}
		return fmt.Sprintf("%v %s", err, observeBounds(s))
	}, ""}
}

func stepDelete(lo, hi uint64, want string) semStep {
	return semStep{func(s logStores) string {
		return fmt.Sprintf("%v %s", s.DeleteRange(lo, hi), observeBounds(s))
	}, "<nil> " + want}
}

// stepGet reads index; term 0 means it must be absent.
func stepGet(index, term uint64) semStep {
	want := "log not found"
	if term != 0 {
		want = fmt.Sprintf("ok %d/%d", index, term)
	}
	return semStep{func(s logStores) string {
		var l raft.Log
		err := s.GetLog(index, &l)
		switch {
		case errors.Is(err, raft.ErrLogNotFound):
			return "log not found"
		case err != nil:
			return err.Error()
		case !sameLog(&l, testLog(index, term)):
			return fmt.Sprintf("wrong entry %+v", l)
		}
		return fmt.Sprintf("ok %d/%d", l.Index, l.Term)
	}, want}
}

func stepStable(op string, key string, val []byte, want string) semStep {
	return semStep{func(s logStores) string {
		switch op {
		case "set":
			return fmt.Sprint(s.Set([]byte(key), val))
		case "setu":
			return fmt.Sprint(s.SetUint64([]byte(key), uint64(len(val))))
		case "getu":
			v, err := s.GetUint64([]byte(key))
			return fmt.Sprintf("%d %v", v, err)
		}
		v, err := s.Get([]byte(key))
		return fmt.Sprintf("%q nil=%v %v", v, v == nil, err)
	}, want}
}

// TestRaftLogMatchesBoltStore runs one table of LogStore/StableStore
// semantics against raft-boltdb (what hashicorp/raft is tested with) and
// the RaftLog: both must give the answers the table expects.
func TestRaftLogMatchesBoltStore(t *testing.T) {
	const reopen = "reopen"
	steps := []semStep{
		{observeBounds, "first=0 last=0 <nil>"},
		stepGet(1, 0),
		stepStore(1, 1, 1),
		stepStore(2, 10, 1),
		stepGet(1, 1),
		stepGet(10, 1),
		stepGet(11, 0),
		stepGet(0, 0),
		// A follower's conflicting suffix: delete, then overwrite.
		stepDelete(8, 10, "first=1 last=7 <nil>"),
		stepStore(8, 12, 2),
		stepGet(9, 2),
		// Compaction after a snapshot: delete a prefix.
		stepDelete(1, 4, "first=5 last=12 <nil>"),
		stepGet(4, 0),
		stepGet(5, 1),
		{nil, reopen},
		{observeBounds, "first=5 last=12 <nil>"},
		// A gap (raft's non-monotonic stores allow one after a snapshot).
		stepStore(20, 22, 3),
		stepGet(15, 0),
		stepGet(21, 3),
		stepDelete(6, 5, "first=5 last=22 <nil>"),
		// Deleting across the gap, and a range beyond the last entry.
		stepDelete(5, 20, "first=21 last=22 <nil>"),
		stepDelete(30, 40, "first=21 last=22 <nil>"),
		// Raft's removeOldLogs after a snapshot restore: everything.
		stepDelete(0, math.MaxUint64, "first=0 last=0 <nil>"),
		stepGet(21, 0),
		{nil, reopen},
		{observeBounds, "first=0 last=0 <nil>"},
		stepStore(100, 100, 4),
		stepStore(50, 60, 4), // below the first: first moves down
		stepDelete(55, 100, "first=50 last=54 <nil>"),
		stepStore(math.MaxUint64-1, math.MaxUint64, 5),
		stepGet(math.MaxUint64, 5),
		stepDelete(math.MaxUint64, math.MaxUint64, "first=50 last=18446744073709551614 <nil>"),

		stepStable("get", "CurrentTerm", nil, `"" nil=true not found`),
		stepStable("getu", "CurrentTerm", nil, "0 not found"),
		stepStable("setu", "CurrentTerm", make([]byte, 7), "<nil>"),
		stepStable("getu", "CurrentTerm", nil, "7 <nil>"),
		stepStable("get", "CurrentTerm", nil, `"\x00\x00\x00\x00\x00\x00\x00\a" nil=false <nil>`),
		stepStable("set", "LastVoteCand", []byte("node-b"), "<nil>"),
		stepStable("get", "LastVoteCand", nil, `"node-b" nil=false <nil>`),
		stepStable("set", "LastVoteCand", []byte("node-c"), "<nil>"),
		{nil, reopen},
		stepStable("get", "LastVoteCand", nil, `"node-c" nil=false <nil>`),
		stepStable("get", "k", nil, `"" nil=true not found`),
		stepStable("get", "LastVote", nil, `"" nil=true not found`), // a prefix of a set key
		stepStable("set", "empty", []byte{}, "<nil>"),
		stepStable("get", "empty", nil, `"" nil=true <nil>`),
		{observeBounds, "first=50 last=18446744073709551614 <nil>"},
	}
	// A step whose want is empty is checked differentially only: the
	// RaftLog must answer as raft-boltdb did.
	answers := map[string][]string{}
	impls := []storeImpl{boltImpl(), raftLogImpl()}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			s := impl.open(t)
			for i, st := range steps {
				if st.want == reopen {
					s = impl.reopen(t)
					continue
				}
				got := st.do(s)
				if st.want != "" && got != st.want {
					t.Fatalf("step %d: got %s, want %s", i, got, st.want)
				}
				answers[impl.name] = append(answers[impl.name], got)
			}
		})
	}
	ref, got := answers[impls[0].name], answers[impls[1].name]
	if len(ref) != len(got) {
		t.Fatalf("%d answers from %s, %d from %s", len(ref), impls[0].name, len(got), impls[1].name)
	}
	for i := range ref {
		if ref[i] != got[i] {
			t.Errorf("answer %d: %s says %s, %s says %s", i, impls[0].name, ref[i], impls[1].name, got[i])
		}
	}
}

// TestRaftLogCrashKeepsSyncedLogs crashes the filesystem (losing a random
// share of what was not synced) while shards append concurrently: every
// acknowledged batch and stable write survives, and no batch is torn (each
// shard's log is whole batches from index 1 up, no gap, every entry intact).
func TestRaftLogCrashKeepsSyncedLogs(t *testing.T) {
	const (
		shards = 4
		batch  = 5
	)
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("unsynced=%d%%", seed*30), func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			l := openTestRaftLog(t, mem, shards)
			var (
				mu    sync.Mutex
				acked [shards]uint64 // batches whose StoreLogs and term write returned
				stop  = make(chan struct{})
				wg    sync.WaitGroup
			)
			for sh := range uint32(shards) {
				v := mustFor(t, l, sh)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := uint64(1); ; k++ {
						select {
						case <-stop:
							return
						default:
						}
						if err := v.StoreLogs(logsRange((k-1)*batch+1, k*batch, k)); err != nil {
							t.Errorf("shard %d batch %d: %v", sh, k, err)
							return
						}
						if err := v.SetUint64([]byte("CurrentTerm"), k); err != nil {
							t.Errorf("shard %d term %d: %v", sh, k, err)
							return
						}
						mu.Lock()
						acked[sh] = k
						mu.Unlock()
					}
				}()
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				mu.Lock()
				least := min(acked[0], acked[1], acked[2], acked[3])
				mu.Unlock()
				if least >= 3 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("writers made no progress")
				}
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			before := acked
			mu.Unlock()
			crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: int(seed * 30), RNG: rand.New(rand.NewPCG(seed, 1))})
			close(stop)
			wg.Wait()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			l2 := openTestRaftLog(t, crashed, shards)
			defer l2.Close()
			for sh := range uint32(shards) {
				v := mustFor(t, l2, sh)
				first, _ := v.FirstIndex()
				last, _ := v.LastIndex()
				term, err := v.GetUint64([]byte("CurrentTerm"))
				if err != nil {
					t.Fatalf("shard %d: term: %v", sh, err)
				}
				if first != 1 || last%batch != 0 || last/batch < before[sh] {
					t.Fatalf("shard %d: entries [%d, %d] after the crash: want [1, k*%d] with k >= %d acknowledged batches",
						sh, first, last, batch, before[sh])
				}
				if term < before[sh] || term > last/batch {
					t.Fatalf("shard %d: term %d after the crash: want within [%d acknowledged, %d batches stored]", sh, term, before[sh], last/batch)
				}
				for i := uint64(1); i <= last; i++ {
					var got raft.Log
					if err := v.GetLog(i, &got); err != nil {
						t.Fatalf("shard %d index %d of [1, %d]: %v", sh, i, last, err)
					}
					if want := testLog(i, (i-1)/batch+1); !sameLog(&got, want) {
						t.Fatalf("shard %d index %d: %+v, want %+v", sh, i, got, *want)
					}
				}
			}
		})
	}
}

// TestRaftLogConcurrentShards appends from many shards at once while
// readers of the same shards read entries and bounds (run with -race).
func TestRaftLogConcurrentShards(t *testing.T) {
	const (
		shards  = 16
		batches = 30
		batch   = 4
	)
	l := openTestRaftLog(t, vfs.NewMem(), shards)
	defer l.Close()
	var wg sync.WaitGroup
	for sh := range uint32(shards) {
		v := mustFor(t, l, sh)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for k := uint64(1); k <= batches; k++ {
				if err := v.StoreLogs(logsRange((k-1)*batch+1, k*batch, uint64(sh)+1)); err != nil {
					t.Errorf("shard %d: %v", sh, err)
					return
				}
			}
		}()
		go func() { // a replication goroutine: reads whatever is there
			defer wg.Done()
			for range batches * 4 {
				last, _ := v.LastIndex()
				first, _ := v.FirstIndex()
				if last == 0 {
					continue
				}
				var got raft.Log
				if err := v.GetLog(last, &got); err != nil || got.Term != uint64(sh)+1 || first != 1 {
					t.Errorf("shard %d: read of last %d (first %d): %v %+v", sh, last, first, err, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	for sh := range uint32(shards) {
		v := mustFor(t, l, sh)
		if f, _ := v.FirstIndex(); f != 1 {
			t.Fatalf("shard %d: first %d", sh, f)
		}
		if last, _ := v.LastIndex(); last != batches*batch {
			t.Fatalf("shard %d: last %d, want %d", sh, last, batches*batch)
		}
		for i := uint64(1); i <= batches*batch; i++ {
			var got raft.Log
			if err := v.GetLog(i, &got); err != nil || !sameLog(&got, testLog(i, uint64(sh)+1)) {
				t.Fatalf("shard %d index %d: %v %+v", sh, i, err, got)
			}
		}
	}
}

// TestRaftLogDeleteShard removes one shard's span and nothing else, and a
// closed or out-of-range use fails with the error that says so.
func TestRaftLogDeleteShard(t *testing.T) {
	fs := vfs.NewMem()
	l := openTestRaftLog(t, fs, 3)
	for sh := range uint32(3) {
		v := mustFor(t, l, sh)
		if err := v.StoreLogs(logsRange(1, 10, 1)); err != nil {
			t.Fatal(err)
		}
		if err := v.SetUint64([]byte("CurrentTerm"), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.DeleteShard(1); err != nil {
		t.Fatal(err)
	}
	check := func(l *RaftLog) {
		t.Helper()
		for sh := range uint32(3) {
			v := mustFor(t, l, sh)
			last, _ := v.LastIndex()
			var got raft.Log
			getErr := v.GetLog(5, &got)
			_, termErr := v.GetUint64([]byte("CurrentTerm"))
			if sh == 1 {
				if last != 0 || !errors.Is(getErr, raft.ErrLogNotFound) || !errors.Is(termErr, ErrRaftKeyNotFound) {
					t.Fatalf("deleted shard: last %d, GetLog %v, term %v", last, getErr, termErr)
				}
				continue
			}
			if last != 10 || getErr != nil || termErr != nil {
				t.Fatalf("shard %d: last %d, GetLog %v, term %v", sh, last, getErr, termErr)
			}
		}
	}
	check(l)
	if _, err := l.For(3); !errors.Is(err, ErrRaftLogShard) {
		t.Fatalf("For(3) of 3 shards: %v", err)
	}
	v := mustFor(t, l, 0)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.For(0); !errors.Is(err, ErrRaftLogClosed) {
		t.Fatalf("For after Close: %v", err)
	}
	if err := v.StoreLog(testLog(11, 1)); !errors.Is(err, ErrRaftLogClosed) {
		t.Fatalf("StoreLog after Close: %v", err)
	}
	l = openTestRaftLog(t, fs, 3)
	defer l.Close()
	check(l)
}

// TestRaftLogWriteGate: while the gate refuses, a follower's appends and a
// truncation of its log's tail are refused before anything changes; a
// leader's appends, deleting a prefix and stable-store writes go on.
func TestRaftLogWriteGate(t *testing.T) {
	var refuse atomic.Bool
	errFull := errors.New("disk full")
	o := testRaftLogOptions(vfs.NewMem(), 1)
	o.WriteGate = func() error {
		if refuse.Load() {
			return errFull
		}
		return nil
	}
	l, err := OpenRaftLog("raftlog", o)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := mustFor(t, l, 0)
	if err := s.StoreLogs(logsRange(1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	bounds := func() string {
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		return fmt.Sprintf("[%d, %d]", first, last)
	}

	refuse.Store(true)
	if err := s.StoreLogs(logsRange(11, 12, 1)); !errors.Is(err, errFull) {
		t.Fatalf("follower append while refused: %v, want %v", err, errFull)
	}
	if err := s.DeleteRange(8, 10); !errors.Is(err, errFull) {
		t.Fatalf("tail truncation while refused: %v, want %v", err, errFull)
	}
	if got := bounds(); got != "[1, 10]" {
		t.Fatalf("bounds after refused writes: %s, want [1, 10]", got)
	}
	var got raft.Log
	if err := s.GetLog(10, &got); err != nil || !sameLog(&got, testLog(10, 1)) {
		t.Fatalf("entry 10 after a refused truncation: %v %+v", err, got)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatalf("stable write while refused: %v", err)
	}
	if err := s.DeleteRange(1, 3); err != nil {
		t.Fatalf("prefix deletion while refused: %v", err)
	}
	s.SetLeading(func() bool { return true })
	if err := s.StoreLogs(logsRange(11, 12, 2)); err != nil {
		t.Fatalf("leader append while refused: %v", err)
	}
	if got := bounds(); got != "[4, 12]" {
		t.Fatalf("bounds: %s, want [4, 12]", got)
	}

	s.SetLeading(func() bool { return false })
	refuse.Store(false)
	if err := s.StoreLogs(logsRange(13, 13, 2)); err != nil {
		t.Fatalf("follower append once allowed: %v", err)
	}
	if err := s.DeleteRange(12, 13); err != nil {
		t.Fatalf("tail truncation once allowed: %v", err)
	}
	if got := bounds(); got != "[4, 11]" {
		t.Fatalf("bounds: %s, want [4, 11]", got)
	}
}
