package cluster

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestKeyringFileChange applies keyring operations in sequence to a
// KeyringFile over a running Membership: each leaves the file, the keys in
// gossip and the keys handed to the node credentials equal, or is refused
// and changes nothing.
func TestKeyringFileChange(t *testing.T) {
	k1, k2, k3 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 16), bytes.Repeat([]byte{3}, 24)
	cfg := testMembershipConfig("a")
	cfg.GossipKeys = [][]byte{k1}
	m := startMember(t, cfg)
	path := filepath.Join(t.TempDir(), "keyring")
	if err := os.WriteFile(path, []byte("# operator's comment\n"+encodeGossipKey(k1)+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	var installed [][]byte
	kf := NewKeyringFile(path, m, func(keys [][]byte) { installed = keys })

	const (
		list    = scopev1.KeyringOperation_KEYRING_OPERATION_LIST
		install = scopev1.KeyringOperation_KEYRING_OPERATION_INSTALL
		use     = scopev1.KeyringOperation_KEYRING_OPERATION_USE
		remove  = scopev1.KeyringOperation_KEYRING_OPERATION_REMOVE
	)
	for _, step := range []struct {
		name    string
		op      scopev1.KeyringOperation
		key     []byte
		want    [][]byte // keys after the step, primary first
		refused string   // non-empty: refused with this in the message
	}{
		{name: "list", op: list, want: [][]byte{k1}},
		{name: "use a key not installed", op: use, key: k2, want: [][]byte{k1}, refused: "not installed"},
		{name: "install", op: install, key: k2, want: [][]byte{k1, k2}},
		{name: "install again", op: install, key: k2, want: [][]byte{k1, k2}},
		{name: "install a third", op: install, key: k3, want: [][]byte{k1, k2, k3}},
		{name: "use", op: use, key: k2, want: [][]byte{k2, k1, k3}},
		{name: "remove the primary", op: remove, key: k2, want: [][]byte{k2, k1, k3}, refused: "primary"},
		{name: "remove", op: remove, key: k1, want: [][]byte{k2, k3}},
		{name: "remove a key not there", op: remove, key: k1, want: [][]byte{k2, k3}},
		{name: "use the primary", op: use, key: k2, want: [][]byte{k2, k3}},
	} {
		got, err := kf.Change(step.op, step.key)
		if step.refused != "" {
			if !errors.Is(err, ErrKeyringRefused) || !strings.Contains(err.Error(), step.refused) {
				t.Fatalf("%s: err %v, want ErrKeyringRefused saying %q", step.name, err, step.refused)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		} else if !slices.EqualFunc(got, step.want, bytes.Equal) {
			t.Fatalf("%s: returned %s, want %s", step.name, fingerprints(got), fingerprints(step.want))
		}
		if inGossip := m.GossipKeys(); !slices.EqualFunc(inGossip, step.want, bytes.Equal) {
			t.Fatalf("%s: gossip holds %s, want %s", step.name, fingerprints(inGossip), fingerprints(step.want))
		}
		inFile, err := ReadKeyringFile(path)
		if err != nil || !slices.EqualFunc(inFile, step.want, bytes.Equal) {
			t.Fatalf("%s: the file holds %s (%v), want %s", step.name, fingerprints(inFile), err, fingerprints(step.want))
		}
		if step.op != list && step.refused == "" && !slices.EqualFunc(installed, step.want, bytes.Equal) {
			t.Fatalf("%s: node credentials from %s, want %s", step.name, fingerprints(installed), fingerprints(step.want))
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("file mode %v (%v): want the operator's 0640 kept", st.Mode(), err)
	}

	// An edit without a SIGHUP: the next change starts from the file.
	if err := os.WriteFile(path, []byte(encodeGossipKey(k3)+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got, err := kf.Change(install, k1); err != nil || !slices.EqualFunc(got, [][]byte{k3, k1}, bytes.Equal) {
		t.Fatalf("install after an edit: %s, %v; want k3 then k1", fingerprints(got), err)
	}
	// Reload (SIGHUP) of a file that does not parse keeps the keys in use.
	if err := os.WriteFile(path, []byte("not base64!\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := kf.Reload(); err == nil {
		t.Fatal("Reload of a bad file succeeded")
	}
	if got := m.GossipKeys(); !slices.EqualFunc(got, [][]byte{k3, k1}, bytes.Equal) {
		t.Fatalf("after a failed reload gossip holds %s", fingerprints(got))
	}
	if _, err := kf.Change(install, k2); err == nil {
		t.Fatal("a change over a file that does not parse succeeded")
	}
}

func TestKeyFingerprint(t *testing.T) {
	// sha256 of 16 zero bytes: 374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb.
	if got := KeyFingerprint(make([]byte, 16)); got != "374708fff7719dd5" {
		t.Fatalf("fingerprint %s", got)
	}
}
