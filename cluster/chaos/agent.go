package chaos

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// agent is one `scope agent` process of the cluster under test, with the
// arguments it is always restarted with (a wiped node comes back with its
// old flags, -bootstrap-expect included, as an operator's unit file would
// start it).
type agent struct {
	index              int
	name               string
	http, raft, gossip string
	dir                string // data directory
	logPath            string
	argv               []string // the full command line, network prefix included

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	paused  bool
	running bool
}

// start runs the agent process. Its output is appended to logPath, so a
// node's log holds all its lives.
func (a *agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running {
		return fmt.Errorf("chaos: %s already running", a.name)
	}
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== chaos: start %s at %s\n", a.name, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(a.argv[0], a.argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = agentSysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("chaos: start %s: %w", a.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(exited)
	}()
	a.cmd, a.exited, a.running, a.paused = cmd, exited, true, false
	return nil
}

// signal sends sig to the running agent.
func (a *agent) signal(sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.running {
		return fmt.Errorf("chaos: %s is not running", a.name)
	}
	if err := a.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("chaos: signal %s: %w", a.name, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		a.paused = true
	case syscall.SIGCONT:
		a.paused = false
	}
	return nil
}

// kill SIGKILLs the agent and waits for it to exit.
func (a *agent) kill() error {
	a.mu.Lock()
	cmd, exited, running := a.cmd, a.exited, a.running
	a.mu.Unlock()
	if !running {
		return nil
	}
	_ = cmd.Process.Kill()
	<-exited
	a.mu.Lock()
	a.running, a.paused = false, false
	a.mu.Unlock()
	return nil
}

// stop ends the agent gracefully (SIGTERM; a paused agent is continued
// first), killing it if it has not exited within limit.
func (a *agent) stop(limit time.Duration) error {
	a.mu.Lock()
	cmd, exited, running, paused := a.cmd, a.exited, a.running, a.paused
	a.mu.Unlock()
	if !running {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	var err error
	select {
	case <-exited:
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-exited
		err = fmt.Errorf("chaos: %s did not stop within %v after SIGTERM; killed", a.name, limit)
	}
	a.mu.Lock()
	a.running, a.paused = false, false
	a.mu.Unlock()
	return err
}

// waitExit waits until the agent exits by itself (after Leave).
func (a *agent) waitExit(ctx context.Context) error {
	a.mu.Lock()
	exited, running := a.exited, a.running
	a.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-exited:
		a.mu.Lock()
		a.running = false
		a.mu.Unlock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *agent) isRunning() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running
}

// wipe removes the agent's data directory (the agent must be stopped).
func (a *agent) wipe() error {
	if a.isRunning() {
		return fmt.Errorf("chaos: wipe %s: still running", a.name)
	}
	return os.RemoveAll(a.dir)
}

// ready reports whether the agent answers /readyz with 200.
func (a *agent) ready(ctx context.Context, hc *http.Client) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.http+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady polls /readyz until the agent is ready, it exits, or ctx ends.
func (a *agent) waitReady(ctx context.Context, hc *http.Client) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		a.mu.Lock()
		exited := a.exited
		a.mu.Unlock()
		select {
		case <-exited:
			return fmt.Errorf("chaos: %s exited before it was ready (log: %s)", a.name, a.logPath)
		default:
		}
		probe, cancel := context.WithTimeout(ctx, time.Second)
		ok := a.ready(probe, hc)
		cancel()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: %s not ready: %w (log: %s)", a.name, ctx.Err(), a.logPath)
		case <-tick.C:
		}
	}
}

// clusterSpec is the shape of the cluster under test.
type clusterSpec struct {
	binary   string
	dir      string
	nodes    int
	shards   int
	replicas int
	// stabilization is the agents' -stabilization-time.
	stabilization time.Duration
	// extraArgs are appended to every agent's command line.
	extraArgs []string
}

// planAgents lays out the agents: node i binds its network's host i on
// fixed ports (netns: every agent has its own address) or on free
// loopback ports.
func planAgents(spec clusterSpec, nw network) ([]*agent, error) {
	agents := make([]*agent, spec.nodes)
	for i := range agents {
		a := &agent{index: i, name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(spec.dir, fmt.Sprintf("n%d", i+1)),
			logPath: filepath.Join(spec.dir, fmt.Sprintf("n%d.log", i+1))}
		host := nw.host(i)
		if _, ok := nw.(*netnsNet); ok {
			a.http, a.raft, a.gossip = net.JoinHostPort(host, "7070"), net.JoinHostPort(host, "7071"), net.JoinHostPort(host, "7072")
		} else {
			ports, err := freePorts(3)
			if err != nil {
				return nil, err
			}
			a.http, a.raft, a.gossip = net.JoinHostPort(host, ports[0]), net.JoinHostPort(host, ports[1]), net.JoinHostPort(host, ports[2])
		}
		agents[i] = a
	}
	for _, a := range agents {
		var peers []string
		for _, p := range agents {
			if p != a {
				peers = append(peers, p.gossip)
			}
		}
		args := []string{spec.binary, "agent", "-name", a.name, "-data-dir", a.dir,
			"-http", a.http, "-raft", a.raft, "-gossip", a.gossip, "-gossip-profile", "local",
			"-bootstrap-expect", strconv.Itoa(spec.nodes), "-join", strings.Join(peers, ","),
			"-shards", strconv.Itoa(spec.shards), "-replicas", strconv.Itoa(spec.replicas),
			"-stabilization-time", spec.stabilization.String(), "-log-level", "warn",
			// The agents listen on the namespaces' addresses, not loopback: without
			// TLS that has to be said out loud.
			"-insecure"}
		args = append(args, spec.extraArgs...)
		a.argv = nw.command(a.index, args)
	}
	return agents, nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 that are also
// free for UDP (gossip binds both).
func freePorts(n int) ([]string, error) {
	var ports []string
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		_, port, _ := net.SplitHostPort(l.Addr().String())
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			continue
		}
		_ = u.Close()
		ports = append(ports, port)
	}
	return ports, nil
}
