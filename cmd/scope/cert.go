package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/elixirscope/scope/tlsconf"
)

// runCert is `scope cert {init,node,client}`: a cluster's certificate
// authority and the node and client certificates it signs.
func runCert(args []string, stdout, stderr io.Writer) int {
	const usage = "usage: scope cert init -dir DIR | node -dir DIR -name NAME -host HOST[,HOST...] | client -dir DIR -name NAME"
	if len(args) == 0 || (args[0] != "init" && args[0] != "node" && args[0] != "client") {
		fmt.Fprintln(stderr, usage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "help" || args[0] == "--help") {
			return exitOK
		}
		return exitUsage
	}
	sub := args[0]
	fs := newFlagSet("cert "+sub, "", stderr)
	dir := fs.String("dir", "certs", "certificate directory: holds ca.crt and ca.key (created 0700)")
	force := fs.Bool("force", false, "overwrite existing files")
	var name, hosts *string
	if sub != "init" {
		name = fs.String("name", "", "the "+sub+" name the certificate carries (a node's -name)")
	}
	if sub == "node" {
		hosts = fs.String("host", "", "comma-separated IP addresses and DNS names clients dial the node at (e.g. 127.0.0.1,localhost,n1.example.com)")
	}
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
	}
	if name != nil && *name == "" {
		return reportError(stderr, fs, usageError("-name: required"))
	}
	if hosts != nil && strings.TrimSpace(*hosts) == "" {
		return reportError(stderr, fs, usageError("-host: required: the addresses clients dial the node at (e.g. -host 127.0.0.1,localhost)"))
	}
	var files []string
	var err error
	switch sub {
	case "init":
		var crt string
		crt, err = tlsconf.InitCA(*dir, *force)
		files = []string{crt}
	case "node":
		var crt, key string
		var hs []string
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		crt, key, err = tlsconf.IssueNode(*dir, *name, hs, *force)
		files = []string{crt, key}
	case "client":
		var crt, key string
		crt, key, err = tlsconf.IssueClient(*dir, *name, *force)
		files = []string{crt, key}
	}
	if err != nil {
		fmt.Fprintf(stderr, "scope cert %s: %s\n", sub, strings.TrimPrefix(err.Error(), tlsconf.ErrCert.Error()+": "))
		return exitError
	}
	for _, f := range files {
		fmt.Fprintf(stdout, "wrote %s\n", f)
	}
	return exitOK
}
