package node

// The disk guard keeps a node alive when its data directory's filesystem
// fills up (docs/DECISIONS.md D26). Pebble cannot survive a failed write:
// a WAL write that meets ENOSPC panics inside Pebble's commit path and
// leaves the DB's log writer broken for good, and a failed MANIFEST write
// is fatal. So the node must never let Pebble meet a full disk; instead it
// refuses new writes while it still has room to finish the ones it took:
//
//   - below MinFree ("full"), ingest is refused at admission on the
//     shard's leader (ErrDiskFull, RESOURCE_EXHAUSTED at the RPC edge).
//     What was admitted before still lands: the margin down to the
//     critical level is for it. Reads, health and metrics go on.
//   - below MinFree/2 ("critical": something else kept filling the disk,
//     or far more was in flight than the margin), the shared raft log
//     refuses appends (a follower rejects AppendEntries and its leader
//     retries with backoff; a leader steps down) and every replica's FSM
//     waits before writing to the store. Nothing is retired: a full disk
//     is a temporary refusal, not a replica failure (D18).
//   - the reserve file (<data-dir>/disk-reserve, Reserve bytes of zeros)
//     is ballast: the guard deletes it on reaching the critical level,
//     which hands that much room back to Pebble at once, and an operator
//     can delete it by hand to get room immediately. It is written again
//     once free space is back above MinFree plus its size.
//
// The state is measured every Interval and clears by itself when space
// is freed: no restart, no command.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
)

// DiskConfig configures the node's disk guard. Start from
// DefaultDiskConfig.
type DiskConfig struct {
	// MinFree is the free space of the data directory's filesystem below
	// which ingest is refused; below MinFree/2 raft appends and store
	// writes wait too. 0 disables the guard.
	MinFree uint64
	// Reserve is the size of the ballast file kept in the data directory
	// (0: none). It is written only while free space stays at or above
	// MinFree after it, so writing it never makes the guard refuse.
	Reserve uint64
	// Interval is how often free space is measured.
	Interval time.Duration
	// Usage measures the filesystem holding dir: bytes available to the
	// process, and total. nil: Pebble's vfs.Default.GetDiskUsage (statfs).
	// Tests replace it.
	Usage func(dir string) (avail, total uint64, err error)
}

// DefaultDiskConfig returns the guard a node runs with by default. The
// reserve (128 MiB) is more than opening needs with the default 64 MiB
// memtable (MinFreeFor(64 MiB)/2, 101 MiB: see Open), so a node restarted
// on a disk with no byte free opens once it released it.
func DefaultDiskConfig() DiskConfig {
	return DiskConfig{MinFree: 256 << 20, Reserve: 128 << 20, Interval: 100 * time.Millisecond}
}

// Validate reports the first field out of range.
func (c DiskConfig) Validate() error {
	switch {
	case c.MinFree > 0 && c.Interval <= 0:
		return fmt.Errorf("%w: Disk.Interval %v: must be positive", ErrConfig, c.Interval)
	case c.MinFree == 0 && c.Reserve > 0:
		return fmt.Errorf("%w: Disk.Reserve %d: needs a MinFree (the guard releases it)", ErrConfig, c.Reserve)
	}
	return nil
}

// diskLevel is how full the data directory's filesystem is.
type diskLevel int32

const (
	diskOK       diskLevel = iota
	diskFull               // below MinFree: ingest refused
	diskCritical           // below MinFree/2: raft appends and store writes wait
)

func (l diskLevel) String() string {
	return [...]string{"ok", "full", "critical"}[l]
}

// reserveFile is the ballast's name in the data directory.
const reserveFile = "disk-reserve"

// diskGuard measures free space and answers, without blocking, whether
// ingest, raft appends and store writes may go on. Safe for concurrent use.
type diskGuard struct {
	cfg     DiskConfig
	dir     string
	logger  *slog.Logger
	reserve string // path of the ballast file

	level   atomic.Int32  // a diskLevel
	avail   atomic.Uint64 // last measurement
	total   atomic.Uint64
	held    atomic.Uint64 // bytes of ballast present
	waiting atomic.Int64  // store writes waiting in waitWritable
	refused prometheus.Counter

	mu      sync.Mutex    // serializes check
	changed chan struct{} // closed and replaced when the level drops
}

func newDiskGuard(cfg DiskConfig, dir string, logger *slog.Logger, reg prometheus.Registerer) *diskGuard {
	if cfg.Usage == nil {
		cfg.Usage = func(dir string) (uint64, uint64, error) {
			u, err := vfs.Default.GetDiskUsage(dir)
			return u.AvailBytes, u.TotalBytes, err
		}
	}
	g := &diskGuard{cfg: cfg, dir: dir, logger: logger, reserve: filepath.Join(dir, reserveFile),
		changed: make(chan struct{}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_disk_refused_events_total",
			Help: "Events refused at admission because the data directory's free space was below -min-free-disk.",
		})}
	if st, err := os.Stat(g.reserve); err == nil {
		g.held.Store(uint64(st.Size()))
	}
	reg.MustRegister(g.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scope_disk_free_bytes",
			Help: "Bytes available on the data directory's filesystem at the last measurement.",
		}, func() float64 { return float64(g.avail.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scope_disk_full",
			Help: "1 while free space is below -min-free-disk (ingest refused), 2 while below half of it (raft appends and store writes wait too), else 0.",
		}, func() float64 { return float64(g.level.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scope_disk_waiting_writes",
			Help: "Replicas whose next store write waits for free space (the disk is critical).",
		}, func() float64 { return float64(g.waiting.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scope_disk_reserve_bytes",
			Help: "Bytes held by the data directory's reserve file (0 once released).",
		}, func() float64 { return float64(g.held.Load()) }))
	return g
}

// enabled reports whether the guard measures anything.
func (g *diskGuard) enabled() bool { return g.cfg.MinFree > 0 }

// check measures free space, releases or writes back the reserve, and
// moves the level. Called at open, then every Interval.
func (g *diskGuard) check() {
	if !g.enabled() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	avail, total, err := g.cfg.Usage(g.dir)
	if err != nil {
		// Keep the last level: a guard that cannot measure neither
		// starts nor stops refusing.
		g.logger.Warn("disk guard: cannot measure free space", "dir", g.dir, "err", err)
		return
	}
	held := g.held.Load()
	switch {
	case avail < g.cfg.MinFree/2 && held > 0:
		if err := os.Remove(g.reserve); err != nil && !errors.Is(err, os.ErrNotExist) {
			g.logger.Error("disk guard: cannot release the reserve file", "path", g.reserve, "err", err)
			break
		}
		g.held.Store(0)
		g.logger.Warn("disk guard: free space critical; released the reserve file",
			"dir", g.dir, "free", FormatBytes(avail), "released", FormatBytes(held))
		if a, t, err := g.cfg.Usage(g.dir); err == nil {
			avail, total = a, t
		} else {
			avail += held
		}
	case held == 0 && g.cfg.Reserve > 0 && avail >= g.cfg.MinFree+g.cfg.Reserve:
		if err := writeReserve(g.reserve, g.cfg.Reserve); err != nil {
			g.logger.Warn("disk guard: cannot write the reserve file", "path", g.reserve, "err", err)
			break
		}
		g.held.Store(g.cfg.Reserve)
		avail -= min(avail, g.cfg.Reserve)
	}
	g.avail.Store(avail)
	g.total.Store(total)
	level := diskOK
	switch {
	case avail < g.cfg.MinFree/2:
		level = diskCritical
	case avail < g.cfg.MinFree:
		level = diskFull
	}
	old := diskLevel(g.level.Swap(int32(level)))
	if level == old {
		return
	}
	attrs := []any{"dir", g.dir, "free", FormatBytes(avail), "total", FormatBytes(total),
		"min_free", FormatBytes(g.cfg.MinFree), "level", level.String()}
	switch {
	case level == diskOK:
		g.logger.Info("disk guard: free space back above the minimum; accepting writes again", attrs...)
	case level > old:
		g.logger.Warn("disk guard: free space below the minimum; refusing writes", attrs...)
	default:
		g.logger.Warn("disk guard: free space still below the minimum", attrs...)
	}
	if level < old {
		close(g.changed) // wake the waiters (waitWritable)
		g.changed = make(chan struct{})
	}
}

// run measures every Interval until stop is closed.
func (g *diskGuard) run(stop <-chan struct{}) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			g.check()
		}
	}
}

// err describes the current condition, naming the directory, the free
// space and the minimum.
func (g *diskGuard) err() error {
	return fmt.Errorf("%w: data dir %s has %s free of %s, below the minimum %s (-min-free-disk); writes resume once space is freed",
		ErrDiskFull, g.dir, FormatBytes(g.avail.Load()), FormatBytes(g.total.Load()), FormatBytes(g.cfg.MinFree))
}

// admit refuses n new events while free space is below MinFree. A
// redirect (events an old leader admitted) is refused only once free space
// is critical: it is bounded by a ring per shard and fits in the margin,
// but its mark is a header any client could set, so the margin is all it
// may take.
func (g *diskGuard) admit(n int, redirect bool) error {
	switch level := diskLevel(g.level.Load()); {
	case level == diskOK, level == diskFull && redirect:
		return nil
	}
	g.refused.Add(float64(n))
	return g.err()
}

// appendErr refuses raft log appends while free space is critical.
func (g *diskGuard) appendErr() error {
	if diskLevel(g.level.Load()) < diskCritical {
		return nil
	}
	return g.err()
}

// Condition is nil, or the error saying why writes are refused.
func (g *diskGuard) condition() error {
	if diskLevel(g.level.Load()) == diskOK {
		return nil
	}
	return g.err()
}

// waitWritable blocks while free space is critical. It returns false if
// stop closed first.
func (g *diskGuard) waitWritable(stop <-chan struct{}) bool {
	counted := false
	defer func() {
		if counted {
			g.waiting.Add(-1)
		}
	}()
	for diskLevel(g.level.Load()) == diskCritical {
		if !counted {
			g.logger.Warn("disk guard: store write waits for free space", "dir", g.dir)
			g.waiting.Add(1)
			counted = true
		}
		g.mu.Lock()
		ch := g.changed
		g.mu.Unlock()
		if diskLevel(g.level.Load()) < diskCritical {
			break
		}
		select {
		case <-stop:
			return false
		case <-ch:
		}
	}
	return true
}

// writeReserve makes path a file of size bytes whose blocks are really
// taken (a sparse file would reserve nothing), synced, renamed into place.
// A partial file is removed.
func writeReserve(path string, size uint64) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = allocate(f, size); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeZeros writes size bytes of zeros to f.
func writeZeros(f *os.File, size uint64) error {
	zeros := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, uint64(len(zeros)))
		if _, err := f.Write(zeros[:n]); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// FormatBytes renders n with a binary unit (B, KiB, MiB, GiB, TiB).
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}

// ReleaseReserve removes the reserve file of the data directory dir, if it
// has one, and reports whether it did. A start that must write a few bytes
// before the node opens (the agent's identity file) on a disk with none
// free releases it, as the disk guard would once the node is open.
func ReleaseReserve(dir string) (bool, error) {
	err := os.Remove(filepath.Join(dir, reserveFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}
