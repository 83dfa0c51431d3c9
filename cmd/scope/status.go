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

// This file holds the commands about the cluster and its contents as a
// whole: stats, shards, members, and the live tail.

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

func runShards(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("shards", "", stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
		if err != nil {
			return err
		}
		m := resp.Msg
		if cf.json {
			return printJSON(stdout, m)
		}
		fmt.Fprintf(stdout, "shards: %d, replication factor: %d\n\n", m.GetShardCount(), m.GetReplicationFactor())
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SHARD\tLEADER\tTERM\tEVENTS\tREPLICAS (node:suffrage:applied:lag)")
		for _, s := range m.GetShards() {
			reps := make([]string, 0, len(s.GetReplicas()))
			for _, r := range s.GetReplicas() {
				reps = append(reps, fmt.Sprintf("%s:%s:%d:%d", r.GetNode(),
					strings.ToLower(strings.TrimPrefix(r.GetSuffrage().String(), "SUFFRAGE_")), r.GetAppliedIndex(), r.GetLag()))
			}
			leader := s.GetLeader()
			if leader == "" {
				leader = "(none)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\n", s.GetShard(), leader, s.GetTerm(), s.GetEvents(), strings.Join(reps, " "))
		}
		return tw.Flush()
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runMembers(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("members", "", stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.cluster.Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(stdout, resp.Msg)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATUS\tHTTP\tRAFT\tGOSSIP\tVERSION\tSHARDS LED")
		for _, mb := range resp.Msg.GetMembers() {
			gossip := mb.GetGossipAddr()
			if gossip == "" {
				gossip = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", mb.GetName(),
				strings.TrimPrefix(mb.GetStatus().String(), "MEMBER_STATUS_"), mb.GetHttpAddr(), mb.GetRaftAddr(),
				gossip, mb.GetVersion(), len(mb.GetShardsLed()))
		}
		return tw.Flush()
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
	q.register(fs)
	fs.UintVar(&backfill, "backfill", 0, "first print this many of the newest stored matches (max 10000)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if q.timeout == 30*time.Second && !flagSet(fs, "timeout") {
		q.timeout = 0 // a tail runs until interrupted unless told otherwise
	}
	err := func() error {
		// Tail shares the Events filters; time range, order and paging do
		// not apply to a live stream.
		for _, name := range []string{"from", "to", "desc", "cursor", "all", "limit", "partial"} {
			if flagSet(fs, name) {
				return usageError("-%s: does not apply to tail", name)
			}
		}
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
			if l := m.GetLagged(); l != nil {
				fmt.Fprintf(stderr, "scope tail: %d events dropped: this client fell behind\n", l.GetDropped())
				continue
			}
			e := m.GetEvent()
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
