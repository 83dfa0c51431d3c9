package correlate

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// reshardSim is a cluster of correlators that reshards while a trace is fed
// to it, the way the node does it: a split at one point of each parent's
// log, handoff chunks adopted by the child one entry at a time, rerouted
// events sent on to their owner (and again while it awaits its handoff,
// until it has it), notices delivered a round late and delivered again
// when refused, and a router whose layout lags or leads the shards'.
type reshardSim struct {
	t        *testing.T
	base     uint32
	cors     []*Correlator // by shard; nil until created
	router   Layout        // what ingest routes by
	newest   Layout        // the newest layout any shard has (the node's)
	run      *erlRun
	inFlight []flying           // notices produced, not yet delivered
	storedOn map[EventID]uint32 // the shard that stored each event
	stats    struct{ rerouted, refusedNotices, chunks, forwarded, records int }
}

type flying struct {
	n     Notice
	owner uint32 // the shard whose outbox holds it (acknowledged there)
}

func newReshardSim(t *testing.T, base uint32, most uint32) *reshardSim {
	s := &reshardSim{t: t, base: base, cors: make([]*Correlator, most), router: Layout{base, base}, newest: Layout{base, base},
		run: newErlRun(), storedOn: map[EventID]uint32{}}
	for i := range base {
		s.create(i)
	}
	return s
}

func (s *reshardSim) create(shard uint32) {
	c, err := New(DefaultConfig(shard, s.base))
	if err != nil {
		s.t.Fatal(err)
	}
	s.cors[shard] = c
}

// apply applies b on shard and records the result; produced notices fly.
func (s *reshardSim) apply(shard uint32, b Batch) Result {
	s.t.Helper()
	res := s.cors[shard].Apply(b)
	if res.ReshardErr != nil {
		s.t.Fatalf("shard %d: %v", shard, res.ReshardErr)
	}
	for _, n := range res.Outbox {
		s.inFlight = append(s.inFlight, flying{n, shard})
	}
	s.stats.forwarded += int(res.Counters.NoticesForwarded)
	s.stats.records += int(res.Counters.RecordsForwarded)
	s.checkRecordsStored(shard, &res)
	s.run.add(s.t, res)
	return res
}

// checkRecordsStored fails unless every record of res has an event stored
// on shard to hang on, as the store requires (store.applier's locate): a
// frame end its CALL, an edge its source or (from another shard) its
// target. A record about an event stored before a split must have been
// forwarded to the shard that stored it, not kept by the child.
func (s *reshardSim) checkRecordsStored(shard uint32, res *Result) {
	s.t.Helper()
	for _, e := range res.Events {
		s.storedOn[e.ID] = shard
	}
	stored := func(id EventID) bool {
		on, ok := s.storedOn[id]
		return ok && on == shard
	}
	for _, f := range res.Closed {
		if !stored(f.Call) {
			s.t.Fatalf("shard %d records the end of frame %s, whose CALL is stored on shard %d", shard, f.Call, s.storedOn[f.Call])
		}
	}
	for _, e := range res.Edges {
		if e.FromOtherShard == stored(e.From) || !stored(e.From) && !stored(e.To) {
			s.t.Fatalf("shard %d records the link %s -%s-> %s (from another shard: %t), stored on shards %d and %d",
				shard, e.From, e.Type, e.To, e.FromOtherShard, s.storedOn[e.From], s.storedOn[e.To])
		}
	}
}

// ingest applies evs on the shards the router sends them to, and sends
// every rerouted event on until it is applied, adopting handoff chunks
// when the owner awaits them (a client waits for its acknowledgement,
// which waits for the reroute, before sending more).
func (s *reshardSim) ingest(evs []Event, now int64, route Layout) {
	per := map[uint32][]Event{}
	var order []uint32
	for _, e := range evs {
		sh := route.ShardOf(e.Origin, e.PID)
		if per[sh] == nil {
			order = append(order, sh)
		}
		per[sh] = append(per[sh], e)
	}
	for _, sh := range order {
		res := s.apply(sh, Batch{LogTime: now, Events: per[sh]})
		if len(res.Rerouted) > 0 {
			s.stats.rerouted += len(res.Rerouted)
			owner := s.newest.ShardOf(res.Rerouted[0].Origin, res.Rerouted[0].PID)
			for s.cors[owner].awaiting() {
				// The reroute retries until the owner has its state; the
				// coordinator meanwhile splits its parent (if it has not
				// yet) and the handoff proceeds.
				parent, _ := s.newest.Parent(owner)
				to := s.base
				for to <= owner {
					to *= 2
				}
				s.split(parent, to, now)
				s.handoffStep(now)
			}
			s.ingest(res.Rerouted, now, s.newest)
		}
	}
}

// split splits shard into the layout of to shards, unless it has already
// (the coordinator splits each shard once per doubling).
func (s *reshardSim) split(shard, to uint32, now int64) {
	c := s.cors[shard]
	if c.Layout().Shards >= to {
		return
	}
	next := c.Layout().Doubled()
	s.apply(shard, Batch{LogTime: now, Split: next.Shards})
	if next.Shards > s.newest.Shards {
		s.newest = next
	}
}

// handoffStep delivers one handoff chunk of every parent that has some,
// and confirms it to the parent once adopted.
func (s *reshardSim) handoffStep(now int64) {
	for sh, c := range s.cors {
		if c == nil {
			continue
		}
		hs := c.Handoffs()
		if len(hs) == 0 {
			continue
		}
		h := hs[0]
		child := s.cors[h.Child]
		if got := child.Reshard().Adopted; got == h.Chunk {
			s.apply(h.Child, Batch{LogTime: now, Adopt: &Adoption{From: uint32(sh), Chunk: h.Chunk, Of: h.Of, Records: h.Records}})
			s.stats.chunks++
		}
		if child.Reshard().Adopted > h.Chunk {
			s.apply(uint32(sh), Batch{LogTime: now, HandedOff: []uint64{h.Seq}})
		}
	}
}

// deliver delivers the notices in flight; those a child awaiting its
// handoff refuses fly again.
func (s *reshardSim) deliver(now int64) {
	flights := s.inFlight
	s.inFlight = nil
	byDest := map[uint32][]flying{}
	var order []uint32
	for _, f := range flights {
		if byDest[f.n.ToShard] == nil {
			order = append(order, f.n.ToShard)
		}
		byDest[f.n.ToShard] = append(byDest[f.n.ToShard], f)
	}
	acks := map[uint32][]EventID{}
	for _, dest := range order {
		fs := byDest[dest]
		ns := make([]Notice, len(fs))
		for i, f := range fs {
			ns[i] = f.n
		}
		res := s.apply(dest, Batch{LogTime: now, Notices: ns})
		if res.NoticesRefused > 0 {
			s.stats.refusedNotices += res.NoticesRefused
			s.inFlight = append(s.inFlight, fs...)
			continue
		}
		for _, f := range fs {
			acks[f.owner] = append(acks[f.owner], f.n.EventID)
		}
	}
	for sh, a := range acks {
		s.apply(sh, Batch{LogTime: now, Acked: a})
	}
}

// runResharded feeds evs to base shards and doubles the layout doublings
// times while it runs: each doubling creates the children, splits the
// parents over three rounds (so notices and reroutes cross shards of both
// layouts), and moves the router to the new layout in the middle of it.
func runResharded(t *testing.T, evs []Event, base uint32, doublings int) (*erlRun, *reshardSim) {
	s := newReshardSim(t, base, base<<doublings)
	rounds := (len(evs) + erlBatch - 1) / erlBatch
	start := map[int]int{} // round → doubling that starts there
	for k := range doublings {
		start[(k+1)*rounds/(doublings+2)] = k
	}
	type split struct{ parent, to uint32 }
	splits := map[int][]split{} // round → parents that split then
	for r := range rounds {
		chunk := evs[r*erlBatch : min((r+1)*erlBatch, len(evs))]
		now := logTime(chunk)
		if k, ok := start[r]; ok {
			cur := Layout{base, base << k}
			for p := range cur.Shards {
				s.create(p + cur.Shards)
				splits[r+int(p%3)] = append(splits[r+int(p%3)], split{p, 2 * cur.Shards})
			}
		}
		for _, sp := range splits[r] {
			s.split(sp.parent, sp.to, now)
		}
		if _, ok := start[r-1]; ok {
			s.router = s.newest // the router learns the new layout mid-split
		}
		s.ingest(chunk, now, s.router)
		s.deliver(now)
		s.handoffStep(now)
	}
	now := logTime(evs)
	for i := 0; len(s.inFlight) > 0 || s.handoffsLeft(); i++ {
		if i > 1000 {
			t.Fatal("notices or handoffs never settle")
		}
		s.deliver(now)
		s.handoffStep(now)
	}
	for sh, c := range s.cors {
		if c == nil {
			t.Fatalf("shard %d never created", sh)
		}
		if c.Reshard().Awaiting || c.Layout().Shards != base<<doublings {
			t.Fatalf("shard %d: %+v", sh, c.Reshard())
		}
		if n := len(c.Outbox()); n != 0 {
			t.Fatalf("shard %d: %d notices left in the outbox", sh, n)
		}
	}
	t.Logf("%d → %d shards: %d events rerouted, %d notices refused while awaiting, %d forwarded, %d records forwarded, %d handoff chunks",
		base, base<<doublings, s.stats.rerouted, s.stats.refusedNotices, s.stats.forwarded, s.stats.records, s.stats.chunks)
	return s.run, s
}

func (s *reshardSim) handoffsLeft() bool {
	for _, c := range s.cors {
		if c != nil && len(c.Handoffs()) > 0 {
			return true
		}
	}
	return false
}

// Resharding a running cluster changes no answer: every event of the real
// BEAM traces is applied once, every return completes its call, every
// receive pairs with its send, and the links, parents and closed frames
// equal those of one shard, through two doublings with the router moving
// mid-split and handoffs in many small chunks.
func TestReshardingMidTraceChangesNoAnswer(t *testing.T) {
	defer func(n int) { handoffChunkBytes = n }(handoffChunkBytes)
	handoffChunkBytes = 2 << 10
	paths, err := filepath.Glob(filepath.Join("testdata", "erlang", "*.jsonl"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures in testdata/erlang (%v)", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			evs := loadErlang(t, path)
			ref := reference(t, evs)
			one := runOneShard(t, evs)
			for _, base := range []uint32{1, 4} {
				run, s := runResharded(t, evs, base, 2)
				checkErlang(t, evs, ref, run)
				compareRuns(t, one, run)
				if s.stats.rerouted == 0 || s.stats.chunks <= int(base)*3 {
					t.Fatalf("the run did not exercise rerouting (%d) or chunked handoffs (%d)", s.stats.rerouted, s.stats.chunks)
				}
			}
		})
	}
}

// A split's state records, applied to a key space, equal the parent's
// snapshot; the child's adopted records equal its snapshot; and both
// restore to the same correlators after a restart mid-adoption.
func TestSplitStateIsPersistedExactly(t *testing.T) {
	defer func(n int) { handoffChunkBytes = n }(handoffChunkBytes)
	handoffChunkBytes = 1 << 10
	evs := loadErlang(t, filepath.Join("testdata", "erlang", "small.jsonl"))
	half := evs[:len(evs)/2]
	parent, _ := New(DefaultConfig(0, 1))
	pkv := map[string][]byte{}
	persist(pkv, parent.Apply(Batch{LogTime: logTime(half), Events: append([]Event(nil), half...)}).State)
	res := parent.Apply(Batch{LogTime: logTime(half), Split: 2})
	if res.ReshardErr != nil {
		t.Fatal(res.ReshardErr)
	}
	persist(pkv, res.State)
	checkPersisted(t, pkv, parent)
	hs := parent.Handoffs()
	if len(hs) < 3 || parent.Layout() != (Layout{1, 2}) {
		t.Fatalf("%d chunks, layout %v", len(hs), parent.Layout())
	}

	child, _ := New(DefaultConfig(1, 1))
	ckv := map[string][]byte{}
	for i, h := range hs {
		if i == len(hs)/2 { // restart mid-adoption
			child, _ = New(DefaultConfig(1, 1))
			if err := child.Restore(kvRecords(ckv)); err != nil {
				t.Fatal(err)
			}
			if st := child.Reshard(); !st.Awaiting || st.Adopted != uint32(i) {
				t.Fatalf("restored mid-adoption: %+v", st)
			}
		}
		res := child.Apply(Batch{LogTime: logTime(half), Adopt: &Adoption{From: 0, Chunk: h.Chunk, Of: h.Of, Records: h.Records}})
		if res.ReshardErr != nil {
			t.Fatal(res.ReshardErr)
		}
		persist(ckv, res.State)
		checkPersisted(t, ckv, child)
		// A repeat changes nothing and says why.
		if res := child.Apply(Batch{LogTime: logTime(half), Adopt: &Adoption{From: 0, Chunk: h.Chunk, Of: h.Of, Records: h.Records}}); !errors.Is(res.ReshardErr, ErrReshard) {
			t.Fatalf("repeated chunk: %v", res.ReshardErr)
		}
	}
	if st := child.Reshard(); st.Awaiting || st.Layout != (Layout{1, 2}) {
		t.Fatalf("child after adoption: %+v", st)
	}
	// Every process is on exactly one side, on the side the layout says.
	for _, side := range []*Correlator{parent, child} {
		for _, p := range side.procs.appendAll(nil) {
			if got := side.layout.ShardOf(p.key.Origin, p.key.PID); got != side.cfg.Shard {
				t.Fatalf("shard %d holds %s, owned by %d", side.cfg.Shard, p.key, got)
			}
		}
	}
	if parent.procs.len()+child.procs.len() == 0 || parent.procs.len() == 0 || child.procs.len() == 0 {
		t.Fatalf("processes: parent %d, child %d", parent.procs.len(), child.procs.len())
	}
	seqs := make([]uint64, len(hs))
	for i, h := range hs {
		seqs[i] = h.Seq
	}
	res = parent.Apply(Batch{LogTime: logTime(half), HandedOff: seqs})
	persist(pkv, res.State)
	checkPersisted(t, pkv, parent)
	if len(parent.Handoffs()) != 0 {
		t.Fatal("handoffs left after confirmation")
	}
	// Splitting again needs the new count, and works once confirmed.
	if res := parent.Apply(Batch{Split: 2}); !errors.Is(res.ReshardErr, ErrReshard) {
		t.Fatalf("split to the same count: %v", res.ReshardErr)
	}
	if res := parent.Apply(Batch{Split: 4}); res.ReshardErr != nil {
		t.Fatal(res.ReshardErr)
	}
}

// The first preparation of a split is reported, once, whichever entry
// repeats it, and persists across a restart.
func TestPrepareIsReportedOnce(t *testing.T) {
	c, _ := New(DefaultConfig(1, 4))
	kv := map[string][]byte{}
	res := c.Apply(Batch{Prepare: &Preparation{Shards: 8, Voters: []byte("a")}})
	if res.ReshardErr != nil || res.Prepared == nil || res.Prepared.Child != 5 || string(res.Prepared.Voters) != "a" {
		t.Fatalf("first preparation: %+v, %v", res.Prepared, res.ReshardErr)
	}
	persist(kv, res.State)
	checkPersisted(t, kv, c)
	d, _ := New(DefaultConfig(1, 4))
	if err := d.Restore(kvRecords(kv)); err != nil {
		t.Fatal(err)
	}
	if res := d.Apply(Batch{Prepare: &Preparation{Shards: 8, Voters: []byte("b")}}); res.ReshardErr != nil || res.Prepared != nil {
		t.Fatalf("second preparation after a restart: %+v, %v", res.Prepared, res.ReshardErr)
	}
	if res := d.Apply(Batch{Prepare: &Preparation{Shards: 16}}); !errors.Is(res.ReshardErr, ErrReshard) {
		t.Fatalf("preparing a split that is not the next: %v", res.ReshardErr)
	}
	if d.Reshard().Prepared != 8 {
		t.Fatalf("state %+v", d.Reshard())
	}
}

func TestReshardBatchCodec(t *testing.T) {
	for _, b := range []Batch{
		{LogTime: 5, Split: 32},
		{LogTime: 6, Adopt: &Adoption{From: 3, Chunk: 1, Of: 4, Records: []byte{1, 2, 3}}},
		{LogTime: 7, HandedOff: []uint64{9, 10}, Notices: []Notice{{Kind: NoticeSend, EventID: testID(1, 1)}}},
		{LogTime: 8, Prepare: &Preparation{Shards: 8, Voters: []byte("n1,n2")}},
	} {
		enc := AppendBatch(nil, &b)
		if enc[1] != reshardCodecVersion {
			t.Fatalf("version byte %d", enc[1])
		}
		got, err := DecodeBatch(enc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(AppendBatch(nil, &got), enc) {
			t.Fatalf("round trip of %+v: %+v", b, got)
		}
	}
	plain := AppendBatch(nil, &Batch{LogTime: 1})
	if plain[1] != codecVersion {
		t.Fatal("a batch without a resharding step must stay version 1")
	}
}

// pidOn returns a pid of origin o that the layout places on shard.
func pidOn(t *testing.T, l Layout, o string, shard uint32, skip int) string {
	t.Helper()
	for i := range 10_000 {
		pid := fmt.Sprintf("<0.%d.0>", i)
		if l.ShardOf(o, pid) == shard {
			if skip == 0 {
				return pid
			}
			skip--
		}
	}
	t.Fatalf("no pid on shard %d", shard)
	return ""
}

// What a split child closes or links about its processes' events that the
// parent stored goes to the parent, which stores it as its own: frames
// ended by an EXIT and by the child dropping the process, a RECEIVE that
// waited through the split for its SEND, and a SPAWN of a process whose
// first event the parent stored. Before, the child kept these records,
// and its store dropped them (it holds neither end).
func TestSplitChildForwardsRecordsAboutTheParentsEvents(t *testing.T) {
	s := newReshardSim(t, 1, 2)
	split := Layout{1, 2}
	const o = "node@host"
	exits, waits, spawned, idle := pidOn(t, split, o, 1, 0), pidOn(t, split, o, 1, 1), pidOn(t, split, o, 1, 2), pidOn(t, split, o, 1, 3)
	stays := pidOn(t, split, o, 0, 0)
	ev := func(n uint64, kind Kind, pid string, f func(*Event)) Event {
		e := Event{ID: testID(1, n), Origin: o, PID: pid, Kind: kind, TimestampNs: int64(n) * 1000, Seq: n, Module: "m", Function: "f"}
		if f != nil {
			f(&e)
		}
		return e
	}
	peer := func(pid string, hash uint64) func(*Event) {
		return func(e *Event) { e.PeerOrigin, e.PeerPID, e.MessageHash, e.Module, e.Function = o, pid, hash, "", "" }
	}
	const (
		call1, call2, recv, first, idleCall = 1, 2, 3, 4, 5
		exit, send, spawn                   = 10, 11, 12
	)
	s.ingest([]Event{
		ev(call1, KindCall, exits, nil),
		ev(call2, KindCall, exits, nil),
		ev(recv, KindReceive, waits, peer(stays, 7)),
		ev(first, KindCall, spawned, nil),
		ev(idleCall, KindCall, idle, nil),
	}, 1000, s.router)
	s.create(1)
	s.split(0, 2, 2000)
	for s.handoffsLeft() {
		s.handoffStep(2000)
	}
	// The child's state, with where each event is stored, survives a restart.
	child, err := New(DefaultConfig(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Restore(s.cors[1].Snapshot()); err != nil {
		t.Fatal(err)
	}
	if !recordsEqual(child.Snapshot(), s.cors[1].Snapshot()) {
		t.Fatal("the child's state does not restore to itself")
	}
	s.cors[1] = child

	s.ingest([]Event{
		ev(exit, KindExit, exits, func(e *Event) { e.Module, e.Function = "", "" }),
		// sent before the receive, its event arriving after the split
		ev(send, KindSend, stays, func(e *Event) { peer(waits, 7)(e); e.TimestampNs = recv*1000 - 1 }),
		ev(spawn, KindSpawn, stays, peer(spawned, 0)),
	}, 3000, s.newest)
	for i := 0; len(s.inFlight) > 0; i++ {
		if i > 10 {
			t.Fatal("notices never settle")
		}
		s.deliver(3000)
	}
	// The child drops its idle processes, closing their frames.
	s.apply(1, Batch{LogTime: 3000 + int64(DefaultConfig(1, 1).ProcessTTL) + 1})
	s.deliver(4000)

	id := func(n uint64) EventID { return testID(1, n) }
	for _, want := range []ClosedFrame{
		{Call: id(call2), Outcome: OutcomeProcessExit, EndNs: exit * 1000, By: id(exit)},
		{Call: id(call1), Outcome: OutcomeProcessExit, EndNs: exit * 1000, By: id(exit)},
		{Call: id(first), Outcome: OutcomeAbandoned, EndNs: 3000 + int64(DefaultConfig(1, 1).ProcessTTL) + 1, Reason: AbandonInactivity},
		{Call: id(idleCall), Outcome: OutcomeAbandoned, EndNs: 3000 + int64(DefaultConfig(1, 1).ProcessTTL) + 1, Reason: AbandonInactivity},
	} {
		if got, ok := s.run.closed[want.Call]; !ok || got != want {
			t.Errorf("frame %s: closed %t as %+v, want %+v", want.Call, ok, got, want)
		}
	}
	for _, want := range []struct {
		from, to uint64
		typ      LinkType
	}{
		{recv, send, LinkReceivedFrom}, {send, recv, LinkDeliveredTo},
		{first, spawn, LinkSpawnedBy}, {spawn, first, LinkSpawned},
	} {
		if got := s.run.links[[2]EventID{id(want.from), id(want.to)}]; got != want.typ {
			t.Errorf("link %d -> %d: %s, want %s", want.from, want.to, got, want.typ)
		}
	}
	// checkRecordsStored (in apply) saw each record on the parent; all
	// eight went there as notices.
	if s.stats.records != 8 {
		t.Errorf("%d records forwarded, want 8", s.stats.records)
	}
}
