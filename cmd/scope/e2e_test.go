package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/tlsconf"
)

// The end-to-end tests build the scope binary once per test binary and run
// `scope agent` as a real subprocess, then drive it with the client
// commands, also as subprocesses: what a user runs, flags and exit codes
// included.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string // removed by TestMain
)

// scopeBinary builds ./cmd/scope (without -race: the agent is exercised,
// not race-checked, here; the packages have their own -race tests).
func scopeBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "scope-e2e-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "scope")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freeAddr returns a loopback address with a port free at the time of the
// call.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.mu.Lock()
	defer handedOut.mu.Unlock()
	if handedOut.addrs == nil {
		handedOut.addrs = make(map[string]bool)
	}
	// The kernel may give a port it just gave (its listener is closed by
	// now) to the next caller: a cluster test once got one port as one
	// agent's -http and another's -gossip. Never hand out an address twice.
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
	t.Fatal("no loopback port not handed out already in 100 tries")
	return ""
}

// handedOut is every address freeAddr returned in this test binary
// (bounded by the tests' few dozen agents).
var handedOut struct {
	mu    sync.Mutex
	addrs map[string]bool
}

// syncBuffer is a bytes.Buffer safe for the exec package's copier
// goroutine and the test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agentProc is a `scope agent` subprocess.
type agentProc struct {
	cmd            *exec.Cmd
	http           string
	ca             string // the agent's -tls-ca: it serves https
	stdout, stderr *syncBuffer
	done           chan struct{} // closed when the process has exited
	waitErr        error
}

func startAgentProc(t *testing.T, dataDir, httpAddr, raftAddr string, extra ...string) *agentProc {
	t.Helper()
	args := append([]string{"agent", "-dev", "-data-dir", dataDir, "-http", httpAddr, "-raft", raftAddr,
		"-log-level", "warn"}, extra...)
	a := spawnAgent(t, httpAddr, args)
	a.waitReady(t)
	return a
}

// spawnAgent starts `scope <args>` (an agent serving HTTP on httpAddr)
// without waiting for it; the test's cleanup kills it if still running.
func spawnAgent(t *testing.T, httpAddr string, args []string) *agentProc {
	t.Helper()
	a := &agentProc{cmd: exec.Command(scopeBinary(t), args...), http: httpAddr,
		stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	if i := slices.Index(args, "-tls-ca"); i >= 0 && i+1 < len(args) {
		a.ca = args[i+1]
	}
	a.cmd.Stdout, a.cmd.Stderr = a.stdout, a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.waitErr = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("agent %q stdout:\n%s\nagent stderr:\n%s", args, a.stdout, a.stderr)
		}
	})
	return a
}

// waitReady polls /readyz until it answers 200, the process exits, or the
// deadline passes.
func (a *agentProc) waitReady(t *testing.T) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Second}
	scheme := "http://"
	if a.ca != "" {
		cfg, err := tlsconf.ClientConfig(a.ca, "", "")
		if err != nil {
			t.Fatal(err)
		}
		tr.TLSClientConfig, scheme = cfg, "https://"
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := hc.Get(scheme + a.http + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-a.done:
			t.Fatalf("agent exited before ready: %v\nstderr:\n%s", a.waitErr, a.stderr)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within 30s\nstderr:\n%s", a.stderr)
		}
	}
}

// signal sends sig and waits for the exit.
func (a *agentProc) signal(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := a.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.done:
		return a.waitErr
	case <-time.After(45 * time.Second):
		t.Fatalf("agent did not exit within 45s of %v", sig)
		return nil
	}
}

// scope runs a client command and returns its stdout, stderr and exit code.
func scope(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(scopeBinary(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// mustScope runs a client command that must succeed.
func mustScope(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, code := scope(t, stdin, args...)
	if code != 0 {
		t.Fatalf("scope %q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	return out
}

// jsonEvent is the part of a proto3 JSON event the tests look at.
type jsonEvent struct {
	EventID       string `json:"eventId"`
	Kind          string `json:"kind"`
	Pid           string `json:"pid"`
	CorrelationID string `json:"correlationId"`
	ParentID      string `json:"parentId"`
	DurationNs    string `json:"durationNs"`
	Outcome       string `json:"outcome"`
	Links         []struct {
		Type   string `json:"type"`
		Target string `json:"targetEventId"`
	} `json:"links"`
}

const (
	callA  = "01HZZZZZZZZZZZZZZZZZZZZZA1"
	callB  = "01HZZZZZZZZZZZZZZZZZZZZZB2"
	retB   = "01HZZZZZZZZZZZZZZZZZZZZZB3"
	retA   = "01HZZZZZZZZZZZZZZZZZZZZZA4"
	sendID = "01HZZZZZZZZZZZZZZZZZZZZZS5"
	recvID = "01HZZZZZZZZZZZZZZZZZZZZZR6"
)

// e2eTrace: a call with a nested call, both returned, and a message from
// <0.1.0> to <0.2.0> (two processes, most likely two shards).
var e2eTrace = strings.Join([]string{
	`{"eventId":"` + callA + `","origin":"app@h","pid":"<0.1.0>","kind":"KIND_CALL","timestampNs":"1700000000000000000","module":"Shop.Cart","function":"add","arity":2}`,
	`{"eventId":"` + callB + `","origin":"app@h","pid":"<0.1.0>","kind":"KIND_CALL","timestampNs":"1700000000000001000","module":"Shop.Repo","function":"insert","arity":1}`,
	`{"eventId":"` + retB + `","origin":"app@h","pid":"<0.1.0>","kind":"KIND_RETURN","timestampNs":"1700000000000003000","payload":":ok"}`,
	`{"eventId":"` + sendID + `","origin":"app@h","pid":"<0.1.0>","kind":"KIND_SEND","timestampNs":"1700000000000004000","peerOrigin":"app@h","peerPid":"<0.2.0>","payload":"{:item, 1}"}`,
	`{"eventId":"` + retA + `","origin":"app@h","pid":"<0.1.0>","kind":"KIND_RETURN","timestampNs":"1700000000000010000","payload":":ok"}`,
	`{"eventId":"` + recvID + `","origin":"app@h","pid":"<0.2.0>","kind":"KIND_RECEIVE","timestampNs":"1700000000000005000","peerOrigin":"app@h","peerPid":"<0.1.0>","payload":"{:item, 1}"}`,
}, "\n") + "\n"

func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	a := startAgentProc(t, dir, freeAddr(t), freeAddr(t))
	// /readyz (the server's view) may answer before the agent prints its
	// own ready line.
	testwait.For(t, "the ready line", 30*time.Second, func() bool {
		return strings.Contains(a.stdout.String(), "scope agent ready: 16 shards have a leader")
	})
	addr := []string{"-addr", a.http}

	out := mustScope(t, e2eTrace, append([]string{"ingest", "-batch", "4"}, addr...)...)
	if !strings.Contains(out, "6 events in 2 requests") || !strings.Contains(out, "accepted 6, refused 0") {
		t.Errorf("ingest summary: %q", out)
	}

	// A healthy start logs nothing an operator should act on.
	quietLog(t, "the dev agent", a.stderr.String())

	// A bad line names its line number and the field, and nothing after it
	// is sent.
	_, errOut, code := scope(t, `{"origin":"app@h","pid":"<0.9.0>","kind":"KIND_CALL","timestampNs":"1"}`+"\n",
		append([]string{"ingest"}, addr...)...)
	if code != exitError || !strings.Contains(errOut, "line 1: event.module: required for CALL") {
		t.Errorf("bad line: exit %d, stderr %q", code, errOut)
	}

	// query: table and JSON.
	out = mustScope(t, "", append([]string{"query", "-origin", "app@h", "-pid", "<0.1.0>"}, addr...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "Shop.Cart:add/2") ||
		!strings.Contains(lines[3], "RETURN") || !strings.Contains(lines[3], "2µs") || !strings.Contains(lines[3], "OK") {
		t.Errorf("query table:\n%s", out)
	}
	out = mustScope(t, "", append([]string{"query", "-json", "-kind", "RETURN", "-limit", "1", "-all"}, addr...)...)
	var pages []struct {
		Events []jsonEvent `json:"events"`
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p struct {
			Events []jsonEvent `json:"events"`
		}
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("query -json line %q: %v", l, err)
		}
		pages = append(pages, p)
	}
	var returns []jsonEvent
	for _, p := range pages {
		returns = append(returns, p.Events...)
	}
	if len(returns) != 2 || returns[0].EventID != retB || returns[0].CorrelationID != callB ||
		returns[1].EventID != retA || returns[1].CorrelationID != callA || returns[1].DurationNs != "10000" {
		t.Errorf("query -all -json returns (%d pages): %+v", len(pages), returns)
	}

	// tree: the nested call indented under its caller.
	out = mustScope(t, "", append([]string{"tree", callA}, addr...)...)
	tree := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(tree) != 2 || !strings.HasPrefix(tree[0], "Shop.Cart:add/2  10µs  OK") ||
		!strings.HasPrefix(tree[1], "  Shop.Repo:insert/1  2µs  OK") {
		t.Errorf("tree:\n%s", out)
	}

	// The RECEIVE on another process was paired with the SEND.
	out = mustScope(t, "", append([]string{"get", "-json", recvID}, addr...)...)
	var got struct {
		Event jsonEvent `json:"event"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -json: %v: %q", err, out)
	}
	if !hasLink(got.Event, "LINK_TYPE_RECEIVED_FROM", sendID) {
		t.Errorf("receive not linked to its send: %+v", got.Event)
	}
	out = mustScope(t, "", append([]string{"flow", "-a", "app@h/<0.1.0>", "-b", "app@h/<0.2.0>"}, addr...)...)
	if !strings.Contains(out, sendID) || !strings.Contains(out, recvID) {
		t.Errorf("flow:\n%s", out)
	}
	out = mustScope(t, "", append([]string{"stack", "-origin", "app@h", "-pid", "<0.1.0>", "-at", "1700000000000002000"}, addr...)...)
	if !strings.Contains(out, callA) || !strings.Contains(out, callB) {
		t.Errorf("stack:\n%s", out)
	}

	// A server error prints its code and message.
	_, errOut, code = scope(t, "", append([]string{"get", "01HZZZZZZZZZZZZZZZZZZZZZZZ"}, addr...)...)
	if code != exitError || !strings.Contains(errOut, "not_found") {
		t.Errorf("get of a missing event: exit %d, stderr %q", code, errOut)
	}

	// Raft's go-metrics reach /metrics.
	metrics := httpGet(t, "http://"+a.http+"/metrics")
	for _, want := range []string{"scope_raft_apply", "scope_raft_raftlog_", "scope_ingest_acknowledged_events_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}

	// SIGTERM: graceful, exit 0.
	if err := a.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v\nstderr:\n%s", err, a.stderr)
	}

	// The shard count is fixed: -shards 8 on this data dir is refused.
	_, errOut, code = scope(t, "", "agent", "-data-dir", dir, "-shards", "8", "-http", freeAddr(t), "-raft", freeAddr(t))
	if code != exitError || !strings.Contains(errOut, "created with 16 shards") {
		t.Errorf("-shards 8 on a 16-shard dir: exit %d, stderr %q", code, errOut)
	}
}

func hasLink(e jsonEvent, typ, target string) bool {
	for _, l := range e.Links {
		if l.Type == typ && l.Target == target {
			return true
		}
	}
	return false
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dirIdentity reads dir's identity file (written before the agent serves).
func dirIdentity(t *testing.T, dir string) (nodeID string, epoch uint64) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, cluster.IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	var id struct {
		NodeID string `json:"node_id"`
		Epoch  uint64 `json:"epoch"`
	}
	if err := json.Unmarshal(b, &id); err != nil || len(id.NodeID) != 16 {
		t.Fatalf("%s: %v: %s", cluster.IdentityFile, err, b)
	}
	return id.NodeID, id.Epoch
}

// TestDurabilityAcrossKill: a CALL acknowledged as COMMITTED survives a
// SIGKILL of the agent, and so does the correlator's open frame: the
// RETURN sent after the restart is matched to it. The data directory's
// node id survives too, and the restart counts one more start.
func TestDurabilityAcrossKill(t *testing.T) {
	dir := t.TempDir()
	httpAddr, raftAddr := freeAddr(t), freeAddr(t)
	a := startAgentProc(t, dir, httpAddr, raftAddr)
	nodeID, epoch := dirIdentity(t, dir)
	addr := []string{"-addr", httpAddr}
	const call = "01HZZZZZZZZZZZZZZZZZZZZZC1"
	const ret = "01HZZZZZZZZZZZZZZZZZZZZZC2"
	mustScope(t, `{"eventId":"`+call+`","origin":"app@h","pid":"<0.7.0>","kind":"KIND_CALL","timestampNs":"1700000000000000000","module":"M","function":"f","arity":0}`+"\n",
		append([]string{"ingest", "-durability", "committed"}, addr...)...)

	if err := a.signal(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent exited cleanly after SIGKILL?")
	}
	a = startAgentProc(t, dir, httpAddr, raftAddr)
	if id, e := dirIdentity(t, dir); id != nodeID || e != epoch+1 {
		t.Fatalf("after a restart: node id %s, epoch %d; want %s (unchanged), %d", id, e, nodeID, epoch+1)
	}

	out := mustScope(t, "", append([]string{"get", "-json", call}, addr...)...)
	if !strings.Contains(out, call) {
		t.Fatalf("CALL lost across SIGKILL: %s", out)
	}
	mustScope(t, `{"eventId":"`+ret+`","origin":"app@h","pid":"<0.7.0>","kind":"KIND_RETURN","timestampNs":"1700000000000500000"}`+"\n",
		append([]string{"ingest"}, addr...)...)
	out = mustScope(t, "", append([]string{"get", "-json", ret}, addr...)...)
	var got struct {
		Event jsonEvent `json:"event"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -json: %v: %q", err, out)
	}
	e := got.Event
	if e.CorrelationID != call || e.DurationNs != "500000" || e.Outcome != "OUTCOME_OK" || !hasLink(e, "LINK_TYPE_COMPLETES", call) {
		t.Errorf("RETURN after restart not matched to the CALL: %+v", e)
	}
	if err := a.signal(t, syscall.SIGINT); err != nil {
		t.Fatalf("agent exit after SIGINT: %v", err)
	}
}

// quietLog fails the test for every WARN or ERROR line of an agent's log:
// a healthy agent logs only what an operator should act on (an operator
// who learns to ignore WARN and ERROR misses the ones that matter).
func quietLog(t *testing.T, who, log string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `msg="-dev: serving plaintext`) {
			continue // -dev says once that it is for development only, on purpose
		}
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Errorf("%s logged on a healthy start: %s", who, line)
		}
	}
}
