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
// bad file keeps the old tokens.
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
	keyring := filepath.Join(dir, "keyring")
	writeFile(t, keyring, base64.StdEncoding.EncodeToString(key)+"\n")

	nodes := startClusterProcs(t, 3, func(string) []string { return []string{"-auth-tokens", tokens, "-gossip-keyring", keyring} })

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
	waitFor(t, "ingest through n1 with the ingest token", func() bool {
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
	waitFor(t, "the bad token file logged", func() bool {
		return strings.Contains(n1.proc.stderr.String(), "-auth-tokens not reloaded")
	})
	mustScope(t, "", "members", "-token", queryTok, "-addr", n1.http)
	writeFile(t, tokens, lines[2]+"\n") // admin only
	if err := n1.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the query token refused after the reload", func() bool {
		_, errOut, code := scope(t, "", "members", "-token", queryTok, "-addr", n1.http)
		return code == 1 && strings.Contains(errOut, "unauthenticated")
	})
	mustScope(t, "", "members", "-token", adminTok, "-addr", n1.http)
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
