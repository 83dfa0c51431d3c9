package clustertest

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// storeFaults is the seam under a node's store: every store sits on an
// errorfs wrapper that passes I/O through until FailStore turns WAL writes
// into errors. Pebble treats a failed WAL write as fatal, so the store
// fails every later write (store.ErrFailed) and the node's replicas stop
// applying as soon as they next apply.
type storeFaults struct{ failWAL atomic.Bool }

func (f *storeFaults) wrap(fs vfs.FS) vfs.FS {
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if f.failWAL.Load() && strings.HasSuffix(op.Path, ".log") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return errorfs.ErrInjected
		}
		return nil
	}))
}

// FailStore makes n's store fail from its next WAL write on, as a disk
// that stopped accepting writes would. It lasts until n restarts. The
// cluster must have been started with Options.StoreFaults.
func (n *Node) FailStore() { n.storeFaults.failWAL.Store(true) }

// applyHold makes a node's replicas wait before applying committed entries
// while it is held.
type applyHold struct{ gate atomic.Pointer[chan struct{}] }

func (h *applyHold) wait(uint32) {
	if g := h.gate.Load(); g != nil {
		<-*g
	}
}

// HoldApplies makes n's replicas stop applying committed entries (their
// raft logs still take entries, and they still vote and lead), as a
// stalled disk would, until release is called. Reads are served
// meanwhile.
func (n *Node) HoldApplies() (release func()) {
	g := make(chan struct{})
	n.applyHold.gate.Store(&g)
	var once sync.Once
	return func() {
		once.Do(func() {
			n.applyHold.gate.Store(nil)
			close(g)
		})
	}
}
