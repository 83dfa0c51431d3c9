package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/rpc"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
)

// TestClusterTokens: three agents with -auth-tokens and -gossip-keyring.
// Ingest through one node reaches every shard's leader (forwarding carries
// the node credential, not the client's token) and a query through another
// reads every shard (scatter-gather over the node API); no token is
// UNAUTHENTICATED, a query token on ingest or leave PERMISSION_DENIED; the
// node API refuses an admin token; SIGHUP reloads the token file, and a
// bad file keeps the old tokens. Then `scope keyring` rotates the gossip
// key of every node (install, use, remove, with the admin token): each
// node's keyring file ends with the new key alone, and forwarding and
// scatter-gather keep working under the rotated node credential.
func TestClusterTokens(t *testing.T) {
	dir := t.TempDir()
	var ingestTok, queryTok, adminTok string
	var lines []string
	for _, r := range []struct {
		role rpc.Role
		name string
		dst  *string
	}{{rpc.RoleIngest, "loader", &ingestTok}, {rpc.RoleQuery, "reader", &queryTok}, {rpc.RoleAdmin, "ops", &adminTok}} {
		out := mustScope(t, "", "token", "new", "-role", r.role.String(), "-name", r.name)
		tok, _, _ := strings.Cut(strings.TrimPrefix(out, "token: "), "\n")
		*r.dst = tok
		lines = append(lines, strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))
	}
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, "# test tokens\n"+strings.Join(lines, "\n")+"\n")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	oldKey := base64.StdEncoding.EncodeToString(key)
	keyring := func(name string) string { return filepath.Join(dir, name+".keyring") }
	for _, name := range []string{"n1", "n2", "n3"} {
		writeFile(t, keyring(name), oldKey+"\n")
	}

	nodes := startClusterProcs(t, 3, func(name string) []string {
		return []string{"-auth-tokens", tokens, "-gossip-keyring", keyring(name)}
	})

	var batch strings.Builder
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("01HZZZZZZZZZZZZZZZZZZZZT%02d", i)
		ids = append(ids, id)
		fmt.Fprintf(&batch, `{"eventId":"%s","origin":"tok@h","pid":"<0.%d.0>","kind":"KIND_STATE_CHANGE","timestampNs":"%d"}`+"\n",
			id, i, 1700000000000000000+i)
	}
	if _, errOut, code := scope(t, batch.String(), "ingest", "-addr", nodes[0].http); code != 1 || !strings.Contains(errOut, "unauthenticated") {
		t.Fatalf("ingest without a token: exit %d, %s", code, errOut)
	}
	if _, errOut, code := scope(t, batch.String(), "ingest", "-token", queryTok, "-addr", nodes[0].http); code != 1 || !strings.Contains(errOut, "permission_denied") {
		t.Fatalf("ingest with a query token: exit %d, %s", code, errOut)
	}
	testwait.For(t, "ingest through n1 with the ingest token", 30*time.Second, func() bool {
		_, _, code := scope(t, batch.String(), "ingest", "-durability", "committed", "-token", ingestTok, "-addr", nodes[0].http)
		return code == 0
	})
	// Read through another node, the token from the environment.
	cmd := exec.Command(scopeBinary(t), "query", "-json", "-origin", "tok@h", "-addr", nodes[1].http)
	cmd.Env = append(os.Environ(), "SCOPE_TOKEN="+queryTok)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("query with SCOPE_TOKEN: %v\n%s", err, out)
	}
	for _, id := range ids {
		if !strings.Contains(string(out), id) {
			t.Errorf("query through n2 misses %s:\n%s", id, out)
		}
	}
	if out := mustScope(t, "", "members", "-token", queryTok, "-addr", nodes[2].http); strings.Count(out, "ALIVE") != 3 {
		t.Errorf("members:\n%s", out)
	}
	if _, errOut, code := scope(t, "", "leave", "-token", queryTok, "-addr", nodes[2].http); code != 1 || !strings.Contains(errOut, "permission_denied") {
		t.Errorf("leave with a query token: exit %d, %s", code, errOut)
	}

	// The node API takes no client token, not even an admin one.
	hc := &http.Client{Transport: bearerTransport{token: adminTok, base: http.DefaultTransport}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = nodev1connect.NewNodeServiceClient(hc, "http://"+nodes[0].http).
		DropReplica(ctx, connect.NewRequest(&nodev1.DropReplicaRequest{Shard: 0, RemovedAt: 1}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("DropReplica with an admin token: %v, want UNAUTHENTICATED", err)
	}
	// /metrics needs a query token; /healthz is open.
	if code := getStatus(t, "http://"+nodes[0].http+"/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %d", code)
	}
	if code := getStatus(t, "http://"+nodes[0].http+"/metrics", queryTok); code != http.StatusOK {
		t.Errorf("/metrics with a query token: %d", code)
	}

	// SIGHUP: a bad file keeps the old tokens; a good one replaces them.
	n1 := nodes[0]
	writeFile(t, tokens, "query not-a-hash\n")
	if err := n1.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the bad token file logged", 30*time.Second, func() bool {
		return strings.Contains(n1.proc.stderr.String(), "-auth-tokens not reloaded")
	})
	mustScope(t, "", "members", "-token", queryTok, "-addr", n1.http)
	writeFile(t, tokens, lines[2]+"\n") // admin only
	if err := n1.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the query token refused after the reload", 30*time.Second, func() bool {
		_, errOut, code := scope(t, "", "members", "-token", queryTok, "-addr", n1.http)
		return code == 1 && strings.Contains(errOut, "unauthenticated")
	})
	mustScope(t, "", "members", "-token", adminTok, "-addr", n1.http)

	// Gossip key rotation through the admin API.
	oldPrint, newKey := keyFingerprint(t, oldKey), strings.TrimSpace(mustScope(t, "", "keyring", "new"))
	newPrint := keyFingerprint(t, newKey)
	if _, errOut, code := scope(t, "", "keyring", "list", "-token", queryTok, "-addr", nodes[1].http); code != 1 || !strings.Contains(errOut, "permission_denied") {
		t.Errorf("keyring list with a query token: exit %d, %s", code, errOut)
	}
	if out := mustScope(t, "", "keyring", "list", "-token", adminTok, "-addr", n1.http); !strings.Contains(out, "key "+oldPrint+": installed on 3/3 nodes, primary on 3") {
		t.Errorf("keyring list:\n%s", out)
	}
	if out, errOut, code := scope(t, "", "keyring", "use", newKey, "-token", adminTok, "-addr", n1.http); code != 1 ||
		strings.Count(out, "not installed on this node") != 3 || !strings.Contains(errOut, "failed on 3 node(s)") {
		t.Errorf("use of a key not installed: exit %d\n%s%s", code, out, errOut)
	}
	mustScope(t, newKey+"\n", "keyring", "install", "-", "-token", adminTok, "-addr", nodes[1].http)
	mustScope(t, "", "keyring", "use", newKey, "-token", adminTok, "-addr", nodes[2].http)
	if out, _, code := scope(t, "", "keyring", "remove", newKey, "-token", adminTok, "-addr", n1.http); code != 1 || strings.Count(out, "is the primary key") != 3 {
		t.Errorf("removing the primary key: exit %d\n%s", code, out)
	}
	out = []byte(mustScope(t, "", "keyring", "remove", oldKey, "-token", adminTok, "-addr", n1.http))
	if !strings.Contains(string(out), "key "+newPrint+": installed on 3/3 nodes, primary on 3") || strings.Contains(string(out), oldPrint) {
		t.Errorf("after the rotation:\n%s", out)
	}
	for _, name := range []string{"n1", "n2", "n3"} {
		keys, err := cluster.ReadKeyringFile(keyring(name))
		if err != nil || len(keys) != 1 || base64.StdEncoding.EncodeToString(keys[0]) != newKey {
			t.Errorf("%s's keyring file after the rotation: %d keys, %v; want the new key alone", name, len(keys), err)
		}
	}
	// Node-to-node calls carry the credential of the new key: ingest
	// through n2 reaches every shard's leader, a query through n3 reads
	// every shard, and the members are all alive.
	batch.Reset()
	ids = ids[:0]
	for i := range 12 {
		id := fmt.Sprintf("01HZZZZZZZZZZZZZZZZZZZZK%02d", i)
		ids = append(ids, id)
		fmt.Fprintf(&batch, `{"eventId":"%s","origin":"rot@h","pid":"<0.%d.0>","kind":"KIND_STATE_CHANGE","timestampNs":"%d"}`+"\n",
			id, i, 1700000000000000000+i)
	}
	mustScope(t, batch.String(), "ingest", "-durability", "committed", "-token", ingestTok, "-addr", nodes[1].http)
	out = []byte(mustScope(t, "", "query", "-json", "-origin", "rot@h", "-token", queryTok, "-addr", nodes[2].http))
	for _, id := range ids {
		if !strings.Contains(string(out), id) {
			t.Errorf("query through n3 after the rotation misses %s", id)
		}
	}
	if out := mustScope(t, "", "members", "-token", queryTok, "-addr", nodes[2].http); strings.Count(out, "ALIVE") != 3 {
		t.Errorf("members after the rotation:\n%s", out)
	}
}

// keyFingerprint is cluster.KeyFingerprint of a base64 key.
func keyFingerprint(t *testing.T, key string) string {
	t.Helper()
	k, err := cluster.ParseGossipKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return cluster.KeyFingerprint(k)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func getStatus(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
