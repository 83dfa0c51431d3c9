package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/internal/testwait"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// The BEAM tests run the Erlang client (clients/erlang) against real
// agents: its eunit suite, and two connected Erlang nodes tracing a
// workload live into Scope. They need erl and erlc on PATH; without them
// they skip, unless SCOPE_REQUIRE_BEAM is set (CI sets it after installing
// the runtime), in which case they fail.

var (
	beamOnce sync.Once
	beamDir  string // ebin with clients/erlang/src and test modules
	beamErr  error
)

// beamEbin compiles the client and its test modules once per test binary
// (TestMain removes the directory).
func beamEbin(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"erl", "erlc"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("SCOPE_REQUIRE_BEAM") != "" {
				t.Fatalf("SCOPE_REQUIRE_BEAM is set but %s is not on PATH: %v", tool, err)
			}
			t.Skipf("%s not on PATH (apt-get install erlang-nox erlang-dev; set SCOPE_REQUIRE_BEAM to make this a failure)", tool)
		}
	}
	beamOnce.Do(func() {
		beamDir, beamErr = os.MkdirTemp("", "scope-beam-ebin-")
		if beamErr != nil {
			return
		}
		var srcs []string
		for _, pat := range []string{"../../clients/erlang/src/*.erl", "../../clients/erlang/test/*.erl"} {
			m, _ := filepath.Glob(pat)
			srcs = append(srcs, m...)
		}
		args := append([]string{"-Wall", "+debug_info", "-o", beamDir}, srcs...)
		if out, err := exec.Command("erlc", args...).CombinedOutput(); err != nil {
			beamErr = fmt.Errorf("erlc: %v\n%s", err, out)
		}
	})
	if beamErr != nil {
		t.Fatal(beamErr)
	}
	return beamDir
}

func removeBeamDir() {
	if beamDir != "" {
		_ = os.RemoveAll(beamDir)
	}
}

// TestErlangClientUnit runs the client's eunit suite (mapping, JSON, ULIDs,
// buffer, the sender against a local HTTP server).
func TestErlangClientUnit(t *testing.T) {
	ebin := beamEbin(t)
	mods := []string{"scope_json_tests", "scope_ulid_tests", "scope_buf_tests", "scope_tracer_tests", "scope_sender_tests"}
	eval := fmt.Sprintf("case eunit:test([%s], []) of ok -> halt(0); _ -> halt(1) end.", strings.Join(mods, ","))
	cmd := exec.Command("erl", "-noshell", "-pa", ebin, "-eval", eval)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("eunit: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// beamNode is an erl subprocess.
type beamNode struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, line by line (closed at EOF)
	stderr *syncBuffer
	done   chan struct{}
}

var beamSeq struct {
	mu sync.Mutex
	n  int
}

// beamNodeName is a node name unique to this test process.
func beamNodeName(role string) string {
	beamSeq.mu.Lock()
	defer beamSeq.mu.Unlock()
	beamSeq.n++
	return fmt.Sprintf("scope_e2e_%s_%d_%d@localhost", role, os.Getpid(), beamSeq.n)
}

// startBeam starts `erl -sname name` with the ebin on its path; the
// cleanup kills it if it is still running.
func startBeam(t *testing.T, ebin, name, cookie string, env []string, extra ...string) *beamNode {
	t.Helper()
	args := append([]string{"-sname", name, "-setcookie", cookie, "-noshell", "-pa", ebin,
		"-kernel", "logger_level", "critical"}, extra...)
	n := &beamNode{name: name, cmd: exec.Command("erl", args...), lines: make(chan string, 1024),
		stderr: &syncBuffer{}, done: make(chan struct{})}
	n.cmd.Env = append(os.Environ(), env...)
	n.cmd.Stderr = n.stderr
	stdout, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if n.stdin, err = n.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<16), 1<<22)
		for sc.Scan() {
			n.lines <- sc.Text()
		}
		close(n.lines)
	}()
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		select {
		case <-n.done:
		default:
			_ = n.cmd.Process.Kill()
			<-n.done
		}
		if t.Failed() {
			t.Logf("erl %s stderr:\n%s", name, n.stderr)
		}
	})
	return n
}

// expectLine reads node output until a line with prefix, failing on a
// FAILED line, the end of output or the deadline.
func (n *beamNode) expectLine(t *testing.T, prefix string, seen *[]string) string {
	t.Helper()
	deadline := time.After(90 * time.Second)
	for {
		select {
		case l, ok := <-n.lines:
			if !ok {
				t.Fatalf("%s ended before %q; output:\n%s", n.name, prefix, strings.Join(*seen, "\n"))
			}
			*seen = append(*seen, l)
			if strings.HasPrefix(l, "FAILED") {
				t.Fatalf("%s: %s", n.name, l)
			}
			if strings.HasPrefix(l, prefix) {
				return strings.TrimPrefix(l, prefix)
			}
		case <-deadline:
			t.Fatalf("%s: no %q within 90s; output:\n%s", n.name, prefix, strings.Join(*seen, "\n"))
		}
	}
}

// beamStats is one node's scope_tracer:stop/0 result.
type beamStats struct {
	Traced        int    `json:"traced"`
	Sent          int    `json:"sent"`
	Retried       int    `json:"retried"`
	Acked         int    `json:"acked"`
	Dropped       int    `json:"dropped"`
	Refused       int    `json:"refused"`
	Queued        int    `json:"queued"`
	Skipped       int    `json:"skipped"`
	StoppedReason string `json:"stopped_reason"`
	LastError     string `json:"last_error"`
}

// runBeamWorkload starts node B, then node A running scope_e2e:main/0
// against the endpoints; onPause (if set) runs while A waits after its
// first round. It returns each node's stats.
func runBeamWorkload(t *testing.T, endpoints []string, rounds int, onPause func()) (a, b string, stats map[string]beamStats) {
	t.Helper()
	ebin := beamEbin(t)
	cookie := fmt.Sprintf("scope_e2e_%d", time.Now().UnixNano())
	a, b = beamNodeName("a"), beamNodeName("b")
	nb := startBeam(t, ebin, b, cookie, nil)
	pause := "0"
	if onPause != nil {
		pause = "1"
	}
	na := startBeam(t, ebin, a, cookie, []string{
		"SCOPE_E2E_ENDPOINTS=" + strings.Join(endpoints, ","), "SCOPE_E2E_PEER=" + b,
		fmt.Sprintf("SCOPE_E2E_ROUNDS=%d", rounds), "SCOPE_E2E_PAUSE=" + pause,
	}, "-eval", "scope_e2e:main()")
	var seen []string
	if onPause != nil {
		na.expectLine(t, "PAUSED", &seen)
		onPause()
		if _, err := io.WriteString(na.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	line := na.expectLine(t, "STATS ", &seen)
	if err := json.Unmarshal([]byte(line), &stats); err != nil {
		t.Fatalf("stats %q: %v", line, err)
	}
	for _, n := range []*beamNode{na, nb} {
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not halt", n.name)
		}
	}
	return a, b, stats
}

// allEvents lists every event of origin through addr, page by page,
// retrying while a shard is unavailable (a leadership move).
func allEvents(t *testing.T, addr, origin string) []*scopev1.Event {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	q := scopev1connect.NewQueryServiceClient(&http.Client{Transport: tr}, "http://"+addr)
	var out []*scopev1.Event
	testwait.For(t, "events of "+origin, 30*time.Second, func() bool {
		out = nil
		cursor := ""
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := q.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: origin, Limit: 10000, Cursor: cursor}))
			cancel()
			if err != nil {
				t.Logf("events of %s: %v", origin, err)
				return false
			}
			out = append(out, resp.Msg.GetEvents()...)
			if cursor = resp.Msg.GetNextCursor(); cursor == "" {
				return true
			}
		}
	})
	return out
}

type procKey struct{ origin, pid string }

func linkTo(e *scopev1.Event, typ scopev1.LinkType) string {
	for _, l := range e.GetLinks() {
		if l.GetType() == typ {
			return l.GetTargetEventId()
		}
	}
	return ""
}

// checkBeamTrace checks what Scope stored of the workload against the
// client's stats and against the trace itself: every event acknowledged
// is stored once; replaying each process's events in seq order with a
// stack gives every CALL's parent and every RETURN/EXCEPTION's CALL; every
// RECEIVE of a message a traced process sent to it is paired; messages
// crossed the nodes in both directions.
func checkBeamTrace(t *testing.T, addr string, stats map[string]beamStats) {
	t.Helper()
	for origin, st := range stats {
		if st.Acked != st.Traced || st.Dropped != 0 || st.Refused != 0 || st.Queued != 0 {
			t.Errorf("%s: stats %+v: want every traced event acked", origin, st)
		}
		if st.Traced != st.Acked+st.Dropped+st.Refused+st.Queued {
			t.Errorf("%s: stats %+v do not add up", origin, st)
		}
	}
	// A SEND's notice reaches its receiver's shard asynchronously (the
	// sender shard's outbox): read until every pair is linked, or report
	// what is still missing at the deadline.
	var evs []*scopev1.Event
	var pr pairs
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs = nil
		for origin := range stats {
			evs = append(evs, allEvents(t, addr, origin)...)
		}
		if pr = pairing(evs); len(pr.problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for origin, st := range stats {
		n := 0
		for _, e := range evs {
			if e.GetOrigin() == origin {
				n++
			}
		}
		if n != st.Acked {
			t.Errorf("%s: %d events stored, %d acknowledged", origin, n, st.Acked)
		}
	}
	byID := map[string]*scopev1.Event{}
	byProc := map[procKey][]*scopev1.Event{}
	for _, e := range evs {
		if byID[e.GetEventId()] != nil {
			t.Errorf("event %s stored twice", e.GetEventId())
		}
		byID[e.GetEventId()] = e
		k := procKey{e.GetOrigin(), e.GetPid()}
		byProc[k] = append(byProc[k], e)
	}
	var calls, closes, exceptions int
	for k, pe := range byProc {
		sort.Slice(pe, func(i, j int) bool { return pe[i].GetSeq() < pe[j].GetSeq() })
		for i, e := range pe {
			if e.GetSeq() != uint64(i+1) {
				t.Fatalf("%v: event %d has seq %d: a gap or a repeat", k, i, e.GetSeq())
			}
		}
		var stack []string
		top := func() string {
			if len(stack) == 0 {
				return ""
			}
			return stack[len(stack)-1]
		}
		for _, e := range pe {
			switch e.GetKind() {
			case scopev1.Kind_KIND_CALL:
				calls++
				if e.GetParentId() != top() {
					t.Errorf("%v: CALL %s %s:%s/%d has parent %q, want %q", k, e.GetEventId(), e.GetModule(), e.GetFunction(), e.GetArity(), e.GetParentId(), top())
				}
				stack = append(stack, e.GetEventId())
			case scopev1.Kind_KIND_STATE_CHANGE:
				if e.GetParentId() != top() {
					t.Errorf("%v: STATE_CHANGE %s has parent %q, want %q", k, e.GetEventId(), e.GetParentId(), top())
				}
			case scopev1.Kind_KIND_RETURN, scopev1.Kind_KIND_EXCEPTION:
				closes++
				if e.GetKind() == scopev1.Kind_KIND_EXCEPTION {
					exceptions++
				}
				want := top()
				if want == "" {
					t.Errorf("%v: %s %s with no open frame", k, e.GetKind(), e.GetEventId())
					continue
				}
				if got := linkTo(e, scopev1.LinkType_LINK_TYPE_COMPLETES); got != want || e.GetOrphan() {
					t.Errorf("%v: %s %s completes %q (orphan %v), want %q", k, e.GetKind(), e.GetEventId(), got, e.GetOrphan(), want)
				}
				stack = stack[:len(stack)-1]
			}
		}
	}
	for _, p := range pr.problems {
		t.Error(p)
	}
	t.Logf("%d events, %d calls, %d frames closed (%d by exceptions), %d receives paired, cross-node %d a→b and %d b→a",
		len(evs), calls, closes, exceptions, pr.paired, pr.crossAB, pr.crossBA)
	if calls == 0 || exceptions < 6 || pr.paired == 0 || pr.crossAB == 0 || pr.crossBA == 0 {
		t.Errorf("workload too thin: %d calls, %d exceptions, %d paired, cross %d/%d", calls, exceptions, pr.paired, pr.crossAB, pr.crossBA)
	}
}

// TestBeamLiveTrace: two connected Erlang nodes trace a supervisor, gen
// servers, a crash, exceptions and cross-node messages live into one
// agent; what Scope stores is exactly what the client acknowledged, with
// every frame closed by its own RETURN/EXCEPTION and every traced message
// paired, across the nodes too.
func TestBeamLiveTrace(t *testing.T) {
	beamEbin(t)
	ag := startAgentProc(t, t.TempDir(), freeAddr(t), freeAddr(t))
	_, _, stats := runBeamWorkload(t, []string{"http://" + ag.http}, 3, nil)
	checkBeamTrace(t, ag.http, stats)
}

// TestBeamLiveTraceAgentKilled: the same workload into a 3-node cluster;
// the agent the clients send to is killed after the first round. They
// fail over to the next endpoint and resend with the same ids: nothing
// acknowledged is lost, nothing is stored twice.
func TestBeamLiveTraceAgentKilled(t *testing.T) {
	beamEbin(t)
	nodes := startClusterProcs(t, 3)
	eps := []string{"http://" + nodes[0].http, "http://" + nodes[1].http, "http://" + nodes[2].http}
	_, _, stats := runBeamWorkload(t, eps, 4, func() {
		if err := nodes[0].proc.signal(t, syscall.SIGKILL); err == nil {
			t.Fatal("killed agent exited cleanly")
		}
	})
	for origin, st := range stats {
		// The first batch after the kill goes to the dead endpoint, so
		// every node's client retried at least once.
		t.Logf("%s: %+v", origin, st)
		if st.Retried == 0 {
			t.Errorf("%s: no batch was retried after the agent was killed (%+v)", origin, st)
		}
	}
	checkBeamTrace(t, nodes[1].http, stats)
}

// TestElixirWrapper runs the Elixir wrapper's ExUnit tests (clients/elixir)
// with the compiled Erlang client on the code path.
func TestElixirWrapper(t *testing.T) {
	ebin := beamEbin(t)
	if _, err := exec.LookPath("elixir"); err != nil {
		if os.Getenv("SCOPE_REQUIRE_BEAM") != "" {
			t.Fatalf("SCOPE_REQUIRE_BEAM is set but elixir is not on PATH: %v", err)
		}
		t.Skipf("elixir not on PATH: %v", err)
	}
	cmd := exec.Command("elixir", "-pa", ebin, "-r", "lib/scope/tracer.ex", "-r", "test/test_helper.exs", "test/scope_tracer_test.exs")
	cmd.Dir = "../../clients/elixir"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("elixir tests: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "2 tests, 0 failures") {
		t.Fatalf("elixir tests: want 2 tests, 0 failures:\n%s", out)
	}
}

// pairs is what pairing found.
type pairs struct {
	problems                 []string
	paired, crossAB, crossBA int
}

// pairing checks that every RECEIVE of a message a traced process sent to
// it is linked to such a SEND, and counts the pairs across nodes.
func pairing(evs []*scopev1.Event) (p pairs) {
	byID := map[string]*scopev1.Event{}
	for _, e := range evs {
		byID[e.GetEventId()] = e
	}
	// Sends by traced processes, by (receiver, hash).
	type msgKey struct {
		to   procKey
		hash uint64
	}
	sends := map[msgKey][]*scopev1.Event{}
	for _, e := range evs {
		if e.GetKind() == scopev1.Kind_KIND_SEND && e.GetPeerPid() != "" {
			mk := msgKey{procKey{e.GetPeerOrigin(), e.GetPeerPid()}, e.GetMessageHash()}
			sends[mk] = append(sends[mk], e)
		}
	}
	for _, e := range evs {
		if e.GetKind() != scopev1.Kind_KIND_RECEIVE {
			continue
		}
		if len(sends[msgKey{procKey{e.GetOrigin(), e.GetPid()}, e.GetMessageHash()}]) == 0 {
			continue // from an untraced sender (the shell, a system process, an exit signal)
		}
		from := linkTo(e, scopev1.LinkType_LINK_TYPE_RECEIVED_FROM)
		s := byID[from]
		if s == nil {
			var cands []string
			for _, c := range sends[msgKey{procKey{e.GetOrigin(), e.GetPid()}, e.GetMessageHash()}] {
				cands = append(cands, fmt.Sprintf("%s from %s at %+dns delivered to %q", c.GetEventId(), c.GetPid(),
					c.GetTimestampNs()-e.GetTimestampNs(), linkTo(c, scopev1.LinkType_LINK_TYPE_DELIVERED_TO)))
			}
			p.problems = append(p.problems, fmt.Sprintf("RECEIVE %s on %s %s (%s) of a traced send is not paired; sends: %s", e.GetEventId(), e.GetOrigin(), e.GetPid(), e.GetPayload(), strings.Join(cands, "; ")))
			continue
		}
		if s.GetPeerPid() != e.GetPid() || s.GetPeerOrigin() != e.GetOrigin() || s.GetMessageHash() != e.GetMessageHash() {
			p.problems = append(p.problems, fmt.Sprintf("RECEIVE %s paired with SEND %s to %s %s", e.GetEventId(), from, s.GetPeerOrigin(), s.GetPeerPid()))
		}
		if linkTo(s, scopev1.LinkType_LINK_TYPE_DELIVERED_TO) != e.GetEventId() {
			p.problems = append(p.problems, fmt.Sprintf("SEND %s has no DELIVERED_TO %s", from, e.GetEventId()))
		}
		p.paired++
		if s.GetOrigin() != e.GetOrigin() {
			if strings.Contains(s.GetOrigin(), "_a_") {
				p.crossAB++
			} else {
				p.crossBA++
			}
		}
	}
	return p
}
