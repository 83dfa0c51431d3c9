//go:build !linux

package node

import "os"

// allocate takes size bytes of disk for f by writing zeros (a sparse file
// would reserve nothing).
func allocate(f *os.File, size uint64) error { return writeZeros(f, size) }
