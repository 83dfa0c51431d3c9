package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// metaFile records, in the data directory, what must never change once the
// directory holds data: the shard count (every key and every Raft group
// depends on it). It is written once, atomically, before any shard opens.
const metaFile = "scope-meta.json"

// metaFormat is the version of metaFile's layout.
const metaFormat = 1

type dataDirMeta struct {
	Format int    `json:"format"`
	Shards uint32 `json:"shards"`
	Node   string `json:"node"`
}

// prepareDataDir creates dir if needed and checks its metadata against the
// configured shard count. A new directory records shards. An existing one
// keeps its count: when -shards was given explicitly and differs, the agent
// refuses to start; when it was not, the stored count is adopted. It
// returns the shard count to run with.
func prepareDataDir(dir string, shards uint32, explicit bool, nodeName string) (uint32, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("scope: data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, metaFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return shards, writeMeta(path, dataDirMeta{Format: metaFormat, Shards: shards, Node: nodeName})
	case err != nil:
		return 0, fmt.Errorf("scope: %w", err)
	}
	var m dataDirMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return 0, fmt.Errorf("%w: %s: %v", errBadMeta, path, err)
	}
	if m.Format != metaFormat || m.Shards < 1 || m.Shards > 4096 {
		return 0, fmt.Errorf("%w: %s: format %d, shards %d: want format %d and shards in 1..4096",
			errBadMeta, path, m.Format, m.Shards, metaFormat)
	}
	if explicit && m.Shards != shards {
		return 0, fmt.Errorf("%w: -shards %d, but %s was created with %d shards; the count is fixed at bootstrap: "+
			"drop -shards (or pass -shards %d), or use a new -data-dir", errShardsMismatch, shards, dir, m.Shards, m.Shards)
	}
	return m.Shards, nil
}

// writeMeta writes path atomically and durably: temp file, fsync, rename,
// fsync of the directory.
func writeMeta(path string, m dataDirMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("scope: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("scope: write %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("scope: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("scope: sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}
