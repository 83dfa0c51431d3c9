package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/internal/atomicfile"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The gossip keyring (docs/DECISIONS.md D32). A node started with
// -gossip-keyring FILE keeps its keys in that file, one base64 key a line,
// the first the primary (it encrypts; all decrypt). The file is the truth:
// a SIGHUP (Reload) and `scope keyring` (Change, on every member through
// ClusterService.Keyring) both end with the file's keys installed in
// gossip and in the node credentials, under one lock, so the running keys
// and the file never disagree for longer than one call, and a restart
// keeps what the last change made.

var (
	// ErrNoKeyring: this node was started without -gossip-keyring.
	ErrNoKeyring = errors.New("cluster: this node was started without -gossip-keyring: its gossip keys cannot change while it runs")
	// ErrKeyringRefused: the change would break the keyring (use a key not
	// installed, remove the primary key).
	ErrKeyringRefused = errors.New("cluster: keyring change refused")
)

// KeyFingerprint names a key without revealing it: the first 8 bytes of its
// SHA-256, in hex.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// ReadKeyringFile reads a gossip keyring file: one base64 key a line
// (16, 24 or 32 bytes), blank lines and # comments ignored; the first key
// is the primary.
func ReadKeyringFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseGossipKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s: line %d: %v", path, i+1, err)
		}
		if slices.ContainsFunc(keys, func(prev []byte) bool { return bytes.Equal(prev, k) }) {
			return nil, fmt.Errorf("%s: line %d: the key is listed twice", path, i+1)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no key (want base64 keys of 16, 24 or 32 bytes, one a line; the first encrypts)", path)
	}
	return keys, nil
}

// KeyringFile is a node's gossip keyring kept in a file. Safe for
// concurrent use.
type KeyringFile struct {
	path    string
	members *Membership
	// installed is called with the keys after gossip took them (the node
	// credentials are derived from them).
	installed func(keys [][]byte)

	mu sync.Mutex
}

// NewKeyringFile keeps the keyring of members (whose gossip must have
// started with the file's keys) in path; installed is told every new set
// of keys.
func NewKeyringFile(path string, members *Membership, installed func(keys [][]byte)) *KeyringFile {
	return &KeyringFile{path: path, members: members, installed: installed}
}

// Path is the keyring file.
func (k *KeyringFile) Path() string { return k.path }

// Reload reads the file and installs its keys (SIGHUP). On error the keys
// in use stay.
func (k *KeyringFile) Reload() ([][]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	keys, err := ReadKeyringFile(k.path)
	if err != nil {
		return nil, err
	}
	return keys, k.installLocked(keys)
}

func (k *KeyringFile) installLocked(keys [][]byte) error {
	if err := k.members.SetGossipKeys(keys); err != nil {
		return err
	}
	if k.installed != nil {
		k.installed(keys)
	}
	return nil
}

// Change applies op to the keyring and returns the keys in use after it,
// primary first. LIST changes nothing; INSTALL appends key unless it is
// there; USE moves an installed key first; REMOVE deletes a key that is
// not the primary (a key that is not there is no change). A change is
// written to the file (atomically, keeping its permissions; comments are
// not kept) before it is installed.
func (k *KeyringFile) Change(op scopev1.KeyringOperation, key []byte) ([][]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if op == scopev1.KeyringOperation_KEYRING_OPERATION_LIST {
		return k.members.GossipKeys(), nil
	}
	keys, err := ReadKeyringFile(k.path)
	if err != nil {
		return nil, err
	}
	at := slices.IndexFunc(keys, func(w []byte) bool { return bytes.Equal(w, key) })
	next := slices.Clone(keys)
	switch op {
	case scopev1.KeyringOperation_KEYRING_OPERATION_INSTALL:
		if at < 0 {
			next = append(next, key)
		}
	case scopev1.KeyringOperation_KEYRING_OPERATION_USE:
		if at < 0 {
			return nil, fmt.Errorf("%w: key %s is not installed on this node: install it on every node first", ErrKeyringRefused, KeyFingerprint(key))
		}
		next = append([][]byte{key}, slices.Delete(next, at, at+1)...)
	case scopev1.KeyringOperation_KEYRING_OPERATION_REMOVE:
		if at == 0 {
			return nil, fmt.Errorf("%w: key %s is the primary key: use another key first", ErrKeyringRefused, KeyFingerprint(key))
		}
		if at > 0 {
			next = slices.Delete(next, at, at+1)
		}
	default:
		return nil, fmt.Errorf("%w: unknown keyring operation %v", ErrKeyringRefused, op)
	}
	if !slices.EqualFunc(next, keys, bytes.Equal) {
		if err := k.writeLocked(next, op, key); err != nil {
			return nil, err
		}
	}
	// Installed even when the file did not change: the file may have been
	// edited without a SIGHUP, and the change must leave the two equal.
	if err := k.installLocked(next); err != nil {
		return nil, fmt.Errorf("the keyring file was written but its keys were not installed (a SIGHUP retries): %w", err)
	}
	return next, nil
}

func (k *KeyringFile) writeLocked(keys [][]byte, op scopev1.KeyringOperation, key []byte) error {
	perm := fs.FileMode(0o600)
	if st, err := os.Stat(k.path); err == nil {
		perm = st.Mode().Perm()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Scope gossip keyring: one base64 key a line; the first encrypts, all decrypt.\n")
	fmt.Fprintf(&b, "# Written by scope keyring (%s %s) at %s.\n",
		strings.TrimPrefix(op.String(), "KEYRING_OPERATION_"), KeyFingerprint(key), time.Now().UTC().Format(time.RFC3339))
	for _, key := range keys {
		b.WriteString(encodeGossipKey(key))
		b.WriteByte('\n')
	}
	return atomicfile.Write(k.path, []byte(b.String()), perm)
}

// fingerprints names keys, in order.
func fingerprints(keys [][]byte) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = KeyFingerprint(k)
	}
	return out
}

// changeKeyringLocal is the node API's Keyring on this node.
func (c *Cluster) changeKeyringLocal(op scopev1.KeyringOperation, key []byte) ([]string, error) {
	if c.cfg.Keyring == nil {
		return nil, ErrNoKeyring
	}
	keys, err := c.cfg.Keyring.Change(op, key)
	if err != nil {
		return nil, err
	}
	return fingerprints(keys), nil
}

// Keyring applies op on every member of this cluster that is alive, this
// node included, in parallel, and reports each one's outcome; a member
// that is not alive is reported failed (it missed the change: run it again
// once the member is back).
func (c *Cluster) Keyring(ctx context.Context, op scopev1.KeyringOperation, key []byte) *scopev1.KeyringResponse {
	members := c.sameCluster(c.members.Members())
	results := make([]*scopev1.NodeKeyring, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		res := &scopev1.NodeKeyring{Node: m.Name}
		results[i] = res
		switch {
		case m.State != MemberAlive:
			res.Error = fmt.Sprintf("not alive (%s): not changed; run the command again once it is back", m.State)
			continue
		case m.Name == c.cfg.Name:
			keys, err := c.changeKeyringLocal(op, key)
			res.Keys, res.Error = keys, errString(err)
			continue
		}
		wg.Go(func() {
			err := c.peers.call(ctx, m.Meta.HTTPAddr, func(ctx context.Context, p *peer) error {
				resp, err := p.node.Keyring(ctx, connect.NewRequest(&nodev1.KeyringRequest{Operation: op, Key: key}))
				if err == nil {
					res.Keys = resp.Msg.GetKeys()
				}
				return err
			})
			res.Error = errString(err)
		})
	}
	wg.Wait()
	slices.SortFunc(results, func(a, b *scopev1.NodeKeyring) int { return strings.Compare(a.Node, b.Node) })
	out := &scopev1.KeyringResponse{Nodes: results}
	byPrint := make(map[string]*scopev1.KeyringKey)
	for _, r := range results {
		if r.Error != "" {
			out.Failed++
			continue
		}
		for i, fp := range r.Keys {
			k := byPrint[fp]
			if k == nil {
				k = &scopev1.KeyringKey{Fingerprint: fp}
				byPrint[fp] = k
				out.Keys = append(out.Keys, k)
			}
			k.Installed++
			if i == 0 {
				k.Primary++
			}
		}
	}
	slices.SortFunc(out.Keys, func(a, b *scopev1.KeyringKey) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
	return out
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
