package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/elixirscope/scope/node"
)

// `scope dev-cluster` runs n `scope agent` processes of this binary on
// loopback: node i (from 1) serves HTTP on base+10*(i-1), Raft on +1 and
// gossip on +2, so node1 has the agent's default addresses and the client
// commands reach it without -addr. Their logs are streamed to this
// process's stdout and stderr, each line prefixed with the node name.

// devNode is one agent of a dev cluster.
type devNode struct {
	name                   string
	http, raft, gossip     string
	dataDir                string
	args                   []string
	cmd                    *exec.Cmd
	done                   chan struct{} // closed when the process has exited
	waitErr                error
	stdoutLine, stderrLine *lineWriter
}

// devClusterConfig is what dev-cluster is told on its command line.
type devClusterConfig struct {
	n        int
	basePort int
	dataDir  string
	shards   uint
	replicas int
	logLevel string
}

// devClusterStopLimit bounds the graceful stop of the agents; then they
// are killed.
const devClusterStopLimit = 45 * time.Second

// plan returns the nodes of the cluster with their agent arguments.
func (c devClusterConfig) plan() []*devNode {
	var nodes []*devNode
	for i := range c.n {
		port := c.basePort + 10*i
		nodes = append(nodes, &devNode{
			name:    fmt.Sprintf("node%d", i+1),
			http:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			raft:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)),
			gossip:  net.JoinHostPort("127.0.0.1", strconv.Itoa(port+2)),
			dataDir: filepath.Join(c.dataDir, fmt.Sprintf("node%d", i+1)),
		})
	}
	for _, nd := range nodes {
		nd.args = []string{"agent", "-name", nd.name, "-data-dir", nd.dataDir, "-http", nd.http, "-raft", nd.raft,
			"-gossip", nd.gossip, "-gossip-profile", "local", "-bootstrap-expect", strconv.Itoa(c.n),
			"-replicas", strconv.Itoa(c.replicas), "-shards", strconv.FormatUint(uint64(c.shards), 10), "-log-level", c.logLevel,
			// n agents share the machine's memory.
			"-block-cache-size", strconv.FormatUint(node.DefaultBlockCacheSize(c.n), 10)}
		var peers []string
		for _, p := range nodes {
			if p != nd {
				peers = append(peers, p.gossip)
			}
		}
		if len(peers) > 0 {
			nd.args = append(nd.args, "-join", strings.Join(peers, ","))
		}
	}
	return nodes
}

func parseDevClusterFlags(args []string, stderr io.Writer) (devClusterConfig, int, bool) {
	c := devClusterConfig{}
	fs := newFlagSet("dev-cluster", "", stderr)
	fs.IntVar(&c.n, "n", 3, "number of agents (1..9)")
	fs.IntVar(&c.basePort, "base-port", 7070, "node i (from 1) uses HTTP base+10*(i-1), Raft +1, gossip +2")
	fs.StringVar(&c.dataDir, "data-dir", filepath.Join("data", "devcluster"), "parent of the nodes' data directories (<dir>/node<i>); reused: a restart resumes")
	fs.UintVar(&c.shards, "shards", 16, "shard count (fixed when the data directories are created)")
	fs.IntVar(&c.replicas, "replicas", 3, "replicas per shard (capped by -n)")
	fs.StringVar(&c.logLevel, "log-level", "info", "the agents' log level: debug, info, warn or error")
	code, ok := parseFlags(fs, args)
	if !ok {
		return c, code, false
	}
	var err error
	switch {
	case fs.NArg() > 0:
		err = usageError("unexpected arguments %q", fs.Args())
	case c.n < 1 || c.n > 9:
		err = usageError("-n %d: must be in 1..9", c.n)
	case c.basePort < 1 || c.basePort+10*(c.n-1)+2 > 65535:
		err = usageError("-base-port %d: the ports %d..%d must be in 1..65535", c.basePort, c.basePort, c.basePort+10*(c.n-1)+2)
	case c.replicas < 1 || c.replicas > 7:
		err = usageError("-replicas %d: must be in 1..7", c.replicas)
	case c.shards < 1 || c.shards > 4096:
		err = usageError("-shards %d: must be in 1..4096", c.shards)
	}
	if err == nil {
		_, err = parseLevel(c.logLevel)
	}
	if err != nil {
		return c, reportError(stderr, fs, err), false
	}
	return c, exitOK, true
}

func runDevCluster(args []string, stdout, stderr io.Writer) int {
	cfg, code, ok := parseDevClusterFlags(args, stderr)
	if !ok {
		return code
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := devCluster(cfg, stdout, stderr, sigs); err != nil {
		fmt.Fprintf(stderr, "scope dev-cluster: %v\n", err)
		return exitError
	}
	return exitOK
}

// devCluster starts the agents, reports how to reach them, and runs until
// a signal (then stops them gracefully; a second signal kills them) or
// until every agent has exited.
func devCluster(cfg devClusterConfig, stdout, stderr io.Writer, sigs <-chan os.Signal) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var outMu sync.Mutex // one line at a time on each stream
	nodes := cfg.plan()
	exited := make(chan *devNode, len(nodes))
	for _, nd := range nodes {
		if err := os.MkdirAll(nd.dataDir, 0o755); err != nil {
			stopDevNodes(nodes, stderr, nil)
			return err
		}
		nd.stdoutLine = &lineWriter{mu: &outMu, w: stdout, prefix: nd.name + " | "}
		nd.stderrLine = &lineWriter{mu: &outMu, w: stderr, prefix: nd.name + " | "}
		nd.cmd = exec.Command(exe, nd.args...)
		nd.cmd.Stdout, nd.cmd.Stderr = nd.stdoutLine, nd.stderrLine
		// Own process group: a terminal's Ctrl-C reaches dev-cluster only,
		// which then stops each agent with one SIGTERM (a second signal
		// would force the agents to exit).
		nd.cmd.SysProcAttr = devSysProcAttr()
		nd.done = make(chan struct{})
		if err := nd.cmd.Start(); err != nil {
			stopDevNodes(nodes, stderr, nil)
			return fmt.Errorf("start %s: %w", nd.name, err)
		}
		go func() {
			nd.waitErr = nd.cmd.Wait()
			nd.stdoutLine.flush()
			nd.stderrLine.flush()
			close(nd.done)
			exited <- nd
		}()
	}
	printDevCluster(cfg, nodes, stdout, &outMu)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		start := time.Now()
		if waitDevReady(ctx, nodes) {
			outMu.Lock()
			fmt.Fprintf(stdout, "dev-cluster ready: %d nodes, every shard has a leader (%s)\n", len(nodes), time.Since(start).Round(time.Millisecond))
			outMu.Unlock()
		}
	}()
	defer func() { cancel(); <-readyDone }()

	running := len(nodes)
	for running > 0 {
		select {
		case nd := <-exited:
			running--
			outMu.Lock()
			fmt.Fprintf(stderr, "dev-cluster: %s (pid %d) exited: %v; %d still running\n", nd.name, nd.cmd.Process.Pid, exitText(nd.waitErr), running)
			outMu.Unlock()
		case s := <-sigs:
			outMu.Lock()
			fmt.Fprintf(stderr, "dev-cluster: %s: stopping %d agents (send it again to kill them)\n", s, running)
			outMu.Unlock()
			stopDevNodes(nodes, stderr, sigs)
			return nil
		}
	}
	return errors.New("every agent has exited")
}

func exitText(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// stopDevNodes sends SIGTERM to every running agent and waits for them,
// bounded by devClusterStopLimit; a signal on sigs (or the limit) kills
// those still running.
func stopDevNodes(nodes []*devNode, stderr io.Writer, sigs <-chan os.Signal) {
	for _, nd := range nodes {
		if nd.cmd != nil && nd.cmd.Process != nil && nd.done != nil {
			select {
			case <-nd.done:
			default:
				_ = nd.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
	}
	limit := time.NewTimer(devClusterStopLimit)
	defer limit.Stop()
	kill := false
	for _, nd := range nodes {
		if nd.done == nil {
			continue
		}
		if !kill {
			select {
			case <-nd.done:
				continue
			case <-sigs:
				kill = true
			case <-limit.C:
				fmt.Fprintf(stderr, "dev-cluster: agents still running after %s: killing them\n", devClusterStopLimit)
				kill = true
			}
		}
		_ = nd.cmd.Process.Kill()
		<-nd.done
	}
}

// waitDevReady polls every node's /readyz until all answer 200 or ctx ends.
func waitDevReady(ctx context.Context, nodes []*devNode) bool {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ready := 0
		for _, nd := range nodes {
			resp, err := hc.Get("http://" + nd.http + "/readyz")
			if err != nil {
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready++
			}
		}
		if ready == len(nodes) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

func printDevCluster(cfg devClusterConfig, nodes []*devNode, w io.Writer, mu *sync.Mutex) {
	mu.Lock()
	defer mu.Unlock()
	abs, err := filepath.Abs(cfg.dataDir)
	if err != nil {
		abs = cfg.dataDir
	}
	fmt.Fprintf(w, "scope dev-cluster: %d agents, replication %d, data in %s/node<i> (a restart on it resumes)\n", len(nodes), cfg.replicas, abs)
	fmt.Fprintf(w, "  %-6s %-7s %-16s %-16s %s\n", "NODE", "PID", "HTTP", "RAFT", "GOSSIP")
	for _, nd := range nodes {
		fmt.Fprintf(w, "  %-6s %-7d %-16s %-16s %s\n", nd.name, nd.cmd.Process.Pid, nd.http, nd.raft, nd.gossip)
	}
	first, last := nodes[0], nodes[len(nodes)-1]
	self := os.Args[0] // as the user invoked it, e.g. ./bin/scope
	fmt.Fprintf(w, `logs: every agent line below, prefixed with its node name
try:
  %[1]s members -addr %[2]s
  %[1]s shards -addr %[3]s
  %[1]s bench -addr %[2]s
  %[1]s agent -name node%[4]d -data-dir %[5]s -http 127.0.0.1:%[6]d -raft 127.0.0.1:%[7]d -gossip 127.0.0.1:%[8]d -gossip-profile local -join %[9]s
  %[1]s leave -addr 127.0.0.1:%[10]d    (after the line above: drains node%[4]d and stops it)
Ctrl-C stops every agent.
`, self, first.http, last.http,
		len(nodes)+1, filepath.Join(cfg.dataDir, fmt.Sprintf("node%d", len(nodes)+1)),
		cfg.basePort+10*len(nodes), cfg.basePort+10*len(nodes)+1, cfg.basePort+10*len(nodes)+2, first.gossip,
		cfg.basePort+10*len(nodes), len(nodes)+1)
}

// lineWriter writes complete lines to w, each prefixed, holding mu per
// line so that lines of different agents never interleave. A partial line
// waits for its end, up to maxLine bytes.
type lineWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

const maxLine = 64 << 10

func (l *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.buf = append(l.buf, p...)
			if len(l.buf) >= maxLine {
				l.flush()
			}
			break
		}
		l.buf = append(l.buf, p[:i]...)
		l.flush()
		p = p[i+1:]
	}
	return n, nil
}

// flush writes the buffered partial line, if any, as a line.
func (l *lineWriter) flush() {
	if len(l.buf) == 0 {
		return
	}
	l.mu.Lock()
	_, _ = fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf)
	l.mu.Unlock()
	l.buf = l.buf[:0]
}
