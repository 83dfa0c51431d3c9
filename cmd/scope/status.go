package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// This file holds the commands about the stored contents as a whole:
// stats and the live tail. Cluster commands are in clustercmd.go.

func runStats(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var topN uint
	var partial bool
	fs := newFlagSet("stats", "", stderr)
	cf.register(fs)
	fs.UintVar(&topN, "top", 10, "functions listed by call count (server maximum 1000)")
	fs.BoolVar(&partial, "partial", false, "answer without shards that cannot answer")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		if topN > 1000 {
			return usageError("-top %d: must be in 0..1000", topN)
		}
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.query.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{TopN: uint32(topN), AllowPartial: partial}))
		if err != nil {
			return err
		}
		m := resp.Msg
		if cf.json {
			return printJSON(stdout, m)
		}
		fmt.Fprintf(stdout, "events: %d\n", m.GetEvents())
		kinds := make([]string, 0, len(m.GetKinds()))
		for _, k := range m.GetKinds() {
			kinds = append(kinds, fmt.Sprintf("%s=%d", kindName(k.GetKind()), k.GetEvents()))
		}
		fmt.Fprintf(stdout, "kinds:  %s\n\n", strings.Join(kinds, " "))
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tVERSION\tREPLICAS\tLEADERS\tSTORE BYTES\tINGESTED\tREFUSED\tUP SINCE")
		for _, n := range m.GetNodes() {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", n.GetName(), n.GetVersion(), n.GetReplicas(),
				n.GetLeaders(), n.GetStoreBytes(), n.GetIngested(), n.GetRefused(), fmtTime(n.GetStartedNs()))
		}
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "FUNCTION\tCALLS\tTOTAL DURATION\tEXCEPTIONS")
		for _, f := range m.GetTopFunctions() {
			fmt.Fprintf(tw, "%s:%s/%d\t%d\t%s\t%d\n", f.GetModule(), f.GetFunction(), f.GetArity(), f.GetCalls(),
				fmtDuration(f.GetTotalDurationNs()), f.GetExceptions())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, miss := range m.GetMissing() {
			fmt.Fprintf(stderr, "shard %d missing: %s: %s\n", miss.GetShard(), miss.GetCode(), miss.GetReason())
		}
		return nil
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runTail(args []string, stdout, stderr io.Writer) int {
	var q queryFlags
	var backfill uint
	fs := newFlagSet("tail", "", stderr)
	q.registerFilters(fs)
	q.limit = 100 // the request's page size, unused by a stream but checked
	fs.UintVar(&backfill, "backfill", 0, "first print this many of the newest stored matches (max 10000)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if q.timeout == 30*time.Second && !flagSet(fs, "timeout") {
		q.timeout = 0 // a tail runs until interrupted unless told otherwise
	}
	err := func() error {
		req, err := q.request()
		if err != nil {
			return err
		}
		if backfill > 10000 {
			return usageError("-backfill %d: must be in 0..10000", backfill)
		}
		c, err := q.dial()
		if err != nil {
			return err
		}
		ctx, cancel := q.context()
		defer cancel()
		stream, err := c.query.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{
			Origin: req.Origin, Pid: req.Pid, Kinds: req.Kinds, Module: req.Module, Function: req.Function,
			Arity: req.Arity, CorrelationId: req.CorrelationId, RootId: req.RootId, Backfill: uint32(backfill)}))
		if err != nil {
			return err
		}
		defer stream.Close()
		if !q.json {
			fmt.Fprintf(stdout, "%-27s %5s %-12s %-30s %-40s %-10s %-12s %s\n",
				"TIME", "SHARD", "KIND", "PROCESS", "M:F/A", "DURATION", "OUTCOME", "IDS")
		}
		for stream.Receive() {
			m := stream.Msg()
			if q.json {
				if err := printJSON(stdout, m); err != nil {
					return err
				}
				continue
			}
			if st := m.GetStarted(); st != nil {
				if len(st.GetPending()) > 0 {
					fmt.Fprintf(stderr, "scope tail: shards %v have no reachable replica yet; retrying\n", st.GetPending())
				}
				continue
			}
			if l := m.GetLagged(); l != nil {
				switch l.GetReason() {
				case "source_lost":
					fmt.Fprintf(stderr, "scope tail: shard %d: events may be missing: the replica followed was lost\n", l.GetShard())
				default:
					fmt.Fprintf(stderr, "scope tail: shard %d: %d events dropped: this client fell behind\n", l.GetShard(), l.GetDropped())
				}
				continue
			}
			e := m.GetEvent()
			if e == nil {
				continue // an item kind this client does not know
			}
			fmt.Fprintf(stdout, "%-27s %5d %-12s %-30s %-40s %-10s %-12s %s\n", fmtTime(e.GetTimestampNs()), e.GetShard(),
				kindName(e.GetKind()), process(e.GetOrigin(), e.GetPid()), mfa(e), fmtDuration(e.GetDurationNs()),
				eventOutcome(e), eventIDs(e))
		}
		err = stream.Err()
		if err != nil && ctx.Err() != nil {
			return nil // interrupted or -timeout reached: the normal end of a tail
		}
		return err
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}
