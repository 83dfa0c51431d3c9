package cluster

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/elixirscope/scope/internal/atomicfile"
)

// IdentityFile is the name of the file, in a node's data directory, that
// holds the directory's identity (docs/DECISIONS.md D27).
const IdentityFile = "scope-identity.json"

// Identity is a data directory's identity, as IdentityFile stores it.
type Identity struct {
	// NodeID is random, written when the directory gets its identity and
	// never changed: a wiped directory gets a new one.
	NodeID uint64
	// ClusterID is the cluster's id, 0 until the node bootstraps the
	// cluster or learns it from the members that formed it.
	ClusterID uint64
	// Epoch counts the node's starts on this directory: each start writes
	// the next value before the node gossips. A copy of the directory
	// taken before a start therefore holds a lower epoch than the members
	// have seen.
	Epoch uint64
	// Resync: the node learned that this directory is an old copy and has
	// not finished dropping the replicas it holds (identity.go); the next
	// start finishes it.
	Resync bool
}

type identityJSON struct {
	NodeID    string `json:"node_id"`
	ClusterID string `json:"cluster_id,omitempty"`
	Epoch     uint64 `json:"epoch"`
	Resync    bool   `json:"resync,omitempty"`
}

// FormatID formats a node or cluster id as IdentityFile and the logs show
// it: 16 hex digits ("" for 0, unknown).
func FormatID(id uint64) string {
	if id == 0 {
		return ""
	}
	return fmt.Sprintf("%016x", id)
}

func parseID(field, s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || len(s) != 16 {
		return 0, fmt.Errorf("%s %q: want 16 hex digits", field, s)
	}
	return v, nil
}

// IdentityStore keeps a data directory's Identity, in memory and, unless it
// was made by NewMemoryIdentity, in IdentityFile (written atomically and
// durably on every change). Safe for concurrent use.
type IdentityStore struct {
	path string // "" in memory only
	run  uint64 // random per OpenIdentity

	mu sync.Mutex
	id Identity
}

// OpenIdentity reads dir's identity and records a new start: the epoch is
// incremented and written before it returns. A directory without
// IdentityFile (new, or written by a version older than D27) gets one with
// a new random node id. dir must exist.
func OpenIdentity(dir string) (*IdentityStore, error) {
	s := &IdentityStore{path: filepath.Join(dir, IdentityFile), run: randomID()}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.id = Identity{NodeID: randomID()}
	case err != nil:
		return nil, fmt.Errorf("cluster: identity: %w", err)
	default:
		var j identityJSON
		if err := json.Unmarshal(b, &j); err != nil {
			return nil, fmt.Errorf("cluster: identity: %s: %v (restore it, or move the data directory aside and start afresh)", s.path, err)
		}
		if s.id.NodeID, err = parseID("node_id", j.NodeID); err == nil {
			s.id.ClusterID, err = parseID("cluster_id", j.ClusterID)
		}
		if err == nil && s.id.NodeID == 0 {
			err = errors.New("node_id missing")
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: identity: %s: %v", s.path, err)
		}
		s.id.Epoch, s.id.Resync = j.Epoch, j.Resync
	}
	s.id.Epoch++
	if err := s.writeLocked(s.id); err != nil {
		return nil, err
	}
	return s, nil
}

// NewMemoryIdentity returns an identity kept in memory only, with a new
// node id: for nodes without a data directory of their own.
func NewMemoryIdentity() *IdentityStore {
	return &IdentityStore{run: randomID(), id: Identity{NodeID: randomID(), Epoch: 1}}
}

// Get returns the identity.
func (s *IdentityStore) Get() Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// Run is this start's random run id.
func (s *IdentityStore) Run() uint64 { return s.run }

// update applies change and writes the result; on a failed write nothing
// changes.
func (s *IdentityStore) update(change func(*Identity)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.id
	change(&next)
	if next == s.id {
		return nil
	}
	if err := s.writeLocked(next); err != nil {
		return err
	}
	s.id = next
	return nil
}

// setClusterID records the cluster id once it is known.
func (s *IdentityStore) setClusterID(id uint64) error {
	return s.update(func(i *Identity) { i.ClusterID = id })
}

// beginResync records that the directory is an old copy and takes an
// epoch above the highest the cluster has seen, before any replica is
// dropped: a crash in between resumes at the next start.
func (s *IdentityStore) beginResync(seen uint64) error {
	return s.update(func(i *Identity) { i.Resync, i.Epoch = true, max(i.Epoch, seen+1) })
}

// endResync records that the old replicas are gone.
func (s *IdentityStore) endResync() error {
	return s.update(func(i *Identity) { i.Resync = false })
}

// writeLocked writes id to the file: temp file, fsync, rename, fsync of
// the directory.
func (s *IdentityStore) writeLocked(id Identity) error {
	if s.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(identityJSON{NodeID: FormatID(id.NodeID), ClusterID: FormatID(id.ClusterID),
		Epoch: id.Epoch, Resync: id.Resync}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cluster: identity: %w", err)
	}
	return nil
}

// randomID is a random non-zero 64-bit id.
func randomID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		if v := binary.BigEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}
