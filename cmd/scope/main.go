// Command scope is the Scope binary: the agent (a cluster node) and the
// client commands that talk to a node over Connect RPC.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// command is one subcommand of the scope binary.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands lists every subcommand, in the order `scope help` prints them.
var commands = []command{
	{"agent", "run a cluster node (-bootstrap-expect N or -join addr), or -dev for one development node", runAgent},
	{"ingest", "send events from a JSON-lines file or stdin", runIngest},
	{"query", "list events matching filters", runQuery},
	{"get", "show one event by id", runGet},
	{"tree", "show the call tree containing an event", runTree},
	{"stack", "show a process's call stack at a time", runStack},
	{"state", "show a process's last state change at a time", runState},
	{"flow", "show the messages between two processes", runFlow},
	{"trace", "follow an event's links to its causes and effects", runTrace},
	{"tail", "stream new events matching filters", runTail},
	{"stats", "event counts, top functions, nodes", runStats},
	{"shards", "shards: leader, replicas with suffrage, applied index, lag", runShards},
	{"members", "cluster members: status, addresses, shards led", runMembers},
	{"join", "make a node join a cluster through members' gossip addresses", runJoin},
	{"leave", "drain a node (its replicas move away), then it leaves and stops", runLeave},
	{"reshard", "grow the shard count online, doubling: -shards N (admin)", runReshard},
	{"transfer-leadership", "hand a shard's leadership to another voter: -shard N [-to NODE] (admin)", runTransferLeadership},
	{"cert", "create a cluster CA and node and client certificates (init, node, client)", runCert},
	{"keyring", "gossip keys: 'keyring new' makes one; list, install, use, remove change every member's keyring (admin)", runKeyring},
	{"token", "make a bearer token: 'token new -role ingest|query|admin [-name N]' prints it and its -auth-tokens line", runToken},
	{"dev-cluster", "run an n-node cluster of local agent processes (-n 3)", runDevCluster},
	{"chaos", "fault-injection campaign on local agent processes, checked for linearizability and replica agreement", runChaos},
	{"bench", "load generator: ingest throughput and latency; 'bench queries': query latency", runBench},
	{"version", "print the version of this binary", runVersion},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		usage(stderr)
		return exitUsage
	case args[0] == "help" && len(args) > 1:
		// `scope help CMD` is `scope CMD -h`.
		for _, c := range commands {
			if c.name == args[1] {
				return c.run([]string{"-h"}, stdout, stderr)
			}
		}
		fmt.Fprintf(stderr, "scope help: unknown command %q\n\n", args[1])
		usage(stderr)
		return exitUsage
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "scope: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: scope <command> [flags]\n\ncommands:")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'scope help <command>' or 'scope <command> -h' for a command's flags.")
}

// version is the module version of this build, or "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "", stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
	}
	fmt.Fprintf(stdout, "scope %s\n", version())
	return exitOK
}
