package node

import (
	"errors"
	"os"
	"syscall"
)

// allocate takes size bytes of disk for f at once (fallocate: the blocks
// are reserved without being written). Filesystems without fallocate get
// zeros written.
func allocate(f *os.File, size uint64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, int64(size))
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return writeZeros(f, size)
	}
	return err
}
