package node

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// TestLazySnapshotStoreOpensFullSnapshotsAsTheyAre: a snapshot that is not
// a marker (a span a follower received, or one an earlier release wrote)
// is read back byte for byte, however short; a marker of another shard or
// an unknown version is refused, never read as data.
func TestLazySnapshotStoreOpensFullSnapshotsAsTheyAre(t *testing.T) {
	dir := t.TempDir()
	files, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newLazySnapshotStore(dir, &shardFSM{shard: 3}, files)
	if err != nil {
		t.Fatal(err)
	}
	put := func(index uint64, data []byte) string {
		t.Helper()
		sink, err := s.Create(1, index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sink.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		return sink.ID()
	}
	for i, data := range [][]byte{
		[]byte("SCOPESPN" + strings.Repeat("span bytes ", 100)),
		[]byte("abc"), // shorter than a marker
		[]byte("SCOPELZ"),
		{},
	} {
		id := put(uint64(10+i), data)
		meta, rc, err := s.Open(id)
		if err != nil {
			t.Fatalf("open %q: %v", data, err)
		}
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) || meta.Size != int64(len(data)) {
			t.Errorf("opened %q (size %d), stored %q", got, meta.Size, data)
		}
	}
	for _, marker := range [][]byte{
		appendLazyMarker(nil, 4, 100),                             // another shard's
		append(append([]byte(lazyMagic), 9), make([]byte, 12)...), // a version this build does not read
	} {
		id := put(20, marker)
		if _, rc, err := s.Open(id); err == nil {
			rc.Close()
			t.Errorf("marker %x opened without error", marker)
		}
	}
}
