package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
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
	raftConnPool      = 3                // idle raft connections kept per peer and shard
	raftIOTimeout     = 10 * time.Second // raft NetworkTransport I/O deadline
	readyTimeout      = 2 * time.Minute  // every shard must elect a leader within this
	httpShutdownLimit = 10 * time.Second // then connections are closed
	nodeShutdownLimit = 30 * time.Second // rings drain, raft groups stop, the store closes
)

// forceExit ends the process on a second signal (a variable for tests).
var forceExit = func() { os.Exit(exitError) }

func runAgent(args []string, stdout, stderr io.Writer) int {
	cfg, fs, err := parseAgentFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		return reportError(stderr, fs, err)
	case err != nil:
		return exitUsage // the flag package has printed the error and usage
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

// agent is a running `scope agent`: a node, its raft mux and its HTTP server.
type agent struct {
	cfg    *agentConfig
	logger *slog.Logger
	mux    *cluster.Mux
	node   *node.Node
	http   *http.Server
	served chan error // the HTTP server's Serve result
	// httpBound is the address the HTTP listener bound (-http may say port 0).
	httpBound string

	srv *rpc.Server
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
	cfg.banner(stdout, a.httpAddr(), a.raftAddr())
	start := time.Now()
	if err := a.waitReady(ctx); err != nil {
		return errors.Join(err, a.shutdown())
	}
	fmt.Fprintf(stdout, "scope agent ready: %d shards have a leader (%s)\n", cfg.node.Shards, time.Since(start).Round(time.Millisecond))
	logger.Info("ready", "shards", cfg.node.Shards, "http", a.httpAddr(), "raft", a.raftAddr())

	select {
	case <-ctx.Done():
	case err := <-a.served:
		return errors.Join(fmt.Errorf("scope: http server: %w", err), a.shutdown())
	}
	if err := a.shutdown(); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// startAgent opens the data directory, the raft listener and mux, the node
// with every shard bootstrapped as a one-node group, and the HTTP server.
// On error everything opened so far is closed.
func startAgent(cfg *agentConfig, logger *slog.Logger) (_ *agent, err error) {
	shards, err := prepareDataDir(cfg.dataDir, uint32(cfg.shards), cfg.shardsSet, cfg.name)
	if err != nil {
		return nil, err
	}
	if shards != cfg.node.Shards {
		logger.Info("using the data directory's shard count", "shards", shards, "data_dir", cfg.dataDir)
		cfg.node.Shards, cfg.shards = shards, uint(shards)
	}
	a := &agent{cfg: cfg, logger: logger, served: make(chan error, 1)}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.shutdown())
		}
	}()

	raftLn, err := net.Listen("tcp", cfg.raftAddr)
	if err != nil {
		return nil, fmt.Errorf("scope: -raft %s: %w", cfg.raftAddr, err)
	}
	mc := cluster.DefaultMuxConfig()
	mc.Logger = logger.With("component", "raft-mux")
	if a.mux, err = cluster.NewMux(raftLn, mc); err != nil {
		_ = raftLn.Close()
		return nil, err
	}
	// Raft's own transport logs through hclog; route it into slog at Warn.
	netLog := hclog.FromStandardLogger(log.New(slogWriter{logger.With("component", "raft-net")}, "", 0),
		&hclog.LoggerOptions{Name: "raft-net", Level: hclog.Warn})

	nc := cfg.node
	nc.RaftAddr = a.mux.Addr().String()
	nc.Logger = logger
	nc.Transport = func(shard uint32) (raft.Transport, error) {
		sl, err := a.mux.StreamLayer(shard)
		if err != nil {
			return nil, err
		}
		return raft.NewNetworkTransportWithLogger(sl, raftConnPool, raftIOTimeout, netLog), nil
	}
	if a.node, err = node.Open(nc); err != nil {
		return nil, err
	}
	// Before any raft group starts, so no early metric goes elsewhere.
	if err := installRaftMetrics(a.node.Metrics().Registry()); err != nil {
		return nil, err
	}
	if err := a.node.Bootstrap(); err != nil {
		return nil, err
	}

	rc := cfg.rpc
	rc.Logger = logger
	if a.srv, err = rpc.NewServer(a.node, rc); err != nil {
		return nil, err
	}
	httpLn, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("scope: -http %s: %w", cfg.httpAddr, err)
	}
	a.httpBound = httpLn.Addr().String()
	a.http = a.srv.HTTPServer(a.httpBound)
	go func() { a.served <- a.http.Serve(httpLn) }()
	return a, nil
}

func (a *agent) httpAddr() string { return a.httpBound }
func (a *agent) raftAddr() string { return a.mux.Addr().String() }

// waitReady waits until every shard has a leader, bounded by readyTimeout.
func (a *agent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := a.node.WaitLeaders(ctx); err != nil {
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	return nil
}

// shutdown stops the agent gracefully: live Tail streams end, the HTTP
// server stops accepting and lets in-flight requests finish (bounded), then
// the node drains its rings, stops its raft groups and closes the store,
// then the raft listener closes. Safe on a partly started agent.
func (a *agent) shutdown() error {
	var errs []error
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
