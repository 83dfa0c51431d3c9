package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elixirscope/scope/internal/testwait"
)

// startInProcess parses agent flags for a temp data dir on free ports and
// runs runAgentUntil in a goroutine; it returns the signal channel, the
// stdout buffer and the result channel.
func startInProcess(t *testing.T) (chan os.Signal, *syncBuffer, chan error) {
	t.Helper()
	cfg, _, err := parseAgentFlags([]string{"-dev", "-data-dir", filepath.Join(t.TempDir(), "d"),
		"-http", "127.0.0.1:0", "-raft", "127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 2)
	out := &syncBuffer{}
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- runAgentUntil(cfg, logger, out, sigs) }()
	return sigs, out, done
}

// TestAgentGracefulSignal: one signal after ready shuts the agent down
// cleanly (runAgentUntil returns nil; goleak in TestMain checks that every
// goroutine of the node, raft groups and HTTP server ended).
func TestAgentGracefulSignal(t *testing.T) {
	sigs, out, done := startInProcess(t)
	testwait.For(t, "ready line", 30*time.Second, func() bool { return strings.Contains(out.String(), "scope agent ready") })
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("graceful shutdown: %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("agent did not stop within 45s")
	}
}

// TestAgentSecondSignalForcesExit: a second signal while shutting down
// calls forceExit instead of waiting for the graceful path.
func TestAgentSecondSignalForcesExit(t *testing.T) {
	forced := make(chan struct{})
	old := forceExit
	forceExit = func() { close(forced) }
	t.Cleanup(func() { forceExit = old })

	sigs, _, done := startInProcess(t)
	sigs <- syscall.SIGINT
	sigs <- syscall.SIGINT
	select {
	case <-forced:
	case <-time.After(30 * time.Second):
		t.Fatal("second signal did not force exit")
	}
	// The stubbed forceExit returns, so the agent still finishes its
	// shutdown (started before ready: it reports not ready).
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		t.Fatal("agent did not stop within 45s")
	}
}
