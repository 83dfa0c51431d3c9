package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/elixirscope/scope/cluster/chaos"
)

// `scope chaos` runs a nemesis campaign against a cluster of agent
// processes of this binary (cluster/chaos): kills, pauses, partitions,
// wiped disks and leaves under a concurrent load, then checks the history
// for linearizability and the replicas for agreement. It exits 0 when
// nothing was found, 1 when an anomaly was.
func runChaos(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("chaos", "", stderr)
	var cfg chaos.Config
	var faults, jsonOut string
	var keep bool
	fs.DurationVar(&cfg.Duration, "duration", 2*time.Minute, "how long faults are injected")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the fault schedule and the workload's choices")
	fs.IntVar(&cfg.Nodes, "nodes", 4, "agents (3..9)")
	fs.IntVar(&cfg.Shards, "shards", 4, "shards")
	fs.IntVar(&cfg.Replicas, "replicas", 3, "replicas per shard (3..nodes)")
	fs.IntVar(&cfg.Writers, "writers", 8, "concurrent ingest clients")
	fs.IntVar(&cfg.Readers, "readers", 4, "concurrent LEADER readers")
	fs.StringVar(&cfg.Network, "net", chaos.NetNetns, "network: netns (partitions; needs root and iproute2) or loopback (no partitions)")
	fs.StringVar(&faults, "faults", "", "comma-separated faults (default all the network allows): "+strings.Join(chaos.AllFaults, ","))
	fs.StringVar(&cfg.Dir, "dir", "", "directory for data, logs and the report (default: a new temporary directory)")
	fs.BoolVar(&keep, "keep", false, "keep -dir's default temporary directory after a clean run")
	fs.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
	}
	if faults != "" {
		cfg.Faults = strings.Split(faults, ",")
	}
	bin, err := os.Executable()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	cfg.Binary = bin
	temp := cfg.Dir == ""
	if temp {
		if cfg.Dir, err = os.MkdirTemp("", "scope-chaos-"); err != nil {
			return reportError(stderr, fs, err)
		}
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return reportError(stderr, fs, err)
	}
	start := time.Now()
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(stdout, "%7.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := chaos.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "scope chaos: %v (logs in %s)\n", err, cfg.Dir)
		return exitError
	}
	out, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Fprintf(stdout, "%s\n", out)
	if jsonOut != "" {
		if err := os.WriteFile(jsonOut, append(out, '\n'), 0o644); err != nil {
			return reportError(stderr, fs, err)
		}
	}
	if !rep.OK() {
		fmt.Fprintf(stderr, "scope chaos: %d anomalies, %d linearizability violations; logs and visualizations in %s\n",
			rep.AnomalyCount, rep.Linearizability.ViolationCount, cfg.Dir)
		return exitError
	}
	fmt.Fprintf(stdout, "no anomaly found (%s)\n", time.Since(start).Round(time.Second))
	if temp && !keep {
		_ = os.RemoveAll(cfg.Dir)
	} else {
		fmt.Fprintf(stdout, "logs in %s\n", filepath.Clean(cfg.Dir))
	}
	return exitOK
}
