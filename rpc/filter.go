package rpc

import (
	"math"
	"slices"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// filter is the event filter shared by Events and Tail, parsed and checked
// once. Times are the store's inclusive bounds.
type filter struct {
	proc             *correlate.Process // origin and pid both set
	origin           string             // origin alone (no index: a residual filter)
	kinds            []correlate.Kind
	module, function string
	arity            *uint32
	fromNs, toNs     int64
	correlationID    string
	rootID           correlate.EventID
}

// filterFields are the wire fields of an event filter.
type filterFields struct {
	origin, pid      string
	kinds            []scopev1.Kind
	module, function string
	arity            *uint32
	fromNs, toNs     int64 // from inclusive, to exclusive, 0 open
	correlationID    string
	rootID           string
}

func parseFilter(f filterFields) (filter, error) {
	out := filter{fromNs: math.MinInt64, toNs: math.MaxInt64, module: f.module, function: f.function,
		arity: f.arity, correlationID: f.correlationID}
	switch {
	case f.pid != "" && f.origin == "":
		return out, invalid("origin", `""`, "required when pid is set")
	case f.pid != "":
		out.proc = &correlate.Process{Origin: f.origin, PID: f.pid}
	default:
		out.origin = f.origin
	}
	if f.function != "" && f.module == "" {
		return out, invalid("module", `""`, "required when function is set")
	}
	if f.arity != nil && f.function == "" {
		return out, invalid("function", `""`, "required when arity is set")
	}
	for i, k := range f.kinds {
		kind, ok := KindFromProto(k)
		if !ok || !kind.Valid() {
			return out, invalid("kinds["+itoa(i)+"]", k, "must be one of KIND_CALL..KIND_STATE_CHANGE")
		}
		if !slices.Contains(out.kinds, kind) {
			out.kinds = append(out.kinds, kind)
		}
	}
	if f.fromNs != 0 {
		out.fromNs = f.fromNs
	}
	if f.toNs != 0 {
		if f.toNs == math.MinInt64 {
			return out, invalid("to_ns", f.toNs, "must be greater than from_ns")
		}
		out.toNs = f.toNs - 1 // exclusive on the wire, inclusive in the store
	}
	if out.fromNs > out.toNs {
		return out, invalid("to_ns", f.toNs, "must be greater than from_ns ("+itoa64(f.fromNs)+")")
	}
	if f.rootID != "" {
		id, err := correlate.ParseEventID(f.rootID)
		if err != nil {
			return out, invalid("root_id", quoted(f.rootID), "must be a 26-character ULID")
		}
		out.rootID = id
	}
	return out, nil
}

// query is the store query for the filter (Limit and After are the
// caller's).
func (f *filter) query(desc bool, limit int) store.Query {
	q := store.Query{Process: f.proc, Kinds: f.kinds, Module: f.module, Function: f.function,
		FromNs: f.fromNs, ToNs: f.toNs, CorrelationID: f.correlationID, RootID: f.rootID,
		Descending: desc, Limit: limit}
	if f.arity != nil {
		a := *f.arity
		q.Arity = &a
	}
	return q
}

// residual is what the store cannot filter: an origin without a pid.
func (f *filter) residual() func(*correlate.Event) bool {
	if f.origin == "" {
		return nil
	}
	origin := f.origin
	return func(e *correlate.Event) bool { return e.Origin == origin }
}

// shards lists the shards that can hold matching events: every shard the
// process has lived on, or every shard of the current layout.
func (f *filter) shards(p *planner) []uint32 {
	if f.proc != nil {
		return p.history(*f.proc)
	}
	return p.allShards()
}

// match reports whether e passes every filter (Tail's live events).
func (f *filter) match(e *correlate.Event) bool {
	switch {
	case f.proc != nil && (e.Origin != f.proc.Origin || e.PID != f.proc.PID),
		f.origin != "" && e.Origin != f.origin,
		len(f.kinds) > 0 && !slices.Contains(f.kinds, e.Kind),
		f.module != "" && e.Module != f.module,
		f.function != "" && e.Function != f.function,
		f.arity != nil && e.Arity != *f.arity,
		f.correlationID != "" && e.CorrelationID != f.correlationID,
		f.rootID != (correlate.EventID{}) && e.RootID != f.rootID,
		e.TimestampNs < f.fromNs || e.TimestampNs > f.toNs:
		return false
	}
	return true
}
