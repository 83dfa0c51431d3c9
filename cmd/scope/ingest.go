package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// stdin is where `scope ingest` reads when given no file (a variable for
// tests).
var stdin io.Reader = os.Stdin

// maxLineBytes bounds one JSON line: a payload is at most a few KiB after
// truncation, so a line this long is a mistake, not an event.
const maxLineBytes = 16 << 20

// parseDurability reads -durability.
func parseDurability(s string) (scopev1.Durability, error) {
	switch strings.ToLower(s) {
	case "committed":
		return scopev1.Durability_DURABILITY_COMMITTED, nil
	case "accepted":
		return scopev1.Durability_DURABILITY_ACCEPTED, nil
	}
	return 0, usageError("-durability %q: want committed or accepted", s)
}

// ingestFlags configure `scope ingest`.
type ingestFlags struct {
	clientFlags
	batch      uint
	durability string
	progress   bool
}

func runIngest(args []string, stdout, stderr io.Writer) int {
	var f ingestFlags
	fs := newFlagSet("ingest", "[file.jsonl]  (stdin when no file)", stderr)
	f.register(fs)
	fs.UintVar(&f.batch, "batch", 500, "events per request (1..10000)")
	fs.StringVar(&f.durability, "durability", "committed", "committed (durable, queryable) or accepted (buffered)")
	fs.BoolVar(&f.progress, "progress", true, "show a progress bar when stderr is a terminal")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if err := f.run(fs.Args(), stdout, stderr); err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// ingestSummary is what was sent and what the server said.
type ingestSummary struct {
	lines, events, requests int
	accepted, refused       uint64
	retries                 int
	duplicates              uint64 // already stored (same id, same event): not stored again
}

func (f *ingestFlags) run(args []string, stdout, stderr io.Writer) error {
	d, err := parseDurability(f.durability)
	if err != nil {
		return err
	}
	if f.batch == 0 || f.batch > 10000 {
		return usageError("-batch %d: must be in 1..10000", f.batch)
	}
	in, size, name := stdin, int64(-1), "stdin"
	switch len(args) {
	case 0:
	case 1:
		if args[0] != "-" {
			file, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer file.Close()
			if st, err := file.Stat(); err == nil && st.Mode().IsRegular() {
				size = st.Size()
			}
			in, name = file, args[0]
		}
	default:
		return usageError("want at most one file, got %d arguments", len(args))
	}
	c, err := f.dial()
	if err != nil {
		return err
	}
	// -timeout bounds each request, not the whole file.
	reqTimeout := f.timeout
	f.timeout = 0
	ctx, stop := f.clientFlags.context()
	defer stop()

	var bar *progressbar.ProgressBar
	if f.progress && !f.json && isTerminal(stderr) {
		bar = progressbar.NewOptions64(size, progressbar.OptionSetWriter(stderr), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("ingest "+name), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}
	start := time.Now()
	var sum ingestSummary
	send := func(events []*scopev1.Event) error {
		sum.requests++
		resp, retries, err := ingestRetrying(ctx, c.ingest, &scopev1.IngestRequest{Events: events, Durability: d}, reqTimeout)
		sum.retries += retries
		if err != nil {
			if ir := ingestDetail(err); ir != nil {
				sum.accepted += uint64(ir.GetAccepted())
				sum.refused += uint64(ir.GetRefused())
				sum.duplicates += uint64(ir.GetDuplicates())
			}
			return err
		}
		sum.accepted += uint64(resp.Msg.GetAccepted())
		sum.refused += uint64(resp.Msg.GetRefused())
		sum.duplicates += uint64(resp.Msg.GetDuplicates())
		return nil
	}
	err = readEvents(in, int(f.batch), func(events []*scopev1.Event, lines int, bytes int64) error {
		sum.lines += lines
		sum.events += len(events)
		if err := send(events); err != nil {
			return err
		}
		if bar != nil {
			_ = bar.Add64(bytes)
		}
		return nil
	})
	if bar != nil {
		_ = bar.Finish()
	}
	elapsed := time.Since(start)
	if f.json {
		if perr := printJSON(stdout, &scopev1.IngestResponse{Accepted: uint32(min(sum.accepted, 1<<32-1)),
			Refused: uint32(min(sum.refused, 1<<32-1)), Duplicates: uint32(min(sum.duplicates, 1<<32-1)),
			Durability: d}); perr != nil && err == nil {
			err = perr
		}
	} else {
		retried := ""
		if sum.retries > 0 {
			retried = fmt.Sprintf(", %d requests retried", sum.retries)
		}
		fmt.Fprintf(stdout, "%d events in %d requests from %s in %s: accepted %d, refused %d, duplicates %d%s (%s)\n",
			sum.events, sum.requests, name, elapsed.Round(time.Millisecond), sum.accepted, sum.refused,
			sum.duplicates, retried, strings.TrimPrefix(d.String(), "DURABILITY_"))
	}
	return err
}

// ingester is the one IngestService method `scope ingest` calls.
type ingester interface {
	Ingest(context.Context, *connect.Request[scopev1.IngestRequest]) (*connect.Response[scopev1.IngestResponse], error)
}

// ingestRetrying sends req, each attempt bounded by timeout (0: none),
// resending what ingestRetryable allows up to ingestAttempts times in all
// (resendRetryable); it returns the last attempt's answer and how many
// retries it took.
func ingestRetrying(ctx context.Context, c ingester, req *scopev1.IngestRequest, timeout time.Duration) (*connect.Response[scopev1.IngestResponse], int, error) {
	var resp *connect.Response[scopev1.IngestResponse]
	retries, err := resendRetryable(ctx, ingestAttempts, func() error {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, timeout)
		}
		defer cancel()
		var err error
		resp, err = c.Ingest(rctx, connect.NewRequest(req))
		return err
	})
	return resp, retries, err
}

// ingestDetail returns the IngestResponse attached to an Ingest error.
func ingestDetail(err error) *scopev1.IngestResponse {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if m, derr := d.Value(); derr == nil {
			if ir, ok := m.(*scopev1.IngestResponse); ok {
				return ir
			}
		}
	}
	return nil
}

// lineError is a bad input line: its number (1-based) and what is wrong,
// naming the field.
type lineError struct {
	line int
	err  error
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }
func (e *lineError) Unwrap() error { return e.err }

// readEvents reads JSON lines (one proto3 JSON Event per line; blank lines
// and lines starting with '#' are skipped), validates each event as the
// server would, and calls flush with every batch of up to batch events,
// the number of lines and bytes they came from. It stops at the first bad
// line (events before it have been flushed) or flush error.
func readEvents(r io.Reader, batch int, flush func(events []*scopev1.Event, lines int, bytes int64) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	limits := correlate.DefaultLimits()
	events := make([]*scopev1.Event, 0, batch)
	lineNo, lines, bytes := 0, 0, int64(0)
	for sc.Scan() {
		lineNo++
		lines++
		line := sc.Bytes()
		bytes += int64(len(line)) + 1
		trimmed := strings.TrimSpace(string(line))
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		ev := new(scopev1.Event)
		if err := protojson.Unmarshal(line, ev); err != nil {
			return &lineError{lineNo, fmt.Errorf("not a scope.v1.Event in proto3 JSON: %w", err)}
		}
		ce, err := rpc.EventFromProto(ev)
		if err == nil {
			err = correlate.Validate(&ce, limits)
		}
		if err != nil {
			return &lineError{lineNo, err}
		}
		events = append(events, ev)
		if len(events) == batch {
			if err := flush(events, lines, bytes); err != nil {
				return err
			}
			events, lines, bytes = make([]*scopev1.Event, 0, batch), 0, 0
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &lineError{lineNo + 1, fmt.Errorf("longer than %d bytes", maxLineBytes)}
		}
		return err
	}
	if len(events) > 0 {
		return flush(events, lines, bytes)
	}
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
