package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The query benchmark's data set (`scope bench queries -load N`) is the
// ingest generator's traffic (gen.go) from P parts, plus landmarks that
// give the query mix a known answer:
//
//   - one call tree of exactly treeFrames frames on its own process: a root
//     with 9 callees, each with 10, each with 10 leaves (1+9+90+900), every
//     frame closed by a RETURN;
//   - chainCount causal chains across four processes each, three links
//     long: A spawns B, B's first act spawns C, C's first act sends to D,
//     D receives. A Trace from D's RECEIVE at depth 3 follows
//     received_from → spawned_by → spawned_by back to A's SPAWN, crossing
//     up to four shards. (The link model has no edge from a RECEIVE to the
//     sends its process makes later, so a pure message relay would stop
//     after one hop; spawns are how causality crosses processes twice.)
//
// A marker records the shape, so a later run (`-load 0`) or a resumed load
// finds the same data: the latest STATE_CHANGE of process
// (markerOrigin, markerPID), whose payload is benchMarker as JSON.

const (
	markerOrigin   = "scope-bench"
	markerPID      = "<marker>"
	landmarkOrigin = "bench@host"
	treeFrames     = 1000
	chainCount     = 8
	chainHops      = 3
	markerVersion  = 1
	// maxMarkerBytes keeps the marker below the default payload limit
	// (4 KiB) with room to spare: a truncated marker cannot be read back.
	maxMarkerBytes = 3 << 10
)

// benchMarker describes a loaded data set. It is written when the
// landmarks are stored and again as the load progresses; the last one
// written wins.
type benchMarker struct {
	Version      int      `json:"v"`
	Seed         uint64   `json:"seed"`
	Target       int      `json:"target"`  // generator events the load was asked for
	Parts        int      `json:"parts"`   // generators (load workers)
	Procs        int      `json:"procs"`   // long-lived processes per part
	Origins      int      `json:"origins"` // origins the processes spread over
	MaxDepth     int      `json:"depth"`   // generator call stack bound
	StartNs      int64    `json:"start"`   // first generator timestamp
	EndNs        int64    `json:"end"`     // last acknowledged generator timestamp
	Acked        []int    `json:"acked"`   // per part: events acknowledged COMMITTED, in generator order
	TreeRoot     string   `json:"tree"`    // the 1,000-frame tree's root CALL
	TreePID      string   `json:"treePid"` // its process (origin landmarkOrigin)
	ChainRecv    []string `json:"recv"`    // each chain's final RECEIVE
	ChainRecvPID []string `json:"recvPid"` // its process (origin landmarkOrigin)
}

// loaded is the number of generator events acknowledged so far.
func (m *benchMarker) loaded() int {
	n := 0
	for _, a := range m.Acked {
		n += a
	}
	return n
}

// complete reports whether every part has sent its quota.
func (m *benchMarker) complete() bool { return m.loaded() >= m.Target }

// quota is part's share of the target.
func (m *benchMarker) quota(part int) int {
	q := m.Target / m.Parts
	if part == 0 {
		q += m.Target % m.Parts
	}
	return q
}

func (m *benchMarker) encode() (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	if len(b) > maxMarkerBytes {
		return "", fmt.Errorf("scope bench: marker is %d bytes, above %d: fewer -load-concurrency parts", len(b), maxMarkerBytes)
	}
	return string(b), nil
}

// sameShape reports, as an error naming the first difference, whether a
// load asked for with want can resume the data set m describes.
func (m *benchMarker) sameShape(want *benchMarker) error {
	switch {
	case m.Seed != want.Seed:
		return usageError("-seed %d: the cluster's data set was loaded with -seed %d", want.Seed, m.Seed)
	case m.Target != want.Target:
		return usageError("-load %d: the cluster's data set was loaded with -load %d (use -load 0 to query it)", want.Target, m.Target)
	case m.Parts != want.Parts:
		return usageError("-load-concurrency %d: the cluster's data set was loaded with %d", want.Parts, m.Parts)
	case m.Procs != want.Procs:
		return usageError("-procs %d: the cluster's data set has %d processes per part", want.Procs, m.Procs)
	}
	return nil
}

// validateMarker checks a marker read back from the cluster.
func validateMarker(m *benchMarker) error {
	switch {
	case m.Version != markerVersion:
		return fmt.Errorf("scope bench: marker version %d: want %d", m.Version, markerVersion)
	case m.Parts < 1 || len(m.Acked) != m.Parts:
		return fmt.Errorf("scope bench: marker parts %d with %d acked counts", m.Parts, len(m.Acked))
	case m.Procs < 2 || m.Origins < 1 || m.Target < 0:
		return fmt.Errorf("scope bench: marker procs %d origins %d target %d: out of range", m.Procs, m.Origins, m.Target)
	case m.TreeRoot == "" || len(m.ChainRecv) == 0 || len(m.ChainRecv) != len(m.ChainRecvPID):
		return fmt.Errorf("scope bench: marker landmarks missing (tree %q, %d receives)", m.TreeRoot, len(m.ChainRecv))
	}
	return nil
}

// readMarker returns the cluster's latest marker, or nil when there is
// none.
func readMarker(ctx context.Context, c *api) (*benchMarker, error) {
	resp, err := c.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: markerOrigin, Pid: markerPID,
		Kinds: []scopev1.Kind{scopev1.Kind_KIND_STATE_CHANGE}, Descending: true, Limit: 1}))
	if err != nil {
		return nil, fmt.Errorf("scope bench: read marker: %w", err)
	}
	evs := resp.Msg.GetEvents()
	if len(evs) == 0 {
		return nil, nil
	}
	var m benchMarker
	if err := json.Unmarshal([]byte(evs[0].GetPayload()), &m); err != nil {
		return nil, fmt.Errorf("scope bench: marker event %s: payload: %w", evs[0].GetEventId(), err)
	}
	if err := validateMarker(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// markerWriter stores markers with strictly increasing timestamps, so the
// latest written is the latest by time.
type markerWriter struct {
	c      *api
	lastNs int64
}

func (w *markerWriter) write(ctx context.Context, m *benchMarker) error {
	payload, err := m.encode()
	if err != nil {
		return err
	}
	ts := max(time.Now().UnixNano(), w.lastNs+1)
	w.lastNs = ts
	e := &scopev1.Event{EventId: ulid.Make().String(), Origin: markerOrigin, Pid: markerPID,
		Kind: scopev1.Kind_KIND_STATE_CHANGE, TimestampNs: ts, Payload: payload}
	if _, err := w.c.ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e},
		Durability: scopev1.Durability_DURABILITY_COMMITTED})); err != nil {
		return fmt.Errorf("scope bench: write marker: %w", err)
	}
	return nil
}

// landmarks builds the tree and chain events, timestamped from startNs on
// (one microsecond apart), with ids from a generator seeded by seed. It
// fills m's landmark fields.
func landmarks(seed uint64, startNs int64, m *benchMarker) []correlate.Event {
	entropy := rand.New(rand.NewPCG(seed, 0x1a4d))
	ts := startNs
	var out []correlate.Event
	add := func(e correlate.Event) correlate.Event {
		ts += 1000
		e.Origin, e.TimestampNs = landmarkOrigin, ts
		e.ID = ulid.MustNew(uint64(ts/1e6), readerFunc(func(p []byte) (int, error) {
			for i := range p {
				p[i] = byte(entropy.Uint32())
			}
			return len(p), nil
		}))
		out = append(out, e)
		return e
	}

	// The tree: 1 + 9 + 9*10 + 9*10*10 frames, depth-first.
	m.TreePID = "<tree.0>"
	fanout := []int{9, 10, 10}
	var frame func(level int, name string)
	frame = func(level int, name string) {
		c := add(correlate.Event{PID: m.TreePID, Kind: correlate.KindCall, Module: "Elixir.Bench.Tree",
			Function: name, Arity: uint32(level), Payload: "[:arg]"})
		if level == 0 {
			m.TreeRoot = c.ID.String()
		}
		if level < len(fanout) {
			for i := range fanout[level] {
				frame(level+1, fmt.Sprintf("%s_%d", name, i))
			}
		}
		add(correlate.Event{PID: m.TreePID, Kind: correlate.KindReturn, Module: "Elixir.Bench.Tree",
			Function: name, Arity: uint32(level), Payload: ":ok"})
	}
	frame(0, "root")

	// The chains.
	m.ChainRecv, m.ChainRecvPID = nil, nil
	for k := range chainCount {
		pid := func(role byte) string { return fmt.Sprintf("<chain.%d.%c>", k, role) }
		add(correlate.Event{PID: pid('a'), Kind: correlate.KindSpawn, PeerOrigin: landmarkOrigin, PeerPID: pid('b')})
		add(correlate.Event{PID: pid('b'), Kind: correlate.KindSpawn, PeerOrigin: landmarkOrigin, PeerPID: pid('c')})
		msg := fmt.Sprintf("{:hop, %d}", k)
		add(correlate.Event{PID: pid('c'), Kind: correlate.KindSend, PeerOrigin: landmarkOrigin, PeerPID: pid('d'), Payload: msg})
		r := add(correlate.Event{PID: pid('d'), Kind: correlate.KindReceive, PeerOrigin: landmarkOrigin, PeerPID: pid('c'), Payload: msg})
		m.ChainRecv = append(m.ChainRecv, r.ID.String())
		m.ChainRecvPID = append(m.ChainRecvPID, pid('d'))
	}
	return out
}

// readerFunc adapts a function to io.Reader (ULID entropy).
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// storeLandmarks ingests the landmark events COMMITTED in requests of at
// most batch events, on one stream so each process's events stay in order.
func storeLandmarks(ctx context.Context, c *api, events []correlate.Event, batch int) error {
	for len(events) > 0 {
		k := min(batch, len(events))
		resp, err := c.ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: rpc.EventsToProto(events[:k]),
			Durability: scopev1.Durability_DURABILITY_COMMITTED}))
		if err != nil {
			return fmt.Errorf("scope bench: store landmarks: %w", err)
		}
		if int(resp.Msg.GetAccepted()+resp.Msg.GetDuplicates()) != k {
			return fmt.Errorf("scope bench: store landmarks: %d of %d events accepted", resp.Msg.GetAccepted(), k)
		}
		events = events[k:]
	}
	return nil
}

// countFrames counts f and its callees.
func countFrames(f *scopev1.CallFrame) int {
	if f == nil {
		return 0
	}
	n := 1
	for _, ch := range f.GetChildren() {
		n += countFrames(ch)
	}
	return n
}

// checkLandmarks waits until the landmarks answer as built: the tree has
// treeFrames frames and every chain's trace reaches chainHops+1 events
// (the cross-shard links arrive through the notice outboxes, a moment
// after the events are committed).
func checkLandmarks(ctx context.Context, c *api, m *benchMarker, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = landmarksOnce(ctx, c, m); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("scope bench: landmarks not answering as built after %v: %w", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func landmarksOnce(ctx context.Context, c *api, m *benchMarker) error {
	tree, err := c.query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: m.TreeRoot,
		MaxFrames: treeFrames, Origin: landmarkOrigin, Pid: m.TreePID}))
	if err != nil {
		return fmt.Errorf("call tree %s: %w", m.TreeRoot, err)
	}
	if n := countFrames(tree.Msg.GetRoot()); n != treeFrames || tree.Msg.GetTruncated() {
		return fmt.Errorf("call tree %s: %d frames (truncated %v), want %d", m.TreeRoot, n, tree.Msg.GetTruncated(), treeFrames)
	}
	for i, id := range m.ChainRecv {
		n, err := traceOnce(ctx, c, id, m.ChainRecvPID[i], scopev1.Consistency_CONSISTENCY_LEADER)
		if err != nil {
			return err
		}
		if n != chainHops+1 {
			return fmt.Errorf("trace from %s: %d events, want %d", id, n, chainHops+1)
		}
	}
	return nil
}

// traceOnce runs the benchmark's Trace: depth chainHops, both directions,
// from a chain's RECEIVE at consistency cons, and returns the number of
// events reached.
func traceOnce(ctx context.Context, c *api, id, pid string, cons scopev1.Consistency) (int, error) {
	resp, err := c.query.Trace(ctx, connect.NewRequest(&scopev1.TraceRequest{EventId: id, MaxDepth: chainHops,
		Origin: landmarkOrigin, Pid: pid, Consistency: cons}))
	if err != nil {
		return 0, fmt.Errorf("trace from %s: %w", id, err)
	}
	return len(resp.Msg.GetNodes()), nil
}
