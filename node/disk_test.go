package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// fakeDisk is a filesystem of a fixed size whose free space the test sets;
// the node's reserve file, when present, counts as used.
type fakeDisk struct {
	dir   string
	total uint64
	free  atomic.Uint64 // free space not counting the reserve file
}

func (d *fakeDisk) usage(string) (avail, total uint64, err error) {
	free := d.free.Load()
	if st, err := os.Stat(filepath.Join(d.dir, "disk-reserve")); err == nil {
		free -= min(free, uint64(st.Size()))
	}
	return free, d.total, nil
}

const mib = 1 << 20

// diskConfig sets a small node's disk guard to measure d: 4 MiB
// memtables, MinFree 32 MiB (16 MiB critical), an 8 MiB reserve.
func diskConfig(d *fakeDisk) func(*node.Config) {
	return func(c *node.Config) {
		c.Store.MemTableSize = 4 * mib
		c.Disk = node.DiskConfig{MinFree: 32 * mib, Reserve: 8 * mib, Interval: 5 * time.Millisecond, Usage: d.usage}
	}
}

// diskNode is a bootstrapped node with diskConfig(d).
func diskNode(t *testing.T, d *fakeDisk, shards uint32) *testNode {
	t.Helper()
	tn := openTestNode(t, "n1", d.dir, shards, diskConfig(d))
	if err := tn.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	return tn
}

func reserveSize(dir string) int64 {
	st, err := os.Stat(filepath.Join(dir, "disk-reserve"))
	if err != nil {
		return -1
	}
	return st.Size()
}

// TestDiskFullRefusesIngestAndRecovers: below MinFree ingest is refused
// (node.ErrDiskFull, a refusal naming the data dir and the free space)
// while what was stored stays readable; the refusal clears by itself when
// space comes back, and ingest is taken again.
func TestDiskFullRefusesIngestAndRecovers(t *testing.T) {
	d := &fakeDisk{dir: t.TempDir(), total: 1 << 30}
	d.free.Store(512 * mib)
	n := diskNode(t, d, 2)
	if got := reserveSize(d.dir); got != 8*mib {
		t.Fatalf("reserve file: %d bytes, want %d", got, 8*mib)
	}
	stored := call("app@h", "<0.1.0>", "m", "f", 1000)
	storedID := mustIngest(t, n.Node, node.Committed, stored).IDs[0]

	d.free.Store(30 * mib) // 22 MiB after the reserve: below 32 MiB, above the critical 16 MiB
	testwait.For(t, "disk condition reported", 5*time.Second, func() bool { return n.DiskCondition() != nil })
	for _, dur := range []node.Durability{node.Committed, node.Accepted} {
		res := n.Ingest(context.Background(), []correlate.Event{call("app@h", "<0.2.0>", "m", "g", 2000)}, dur)
		err := res.Shards[0].Err
		if !errors.Is(err, node.ErrDiskFull) || !node.Refused(err) || !strings.Contains(err.Error(), d.dir) ||
			!strings.Contains(err.Error(), "22.0 MiB free") {
			t.Fatalf("durability %d on a full disk: %v, want a refusal (ErrDiskFull) naming %s and its free space", dur, err, d.dir)
		}
		if acc, ref := res.Accepted(); acc != 0 || ref != 1 {
			t.Fatalf("durability %d on a full disk: %d accepted, %d refused; want 0, 1", dur, acc, ref)
		}
	}
	// A redirect carries events an old leader admitted (ACCEPTED ones
	// acknowledged): the new leader takes it into the margin (but not
	// once that is critical: TestDiskCriticalWaitsAndReleasesReserve).
	redirected := call("app@h", "<0.4.0>", "m", "r", 4000)
	ctx := node.NoForward(node.MarkRedirect(context.Background()))
	if res := n.Ingest(ctx, []correlate.Event{redirected}, node.Committed); res.Shards[0].Err != nil {
		t.Fatalf("redirected part on a full disk: %v, want it taken", res.Shards[0].Err)
	}
	if got := get(t, n.Node, stored, storedID); got.ID != storedID {
		t.Fatalf("stored event not readable on a full disk: %+v", got)
	}
	if got := reserveSize(d.dir); got != 8*mib {
		t.Fatalf("reserve released above the critical level: %d bytes left", got)
	}

	d.free.Store(512 * mib)
	testwait.For(t, "disk condition cleared", 5*time.Second, func() bool { return n.DiskCondition() == nil })
	mustIngest(t, n.Node, node.Committed, call("app@h", "<0.2.0>", "m", "g", 2000))
}

// TestDiskCriticalWaitsAndReleasesReserve: below half of MinFree the reserve
// file is released, and a committed entry's store write waits instead of
// failing: the replica neither fails nor retires, and the entry applies
// once space is back. The reserve is written again above MinFree plus its
// size.
func TestDiskCriticalWaitsAndReleasesReserve(t *testing.T) {
	d := &fakeDisk{dir: t.TempDir(), total: 1 << 30}
	d.free.Store(512 * mib)
	n := diskNode(t, d, 1)

	d.free.Store(12 * mib) // 4 MiB after the reserve; 12 MiB once it is released: critical
	// The guard releases the reserve, then moves its level (OK to
	// critical: 4 MiB free before the release, 12 after).
	testwait.For(t, "reserve released, writes refused", 5*time.Second, func() bool {
		return reserveSize(d.dir) == -1 && n.DiskCondition() != nil
	})
	redirected := call("app@h", "<0.4.0>", "m", "r", 4000)
	ctx := node.NoForward(node.MarkRedirect(context.Background()))
	if res := n.Ingest(ctx, []correlate.Event{redirected}, node.Committed); !errors.Is(res.Shards[0].Err, node.ErrDiskFull) {
		t.Fatalf("redirected part on a critically full disk: %v, want ErrDiskFull", res.Shards[0].Err)
	}
	// A leader's own entries are appended at any level (they were
	// admitted before the refusal, or are the few the leader makes
	// itself); applying them waits for space.
	e := call("app@h", "<0.3.0>", "m", "h", 3000)
	e.ID = correlate.ContentID(&e)
	e.Shard = 0
	f := n.Propose(0, []correlate.Event{e})
	done := make(chan error, 1)
	go func() { done <- f.Wait() }()
	testwait.For(t, "the store write waiting for space", 5*time.Second, func() bool { return node.DiskWaiters(n.Node) == 1 })
	select {
	case err := <-done:
		t.Fatalf("entry applied while the disk is critical: %v", err)
	default:
	}
	r := n.Replica(0)
	if _, _, failed := r.Status(); failed != nil || r.Retired() {
		t.Fatalf("replica failed or retired while waiting for disk space: %v", failed)
	}

	d.free.Store(512 * mib)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("entry after space came back: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("entry not applied within 10s of space coming back")
	}
	if got := get(t, n.Node, e, e.ID); got.ID != e.ID {
		t.Fatalf("entry not stored: %+v", got)
	}
	testwait.For(t, "reserve written back", 5*time.Second, func() bool { return reserveSize(d.dir) == 8*mib })
}

// TestOpenOnFullDisk: a node opening on a disk too full to open its store
// releases its reserve file first; with no reserve left it fails at once
// with ErrDiskFull saying what to do, instead of spinning on a flush.
func TestOpenOnFullDisk(t *testing.T) {
	d := &fakeDisk{dir: t.TempDir(), total: 1 << 30}
	d.free.Store(512 * mib)
	n := diskNode(t, d, 1)
	n.close(t)

	d.free.Store(8 * mib) // the 8 MiB reserve counts as used: 0 bytes free
	n = openTestNode(t, "n1", d.dir, 1, diskConfig(d))
	if reserveSize(d.dir) != -1 {
		t.Fatal("reserve not released by an open on a full disk")
	}
	if n.DiskCondition() == nil {
		t.Fatal("no disk condition after opening on a full disk")
	}
	n.close(t)

	d.free.Store(0)
	cfg := node.DefaultConfig("n1", d.dir)
	diskConfig(d)(&cfg)
	cfg.Logger = quietLogger()
	cfg.Transport = func(uint32) (raft.Transport, error) { return nil, errors.New("no replica opens in this test") }
	_, err := node.Open(cfg)
	if !errors.Is(err, node.ErrDiskFull) || !strings.Contains(err.Error(), "no reserve file left") {
		t.Fatalf("open on a full disk without a reserve: %v, want ErrDiskFull saying what to do", err)
	}
}
