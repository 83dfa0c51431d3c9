package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/cluster"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// keyringOps are the subcommands of `scope keyring` that call the cluster.
var keyringOps = map[string]scopev1.KeyringOperation{
	"list":    scopev1.KeyringOperation_KEYRING_OPERATION_LIST,
	"install": scopev1.KeyringOperation_KEYRING_OPERATION_INSTALL,
	"use":     scopev1.KeyringOperation_KEYRING_OPERATION_USE,
	"remove":  scopev1.KeyringOperation_KEYRING_OPERATION_REMOVE,
}

const keyringUsage = "new | list | install KEY | use KEY | remove KEY   (KEY '-' reads it from stdin)"

// runKeyring is `scope keyring`: make a gossip key, or list and change the
// keyring of every member through ClusterService.Keyring (admin).
func runKeyring(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "new" {
		fs := newFlagSet("keyring new", "", stderr)
		if code, ok := parseFlags(fs, args[1:]); !ok {
			return code
		}
		if fs.NArg() > 0 {
			return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return reportError(stderr, fs, err)
		}
		fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key))
		return exitOK
	}
	var op scopev1.KeyringOperation
	if len(args) > 0 {
		op = keyringOps[args[0]]
	}
	if op == scopev1.KeyringOperation_KEYRING_OPERATION_UNSPECIFIED {
		fs := newFlagSet("keyring", keyringUsage, stderr)
		fmt.Fprintln(stderr, "scope keyring: want a subcommand: new, list, install, use or remove")
		fs.Usage()
		return exitUsage
	}
	var cf clientFlags
	fs := newFlagSet("keyring "+args[0], map[bool]string{true: "", false: "KEY"}[args[0] == "list"], stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	failed, err := func() (uint32, error) {
		var key string
		switch {
		case op == scopev1.KeyringOperation_KEYRING_OPERATION_LIST && fs.NArg() == 0:
		case op == scopev1.KeyringOperation_KEYRING_OPERATION_LIST:
			return 0, usageError("list takes no key")
		case fs.NArg() != 1:
			return 0, usageError("want one key (base64; '-' reads it from stdin)")
		case fs.Arg(0) == "-":
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			if err != nil && line == "" {
				return 0, fmt.Errorf("reading the key from stdin: %w", err)
			}
			key = strings.TrimSpace(line)
		default:
			key = fs.Arg(0)
		}
		if key != "" {
			k, err := cluster.ParseGossipKey(key)
			if err != nil {
				return 0, usageError("KEY: %v", err)
			}
			fmt.Fprintf(stderr, "key %s\n", cluster.KeyFingerprint(k))
		}
		c, err := cf.dial()
		if err != nil {
			return 0, err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.cluster.Keyring(ctx, connect.NewRequest(&scopev1.KeyringRequest{Operation: op, Key: key}))
		if err != nil {
			return 0, err
		}
		if cf.json {
			return resp.Msg.GetFailed(), printJSON(stdout, resp.Msg)
		}
		printKeyring(stdout, resp.Msg)
		return resp.Msg.GetFailed(), nil
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "scope keyring %s: failed on %d node(s)\n", args[0], failed)
		return exitError
	}
	return exitOK
}

// printKeyring prints each node's keys (primary first) and each key's
// spread over the nodes.
func printKeyring(w io.Writer, r *scopev1.KeyringResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPRIMARY\tKEYS\tERROR")
	for _, n := range r.GetNodes() {
		primary, keys := "-", "-"
		if ks := n.GetKeys(); len(ks) > 0 {
			primary, keys = ks[0], strings.Join(ks, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.GetNode(), primary, keys, n.GetError())
	}
	tw.Flush()
	total := len(r.GetNodes())
	for _, k := range r.GetKeys() {
		fmt.Fprintf(w, "key %s: installed on %d/%d nodes, primary on %d\n", k.GetFingerprint(), k.GetInstalled(), total, k.GetPrimary())
	}
}
