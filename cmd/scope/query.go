package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// kindsFlag is a repeatable -kind flag; each value may also be a
// comma-separated list. Names are case-insensitive, with or without KIND_.
type kindsFlag []scopev1.Kind

func (k *kindsFlag) String() string {
	names := make([]string, len(*k))
	for i, v := range *k {
		names[i] = kindName(v)
	}
	return strings.Join(names, ",")
}

func (k *kindsFlag) Set(s string) error {
	for _, name := range strings.Split(s, ",") {
		kind, err := parseKind(name)
		if err != nil {
			return err
		}
		*k = append(*k, kind)
	}
	return nil
}

func parseKind(s string) (scopev1.Kind, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "KIND_") {
		name = "KIND_" + name
	}
	v, ok := scopev1.Kind_value[name]
	if !ok || v == 0 {
		return 0, fmt.Errorf("kind %q: want one of CALL, RETURN, EXCEPTION, SEND, RECEIVE, SPAWN, EXIT, STATE_CHANGE", s)
	}
	return scopev1.Kind(v), nil
}

// arityFlag is an optional uint32: unset means "any arity".
type arityFlag struct {
	v   uint32
	set bool
}

func (a *arityFlag) String() string {
	if !a.set {
		return ""
	}
	return fmt.Sprint(a.v)
}

func (a *arityFlag) Set(s string) error {
	var v uint32
	if _, err := fmt.Sscan(s, &v); err != nil || fmt.Sprint(v) != s || v > 255 {
		return fmt.Errorf("arity %q: want an integer in 0..255", s)
	}
	a.v, a.set = v, true
	return nil
}

// queryFlags are the filters of `scope query` (and the shape of its request).
type queryFlags struct {
	clientFlags
	origin, pid, module, function string
	kinds                         kindsFlag
	arity                         arityFlag
	from, to                      string
	correlation, root             string
	desc, all, partial            bool
	limit                         uint
	cursor                        string
}

func (q *queryFlags) register(fs *flag.FlagSet) {
	q.registerFilters(fs)
	fs.StringVar(&q.from, "from", "", "from this time, inclusive (RFC 3339 or ns since the epoch)")
	fs.StringVar(&q.to, "to", "", "up to this time, exclusive (RFC 3339 or ns since the epoch)")
	fs.BoolVar(&q.desc, "desc", false, "newest first")
	fs.UintVar(&q.limit, "limit", 100, "events per page (server maximum 10000)")
	fs.StringVar(&q.cursor, "cursor", "", "resume from a previous page's cursor")
	fs.BoolVar(&q.all, "all", false, "follow cursors until the last page")
	fs.BoolVar(&q.partial, "partial", false, "answer without shards that cannot answer (listed on stderr)")
}

// registerFilters registers the client flags and the event filters, which
// `scope tail` shares with `scope query` (time range, order and paging do
// not apply to a live stream).
func (q *queryFlags) registerFilters(fs *flag.FlagSet) {
	q.clientFlags.register(fs)
	fs.StringVar(&q.origin, "origin", "", "only events of this origin (application node)")
	fs.StringVar(&q.pid, "pid", "", "only events of this pid (needs -origin)")
	fs.Var(&q.kinds, "kind", "only these kinds (repeatable or comma-separated: CALL,RETURN,...)")
	fs.StringVar(&q.module, "module", "", "only events of this module")
	fs.StringVar(&q.function, "function", "", "only events of this function (needs -module)")
	fs.Var(&q.arity, "arity", "only events of this arity (needs -function)")
	fs.StringVar(&q.correlation, "correlation", "", "only events with this correlation id")
	fs.StringVar(&q.root, "root", "", "only events under this root call id")
}

// request builds the EventsRequest, checking the flags' combinations.
func (q *queryFlags) request() (*scopev1.EventsRequest, error) {
	from, err := parseTime("from", q.from)
	if err != nil {
		return nil, err
	}
	to, err := parseTime("to", q.to)
	if err != nil {
		return nil, err
	}
	switch {
	case q.pid != "" && q.origin == "":
		return nil, usageError("-pid %q: needs -origin", q.pid)
	case q.function != "" && q.module == "":
		return nil, usageError("-function %q: needs -module", q.function)
	case q.arity.set && q.function == "":
		return nil, usageError("-arity %d: needs -function", q.arity.v)
	case to != 0 && from != 0 && to <= from:
		return nil, usageError("-to %q: must be after -from %q", q.to, q.from)
	case q.limit == 0 || q.limit > 10000:
		return nil, usageError("-limit %d: must be in 1..10000", q.limit)
	}
	req := &scopev1.EventsRequest{
		Origin: q.origin, Pid: q.pid, Kinds: q.kinds, Module: q.module, Function: q.function,
		FromNs: from, ToNs: to, CorrelationId: q.correlation, RootId: q.root,
		Descending: q.desc, Limit: uint32(q.limit), Cursor: q.cursor, AllowPartial: q.partial,
	}
	if q.arity.set {
		a := q.arity.v
		req.Arity = &a
	}
	return req, nil
}

func runQuery(args []string, stdout, stderr io.Writer) int {
	var q queryFlags
	fs := newFlagSet("query", "", stderr)
	q.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if err := q.run(stdout, stderr); err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func (q *queryFlags) run(stdout, stderr io.Writer) error {
	req, err := q.request()
	if err != nil {
		return err
	}
	c, err := q.dial()
	if err != nil {
		return err
	}
	ctx, cancel := q.context()
	defer cancel()
	var table *eventTable
	if !q.json {
		table = newEventTable(stdout)
	}
	for {
		resp, err := c.query.Events(ctx, connect.NewRequest(req))
		if err != nil {
			if table != nil {
				_ = table.flushRows() // the pages that came before, if any
			}
			return err
		}
		m := resp.Msg
		for _, miss := range m.GetMissing() {
			fmt.Fprintf(stderr, "scope query: shard %d missing: %s: %s\n", miss.GetShard(), miss.GetCode(), miss.GetReason())
		}
		if table == nil {
			if err := printJSON(stdout, m); err != nil {
				return err
			}
		} else {
			for _, e := range m.GetEvents() {
				table.add(e)
			}
		}
		if m.GetNextCursor() == "" {
			break
		}
		if !q.all {
			if table != nil {
				fmt.Fprintf(stderr, "more events: -cursor %s (or -all)\n", m.GetNextCursor())
			}
			break
		}
		req.Cursor = m.GetNextCursor()
	}
	if table != nil {
		return table.flush()
	}
	return nil
}
