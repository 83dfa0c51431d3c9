package store

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/elixirscope/scope/correlate"
)

// Query selects events of one shard. Zero-valued filters select everything;
// set filters are combined with AND. Results are ordered by (TimestampNs,
// ID), ascending or descending, so that a cross-shard layer can k-way merge
// pages of all shards and resume each from one global Position.
type Query struct {
	Process       *correlate.Process
	Kinds         []correlate.Kind // any of these kinds
	Module        string
	Function      string
	Arity         *uint32 // requires Module and Function
	FromNs, ToNs  int64   // inclusive; math.MinInt64/MaxInt64 for unbounded
	CorrelationID string
	RootID        correlate.EventID
	Descending    bool
	Limit         int       // 1..Options.MaxLimit
	After         *Position // exclusive resume point in the query's order
	// MaxBytes, when > 0, ends the page once its events' MemSize adds up
	// to MaxBytes (it still holds at least one event); More and Next then
	// resume after its last event. Query memory budgets set it.
	MaxBytes int
}

// Position is a point in (timestamp, id) order.
type Position struct {
	TimestampNs int64
	ID          correlate.EventID
}

// Page is one page of results.
//
// More is true when results may remain after Next: either the page is full
// or the call reached Options.MaxScan index keys before filling it (then
// the page may hold fewer than Limit events, even none). Resume with
// After = &Next. More may be true with nothing left to find.
type Page struct {
	Events  []correlate.Event
	More    bool
	Next    Position
	Scanned int // index keys examined, for metrics and tests
}

// Unbounded returns a Query over all time with the given limit.
func Unbounded(limit int) Query {
	return Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: limit}
}

func (s *Store) validate(q *Query) error {
	switch {
	case q.Limit < 1 || q.Limit > s.opts.MaxLimit:
		return fmt.Errorf("%w: Limit %d: must be within [1, %d]", ErrInvalidQuery, q.Limit, s.opts.MaxLimit)
	case q.MaxBytes < 0:
		return fmt.Errorf("%w: MaxBytes %d: must not be negative", ErrInvalidQuery, q.MaxBytes)
	case q.Arity != nil && (q.Module == "" || q.Function == ""):
		return fmt.Errorf("%w: Arity %d: requires Module and Function", ErrInvalidQuery, *q.Arity)
	case q.Process != nil && (q.Process.Origin == "" || q.Process.PID == ""):
		return fmt.Errorf("%w: Process %q: origin and pid are both required", ErrInvalidQuery, q.Process.String())
	}
	for i, k := range q.Kinds {
		if !k.Valid() {
			return fmt.Errorf("%w: Kinds[%d] %d: must be one of CALL..STATE_CHANGE", ErrInvalidQuery, i, k)
		}
	}
	return nil
}

// plan picks the index that answers most of q: the most selective filter
// that has an index, falling back to the time-ordered primary records.
// Everything else is applied as a residual filter on the decoded event.
func plan(q *Query) scanSpec {
	sp := scanSpec{sec: secEvent, from: q.FromNs, to: q.ToNs, desc: q.Descending, after: q.After}
	switch {
	case q.RootID != (correlate.EventID{}):
		sp.sec, sp.group = secRoot, append([]byte(nil), q.RootID[:]...)
	case q.CorrelationID != "":
		sp.sec, sp.group = secCorr, appendEsc(nil, q.CorrelationID)
	case q.Process != nil && len(q.Kinds) == 1 && q.Kinds[0] == correlate.KindStateChange:
		sp.sec, sp.group = secState2, processGroup(nil, *q.Process)
	case q.Process != nil:
		sp.sec, sp.group = secProcess, processGroup(nil, *q.Process)
	case q.Module != "" && q.Function != "":
		sp.sec, sp.group = secFunc, funcGroup(nil, q.Module, q.Function)
	case len(q.Kinds) == 1:
		sp.sec, sp.group = secKind, []byte{byte(q.Kinds[0])}
	}
	return sp
}

// matches is the residual filter: every filter of q, checked on the event.
func matches(q *Query, e *correlate.Event) bool {
	switch {
	case q.Process != nil && (e.Origin != q.Process.Origin || e.PID != q.Process.PID),
		len(q.Kinds) > 0 && !slices.Contains(q.Kinds, e.Kind),
		q.Module != "" && e.Module != q.Module,
		q.Function != "" && e.Function != q.Function,
		q.Arity != nil && e.Arity != *q.Arity,
		q.CorrelationID != "" && e.CorrelationID != q.CorrelationID,
		q.RootID != (correlate.EventID{}) && e.RootID != q.RootID,
		e.TimestampNs < q.FromNs || e.TimestampNs > q.ToNs:
		return false
	}
	return true
}

// Events answers q on one shard. It examines at most Options.MaxScan index
// keys per call (see Page).
func (s *Store) Events(shard uint32, q Query) (Page, error) {
	if err := s.validate(&q); err != nil {
		return Page{}, err
	}
	v, err := s.newView(shard)
	if err != nil {
		return Page{}, err
	}
	defer v.close()
	return v.events(&q)
}

func (v *view) events(q *Query) (Page, error) {
	var page Page
	bytes := 0
	sp := plan(q)
	r, err := v.scan(sp, func(b uint64, ts int64, id correlate.EventID, val []byte) (bool, error) {
		if sp.sec == secFunc && q.Arity != nil && (len(val) != 4 || binary.BigEndian.Uint32(val) != *q.Arity) {
			return false, nil // the arity is in the index value: no need to read the event
		}
		var e correlate.Event
		if sp.sec == secEvent {
			if err := decodeEvent(eventKey(nil, v.shard, b, ts, id), val, &e); err != nil {
				return false, err
			}
		} else if ok, err := v.event(b, ts, id, &e); err != nil {
			return false, err
		} else if !ok {
			return false, corruptKey(eventKey(nil, v.shard, b, ts, id), "index entry without its event")
		}
		if !matches(q, &e) {
			return false, nil
		}
		links, err := v.links(b, id)
		if err != nil {
			return false, err
		}
		e.Links = links
		page.Events = append(page.Events, e)
		bytes += e.MemSize()
		return len(page.Events) == q.Limit || q.MaxBytes > 0 && bytes >= q.MaxBytes, nil
	})
	if err != nil {
		return Page{}, err
	}
	page.More, page.Next, page.Scanned = r.more, r.last, v.scanned
	return page, nil
}

// Get returns the event with id stored on the shard, with its Links filled
// from the shard's edge records (ErrNotFound if absent).
func (s *Store) Get(shard uint32, id correlate.EventID) (correlate.Event, error) {
	v, err := s.newView(shard)
	if err != nil {
		return correlate.Event{}, err
	}
	defer v.close()
	return v.get(id)
}

func (v *view) get(id correlate.EventID) (correlate.Event, error) {
	var e correlate.Event
	b, ts, ok, err := v.locate(id)
	if err != nil {
		return e, err
	}
	if !ok {
		return e, fmt.Errorf("%w: event %s on shard %d", ErrNotFound, id, v.shard)
	}
	found, err := v.event(b, ts, id, &e)
	if err != nil {
		return e, err
	}
	if !found {
		return e, corruptKey(idKey(nil, v.shard, b, id), "id entry without its event")
	}
	e.Links, err = v.links(b, id)
	return e, err
}

// Edges returns the links stored on the shard whose source is from. The
// source may live on another shard (a remote SEND's DELIVERED_TO is stored
// with the RECEIVE it points at). A local source's edges are all in its
// own bucket (one prefix scan); a remote source's are looked up in every
// bucket (one seek each).
func (s *Store) Edges(shard uint32, from correlate.EventID) ([]correlate.Link, error) {
	v, err := s.newView(shard)
	if err != nil {
		return nil, err
	}
	defer v.close()
	b, _, ok, err := v.locate(from)
	if err != nil {
		return nil, err
	}
	if ok {
		return v.links(b, from)
	}
	d, err := readDir(v.snap, shard, 0, math.MaxUint64)
	if err != nil {
		return nil, err
	}
	var out []correlate.Link
	for _, b := range d.buckets {
		l, err := v.links(b, from)
		if err != nil {
			return nil, err
		}
		out = append(out, l...)
	}
	return out, nil
}

// MaxEdgesMany is the most ids one EdgesMany call looks up: a reply for
// more would be unbounded in size (a caller with more splits them).
const MaxEdgesMany = 10_000

// EdgesMany returns, for every ids[i], what Edges(shard, ids[i]) returns,
// read from one snapshot: out[i] holds the links of ids[i] (nil when it
// has none; a duplicate id gets its own copy). At most MaxEdgesMany ids.
//
// The lookups share one edges iterator. Edge keys order by (bucket,
// source), so the pairs to look up are visited in that order and the
// iterator only moves forward: a local source's one bucket, a remote
// source's every bucket (see Edges), each bucket's sources ascending.
func (s *Store) EdgesMany(shard uint32, ids []correlate.EventID) ([][]correlate.Link, error) {
	if len(ids) > MaxEdgesMany {
		return nil, fmt.Errorf("%w: EdgesMany of %d ids: must be at most %d", ErrInvalidQuery, len(ids), MaxEdgesMany)
	}
	out := make([][]correlate.Link, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	v, err := s.newView(shard)
	if err != nil {
		return nil, err
	}
	defer v.close()
	uniq := slices.Clone(ids)
	slices.SortFunc(uniq, correlate.EventID.Compare)
	uniq = slices.Compact(uniq)
	d, err := readDir(v.snap, shard, 0, math.MaxUint64)
	if err != nil {
		return nil, err
	}
	type lookup struct {
		b uint64
		u int // index in uniq
	}
	var todo []lookup
	for u, id := range uniq {
		b, _, ok, err := probe(v.snap, shard, id, s.shift, d.buckets)
		if err != nil {
			return nil, err
		}
		if ok {
			todo = append(todo, lookup{b: b, u: u})
			continue
		}
		for _, b := range d.buckets {
			todo = append(todo, lookup{b: b, u: u})
		}
	}
	// uniq is ascending, so (bucket, index) order is (bucket, source) order.
	slices.SortFunc(todo, func(x, y lookup) int {
		if c := cmp.Compare(x.b, y.b); c != 0 {
			return c
		}
		return cmp.Compare(x.u, y.u)
	})
	found := make([][]correlate.Link, len(uniq))
	for _, l := range todo {
		links, err := v.links(l.b, uniq[l.u])
		if err != nil {
			return nil, err
		}
		found[l.u] = append(found[l.u], links...)
	}
	given := make([]bool, len(uniq))
	for i, id := range ids {
		u, _ := slices.BinarySearchFunc(uniq, id, correlate.EventID.Compare)
		switch {
		case found[u] == nil:
		case given[u]:
			out[i] = slices.Clone(found[u])
		default:
			out[i], given[u] = found[u], true
		}
	}
	return out, nil
}
