package correlate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// This file runs traces captured from a real Erlang VM (tools/erlang,
// fixtures in testdata/erlang) through validation and the correlator, with
// one shard and with sixteen shards joined by a test-local notice router,
// and checks the results against a reference computed from the trace
// itself: how BEAM's trace messages nest, which message each receive got,
// which frames each exit left open.

// erlEvent mirrors the proto3 JSON of scope.v1.Event as tools/erlang
// writes it. correlate must not import rpc, so this is decoded with
// encoding/json; 64-bit integers are JSON strings (or numbers).
type erlEvent struct {
	Origin      string            `json:"origin"`
	PID         string            `json:"pid"`
	Kind        string            `json:"kind"`
	TimestampNs flexUint          `json:"timestampNs"`
	Seq         flexUint          `json:"seq"`
	Module      string            `json:"module"`
	Function    string            `json:"function"`
	Arity       uint32            `json:"arity"`
	Payload     string            `json:"payload"`
	PeerOrigin  string            `json:"peerOrigin"`
	PeerPID     string            `json:"peerPid"`
	MessageHash flexUint          `json:"messageHash"`
	Reason      string            `json:"reason"`
	Attributes  map[string]string `json:"attributes"`
}

// flexUint accepts a 64-bit integer as proto3 JSON allows: a string or a number.
type flexUint uint64

func (f *flexUint) UnmarshalJSON(b []byte) error {
	n, err := strconv.ParseUint(string(bytes.Trim(b, `"`)), 10, 64)
	*f = flexUint(n)
	return err
}

// loadErlang reads a fixture and gives every event a unique id (the
// capture leaves ids empty for Scope to assign): the ULID time is the
// event's millisecond, the entropy its line number.
func loadErlang(t *testing.T, path string) []Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var evs []Event
	for line := 1; sc.Scan(); line++ {
		var j erlEvent
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&j); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		kind, ok := ParseKind(strings.TrimPrefix(j.Kind, "KIND_"))
		if !ok {
			t.Fatalf("%s:%d: kind %q", path, line, j.Kind)
		}
		evs = append(evs, Event{
			ID: testID(uint64(j.TimestampNs)/1e6, uint64(line)), Origin: j.Origin, PID: j.PID, Kind: kind,
			TimestampNs: int64(j.TimestampNs), Seq: uint64(j.Seq), Module: j.Module, Function: j.Function,
			Arity: j.Arity, Payload: j.Payload, PeerOrigin: j.PeerOrigin, PeerPID: j.PeerPID,
			MessageHash: uint64(j.MessageHash), Reason: j.Reason, Attributes: j.Attributes,
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

// erlRun is what a correlator run produced, keyed by event id.
type erlRun struct {
	events   map[EventID]Event
	links    map[[2]EventID]LinkType // (from, to) → type, from events' links and edges
	closed   map[EventID]ClosedFrame
	counters Counters
}

func newErlRun() *erlRun {
	return &erlRun{events: map[EventID]Event{}, links: map[[2]EventID]LinkType{}, closed: map[EventID]ClosedFrame{}}
}

func (r *erlRun) add(t *testing.T, res Result) {
	t.Helper()
	for _, e := range res.Events {
		r.events[e.ID] = e
		for _, l := range e.Links {
			r.addLink(t, e.ID, l.Type, l.Target)
		}
	}
	for _, e := range res.Edges {
		r.addLink(t, e.From, e.Type, e.To)
	}
	for _, c := range res.Closed {
		if _, dup := r.closed[c.Call]; dup {
			t.Fatalf("frame %s closed twice", c.Call)
		}
		r.closed[c.Call] = c
	}
	r.counters.Add(res.Counters)
}

func (r *erlRun) addLink(t *testing.T, from EventID, typ LinkType, to EventID) {
	k := [2]EventID{from, to}
	if old, dup := r.links[k]; dup {
		t.Fatalf("link %s -> %s recorded twice (%s, %s)", from, to, old, typ)
	}
	r.links[k] = typ
}

// target returns the one target of from's links of type typ.
func (r *erlRun) target(t *testing.T, from EventID, typ LinkType) (EventID, bool) {
	t.Helper()
	var out []EventID
	for k, lt := range r.links {
		if k[0] == from && lt == typ {
			out = append(out, k[1])
		}
	}
	if len(out) > 1 {
		t.Fatalf("%s has %d %s links", from, len(out), typ)
	}
	if len(out) == 0 {
		return EventID{}, false
	}
	return out[0], true
}

const erlBatch = 64 // events per batch, about what `scope ingest` sends per shard

// logTime of a batch: its largest event timestamp, as a leader proposing
// the batch right after the capture would stamp it.
func logTime(evs []Event) int64 {
	var t int64
	for i := range evs {
		t = max(t, evs[i].TimestampNs)
	}
	return t
}

func runOneShard(t *testing.T, evs []Event) *erlRun {
	c, err := New(DefaultConfig(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	run := newErlRun()
	for i := 0; i < len(evs); i += erlBatch {
		b := slices.Clone(evs[i:min(i+erlBatch, len(evs))])
		run.add(t, c.Apply(Batch{LogTime: logTime(b), Events: b}))
	}
	if n := len(c.Outbox()); n != 0 {
		t.Fatalf("one shard: %d notices in the outbox", n)
	}
	return run
}

// runShards feeds evs to shards correlators, each event to its process's
// shard, and routes outbox notices between them like a cluster does, one
// batch late (so that receives often arrive before their send notice), and
// acknowledges each delivery back to the sending shard.
func runShards(t *testing.T, evs []Event, shards uint32) *erlRun {
	cors := make([]*Correlator, shards)
	for s := range cors {
		c, err := New(DefaultConfig(uint32(s), shards))
		if err != nil {
			t.Fatal(err)
		}
		cors[s] = c
	}
	run := newErlRun()
	var inFlight []Notice // produced by the previous round, not yet delivered
	maxInFlight := 0
	deliver := func(ns []Notice, now int64) {
		maxInFlight = max(maxInFlight, len(ns))
		byDest := make([][]Notice, shards)
		acks := make([][]EventID, shards)
		for _, n := range ns {
			byDest[n.ToShard] = append(byDest[n.ToShard], n)
			acks[n.FromShard] = append(acks[n.FromShard], n.EventID)
		}
		for s, b := range byDest {
			if len(b) > 0 {
				run.add(t, cors[s].Apply(Batch{LogTime: now, Notices: b}))
			}
		}
		for s, a := range acks {
			if len(a) > 0 {
				run.add(t, cors[s].Apply(Batch{LogTime: now, Acked: a}))
			}
		}
	}
	for i := 0; i < len(evs); i += erlBatch {
		chunk := evs[i:min(i+erlBatch, len(evs))]
		now := logTime(chunk)
		per := make([][]Event, shards)
		for _, e := range chunk {
			s := ShardOf(e.Origin, e.PID, shards)
			per[s] = append(per[s], e)
		}
		var produced []Notice
		for s, b := range per {
			if len(b) > 0 {
				res := cors[s].Apply(Batch{LogTime: now, Events: b})
				produced = append(produced, res.Outbox...)
				run.add(t, res)
			}
		}
		deliver(inFlight, now)
		inFlight = produced
	}
	deliver(inFlight, logTime(evs))
	for s, c := range cors {
		if n := len(c.Outbox()); n != 0 {
			t.Fatalf("shard %d: %d notices left in the outbox after delivery", s, n)
		}
	}
	t.Logf("%d shards: at most %d notices in flight between rounds", shards, maxInFlight)
	return run
}

// erlRef is the expected correlation, computed from the trace alone.
type erlRef struct {
	completes  map[EventID]EventID   // RETURN/EXCEPTION → its CALL
	unwoundBy  map[EventID]EventID   // CALL → the RETURN that skipped its frame (return_trace only)
	parentOf   map[EventID]EventID   // event → the frame open below it (zero: none)
	exitOpen   map[EventID][]EventID // EXIT → CALLs still open when it happened
	pairs      map[EventID]EventID   // RECEIVE → SEND
	named      int                   // pairs whose SEND went to a registered name
	aliased    int                   // pairs whose SEND went to a gen_call alias
	unpaired   int                   // RECEIVEs of messages no traced process sent
	deadSends  int                   // SENDs to traced pids never received (none expected)
	spawnChild map[EventID]EventID   // SPAWN → the child's first event
	catches    []erlCatch
}

// erlCatch is one exception raised in a recursion and caught above it.
type erlCatch struct {
	depth      int       // recursion depth asked for (the argument of attempt/1)
	exceptions []EventID // the EXCEPTION events, innermost first (exception_trace)
	unwound    []EventID // the CALLs the catching RETURN skipped, innermost first (return_trace)
	ret        EventID   // the catching function's RETURN
}

func reference(t *testing.T, evs []Event) *erlRef {
	ref := &erlRef{completes: map[EventID]EventID{}, parentOf: map[EventID]EventID{},
		exitOpen: map[EventID][]EventID{}, unwoundBy: map[EventID]EventID{}, pairs: map[EventID]EventID{}, spawnChild: map[EventID]EventID{}}
	type open struct {
		id   EventID
		m, f string
		a    uint32
	}
	stacks := map[Process][]open{}
	first := map[Process]EventID{}
	var run []EventID // the current run of EXCEPTIONs on one process
	var runProc Process
	for i := range evs {
		e := &evs[i]
		p := e.Process()
		if _, ok := first[p]; !ok {
			first[p] = e.ID
		}
		st := stacks[p]
		if len(st) > 0 {
			ref.parentOf[e.ID] = st[len(st)-1].id
		}
		if p != runProc || (e.Kind != KindException && e.Kind != KindReturn) {
			run = nil
		}
		switch e.Kind {
		case KindCall:
			stacks[p] = append(st, open{e.ID, e.Module, e.Function, e.Arity})
		case KindReturn, KindException:
			// The nearest open call of the same m/f/a: the top one when the
			// match spec has exception_trace; with return_trace an exception
			// leaves no event, and the frames it crossed are skipped here.
			j := len(st) - 1
			for j >= 0 && (st[j].m != e.Module || st[j].f != e.Function || st[j].a != e.Arity) {
				j--
			}
			if j < 0 {
				t.Fatalf("event %d (%s %s:%s/%d on %s): no open call: the capture began mid-call", i, e.Kind, e.Module, e.Function, e.Arity, p)
			}
			var unwound []EventID
			for k := len(st) - 1; k > j; k-- {
				unwound = append(unwound, st[k].id)
				ref.unwoundBy[st[k].id] = e.ID
			}
			ref.completes[e.ID] = st[j].id
			stacks[p] = st[:j]
			if j > 0 {
				ref.parentOf[e.ID] = st[j-1].id
			} else {
				delete(ref.parentOf, e.ID)
			}
			if e.Kind == KindException {
				run, runProc = append(run, e.ID), p
			} else if e.Function == "guarded" && len(run)+len(unwound) > 0 {
				ref.catches = append(ref.catches, erlCatch{exceptions: run, unwound: unwound, ret: e.ID})
				run = nil
			}
		case KindExit:
			for j := len(st) - 1; j >= 0; j-- {
				ref.exitOpen[e.ID] = append(ref.exitOpen[e.ID], st[j].id)
			}
			delete(stacks, p)
		}
	}
	// The depth each catch was asked for: attempt/1's argument.
	calls := map[EventID]*Event{}
	for i := range evs {
		if evs[i].Kind == KindCall {
			calls[evs[i].ID] = &evs[i]
		}
	}
	for i := range ref.catches {
		c := &ref.catches[i]
		outer := c.unwound
		if len(c.exceptions) > 0 {
			outer = []EventID{ref.completes[c.exceptions[len(c.exceptions)-1]]}
		}
		att := calls[outer[len(outer)-1]]
		if att.Function != "attempt" {
			t.Fatalf("outermost frame of a caught exception is %s, want attempt", att.Function)
		}
		d, err := strconv.Atoi(strings.Trim(att.Payload, "[]"))
		if err != nil {
			t.Fatalf("attempt/1 payload %q: %v", att.Payload, err)
		}
		c.depth = d
	}

	// Messages: per (receiver, hash), the n-th send is received by the n-th
	// receive (FIFO). Sends to processes absent from the trace are left out.
	type key struct {
		recv Process
		hash uint64
	}
	sends, recvs := map[key][]*Event{}, map[key][]*Event{}
	for i := range evs {
		e := &evs[i]
		switch {
		case e.Kind == KindSend && e.PeerPID != "":
			if _, traced := first[e.Peer()]; traced {
				k := key{e.Peer(), e.MessageHash}
				sends[k] = append(sends[k], e)
			}
		case e.Kind == KindReceive:
			k := key{e.Process(), e.MessageHash}
			recvs[k] = append(recvs[k], e)
		case e.Kind == KindSpawn:
			ref.spawnChild[e.ID] = first[e.Peer()]
		}
	}
	for k, rs := range recvs {
		ss := sends[k]
		for n, r := range rs {
			if n >= len(ss) {
				ref.unpaired++
				continue
			}
			s := ss[n]
			if s.Process() != ss[0].Process() {
				t.Fatalf("receiver %s got hash %d from %s and %s: FIFO pairing is ambiguous", k.recv, k.hash, ss[0].Process(), s.Process())
			}
			if s.TimestampNs > r.TimestampNs {
				t.Fatalf("receive %s at %d paired with a later send %s at %d", r.ID, r.TimestampNs, s.ID, s.TimestampNs)
			}
			ref.pairs[r.ID] = s.ID
			switch {
			case s.Attributes["to_name"] != "":
				ref.named++
			case s.Attributes["to_alias"] != "":
				ref.aliased++
			}
		}
		if len(ss) > len(rs) {
			ref.deadSends += len(ss) - len(rs)
		}
	}
	return ref
}

func TestErlangFixtures(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "erlang", "*.jsonl"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures in testdata/erlang (%v)", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			evs := loadErlang(t, path)
			if err := ValidateEvents(evs, DefaultLimits()); err != nil {
				t.Fatalf("a captured event is refused: %v", err)
			}
			ref := reference(t, evs)
			one := runOneShard(t, evs)
			checkErlang(t, evs, ref, one)
			sixteen := runShards(t, evs, 16)
			checkErlang(t, evs, ref, sixteen)
			compareRuns(t, one, sixteen)
		})
	}
}

func checkErlang(t *testing.T, evs []Event, ref *erlRef, run *erlRun) {
	t.Helper()
	c := run.counters
	kinds := map[Kind]int{}
	for i := range evs {
		kinds[evs[i].Kind]++
	}
	if c.Events != uint64(len(evs)) || c.Duplicates != 0 || c.Malformed != 0 || c.OutOfOrder != 0 {
		t.Fatalf("applied %d of %d events (duplicates %d, malformed %d, out of order %d)",
			c.Events, len(evs), c.Duplicates, c.Malformed, c.OutOfOrder)
	}

	// Calls: every RETURN/EXCEPTION completes the CALL the trace nests it in.
	// The capture starts before the workload, so nothing is mid-call.
	if c.Orphans != 0 || c.Unwound != uint64(len(ref.unwoundBy)) || c.StackOverflows != 0 {
		t.Fatalf("orphans %d, unwound %d (reference %d), stack overflows %d", c.Orphans, c.Unwound,
			len(ref.unwoundBy), c.StackOverflows)
	}
	for call, by := range ref.unwoundBy {
		if cf := run.closed[call]; cf.Outcome != OutcomeUnwound || cf.By != by {
			t.Fatalf("frame %s: closed %+v, want UNWOUND by %s", call, cf, by)
		}
	}
	if want := kinds[KindReturn] + kinds[KindException]; len(ref.completes) != want {
		t.Fatalf("reference closed %d calls, trace has %d returns and exceptions", len(ref.completes), want)
	}
	for id, call := range ref.completes {
		e := run.events[id]
		got, _ := run.target(t, id, LinkCompletes)
		want := OutcomeOK
		if e.Kind == KindException {
			want = OutcomeException
		}
		if got != call || e.Outcome != want || e.CorrelationID != call.String() {
			t.Fatalf("%s %s:%s: completes %s (%s, corr %s), want %s (%s)", e.Kind, e.Module, e.Function, got, e.Outcome, e.CorrelationID, call, want)
		}
		if e.DurationNs != e.TimestampNs-run.events[call].TimestampNs {
			t.Fatalf("%s: duration %d", id, e.DurationNs)
		}
	}
	for i := range evs {
		id := evs[i].ID
		if got := run.events[id].ParentID; got != ref.parentOf[id] {
			t.Fatalf("event %d (%s %s): parent %s, want %s", i, evs[i].Kind, evs[i].Function, got, ref.parentOf[id])
		}
		if evs[i].Kind == KindStateChange {
			cb := run.events[ref.parentOf[id]]
			if want := evs[i].Attributes["callback"]; fmt.Sprintf("%s/%d", cb.Function, cb.Arity) != want {
				t.Fatalf("STATE_CHANGE %s: parent frame %s/%d, want the callback %s", id, cb.Function, cb.Arity, want)
			}
		}
	}

	// Exceptions: each caught one closed depth+2 frames (descend_fail
	// depth..0 and attempt), each with its own EXCEPTION (exception_trace)
	// or all unwound by the catching frame's RETURN (return_trace), and the
	// catching frame returned normally.
	if len(ref.catches) == 0 {
		t.Fatal("no caught exception in the fixture")
	}
	for _, k := range ref.catches {
		if n := len(k.exceptions) + len(k.unwound); n != k.depth+2 || (len(k.exceptions) > 0 && len(k.unwound) > 0) {
			t.Fatalf("exception at depth %d closed %d frames by EXCEPTION and %d unwound, want %d in one way",
				k.depth, len(k.exceptions), len(k.unwound), k.depth+2)
		}
		for _, x := range k.exceptions {
			if e := run.events[x]; e.Outcome != OutcomeException || !strings.Contains(e.Reason, "too_deep") {
				t.Fatalf("%s: outcome %s reason %q", x, e.Outcome, e.Reason)
			}
		}
		if r := run.events[k.ret]; r.Outcome != OutcomeOK || r.Payload != fmt.Sprintf("{caught,%d}", k.depth) {
			t.Fatalf("catching return: outcome %s payload %q", r.Outcome, r.Payload)
		}
	}

	// Messages: every receive of a traced send is paired with exactly that
	// send, both ways; no other receive is paired.
	if c.Matched != uint64(len(ref.pairs)) {
		t.Fatalf("matched %d receives, reference pairs %d", c.Matched, len(ref.pairs))
	}
	for i := range evs {
		if evs[i].Kind != KindReceive {
			continue
		}
		id := evs[i].ID
		got, ok := run.target(t, id, LinkReceivedFrom)
		want, paired := ref.pairs[id]
		if ok != paired || got != want {
			t.Fatalf("receive %s (%q): received from %s (%v), want %s (%v)", id, evs[i].Payload, got, ok, want, paired)
		}
		if paired {
			if back, _ := run.target(t, want, LinkDeliveredTo); back != id {
				t.Fatalf("send %s: delivered to %s, want %s", want, back, id)
			}
		}
	}
	if ref.named == 0 || ref.aliased == 0 || ref.deadSends != 0 {
		t.Fatalf("fixture pairs: %d to registered names, %d to aliases, %d sends never received", ref.named, ref.aliased, ref.deadSends)
	}

	// Spawns: each SPAWN links its child's first event, both ways.
	if c.SpawnsLinked != uint64(len(ref.spawnChild)) {
		t.Fatalf("spawns linked %d, want %d", c.SpawnsLinked, len(ref.spawnChild))
	}
	for sp, child := range ref.spawnChild {
		if got, _ := run.target(t, sp, LinkSpawned); got != child {
			t.Fatalf("spawn %s: spawned %s, want %s", sp, got, child)
		}
		if got, _ := run.target(t, child, LinkSpawnedBy); got != sp {
			t.Fatalf("child %s: spawned by %s, want %s", child, got, sp)
		}
	}

	// Exits: an exit closes exactly the frames open at that moment.
	openAtExit := 0
	for exit, calls := range ref.exitOpen {
		for _, call := range calls {
			cf, ok := run.closed[call]
			if !ok || cf.Outcome != OutcomeProcessExit || cf.By != exit {
				t.Fatalf("frame %s open at exit %s: closed %+v (%v)", call, exit, cf, ok)
			}
		}
		openAtExit += len(calls)
	}
	// With exception_trace BEAM reports even a kill as exception_from on
	// every frame, so an exit finds none open; with return_trace the
	// crashed and the killed worker die with their frames open.
	returnTrace := len(ref.unwoundBy) > 0
	if returnTrace != (openAtExit > 0) || c.ExitClosed != uint64(openAtExit) ||
		len(run.closed) != openAtExit+len(ref.unwoundBy) {
		t.Fatalf("exit closed %d frames (%d closed without an event in all), reference %d at exit, %d unwound",
			c.ExitClosed, len(run.closed), openAtExit, len(ref.unwoundBy))
	}
	t.Logf("%d events %v: %d calls closed, %d caught exceptions (%d frames each), %d pairs (%d to names, %d to aliases), "+
		"%d receives of untraced senders, %d spawns, %d frames unwound, %d frames closed by %d exits",
		len(evs), kinds, len(ref.completes), len(ref.catches), ref.catches[0].depth+2, len(ref.pairs), ref.named,
		ref.aliased, ref.unpaired, len(ref.spawnChild), len(ref.unwoundBy), openAtExit, len(ref.exitOpen))
}

// compareRuns requires the same correlation from one shard and from many:
// the same links, and the same Scope fields on every event.
func compareRuns(t *testing.T, a, b *erlRun) {
	t.Helper()
	if len(a.links) != len(b.links) {
		t.Fatalf("links: %d with one shard, %d with sixteen", len(a.links), len(b.links))
	}
	for k, lt := range a.links {
		if b.links[k] != lt {
			t.Fatalf("link %s -> %s: %s with one shard, %s with sixteen", k[0], k[1], lt, b.links[k])
		}
	}
	for id, x := range a.events {
		y := b.events[id]
		if x.CorrelationID != y.CorrelationID || x.ParentID != y.ParentID || x.RootID != y.RootID ||
			x.Outcome != y.Outcome || x.DurationNs != y.DurationNs || x.Orphan != y.Orphan {
			t.Fatalf("event %s differs:\none shard %+v\nsixteen   %+v", id, x, y)
		}
	}
	if len(a.closed) != len(b.closed) {
		t.Fatalf("closed frames: %d vs %d", len(a.closed), len(b.closed))
	}
	for k, v := range a.closed {
		if b.closed[k] != v {
			t.Fatalf("closed frame %s: %+v vs %+v", k, v, b.closed[k])
		}
	}
}
