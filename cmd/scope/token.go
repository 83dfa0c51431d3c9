package main

import (
	"fmt"
	"io"

	"github.com/elixirscope/scope/rpc"
)

// runToken is `scope token new -role ROLE [-name NAME]`: it prints a new
// random token and the line to add to the agents' -auth-tokens file. The
// file holds only the token's SHA-256, so the token itself is shown once.
func runToken(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "new" {
		fs := newFlagSet("token", "new -role ROLE [-name NAME]", stderr)
		fmt.Fprintln(stderr, "scope token: want the subcommand new")
		fs.Usage()
		return exitUsage
	}
	fs := newFlagSet("token new", "", stderr)
	roleName := fs.String("role", "", "the token's role: ingest (IngestService), query (QueryService, Members, Shards, /metrics) or admin (everything, Join, Leave, /debug/pprof)")
	name := fs.String("name", "", "a name for the token's holder, shown in logs and used for per-caller limits (no spaces)")
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
	}
	if *roleName == "" {
		return reportError(stderr, fs, usageError("-role: required (ingest, query or admin)"))
	}
	role, err := rpc.ParseRole(*roleName)
	if err != nil {
		return reportError(stderr, fs, usageError("-role: %v", err))
	}
	token, line, err := rpc.NewToken(role, *name)
	if err != nil {
		return reportError(stderr, fs, usageError("-name: %v", err))
	}
	fmt.Fprintf(stdout, "token: %s\nline for the -auth-tokens file of every agent (then send the agents SIGHUP):\n%s\n", token, line)
	return exitOK
}
