package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// This file holds the commands that look at one event, tree, process or
// pair of processes: get, tree, stack, state, flow, trace.

// oneArg returns the single positional argument named what.
func oneArg(fs interface{ Args() []string }, what string) (string, error) {
	switch args := fs.Args(); len(args) {
	case 1:
		return args[0], nil
	case 0:
		return "", usageError("missing %s", what)
	default:
		return "", usageError("want one %s, got %d arguments: %q", what, len(args), args)
	}
}

// parseProcess reads origin/pid (split at the first '/').
func parseProcess(flagName, s string) (*scopev1.Process, error) {
	origin, pid, ok := strings.Cut(s, "/")
	if !ok || origin == "" || pid == "" {
		return nil, usageError("-%s %q: want origin/pid, e.g. app1@host/<0.123.0>", flagName, s)
	}
	return &scopev1.Process{Origin: origin, Pid: pid}, nil
}

func runGet(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var origin, pid string
	fs := newFlagSet("get", "<event-id>", stderr)
	cf.register(fs)
	fs.StringVar(&origin, "origin", "", "the event's origin, to ask its shard only (with -pid)")
	fs.StringVar(&pid, "pid", "", "the event's pid, to ask its shard only (with -origin)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		id, err := oneArg(fs, "event id")
		if err != nil {
			return err
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.GetEventResponse, error) {
			return msg(c.query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: id, Origin: origin, Pid: pid})))
		}, func(m *scopev1.GetEventResponse) error {
			return printEventDetail(stdout, m.GetEvent())
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runTree(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var origin, pid string
	var maxFrames uint
	fs := newFlagSet("tree", "<event-id>", stderr)
	cf.register(fs)
	fs.UintVar(&maxFrames, "max-frames", 1000, "frames at most (server maximum 100000)")
	fs.StringVar(&origin, "origin", "", "the event's origin, to ask its shard only (with -pid)")
	fs.StringVar(&pid, "pid", "", "the event's pid, to ask its shard only (with -origin)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		id, err := oneArg(fs, "event id (the root CALL or any event of the tree)")
		if err != nil {
			return err
		}
		if maxFrames == 0 || maxFrames > 100000 {
			return usageError("-max-frames %d: must be in 1..100000", maxFrames)
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.CallTreeResponse, error) {
			return msg(c.query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{
				EventId: id, MaxFrames: uint32(maxFrames), Origin: origin, Pid: pid})))
		}, func(m *scopev1.CallTreeResponse) error {
			printFrame(stdout, m.GetRoot(), 0)
			if m.GetTruncated() {
				fmt.Fprintf(stderr, "tree truncated at %d frames (-max-frames)\n", maxFrames)
			}
			return nil
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// frameLine is one call frame on one line: m:f/a, duration, outcome,
// process and the CALL's id.
func frameLine(f *scopev1.CallFrame) string {
	call := f.GetCall()
	outcome := outcomeName(f.GetOutcome())
	if f.GetOpen() {
		outcome = "OPEN"
	}
	if f.GetOutcome() == scopev1.Outcome_OUTCOME_ABANDONED {
		outcome += "(" + strings.TrimPrefix(f.GetAbandonReason().String(), "ABANDON_REASON_") + ")"
	}
	line := fmt.Sprintf("%s  %s  %s  %s  %s", mfa(call), fmtDuration(f.GetDurationNs()), outcome,
		process(call.GetOrigin(), call.GetPid()), call.GetEventId())
	if r := f.GetEnd().GetReason(); r != "" {
		line += "  reason=" + r
	}
	return line
}

func printFrame(w io.Writer, f *scopev1.CallFrame, depth int) {
	if f == nil {
		return
	}
	fmt.Fprintf(w, "%s%s\n", strings.Repeat("  ", depth), frameLine(f))
	for _, c := range f.GetChildren() {
		printFrame(w, c, depth+1)
	}
}

// processAtFlags are the flags of stack and state: a process and a time.
type processAtFlags struct {
	clientFlags
	origin, pid, at string
}

func (p *processAtFlags) parse(name string, args []string, stderr io.Writer) (fs *flag.FlagSet, at int64, code int, ok bool) {
	f := newFlagSet(name, "", stderr)
	p.register(f)
	f.StringVar(&p.origin, "origin", "", "the process's origin (required)")
	f.StringVar(&p.pid, "pid", "", "the process's pid (required)")
	f.StringVar(&p.at, "at", "", "the time (RFC 3339 or ns since the epoch; required)")
	if code, ok := parseFlags(f, args); !ok {
		return f, 0, code, false
	}
	var err error
	switch {
	case p.origin == "":
		err = usageError("-origin: required")
	case p.pid == "":
		err = usageError("-pid: required")
	case p.at == "":
		err = usageError("-at: required")
	default:
		at, err = parseTime("at", p.at)
	}
	if err != nil {
		return f, 0, reportError(stderr, f, err), false
	}
	return f, at, exitOK, true
}

func runStack(args []string, stdout, stderr io.Writer) int {
	var p processAtFlags
	fs, at, code, ok := p.parse("stack", args, stderr)
	if !ok {
		return code
	}
	err := unaryCall(&p.clientFlags, stdout, func(ctx context.Context, c *api) (*scopev1.CallStackAtResponse, error) {
		return msg(c.query.CallStackAt(ctx, connect.NewRequest(&scopev1.CallStackAtRequest{
			Origin: p.origin, Pid: p.pid, AtNs: at})))
	}, func(m *scopev1.CallStackAtResponse) error {
		if len(m.GetFrames()) == 0 {
			fmt.Fprintf(stdout, "no open frames on %s at %s\n", process(p.origin, p.pid), fmtTime(at))
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEPTH\tSINCE\tM:F/A\tCALL")
		for i, f := range m.GetFrames() {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", i, fmtTime(f.GetCall().GetTimestampNs()), mfa(f.GetCall()), f.GetCall().GetEventId())
		}
		return tw.Flush()
	})
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runState(args []string, stdout, stderr io.Writer) int {
	var p processAtFlags
	fs, at, code, ok := p.parse("state", args, stderr)
	if !ok {
		return code
	}
	err := unaryCall(&p.clientFlags, stdout, func(ctx context.Context, c *api) (*scopev1.StateAtResponse, error) {
		return msg(c.query.StateAt(ctx, connect.NewRequest(&scopev1.StateAtRequest{
			Origin: p.origin, Pid: p.pid, AtNs: at})))
	}, func(m *scopev1.StateAtResponse) error {
		e := m.GetEvent()
		if e == nil {
			fmt.Fprintf(stdout, "no state change on %s at or before %s\n", process(p.origin, p.pid), fmtTime(at))
			return nil
		}
		fmt.Fprintf(stdout, "state of %s at %s (set %s by %s):\n%s\n", process(p.origin, p.pid), fmtTime(at),
			fmtTime(e.GetTimestampNs()), e.GetEventId(), e.GetPayload())
		return nil
	})
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runFlow(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var a, b, from, to string
	var limit uint
	var partial bool
	fs := newFlagSet("flow", "", stderr)
	cf.register(fs)
	fs.StringVar(&a, "a", "", "one process, origin/pid (required)")
	fs.StringVar(&b, "b", "", "the other process, origin/pid (required)")
	fs.StringVar(&from, "from", "", "from this send time, inclusive (RFC 3339 or ns)")
	fs.StringVar(&to, "to", "", "up to this send time, exclusive (RFC 3339 or ns)")
	fs.UintVar(&limit, "limit", 100, "messages at most (server maximum 10000)")
	fs.BoolVar(&partial, "partial", false, "answer even if one of the two shards cannot")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		pa, err := parseProcess("a", a)
		if err != nil {
			return err
		}
		pb, err := parseProcess("b", b)
		if err != nil {
			return err
		}
		fromNs, err := parseTime("from", from)
		if err != nil {
			return err
		}
		toNs, err := parseTime("to", to)
		if err != nil {
			return err
		}
		if limit == 0 || limit > 10000 {
			return usageError("-limit %d: must be in 1..10000", limit)
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.MessageFlowResponse, error) {
			return msg(c.query.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{
				A: pa, B: pb, FromNs: fromNs, ToNs: toNs, Limit: uint32(limit), AllowPartial: partial})))
		}, func(m *scopev1.MessageFlowResponse) error {
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SENT\tFROM\tTO\tLATENCY\tSEND\tRECEIVE\tPAYLOAD")
			for _, m := range m.GetMessages() {
				s, r := m.GetSend(), m.GetReceive()
				at, fromP, toP, sendID, recvID, payload := "-", "?", "?", "-", "-", ""
				if s != nil {
					at, fromP, toP, sendID, payload = fmtTime(s.GetTimestampNs()), process(s.GetOrigin(), s.GetPid()),
						process(s.GetPeerOrigin(), s.GetPeerPid()), s.GetEventId(), s.GetPayload()
				}
				if r != nil {
					toP, recvID = process(r.GetOrigin(), r.GetPid()), r.GetEventId()
					if s == nil {
						at, payload = fmtTime(r.GetTimestampNs()), r.GetPayload()
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", at, fromP, toP, fmtDuration(m.GetLatencyNs()),
					sendID, recvID, clip(payload, 40))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, miss := range m.GetMissing() {
				fmt.Fprintf(stderr, "shard %d missing: %s: %s\n", miss.GetShard(), miss.GetCode(), miss.GetReason())
			}
			if m.GetTruncated() {
				fmt.Fprintf(stderr, "flow truncated at %d messages (-limit)\n", limit)
			}
			return nil
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// clip shortens s to n runes on one line for a table cell.
func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", `\n`)
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func runTrace(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var direction, origin, pid string
	var maxDepth, maxEvents uint
	var partial, processOrder bool
	fs := newFlagSet("trace", "<event-id>", stderr)
	cf.register(fs)
	fs.StringVar(&direction, "direction", "both", "backward (causes), forward (effects) or both")
	fs.UintVar(&maxDepth, "max-depth", 32, "links followed at most (server maximum 1024)")
	fs.UintVar(&maxEvents, "max-events", 1000, "events at most (server maximum 100000)")
	fs.BoolVar(&partial, "partial", false, "answer without shards that cannot answer")
	fs.BoolVar(&processOrder, "process-order", false,
		"also follow each process's own event order (what a process did after a receive), not only links")
	fs.StringVar(&origin, "origin", "", "the event's origin, to find it on its shard only (with -pid)")
	fs.StringVar(&pid, "pid", "", "the event's pid (with -origin)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		id, err := oneArg(fs, "event id")
		if err != nil {
			return err
		}
		dir, ok := scopev1.TraceDirection_value["TRACE_DIRECTION_"+strings.ToUpper(direction)]
		if !ok || dir == 0 {
			return usageError("-direction %q: want backward, forward or both", direction)
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.TraceResponse, error) {
			return msg(c.query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{
				EventId: id, Direction: scopev1.TraceDirection(dir), MaxDepth: uint32(maxDepth),
				MaxEvents: uint32(maxEvents), AllowPartial: partial, Origin: origin, Pid: pid,
				ProcessOrder: processOrder})))
		}, func(m *scopev1.TraceResponse) error {
			t := newEventTable(stdout)
			for _, e := range m.GetNodes() {
				t.add(e)
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "\nEDGES")
			for _, e := range m.GetEdges() {
				fmt.Fprintf(stdout, "%s --%s--> %s\n", e.GetFromEventId(), linkName(e.GetType()), e.GetToEventId())
			}
			for _, miss := range m.GetMissing() {
				fmt.Fprintf(stderr, "shard %d missing: %s: %s\n", miss.GetShard(), miss.GetCode(), miss.GetReason())
			}
			if m.GetTruncated() {
				fmt.Fprintln(stderr, "trace truncated (-max-depth / -max-events)")
			}
			return nil
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}
