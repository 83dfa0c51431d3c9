package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/elixirscope/scope/internal/atomicfile"
)

// metaFile records, in the data directory, what must never change once the
// directory holds data: the shard count (every key and every Raft group
// depends on it), the mode (a -dev node's groups have one voter and no
// gossip; a cluster node's do), and the cluster settings a restart resumes
// with. It is written atomically before any shard opens and rewritten only
// to record progress (the cluster formed, new -join addresses).
const metaFile = "scope-meta.json"

// metaFormat is the version of metaFile's layout. Format 1 had no mode:
// every such directory was a one-node (-dev style) agent.
const (
	metaFormat   = 2
	metaFormatV1 = 1
)

// Data directory modes.
const (
	modeDev     = "dev"
	modeCluster = "cluster"
)

type dataDirMeta struct {
	Format int    `json:"format"`
	Shards uint32 `json:"shards"`
	Node   string `json:"node"`
	Mode   string `json:"mode"`
	// Cluster mode only.
	Replicas int `json:"replicas,omitempty"`
	// Formed: this node has seen every shard led in its cluster. From then
	// on -bootstrap-expect is ignored: bootstrapping again would create
	// second groups beside the live ones.
	Formed bool `json:"formed,omitempty"`
	// Join: the gossip addresses last given with -join, used as seeds when
	// a restart passes none.
	Join []string `json:"join,omitempty"`
}

// prepareDataDir creates dir if needed and checks its metadata against the
// configured shard count. A new directory records shards. An existing one
// keeps its count: when -shards was given explicitly and differs, the agent
// refuses to start; when it was not, the stored count is adopted. It
// returns the shard count to run with.
//
// It is the -dev form of openDataDir, kept for callers that only care about
// the shard count.
func prepareDataDir(dir string, shards uint32, explicit bool, nodeName string) (uint32, error) {
	m, _, err := openDataDir(dir, dataDirMeta{Format: metaFormat, Shards: shards, Node: nodeName, Mode: modeDev}, explicit, false)
	return m.Shards, err
}

// openDataDir creates dir if needed and reconciles its metadata with want
// (the settings from the command line). A new directory records want. An
// existing one keeps its shard count, mode and replication factor: a value
// given explicitly (shardsSet, replicasSet) that differs is refused, one
// not given is adopted. created reports a new directory.
func openDataDir(dir string, want dataDirMeta, shardsSet, replicasSet bool) (m dataDirMeta, created bool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return want, false, fmt.Errorf("scope: data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, metaFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return want, true, writeMeta(path, want)
	case err != nil:
		return want, false, fmt.Errorf("scope: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return want, false, fmt.Errorf("%w: %s: %v", errBadMeta, path, err)
	}
	if m.Format == metaFormatV1 {
		m.Format, m.Mode = metaFormat, modeDev
	}
	if m.Format != metaFormat || m.Shards < 1 || m.Shards > 4096 || (m.Mode != modeDev && m.Mode != modeCluster) ||
		(m.Mode == modeCluster && (m.Replicas < 1 || m.Replicas > 7)) {
		return want, false, fmt.Errorf("%w: %s: format %d, shards %d, mode %q, replicas %d: want format %d, shards in 1..4096, "+
			"mode dev or cluster, replicas in 1..7 for a cluster", errBadMeta, path, m.Format, m.Shards, m.Mode, m.Replicas, metaFormat)
	}
	if shardsSet && m.Shards != want.Shards {
		return m, false, fmt.Errorf("%w: -shards %d, but %s was created with %d shards; the count is fixed at bootstrap: "+
			"drop -shards (or pass -shards %d), or use a new -data-dir", errShardsMismatch, want.Shards, dir, m.Shards, m.Shards)
	}
	if m.Mode != want.Mode {
		if m.Mode == modeDev {
			return m, false, fmt.Errorf("%w: %s holds a -dev node (one voter per shard, no gossip): run it with -dev, "+
				"or start the cluster node on a new -data-dir", errModeMismatch, dir)
		}
		return m, false, fmt.Errorf("%w: %s holds a cluster node's replicas: drop -dev (its groups need their peers), "+
			"or use a new -data-dir for a dev node", errModeMismatch, dir)
	}
	if m.Mode == modeCluster && replicasSet && m.Replicas != want.Replicas {
		return m, false, fmt.Errorf("%w: -replicas %d, but %s was created with -replicas %d; every node must agree: "+
			"drop -replicas (or pass -replicas %d)", errReplicasMismatch, want.Replicas, dir, m.Replicas, m.Replicas)
	}
	return m, false, nil
}

// updateMeta rewrites dir's metadata with change applied.
func updateMeta(dir string, m *dataDirMeta, change func(*dataDirMeta)) error {
	next := *m
	change(&next)
	if err := writeMeta(filepath.Join(dir, metaFile), next); err != nil {
		return err
	}
	*m = next
	return nil
}

// writeMeta writes path atomically and durably: temp file, fsync, rename,
// fsync of the directory.
func writeMeta(path string, m dataDirMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("scope: %w", err)
	}
	return nil
}
