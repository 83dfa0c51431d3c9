package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/store"
)

// Lazy raft snapshots (docs/DECISIONS.md D36). The store is the durable
// state of a shard: a replica restarts from it (NoSnapshotRestoreOnStart)
// and raft replays only the entries after its applied index. A raft
// snapshot therefore has one job on the node that takes it: to let raft cut
// its log. So the FSM's snapshot is a marker — the shard and the applied
// index it was taken at, 21 bytes — whatever the shard's size.
//
// The shard's span is read only when raft opens the snapshot to send it to
// a follower that is too far behind for the log (InstallSnapshot): the
// snapshot store then writes the span as it is at that moment, from a
// Pebble snapshot taken between two applies, to a temporary file (raft
// must announce the stream's size before sending it), and removes the file
// when raft closes it.
//
// That span holds the state at the applied index of the moment it is read,
// X', which is at least the marker's X (applies only move forward). Raft
// labels it X. The follower imports the span, whose applied index is X';
// raft then sends it the entries after X, and the FSM skips those up to X'
// as it skips entries it has applied at every restart. The follower ends
// with the same bytes as if the snapshot had been taken at X'.
//
// A snapshot that is not a marker (a full span: one a follower received, or
// one written by an earlier release) is opened as it is.

// lazyMagic starts a marker; a shard stream starts with "SCOPESPN".
const lazyMagic = "SCOPELZY"

const lazyVersion = 1

// lazyMarkerLen is magic | version (1) | shard (4, BE) | applied (8, BE).
const lazyMarkerLen = len(lazyMagic) + 1 + 4 + 8

func appendLazyMarker(b []byte, shard uint32, applied uint64) []byte {
	b = append(b, lazyMagic...)
	b = append(b, lazyVersion)
	b = binary.BigEndian.AppendUint32(b, shard)
	return binary.BigEndian.AppendUint64(b, applied)
}

// lazySnapshot is what the FSM hands raft: the marker.
type lazySnapshot struct {
	shard   uint32
	applied uint64
}

func (s lazySnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(appendLazyMarker(nil, s.shard, s.applied)); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

func (lazySnapshot) Release() {}

// materializedPrefix names the temporary files of opened markers; a crash
// leaves them behind, and opening the store removes them.
const materializedPrefix = "materialized-"

// lazySnapshotStore is raft's snapshot store for a replica: raft's file
// store, whose Open turns a marker into the shard's span.
type lazySnapshotStore struct {
	files *raft.FileSnapshotStore
	dir   string // where materialized spans are written
	fsm   *shardFSM
	// onMaterialize, if set, is told each span written for a follower.
	onMaterialize func(bytes int64, took time.Duration)
}

func newLazySnapshotStore(dir string, fsm *shardFSM, files *raft.FileSnapshotStore) (*lazySnapshotStore, error) {
	old, err := filepath.Glob(filepath.Join(dir, materializedPrefix+"*"))
	if err != nil {
		return nil, err
	}
	for _, p := range old {
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("node: remove a leftover materialized snapshot: %w", err)
		}
	}
	return &lazySnapshotStore{files: files, dir: dir, fsm: fsm}, nil
}

func (s *lazySnapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	return s.files.Create(version, index, term, configuration, configurationIndex, trans)
}

func (s *lazySnapshotStore) List() ([]*raft.SnapshotMeta, error) { return s.files.List() }

// Open returns the snapshot's data: a full span as stored, or, for a
// marker, the shard's span as it is now.
func (s *lazySnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.files.Open(id)
	if err != nil {
		return nil, nil, err
	}
	head := make([]byte, lazyMarkerLen)
	n, err := io.ReadFull(rc, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, nil, errors.Join(err, rc.Close())
	}
	if n < lazyMarkerLen || string(head[:len(lazyMagic)]) != lazyMagic {
		return meta, prefixedReadCloser{Reader: io.MultiReader(bytes.NewReader(head[:n]), rc), Closer: rc}, nil
	}
	if err := rc.Close(); err != nil {
		return nil, nil, err
	}
	version := head[len(lazyMagic)]
	shard := binary.BigEndian.Uint32(head[len(lazyMagic)+1:])
	at := binary.BigEndian.Uint64(head[len(lazyMagic)+5:])
	switch {
	case version != lazyVersion:
		return nil, nil, fmt.Errorf("node: snapshot %s: marker version %d, this build reads %d", id, version, lazyVersion)
	case shard != s.fsm.shard:
		return nil, nil, fmt.Errorf("node: snapshot %s: marker of shard %d in shard %d's store", id, shard, s.fsm.shard)
	}
	return s.materialize(meta, at)
}

// materialize writes the shard's span, at an apply boundary, to a
// temporary file and returns it with meta's size set to the file's.
func (s *lazySnapshotStore) materialize(meta *raft.SnapshotMeta, at uint64) (*raft.SnapshotMeta, io.ReadCloser, error) {
	start := time.Now()
	var (
		snap    *store.ShardSnapshot
		applied uint64
		err     error
	)
	s.fsm.withApplied(func(a, _ uint64, failed error) {
		if failed != nil {
			err = failed
			return
		}
		applied = a
		snap, err = s.fsm.store.SnapshotShard(s.fsm.shard)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("node: shard %d: read the span for snapshot %s: %w", s.fsm.shard, meta.ID, err)
	}
	defer snap.Close()
	if applied < at {
		return nil, nil, fmt.Errorf("node: shard %d: snapshot %s was taken at index %d, the replica has applied only %d",
			s.fsm.shard, meta.ID, at, applied)
	}
	f, err := os.CreateTemp(s.dir, materializedPrefix+"*")
	if err != nil {
		return nil, nil, err
	}
	tmp := &tempFile{File: f}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := snap.Write(bw); err != nil {
		return nil, nil, errors.Join(err, tmp.Close())
	}
	if err := bw.Flush(); err != nil {
		return nil, nil, errors.Join(err, tmp.Close())
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		return nil, nil, errors.Join(err, tmp.Close())
	}
	m := *meta
	m.Size = size
	if s.onMaterialize != nil {
		s.onMaterialize(size, time.Since(start))
	}
	return &m, tmp, nil
}

// prefixedReadCloser reads what was peeked, then the rest, and closes the
// underlying file.
type prefixedReadCloser struct {
	io.Reader
	io.Closer
}

// tempFile is removed when closed.
type tempFile struct{ *os.File }

func (t *tempFile) Close() error {
	return errors.Join(t.File.Close(), os.Remove(t.File.Name()))
}
