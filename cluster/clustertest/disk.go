package clustertest

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// diskSeam is what a node's disk guard measures: the real filesystem of
// its data directory, or the free space a test set with SetDiskFree.
type diskSeam struct {
	free atomic.Int64 // bytes; negative: measure the real filesystem
}

func newDiskSeam() *diskSeam {
	d := &diskSeam{}
	d.free.Store(-1)
	return d
}

func (d *diskSeam) usage(dir string) (avail, total uint64, err error) {
	if f := d.free.Load(); f >= 0 {
		return uint64(f), 1 << 40, nil
	}
	u, err := vfs.Default.GetDiskUsage(dir)
	return u.AvailBytes, u.TotalBytes, err
}

// SetDiskFree makes n's disk guard see free bytes free (the default
// guard refuses ingest below 256 MiB and makes raft appends and store
// writes wait below 128 MiB); a negative value measures the real
// filesystem again. It lasts until n restarts.
func (n *Node) SetDiskFree(free int64) { n.disk.free.Store(free) }
