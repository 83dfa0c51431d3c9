package chaos

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Client timeouts: an ingest that has not answered by then has an unknown
// outcome; a read that has not, observed nothing.
const (
	ingestTimeout = 3 * time.Second
	readTimeout   = 3 * time.Second
)

// endpoint is the harness's connection to one agent.
type endpoint struct {
	ingest  scopev1connect.IngestServiceClient
	query   scopev1connect.QueryServiceClient
	cluster scopev1connect.ClusterServiceClient
}

func newEndpoint(hc *http.Client, addr string) endpoint {
	base := "http://" + addr
	return endpoint{ingest: scopev1connect.NewIngestServiceClient(hc, base),
		query:   scopev1connect.NewQueryServiceClient(hc, base),
		cluster: scopev1connect.NewClusterServiceClient(hc, base)}
}

// ingestOutcome is what one single-event ingest came to.
type ingestOutcome uint8

const (
	committed ingestOutcome = iota
	refused
	unknown
)

// workload drives conversations and reads, recording the history.
type workload struct {
	hist      *history
	endpoints []endpoint
	seed      uint64

	mu      sync.Mutex
	builder scriptBuilder
	procs   []*process // by key
	recent  []*process // the processes readers pick from (bounded)
	byID    map[string]eventRef
	// Outcomes of ingests, by event.
	acked, refusedIDs, unknownIDs map[string]bool
	convs                         []*conversation

	stats workloadStats
	anom  *anomalies
}

// eventRef names an event of the workload.
type eventRef struct {
	p *process
	i int
}

// maxRecent is how many recently started processes readers choose from.
const maxRecent = 64

// workloadStats counts operations by outcome.
type workloadStats struct {
	IngestCommitted int `json:"ingest_committed"`
	IngestRefused   int `json:"ingest_refused"`
	IngestUnknown   int `json:"ingest_unknown"`
	Reads           int `json:"reads"`
	ReadsFailed     int `json:"reads_failed"`
	Trees           int `json:"trees"`
	TreesFailed     int `json:"trees_failed"`
	Flows           int `json:"flows"`
	FlowsFailed     int `json:"flows_failed"`
	Conversations   int `json:"conversations"`
}

func newWorkload(hist *history, endpoints []endpoint, seed uint64, anom *anomalies) *workload {
	return &workload{hist: hist, endpoints: endpoints, seed: seed, anom: anom, byID: make(map[string]eventRef),
		acked: make(map[string]bool), refusedIDs: make(map[string]bool), unknownIDs: make(map[string]bool)}
}

// newConversation creates a conversation and registers its processes.
func (w *workload) newConversation(rnd *rand.Rand) *conversation {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.builder.newConversation(len(w.procs), func(int) bool { return rnd.IntN(4) == 0 })
	for _, p := range []*process{c.p, c.q} {
		w.procs = append(w.procs, p)
		for i, e := range p.events {
			w.byID[e.GetEventId()] = eventRef{p: p, i: i}
		}
		w.recent = append(w.recent, p)
	}
	if len(w.recent) > maxRecent {
		w.recent = w.recent[len(w.recent)-maxRecent:]
	}
	w.convs = append(w.convs, c)
	w.stats.Conversations++
	return c
}

// drive runs conversations until ctx ends: one event per request, to a
// random agent, in script order; a conversation ends at its first event
// that was not committed.
func (w *workload) drive(ctx context.Context, client int) {
	rnd := rand.New(rand.NewPCG(w.seed, uint64(client)))
	for ctx.Err() == nil {
		c := w.newConversation(rnd)
		var clock stamp
		for _, s := range c.steps {
			if ctx.Err() != nil {
				return
			}
			e := s.p.events[s.i]
			e.TimestampNs = clock.next()
			s.p.markInvoked(s.i)
			ep := w.endpoints[rnd.IntN(len(w.endpoints))]
			call := w.hist.now()
			outcome := w.ingestOne(ctx, ep, e)
			ret := w.hist.now()
			if outcome == unknown {
				ret = math.MaxInt64
			}
			if outcome != refused {
				w.hist.add(op{key: s.p.key, client: client, in: opInput{kind: opIngest, bit: s.i}, call: call, ret: ret})
			}
			w.record(e.GetEventId(), outcome)
			if outcome != committed {
				break
			}
		}
	}
}

func (w *workload) record(id string, o ingestOutcome) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch o {
	case committed:
		w.acked[id] = true
		w.stats.IngestCommitted++
	case refused:
		w.refusedIDs[id] = true
		w.stats.IngestRefused++
	default:
		w.unknownIDs[id] = true
		w.stats.IngestUnknown++
	}
}

// ingestOne sends one event with COMMITTED durability. Only an answer
// that counts it committed (or a duplicate of a stored event) is
// "committed", and only one that counts it refused is "refused": every
// error is "unknown", since the event may have been proposed before it.
func (w *workload) ingestOne(ctx context.Context, ep endpoint, e *scopev1.Event) ingestOutcome {
	ctx, cancel := context.WithTimeout(ctx, ingestTimeout)
	defer cancel()
	resp, err := ep.ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{
		Events: []*scopev1.Event{e}, Durability: scopev1.Durability_DURABILITY_COMMITTED}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeInvalidArgument {
			w.anom.add("ingest of event %s refused as invalid: %v", e.GetEventId(), err)
		}
		return unknown
	}
	m := resp.Msg
	var committedN uint32
	for _, s := range m.GetShards() {
		committedN += s.GetCommitted()
	}
	switch {
	case m.GetRefused() == 1:
		return refused
	case m.GetUnknown() == 0 && (committedN == 1 || m.GetDuplicates() == 1):
		return committed
	default:
		return unknown
	}
}

// pick returns a recently started process that has sent events.
func (w *workload) pick(rnd *rand.Rand) *process {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.recent) == 0 {
		return nil
	}
	p := w.recent[rnd.IntN(len(w.recent))]
	if p.invokedCount() == 0 {
		return nil
	}
	return p
}

// read runs LEADER reads until ctx ends, at a random agent: Events of a
// process (half), CallTree of one of its roots (a third), or the
// MessageFlow of its conversation (the rest).
func (w *workload) read(ctx context.Context, client int) {
	rnd := rand.New(rand.NewPCG(w.seed, 1<<32|uint64(client)))
	for ctx.Err() == nil {
		p := w.pick(rnd)
		if p == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		ep := w.endpoints[rnd.IntN(len(w.endpoints))]
		switch n := rnd.IntN(6); {
		case n < 3:
			w.readEvents(ctx, ep, p, client)
		case n < 5:
			roots := p.roots()
			w.readTree(ctx, ep, p, roots[rnd.IntN(len(roots))], client)
		default:
			_, _ = w.readFlow(ctx, ep, p.conv)
		}
	}
}

// readEvents reads p's events at LEADER and records the read.
func (w *workload) readEvents(ctx context.Context, ep endpoint, p *process, client int) {
	call := w.hist.now()
	mask, _, err := w.eventsOf(ctx, ep, p)
	ret := w.hist.now()
	w.mu.Lock()
	w.stats.Reads++
	if err != nil {
		w.stats.ReadsFailed++
	}
	w.mu.Unlock()
	if err != nil {
		return
	}
	w.hist.add(op{key: p.key, client: client, in: opInput{kind: opRead}, out: opOutput{mask: mask}, call: call, ret: ret})
}

// eventsOf reads p's events at LEADER: the set of script events returned
// and the events themselves. An event that is not p's is an anomaly.
func (w *workload) eventsOf(ctx context.Context, ep endpoint, p *process) (uint64, []*scopev1.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	var mask uint64
	var events []*scopev1.Event
	cursor := ""
	for {
		resp, err := ep.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: p.origin, Pid: p.pid,
			Limit: 200, Cursor: cursor, Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
		if err != nil {
			return 0, nil, err
		}
		for _, e := range resp.Msg.GetEvents() {
			bit, ok := w.bitOf(p, e.GetEventId())
			if !ok {
				w.anom.add("Events(%s/%s) returned event %s, which was never sent for that process", p.origin, p.pid, e.GetEventId())
				continue
			}
			if mask&(1<<bit) != 0 {
				w.anom.add("Events(%s/%s) returned event %s twice", p.origin, p.pid, e.GetEventId())
			}
			mask |= 1 << bit
			events = append(events, e)
		}
		cursor = resp.Msg.GetNextCursor()
		if cursor == "" {
			return mask, events, nil
		}
	}
}

func (w *workload) bitOf(p *process, id string) (int, bool) {
	w.mu.Lock()
	ref, ok := w.byID[id]
	w.mu.Unlock()
	if !ok || ref.p != p {
		return 0, false
	}
	return ref.i, true
}

// readTree reads the call tree of p's root CALL at LEADER and records it.
func (w *workload) readTree(ctx context.Context, ep endpoint, p *process, root int, client int) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	call := w.hist.now()
	resp, err := ep.query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: p.events[root].GetEventId(),
		Origin: p.origin, Pid: p.pid, MaxFrames: 1000, Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
	ret := w.hist.now()
	var out opOutput
	if err == nil {
		out.found = true
		out.mask = w.treeEvents(p, root, resp.Msg.GetRoot())
	}
	failed := err != nil && connect.CodeOf(err) != connect.CodeNotFound
	w.mu.Lock()
	w.stats.Trees++
	if failed {
		w.stats.TreesFailed++
	}
	w.mu.Unlock()
	if failed {
		return
	}
	w.hist.add(op{key: p.key, client: client, in: opInput{kind: opTree, bit: root}, out: out, call: call, ret: ret})
}

// treeEvents returns the set of p's script events a call tree shows (its
// frames' CALLs and ends). A frame that is not p's is an anomaly.
func (w *workload) treeEvents(p *process, root int, f *scopev1.CallFrame) uint64 {
	var mask uint64
	var walk func(f *scopev1.CallFrame)
	walk = func(f *scopev1.CallFrame) {
		if f == nil {
			return
		}
		for _, e := range []*scopev1.Event{f.GetCall(), f.GetEnd()} {
			if e == nil || e.GetEventId() == "" {
				continue
			}
			bit, ok := w.bitOf(p, e.GetEventId())
			if !ok {
				w.anom.add("CallTree(%s) of %s/%s showed event %s, which was never sent for that process",
					p.events[root].GetEventId(), p.origin, p.pid, e.GetEventId())
				continue
			}
			mask |= 1 << bit
		}
		for _, c := range f.GetChildren() {
			walk(c)
		}
	}
	walk(f)
	return mask
}

// readFlow reads the messages of a conversation at LEADER and checks
// what the flow cannot show whatever the timing: a message's events are
// the conversation's, a SEND and a RECEIVE shown together are the same
// message, and no message is shown twice. It returns the SEND → RECEIVE
// pairs shown.
func (w *workload) readFlow(ctx context.Context, ep endpoint, c *conversation) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	resp, err := ep.query.MessageFlow(ctx, connect.NewRequest(&scopev1.MessageFlowRequest{
		A: &scopev1.Process{Origin: c.p.origin, Pid: c.p.pid}, B: &scopev1.Process{Origin: c.q.origin, Pid: c.q.pid},
		Limit: 1000, Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
	w.mu.Lock()
	w.stats.Flows++
	if err != nil {
		w.stats.FlowsFailed++
	}
	w.mu.Unlock()
	if err != nil {
		return nil, err
	}
	received := make(map[string]bool, len(c.pairs))
	for id := range c.pairs {
		received[c.pairs[id]] = true
	}
	shown := make(map[string]string)
	seen := make(map[string]bool)
	for _, m := range resp.Msg.GetMessages() {
		send, recv := m.GetSend().GetEventId(), m.GetReceive().GetEventId()
		for _, id := range []string{send, recv} {
			if id == "" {
				continue
			}
			if seen[id] {
				w.anom.add("MessageFlow(%s/%s, %s/%s) shows event %s twice", c.p.origin, c.p.pid, c.q.origin, c.q.pid, id)
			}
			seen[id] = true
		}
		switch {
		case send != "" && c.pairs[send] == "":
			w.anom.add("MessageFlow(%s/%s, %s/%s) shows SEND %s, which is not one of theirs", c.p.origin, c.p.pid, c.q.origin, c.q.pid, send)
		case recv != "" && !received[recv]:
			w.anom.add("MessageFlow(%s/%s, %s/%s) shows RECEIVE %s, which is not one of theirs", c.p.origin, c.p.pid, c.q.origin, c.q.pid, recv)
		case send != "" && recv != "" && c.pairs[send] != recv:
			w.anom.add("MessageFlow(%s/%s, %s/%s) pairs SEND %s with RECEIVE %s, of another message", c.p.origin, c.p.pid, c.q.origin, c.q.pid, send, recv)
		case send != "" && recv != "":
			shown[send] = recv
		}
	}
	return shown, nil
}

// anomalies collects safety violations found outside porcupine (bounded:
// the count is exact, the first maxAnomalies are kept).
type anomalies struct {
	mu    sync.Mutex
	n     int
	lines []string
}

const maxAnomalies = 200

func (a *anomalies) add(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	if len(a.lines) < maxAnomalies {
		a.lines = append(a.lines, fmt.Sprintf(format, args...))
	}
}

func (a *anomalies) snapshot() (int, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n, append([]string(nil), a.lines...)
}

var errNoLeader = errors.New("no leader")
