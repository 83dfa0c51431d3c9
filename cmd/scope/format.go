package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// parseTime reads a point in time given as RFC 3339 (with or without
// fractional seconds) or as integer nanoseconds since the Unix epoch.
// The empty string is 0 (an open end of a range).
func parseTime(flagName, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if ns, err := strconv.ParseInt(s, 10, 64); err == nil {
		return ns, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, usageError("-%s %q: want RFC 3339 (2024-05-01T12:00:00Z) or nanoseconds since the epoch", flagName, s)
	}
	// UnixNano overflows outside 1678..2262; refuse rather than wrap.
	if t.Year() < 1678 || t.Year() > 2261 {
		return 0, usageError("-%s %q: year must be in 1678..2261", flagName, s)
	}
	return t.UnixNano(), nil
}

// fmtTime prints a timestamp in UTC with microseconds.
func fmtTime(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000000Z")
}

// fmtDuration prints a duration in ns; 0 prints as "-".
func fmtDuration(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Duration(ns).String()
}

func kindName(k scopev1.Kind) string { return strings.TrimPrefix(k.String(), "KIND_") }

func outcomeName(o scopev1.Outcome) string {
	if o == scopev1.Outcome_OUTCOME_UNSPECIFIED {
		return "-"
	}
	return strings.TrimPrefix(o.String(), "OUTCOME_")
}

func linkName(t scopev1.LinkType) string { return strings.TrimPrefix(t.String(), "LINK_TYPE_") }

// mfa prints module:function/arity, or "-" when the event has none.
func mfa(e *scopev1.Event) string {
	if e.GetModule() == "" && e.GetFunction() == "" {
		return "-"
	}
	return fmt.Sprintf("%s:%s/%d", e.GetModule(), e.GetFunction(), e.GetArity())
}

func process(origin, pid string) string { return origin + "/" + pid }

// eventOutcome is what the outcome column shows: the frame outcome, or
// "orphan" for an event that matched nothing.
func eventOutcome(e *scopev1.Event) string {
	if e.GetOrphan() {
		return "ORPHAN"
	}
	return outcomeName(e.GetOutcome())
}

// eventIDs prints the ids column: the event id, then correlation, parent
// and root ids when set.
func eventIDs(e *scopev1.Event) string {
	parts := []string{e.GetEventId()}
	if c := e.GetCorrelationId(); c != "" && c != e.GetEventId() {
		parts = append(parts, "corr="+c)
	}
	if p := e.GetParentId(); p != "" {
		parts = append(parts, "parent="+p)
	}
	if r := e.GetRootId(); r != "" && r != e.GetEventId() {
		parts = append(parts, "root="+r)
	}
	return strings.Join(parts, " ")
}

// eventTable prints events as a table. Its header is written with the
// first row, or by flush, so that a call that fails before any answer
// prints the error alone.
type eventTable struct {
	tw     *tabwriter.Writer
	header bool
}

func newEventTable(w io.Writer) *eventTable {
	return &eventTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (t *eventTable) writeHeader() {
	if !t.header {
		t.header = true
		fmt.Fprintln(t.tw, "TIME\tSHARD\tKIND\tPROCESS\tM:F/A\tDURATION\tOUTCOME\tIDS")
	}
}

func (t *eventTable) add(e *scopev1.Event) {
	t.writeHeader()
	fmt.Fprintf(t.tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(e.GetTimestampNs()), e.GetShard(),
		kindName(e.GetKind()), process(e.GetOrigin(), e.GetPid()), mfa(e), fmtDuration(e.GetDurationNs()),
		eventOutcome(e), eventIDs(e))
}

// flush writes the table (the header alone when there is no row: an
// empty answer).
func (t *eventTable) flush() error {
	t.writeHeader()
	return t.tw.Flush()
}

// flushRows writes the rows added so far, if any (after a failed page).
func (t *eventTable) flushRows() error {
	if !t.header {
		return nil
	}
	return t.tw.Flush()
}

// percentile returns the q-quantile (0..1) of sorted values by the
// nearest-rank method; 0 for no values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// printEventDetail prints one event as aligned "FIELD value" lines, the
// fields it has only (scope get).
func printEventDetail(w io.Writer, e *scopev1.Event) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(field, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s\t%s\n", field, value)
		}
	}
	orEmpty := func(s string) string {
		if s == "-" {
			return ""
		}
		return s
	}
	line("ID", e.GetEventId())
	line("KIND", kindName(e.GetKind()))
	line("PROCESS", process(e.GetOrigin(), e.GetPid()))
	line("TIME", fmt.Sprintf("%s (%d)", fmtTime(e.GetTimestampNs()), e.GetTimestampNs()))
	if e.GetSeq() != 0 {
		line("SEQ", fmt.Sprint(e.GetSeq()))
	}
	line("FUNCTION", orEmpty(mfa(e)))
	line("CALL ID", e.GetCallId())
	line("CORRELATION", e.GetCorrelationId())
	line("PARENT", e.GetParentId())
	line("ROOT", e.GetRootId())
	line("DURATION", orEmpty(fmtDuration(e.GetDurationNs())))
	line("OUTCOME", orEmpty(eventOutcome(e)))
	if e.GetPeerOrigin() != "" || e.GetPeerPid() != "" {
		line("PEER", process(e.GetPeerOrigin(), e.GetPeerPid()))
	}
	if e.GetMessageHash() != 0 {
		line("MESSAGE HASH", fmt.Sprintf("%#x", e.GetMessageHash()))
	}
	payload := e.GetPayload()
	if e.GetPayloadTruncated() {
		payload += fmt.Sprintf("  (truncated: %d bytes in all)", e.GetPayloadSize())
	}
	line("PAYLOAD", payload)
	line("REASON", e.GetReason())
	keys := make([]string, 0, len(e.GetAttributes()))
	for k := range e.GetAttributes() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		line("ATTRIBUTE", k+"="+e.GetAttributes()[k])
	}
	for _, l := range e.GetLinks() {
		line("LINK", linkName(l.GetType())+" "+l.GetTargetEventId())
	}
	line("SHARD", fmt.Sprint(e.GetShard()))
	return tw.Flush()
}
