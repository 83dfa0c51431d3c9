package correlate

import (
	"bytes"
	"errors"
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
	inFlight []flying // notices produced, not yet delivered
	stats    struct{ rerouted, refusedNotices, chunks, forwarded int }
}

type flying struct {
	n     Notice
	owner uint32 // the shard whose outbox holds it (acknowledged there)
}

func newReshardSim(t *testing.T, base uint32, most uint32) *reshardSim {
	s := &reshardSim{t: t, base: base, cors: make([]*Correlator, most), router: Layout{base, base}, newest: Layout{base, base}, run: newErlRun()}
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
	s.run.add(s.t, res)
	return res
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
	t.Logf("%d → %d shards: %d events rerouted, %d notices refused while awaiting, %d forwarded, %d handoff chunks",
		base, base<<doublings, s.stats.rerouted, s.stats.refusedNotices, s.stats.forwarded, s.stats.chunks)
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
