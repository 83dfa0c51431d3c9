package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served under -pprof only
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
)

// Agent timing that is not configurable.
const (
	raftIOTimeout     = 10 * time.Second // raft NetworkTransport I/O deadline
	readyTimeout      = 2 * time.Minute  // every shard must elect a leader within this
	httpShutdownLimit = 10 * time.Second // then connections are closed
	nodeShutdownLimit = 30 * time.Second // rings drain, raft groups stop, the store closes
	// clusterShutdownLimit bounds waiting for the cluster's shard steps:
	// their node-to-node calls are cancelled at once, a raft membership
	// change in progress ends when it commits or leadership is lost.
	clusterShutdownLimit = 5 * time.Second
	joinRetry            = 500 * time.Millisecond
	joinLogEvery         = 20 // join attempts between two warnings
	waitLogEvery         = 10 * time.Second
)

// forceExit ends the process on a second signal (a variable for tests).
var forceExit = func() { os.Exit(exitError) }

func runAgent(args []string, stdout, stderr io.Writer) int {
	cfg, fs, err := parseAgentFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errInsecure):
		fmt.Fprintf(stderr, "scope agent: %s\n", strings.TrimPrefix(err.Error(), errInsecure.Error()+": "))
		return exitUsage
	case errors.Is(err, errUsage):
		return reportError(stderr, fs, err)
	case err != nil:
		return exitUsage // the flag package has printed the error, parseAgentFlags the hint
	}
	logger := cfg.logger(stderr)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := runAgentUntil(cfg, logger, stdout, sigs); err != nil {
		logger.Error("agent failed", "err", err)
		return exitError
	}
	return exitOK
}

// agent is a running `scope agent`: a node, its raft mux and its HTTP
// server; in cluster mode also its gossip membership and cluster layer.
type agent struct {
	cfg    *agentConfig
	logger *slog.Logger
	meta   dataDirMeta // the data directory's metadata
	mux    *cluster.Mux
	node   *node.Node
	http   *http.Server
	served chan error // the HTTP server's Serve result
	// httpBound is the address the HTTP listener bound (-http may say port 0).
	httpBound string

	srv  *rpc.Server
	tls  *agentTLS // nil without -tls-cert
	auth *rpc.Auth // tokens and node credentials, replaced on SIGHUP
	// identity is the data directory's node id, cluster id and start
	// epoch (cluster.IdentityFile, beside metaFile).
	identity *cluster.IdentityStore

	// Cluster mode only (nil with -dev).
	members *cluster.Membership
	keyring *cluster.KeyringFile // -gossip-keyring; nil without it
	cluster *cluster.Cluster
	seeds   []string      // gossip addresses to join at start
	left    chan struct{} // closed once a ClusterService.Leave has drained this node
	stopBg  chan struct{} // stops the join loop
	bg      sync.WaitGroup
}

// runAgentUntil starts the agent, waits until every shard has a leader,
// then serves until the first signal on sigs, and shuts down gracefully.
// A second signal during the shutdown forces the process to exit.
func runAgentUntil(cfg *agentConfig, logger *slog.Logger, stdout io.Writer, sigs <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case s := <-sigs:
			logger.Info("signal received: shutting down (send it again to force exit)", "signal", s.String())
			cancel()
		case <-stopped:
			return
		}
		select {
		case s := <-sigs:
			logger.Error("second signal: exiting without a graceful shutdown", "signal", s.String())
			forceExit()
		case <-stopped:
		}
	}()

	a, err := startAgent(cfg, logger)
	if err != nil {
		return err
	}
	hupStop, hupDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(hupDone); a.reloadOnHUP(hupStop) }()
	defer func() { close(hupStop); <-hupDone }()
	cfg.banner(stdout, a.httpAddr(), a.raftAddr(), a.gossipAddr())
	start := time.Now()
	if err := a.waitReady(ctx); err != nil {
		return errors.Join(err, a.shutdown())
	}
	fmt.Fprintf(stdout, "scope agent ready: %d shards have a leader (%s)\n", cfg.node.Shards, time.Since(start).Round(time.Millisecond))
	logger.Info("ready", "shards", cfg.node.Shards, "http", a.httpAddr(), "raft", a.raftAddr(), "gossip", a.gossipAddr())
	if a.cluster != nil && !a.meta.Formed {
		// From now on a restart must never bootstrap again.
		if err := updateMeta(cfg.dataDir, &a.meta, func(m *dataDirMeta) { m.Formed = true }); err != nil {
			return errors.Join(err, a.shutdown())
		}
	}

	select {
	case <-ctx.Done():
	case <-a.left:
		fmt.Fprintln(stdout, "scope agent left the cluster: its replicas moved to other nodes; stopping")
		logger.Info("left the cluster: stopping")
	case err := <-a.served:
		return errors.Join(fmt.Errorf("scope: http server: %w", err), a.shutdown())
	}
	if err := a.shutdown(); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// startAgent opens the data directory, the raft listener and mux, the node,
// and the HTTP server. With -dev every shard is bootstrapped as a one-node
// group; otherwise the node joins gossip, and the cluster layer reopens the
// replicas it hosted, bootstraps (-bootstrap-expect) or waits to be given
// replicas (-join). On error everything opened so far is closed.
func startAgent(cfg *agentConfig, logger *slog.Logger) (_ *agent, err error) {
	a := &agent{cfg: cfg, logger: logger, served: make(chan error, 1), left: make(chan struct{}), stopBg: make(chan struct{})}
	if err := a.openDataDir(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.shutdown())
		}
	}()

	if cfg.dev && !cfg.tls.on() {
		logger.Warn("-dev: serving plaintext without authentication, for development only; a cluster node needs -tls-cert/-tls-key/-tls-ca")
	}
	raftLn, err := net.Listen("tcp", cfg.raftAddr)
	if err != nil {
		return nil, fmt.Errorf("scope: -raft %s: %w", cfg.raftAddr, err)
	}
	mc := cluster.DefaultMuxConfig()
	mc.Logger = logger.With("component", "raft-mux")
	// The certificates first: the mux needs them; their counter is
	// registered once the node (and its registry) exists.
	if err := a.startTLS(); err != nil {
		_ = raftLn.Close()
		return nil, err
	}
	a.muxTLS(&mc)
	if a.mux, err = cluster.NewMux(raftLn, mc); err != nil {
		_ = raftLn.Close()
		return nil, err
	}
	// Raft's own transport logs through hclog; route it into slog at Warn.
	netLog := hclog.FromStandardLogger(log.New(slogWriter{logger.With("component", "raft-net")}, "", 0),
		&hclog.LoggerOptions{Name: "raft-net", Level: hclog.Warn})

	nc := cfg.node
	nc.RaftAddr = a.advertised(cfg.advertiseRaft, a.mux.Addr().String())
	nc.Logger = logger
	nc.Transport = func(shard uint32) (raft.Transport, error) {
		sl, err := a.mux.StreamLayer(shard)
		if err != nil {
			return nil, err
		}
		return cluster.NewRaftTransport(sl, raftIOTimeout, netLog), nil
	}
	if a.node, err = node.Open(nc); err != nil {
		return nil, err
	}
	// Before any raft group starts, so no early metric goes elsewhere.
	if err := installRaftMetrics(a.node.Metrics().Registry()); err != nil {
		return nil, err
	}
	if err := a.registerMuxMetrics(a.node.Metrics().Registry()); err != nil {
		return nil, err
	}
	if a.tls != nil {
		if err := a.node.Metrics().Registry().Register(a.tls.nodeRefused); err != nil {
			return nil, err
		}
	}
	if cfg.dev {
		if err := a.node.Bootstrap(); err != nil {
			return nil, err
		}
	}

	a.auth = &rpc.Auth{}
	if cfg.tokens != nil {
		a.auth.SetTokens(cfg.tokens)
	}
	if !cfg.dev {
		// The node API (and forwarded ingest) accepts this credential,
		// derived from the gossip keyring, and never a client token.
		a.auth.SetNodeCredentials(rpc.NodeCredentials(cfg.gossipKeys))
	}
	rc := cfg.rpc
	rc.Logger = logger
	rc.Auth = a.auth
	if a.srv, err = rpc.NewServer(a.node, rc); err != nil {
		return nil, err
	}
	if cfg.pprof {
		// http.DefaultServeMux holds net/http/pprof's handlers (its import
		// registers them there, and nothing else of ours uses it).
		a.srv.Mount("/debug/pprof/", http.DefaultServeMux)
	}
	httpLn, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("scope: -http %s: %w", cfg.httpAddr, err)
	}
	a.httpBound = httpLn.Addr().String()
	if !cfg.dev {
		if err := a.startCluster(nc.RaftAddr); err != nil {
			_ = httpLn.Close()
			return nil, err
		}
	}
	a.http = a.srv.HTTPServer(a.httpBound)
	a.httpTLS()
	go func() { a.served <- a.serveHTTP(httpLn) }()
	if a.cluster != nil {
		// After the HTTP server: bootstrapping and moves call peers' node
		// API, and peers call ours.
		if err := a.cluster.Start(); err != nil {
			return nil, err
		}
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			a.joinLoop()
		}()
	}
	return a, nil
}

// openDataDir reconciles the data directory's metadata with the flags and
// settles the cluster settings the node runs with (shards, R, seeds).
func (a *agent) openDataDir() error {
	cfg := a.cfg
	want := dataDirMeta{Format: metaFormat, Shards: uint32(cfg.shards), Node: cfg.name, Mode: modeDev}
	if !cfg.dev {
		want.Mode, want.Replicas, want.Join = modeCluster, cfg.replicas, cfg.join
		if _, err := os.Stat(filepath.Join(cfg.dataDir, metaFile)); errors.Is(err, fs.ErrNotExist) &&
			cfg.bootstrapExpect == 0 && len(cfg.join) == 0 {
			return fmt.Errorf("%w: %s is new: pass -bootstrap-expect N (with -join <gossip address of another node>) "+
				"to form a new cluster of N nodes, -join <gossip address> to join a running cluster, or -dev for a "+
				"single development node", errNewDataDir, cfg.dataDir)
		}
	}
	m, _, err := openDataDir(cfg.dataDir, want, cfg.shardsSet, cfg.replicasSet)
	if err != nil {
		return err
	}
	a.meta = m
	// A directory from before node ids gets one now; every start counts.
	a.identity, err = cluster.OpenIdentity(cfg.dataDir)
	if errors.Is(err, syscall.ENOSPC) {
		// Not a byte free: the reserve file is there for this (the
		// node's disk guard would release it too, once open).
		released, rerr := node.ReleaseReserve(cfg.dataDir)
		switch {
		case released:
			a.logger.Warn("disk full at start: released the reserve file to write the data directory's identity",
				"data_dir", cfg.dataDir)
			a.identity, err = cluster.OpenIdentity(cfg.dataDir)
		case rerr == nil:
			err = fmt.Errorf("%w: no reserve file left to release; free space on the volume (or grow it), then start again: %w",
				node.ErrDiskFull, err)
		default:
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("scope: -data-dir %s: %w", cfg.dataDir, err)
	}
	id := a.identity.Get()
	a.logger.Info("data directory identity", "node_id", cluster.FormatID(id.NodeID),
		"cluster_id", cluster.FormatID(id.ClusterID), "epoch", id.Epoch, "data_dir", cfg.dataDir)
	if m.Shards != cfg.node.Shards {
		a.logger.Info("using the data directory's shard count", "shards", m.Shards, "data_dir", cfg.dataDir)
		cfg.node.Shards, cfg.shards = m.Shards, uint(m.Shards)
	}
	if cfg.dev {
		return nil
	}
	if m.Replicas != cfg.replicas {
		a.logger.Info("using the data directory's replication factor", "replicas", m.Replicas, "data_dir", cfg.dataDir)
		cfg.replicas = m.Replicas
	}
	a.seeds = m.Join
	if len(cfg.join) > 0 {
		a.seeds = cfg.join
		if !slices.Equal(m.Join, cfg.join) {
			return updateMeta(cfg.dataDir, &a.meta, func(m *dataDirMeta) { m.Join = cfg.join })
		}
	}
	return nil
}

// startCluster starts the gossip membership and the cluster layer, and
// wires the cluster into the rpc server, exactly as clustertest does.
func (a *agent) startCluster(raftAddr string) error {
	cfg := a.cfg
	hosted, err := a.node.HostedShards()
	if err != nil {
		return err
	}
	expect := cfg.bootstrapExpect
	if expect > 0 && (len(hosted) > 0 || a.meta.Formed) {
		a.logger.Info("ignoring -bootstrap-expect: the data directory already belongs to a cluster; resuming",
			"bootstrap_expect", expect, "hosted_replicas", len(hosted))
		expect = 0
	}
	if expect == 0 && len(hosted) == 0 && len(a.seeds) == 0 {
		return fmt.Errorf("%w: %s hosts no replicas and knows no member: pass -join <gossip address of a member>",
			errNewDataDir, cfg.dataDir)
	}

	mcfg := cluster.DefaultMembershipConfig()
	mcfg.Name = cfg.name
	mcfg.BindAddr = cfg.gossipAddr
	mcfg.AdvertiseAddr = cfg.advertiseGossip
	mcfg.Seeds = a.joinTargets()
	mcfg.GossipKeys = cfg.gossipKeys
	mcfg.Profile = cfg.gossipProfile
	mcfg.Logger = a.logger.With("component", "gossip")
	if cfg.gossipProfile == cluster.ProfileLocal {
		mcfg.RejoinInterval = 2 * time.Second
	}
	hosted, herr := a.node.HostedShards()
	if herr != nil {
		return herr
	}
	// Formed from the first gossip on, so that no peer takes this node for
	// one that lost its data while it reopens its replicas.
	id := a.identity.Get()
	meta := cluster.Meta{Name: cfg.name, HTTPAddr: a.advertised(cfg.advertiseHTTP, a.httpBound), RaftAddr: raftAddr,
		Version: version(), Shards: cfg.node.Shards, Formed: len(hosted) > 0, HoldsReplicas: len(hosted) > 0,
		NodeID: id.NodeID, ClusterID: id.ClusterID, Epoch: id.Epoch, Run: a.identity.Run()}
	if a.members, err = cluster.NewMembership(mcfg, meta); err != nil {
		return fmt.Errorf("scope: -gossip %s: %w", cfg.gossipAddr, err)
	}

	ccfg := cluster.DefaultConfig(cfg.name)
	ccfg.RaftAddr = raftAddr
	ccfg.Shards = cfg.node.Shards
	ccfg.Replicas = cfg.replicas
	ccfg.BootstrapExpect = expect
	ccfg.StabilizationTime = cfg.stabilization
	ccfg.Identity = a.identity
	ccfg.Logger = a.logger.With("component", "cluster")
	a.clusterTLS(&ccfg)
	ccfg.Auth = a.auth
	if cfg.gossipKeyring != "" {
		a.keyring = cluster.NewKeyringFile(cfg.gossipKeyring, a.members, func(keys [][]byte) {
			a.auth.SetNodeCredentials(rpc.NodeCredentials(keys))
		})
		ccfg.Keyring = a.keyring
	}
	if a.cluster, err = cluster.New(ccfg, a.node, a.members); err != nil {
		return err
	}
	a.srv.SetResolver(a.cluster.Resolver(rpc.LocalResolver(a.node)))
	a.srv.SetTailSources(a.cluster.TailSources())
	a.srv.SetCluster(leaveNotifier{ClusterInfo: a.cluster.Info(), left: a.left, once: new(sync.Once)})
	a.srv.Mount(a.nodeOnly(a.cluster.Handler()))
	return nil
}

// reload rereads, on SIGHUP, the certificates, the -auth-tokens file and
// the -gossip-keyring file; each that fails to load keeps what is in use.
func (a *agent) reload() {
	a.reloadTLS()
	a.reloadAuth()
}

// reloadAuth rereads the -auth-tokens and -gossip-keyring files (SIGHUP). A
// file that does not parse leaves the running set in place and is logged.
func (a *agent) reloadAuth() {
	cfg := a.cfg
	if cfg.authTokens != "" {
		set, err := rpc.LoadTokens(cfg.authTokens)
		if err != nil {
			a.logger.Error("SIGHUP: -auth-tokens not reloaded; keeping the previous tokens", "err", err)
		} else {
			a.auth.SetTokens(set)
			a.logger.Info("SIGHUP: tokens reloaded", "file", cfg.authTokens, "tokens", set.Len())
		}
	}
	if a.keyring != nil {
		keys, err := a.keyring.Reload()
		if err != nil {
			a.logger.Error("SIGHUP: -gossip-keyring not reloaded; keeping the previous keys", "err", err)
			return
		}
		a.logger.Info("SIGHUP: gossip keyring reloaded", "file", a.keyring.Path(), "keys", len(keys))
	}
}

// joinTargets is the seed list without this node's own gossip address.
func (a *agent) joinTargets() []string {
	var out []string
	for _, s := range a.seeds {
		if s != a.cfg.gossipAddr && s != a.cfg.advertiseGossip {
			out = append(out, s)
		}
	}
	return out
}

// joinLoop contacts the seeds until one answers: at a first start the
// other nodes may not be up yet. Later partitions are healed by the
// membership's own rejoin loop.
func (a *agent) joinLoop() {
	targets := a.joinTargets()
	if len(targets) == 0 {
		return
	}
	t := time.NewTicker(joinRetry)
	defer t.Stop()
	for attempt := 1; ; attempt++ {
		n, err := a.members.Join(targets)
		if n > 0 {
			a.logger.Info("joined the cluster", "contacted", n, "seeds", targets)
			return
		}
		switch {
		case attempt == 1:
			// The others may simply not be up yet: routine at a first start.
			a.logger.Info("no seed reachable yet; retrying", "seeds", targets, "err", err)
		case attempt%joinLogEvery == 0:
			// Still none after joinLogEvery attempts (10 s): worth a look.
			a.logger.Warn("no seed reachable yet; retrying", "seeds", targets, "attempt", attempt, "err", err)
		}
		select {
		case <-a.stopBg:
			return
		case <-t.C:
		}
	}
}

// advertised is adv when given, else the bound address.
func (a *agent) advertised(adv, bound string) string {
	if adv != "" {
		return adv
	}
	return bound
}

// leaveNotifier tells the agent when ClusterService.Leave has drained this
// node, so that the process stops once the response is on its way.
type leaveNotifier struct {
	rpc.ClusterInfo
	left chan struct{}
	once *sync.Once
}

func (l leaveNotifier) Leave(ctx context.Context) error {
	if err := l.ClusterInfo.Leave(ctx); err != nil {
		return err
	}
	l.once.Do(func() { close(l.left) })
	return nil
}

func (a *agent) httpAddr() string { return a.httpBound }
func (a *agent) raftAddr() string { return a.mux.Addr().String() }

// gossipAddr is the bound gossip address ("" with -dev).
func (a *agent) gossipAddr() string {
	if a.members == nil {
		return ""
	}
	return a.members.Addr()
}

// waitReady waits until every shard has a leader this node knows of. With
// -dev that is bounded by readyTimeout; a cluster node waits for its peers
// (started by hand, they may take a while) until interrupted, logging what
// it waits for.
func (a *agent) waitReady(ctx context.Context) error {
	if a.cluster == nil {
		ctx, cancel := context.WithTimeout(ctx, readyTimeout)
		defer cancel()
		if err := a.node.WaitLeaders(ctx); err != nil {
			return fmt.Errorf("%w: %w", errNotReady, err)
		}
		return nil
	}
	info := a.cluster.Info()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		missing := 0
		for shard := range a.node.Shards() {
			if r := a.node.Replica(shard); r != nil {
				if addr, _ := r.Leader(); addr == "" {
					missing++
				}
			} else if info.ShardLeader(shard) == "" {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Since(lastLog) >= waitLogEvery {
			lastLog = time.Now()
			alive := 0
			for _, m := range a.members.Members() {
				if m.State == cluster.MemberAlive {
					alive++
				}
			}
			a.logger.Info("waiting for the cluster", "shards_without_leader", missing, "members_alive", alive,
				"bootstrap_expect", a.cfg.bootstrapExpect, "seeds", a.joinTargets())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d shards without a known leader: %w", errNotReady, missing, ctx.Err())
		case <-tick.C:
		}
	}
}

// shutdown stops the agent gracefully: live Tail streams end, the HTTP
// server stops accepting and lets in-flight requests finish (bounded), the
// cluster loops stop and gossip shuts down, then the node drains its rings,
// stops its raft groups and closes the store, then the raft listener
// closes. Safe on a partly started agent.
func (a *agent) shutdown() error {
	var errs []error
	select {
	case <-a.stopBg:
	default:
		close(a.stopBg)
	}
	a.bg.Wait()
	if a.srv != nil {
		a.srv.Close()
	}
	if a.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), httpShutdownLimit)
		if err := a.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("scope: http shutdown: %w", err), a.http.Close())
		}
		cancel()
	}
	// A plain stop is not a departure: no leave, no drain. Peers see the
	// node fail and the groups elect other leaders; `scope leave` drains.
	if a.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), clusterShutdownLimit)
		errs = append(errs, a.cluster.Close(ctx))
		cancel()
	}
	if a.members != nil {
		errs = append(errs, a.members.Shutdown())
	}
	if a.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), nodeShutdownLimit)
		errs = append(errs, a.node.Close(ctx))
		cancel()
	}
	if a.mux != nil {
		errs = append(errs, a.mux.Close())
	}
	return errors.Join(errs...)
}

// slogWriter turns lines written by a standard logger into Warn records.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.l.Warn(msg)
	return len(p), nil
}
