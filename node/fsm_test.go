package node

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// The FSM's state after a log is a pure function of the log: hashicorp/raft
// hands committed entries to ApplyBatch in groups that differ between the
// leader, a follower and a replay, so every grouping must give the same
// store span and the same correlator. These tests drive the FSM directly
// (a log in, a state out) on real Pebble stores in memory.

const fsmTestShards = 2

// fsmTestConfig is shard 0's correlator configuration with a small dedup
// window, so that random logs retry ids after they left it.
func fsmTestConfig(window int) correlate.Config {
	cfg := correlate.DefaultConfig(0, fsmTestShards)
	cfg.DedupWindow = window
	cfg.NoticeTTL = 50 * time.Millisecond // log time: pending entries expire within a log
	return cfg
}

func openFSM(t testing.TB, cfg correlate.Config) *shardFSM {
	t.Helper()
	return newFSMOn(t, openFSMStore(t), cfg)
}

func openFSMStore(t testing.TB) *store.Store {
	t.Helper()
	o := store.DefaultOptions()
	o.FS = vfs.NewMem()
	o.Logger = slog.New(slog.DiscardHandler)
	o.BucketShift = 20 // ~1 ms buckets: a log spans many, and retention cuts inside one
	o.MemTableSize = 1 << 20
	o.CacheSize = 1 << 20
	st, err := store.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newFSMOn returns a fresh FSM on st, whose shard span is emptied first
// (cheaper than opening a store per run).
func newFSMOn(t testing.TB, st *store.Store, cfg correlate.Config) *shardFSM {
	t.Helper()
	if err := st.DeleteShard(cfg.Shard); err != nil {
		t.Fatal(err)
	}
	f, err := newShardFSM(cfg.Shard, st, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// applyGrouped applies log to f in the groups given by cuts (the indexes
// where a new ApplyBatch call starts) and fails the test on any response
// that is not a plain success or a skipped undecodable entry.
func applyGrouped(t testing.TB, f *shardFSM, log []*raft.Log, cuts []int) {
	t.Helper()
	start := 0
	for _, end := range append(cuts, len(log)) {
		if end <= start {
			continue
		}
		for i, r := range f.ApplyBatch(log[start:end]) {
			if ar, ok := r.(ApplyResult); ok && ar.Err != nil && !isBadEntry(log[start+i]) {
				t.Fatalf("entry %d (index %d): %v", start+i, log[start+i].Index, ar.Err)
			}
		}
		start = end
	}
	if _, _, failed := f.Status(); failed != nil {
		t.Fatalf("replica stopped: %v", failed)
	}
}

func isBadEntry(l *raft.Log) bool {
	if l.Type != raft.LogCommand {
		return false
	}
	_, err := decodeEntry(l.Data)
	return err != nil
}

// fsmState is everything a replica holds for a shard: the store span as
// records per section, and the live correlator's own snapshot.
type fsmState struct {
	sections map[byte][][2][]byte
	corr     []correlate.StateRecord
	stream   []byte
}

func captureFSM(t testing.TB, f *shardFSM) fsmState {
	t.Helper()
	var buf bytes.Buffer
	if err := f.store.ExportShard(f.shard, &buf); err != nil {
		t.Fatal(err)
	}
	s := fsmState{sections: map[byte][][2][]byte{}, stream: buf.Bytes()}
	// Parse the stream (store/span.go): header, then uvarint-prefixed key
	// suffixes and values until a zero-length key.
	b := buf.Bytes()[len("SCOPESPN")+1+1+4:]
	for {
		kl, n := binary.Uvarint(b)
		b = b[n:]
		if kl == 0 {
			break
		}
		k := b[:kl]
		b = b[kl:]
		vl, n := binary.Uvarint(b)
		b = b[n:]
		v := b[:vl]
		b = b[vl:]
		s.sections[k[0]] = append(s.sections[k[0]], [2][]byte{k, v})
	}
	f.mu.Lock()
	s.corr = f.corr.Snapshot()
	f.mu.Unlock()
	return s
}

// diffFSM returns "" when a and b are byte-identical, else where they first
// differ.
func diffFSM(a, b fsmState) string {
	for sec := range 256 {
		x, y := a.sections[byte(sec)], b.sections[byte(sec)]
		for i := range max(len(x), len(y)) {
			switch {
			case i >= len(x):
				return fmt.Sprintf("section %02x: record %d only in the second: %x", sec, i, y[i][0])
			case i >= len(y):
				return fmt.Sprintf("section %02x: record %d only in the first: %x", sec, i, x[i][0])
			case !bytes.Equal(x[i][0], y[i][0]) || !bytes.Equal(x[i][1], y[i][1]):
				return fmt.Sprintf("section %02x: record %d: %x=%x vs %x=%x", sec, i, x[i][0], x[i][1], y[i][0], y[i][1])
			}
		}
	}
	if len(a.corr) != len(b.corr) {
		return fmt.Sprintf("correlator snapshot: %d records vs %d", len(a.corr), len(b.corr))
	}
	for i := range a.corr {
		if !bytes.Equal(a.corr[i].Key, b.corr[i].Key) || !bytes.Equal(a.corr[i].Value, b.corr[i].Value) {
			return fmt.Sprintf("correlator snapshot: record %d: %x vs %x", i, a.corr[i].Key, b.corr[i].Key)
		}
	}
	if !bytes.Equal(a.stream, b.stream) {
		return "exported span streams differ"
	}
	return ""
}

// logGen builds a random log of every kind of entry the FSM applies:
// events of every kind (nested calls, returns, exceptions, messages to and
// from the other shard, spawns, exits, state changes), retried events
// (within and beyond the dedup window), malformed events, notices from
// the other shard, acknowledgements of this shard's outbox, retention
// rules (count and age), leader no-ops and undecodable entries.
type logGen struct {
	rng     *rand.Rand
	ts      int64 // event clock (ns); buckets are 2^20 ns
	logTime int64
	index   uint64
	sent    []correlate.EventID // SENDs to the other shard: outbox entries to acknowledge
	noticed []correlate.EventID // ids of notices from the other shard
	past    []correlate.Event   // every event generated: retry candidates
	procs   []correlate.Process // processes of shard 0
	remote  correlate.Process   // a process of shard 1
	log     []*raft.Log
}

func newLogGen(seed uint64) *logGen {
	g := &logGen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), ts: 1 << 30, logTime: 1 << 40}
	for i := 0; len(g.procs) < 4 || g.remote.PID == ""; i++ {
		p := correlate.Process{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		switch correlate.ShardOf(p.Origin, p.PID, fsmTestShards) {
		case 0:
			if len(g.procs) < 4 {
				g.procs = append(g.procs, p)
			}
		default:
			g.remote = p
		}
	}
	return g
}

func (g *logGen) id(ts int64) correlate.EventID {
	var id correlate.EventID
	_ = id.SetTime(uint64(ts / 1e6))
	var entropy [10]byte
	binary.BigEndian.PutUint64(entropy[:8], g.rng.Uint64())
	binary.BigEndian.PutUint16(entropy[8:], uint16(g.rng.Uint32()))
	_ = id.SetEntropy(entropy[:])
	return id
}

func (g *logGen) event() correlate.Event {
	g.ts += g.rng.Int64N(1 << 18)
	ts := g.ts
	if g.rng.IntN(10) == 0 {
		ts -= g.rng.Int64N(1 << 20) // a late event, into an older bucket
	}
	p := g.procs[g.rng.IntN(len(g.procs))]
	e := correlate.Event{ID: g.id(ts), Origin: p.Origin, PID: p.PID, TimestampNs: ts,
		Module: "m", Function: fmt.Sprintf("f%d", g.rng.IntN(3)), Arity: 1}
	peer := g.procs[g.rng.IntN(len(g.procs))]
	if g.rng.IntN(2) == 0 {
		peer = g.remote
	}
	payload := fmt.Sprintf("{msg,%d}", g.rng.IntN(4))
	switch r := g.rng.IntN(20); {
	case r < 7:
		e.Kind = correlate.KindCall
	case r < 12:
		e.Kind = correlate.KindReturn
	case r < 13:
		e.Kind, e.Reason = correlate.KindException, "badarg"
	case r < 15:
		e.Kind, e.PeerOrigin, e.PeerPID, e.Payload = correlate.KindSend, peer.Origin, peer.PID, payload
		if peer == g.remote {
			g.sent = append(g.sent, e.ID)
		}
	case r < 17:
		e.Kind, e.Payload = correlate.KindReceive, payload
	case r < 18:
		e.Kind, e.PeerOrigin, e.PeerPID = correlate.KindSpawn, peer.Origin, peer.PID
	case r < 19:
		e.Kind, e.Reason = correlate.KindExit, "normal"
	default:
		e.Kind = correlate.KindStateChange
	}
	g.past = append(g.past, e)
	return e
}

func (g *logGen) add(typ raft.LogType, data []byte) {
	g.index++
	g.log = append(g.log, &raft.Log{Index: g.index, Term: 1, Type: typ, Data: data})
}

func (g *logGen) entry() {
	g.logTime += g.rng.Int64N(int64(20 * time.Millisecond))
	if g.rng.IntN(8) == 0 {
		g.logTime -= int64(5 * time.Millisecond) // a leader with a slower clock
	}
	b := correlate.Batch{LogTime: g.logTime}
	switch r := g.rng.IntN(20); {
	case r == 0:
		g.add(raft.LogNoop, nil)
		return
	case r == 1:
		g.add(raft.LogCommand, []byte{entryVersion, 0xff, 0xff, 0xff}) // undecodable: skipped everywhere
		return
	case r < 5:
		b.Retention = &correlate.Retention{MaxEvents: uint64(5 + g.rng.IntN(40))}
		if g.rng.IntN(3) == 0 {
			b.Retention = &correlate.Retention{BeforeNs: g.ts - g.rng.Int64N(1<<22)}
		}
		if g.rng.IntN(2) == 0 {
			b.Events = append(b.Events, g.event()) // a rule and events in one entry
		}
	case r < 7:
		for range 1 + g.rng.IntN(3) {
			ts := g.ts - g.rng.Int64N(1<<19)
			b.Notices = append(b.Notices, correlate.Notice{Kind: correlate.NoticeSend, EventID: g.id(ts),
				FromShard: 1, ToShard: 0, Sender: g.remote, Receiver: g.procs[g.rng.IntN(len(g.procs))],
				MessageHash: xxhash.Sum64String(fmt.Sprintf("{msg,%d}", g.rng.IntN(4))), TimestampNs: ts})
			g.noticed = append(g.noticed, b.Notices[len(b.Notices)-1].EventID)
		}
		for range g.rng.IntN(3) {
			if len(g.sent) > 0 {
				b.Acked = append(b.Acked, g.sent[g.rng.IntN(len(g.sent))])
			}
		}
	default:
		for range 1 + g.rng.IntN(8) {
			switch r := g.rng.IntN(30); {
			case r < 3 && len(g.past) > 0: // a client retry, recent or old
				b.Events = append(b.Events, g.past[g.rng.IntN(len(g.past))])
			case r == 4 && len(g.noticed) > 0: // an id also used on the other shard
				e := g.event()
				e.ID = g.noticed[g.rng.IntN(len(g.noticed))]
				b.Events = append(b.Events, e)
			case r == 3: // malformed content (an older/newer node, or a bug)
				e := g.event()
				g.past = g.past[:len(g.past)-1]
				if g.rng.IntN(2) == 0 {
					e.Kind = correlate.KindUnspecified
				} else {
					e.ID = correlate.EventID{}
				}
				b.Events = append(b.Events, e)
			default:
				b.Events = append(b.Events, g.event())
			}
		}
	}
	g.add(raft.LogCommand, encodeEntry(&b))
}

// randomCuts returns the start indexes of a random grouping of n entries.
func randomCuts(rng *rand.Rand, n int) []int {
	var cuts []int
	p := 1 + rng.IntN(4)
	for i := 1; i < n; i++ {
		if rng.IntN(p) == 0 {
			cuts = append(cuts, i)
		}
	}
	return cuts
}

// TestApplyIsIndependentOfGrouping applies random logs with many random
// groupings and requires byte-identical store spans and correlators: the
// grouping raft happens to use must not matter.
func TestApplyIsIndependentOfGrouping(t *testing.T) {
	seeds, groupings := 6, 5
	if testing.Short() {
		seeds = 2
	}
	for seed := range uint64(seeds) {
		st := openFSMStore(t)
		g := newLogGen(seed)
		for range 80 {
			g.entry()
		}
		cfg := fsmTestConfig(16)
		ref := newFSMOn(t, st, cfg)
		single := make([]int, len(g.log))
		for i := range single {
			single[i] = i
		}
		applyGrouped(t, ref, g.log, single) // one entry per call
		want := captureFSM(t, ref)
		rng := rand.New(rand.NewPCG(seed, 7))
		for k := range groupings {
			var cuts []int
			if k > 0 { // k == 0: the whole log in one call
				cuts = randomCuts(rng, len(g.log))
			}
			f := newFSMOn(t, st, cfg)
			applyGrouped(t, f, g.log, cuts)
			if d := diffFSM(want, captureFSM(t, f)); d != "" {
				t.Fatalf("seed %d, grouping %v: state differs from one entry per apply: %s", seed, cuts, d)
			}
		}
	}
}

// TestRetentionCountsOnlyEarlierEntries is the smallest divergence: entries
// {10 events}, {MaxEvents 10}, {5 events} keep 15 events, however raft
// groups them.
func TestRetentionCountsOnlyEarlierEntries(t *testing.T) {
	g := newLogGen(1)
	batch := func(n int) {
		b := correlate.Batch{LogTime: g.logTime}
		for range n {
			e := g.event()
			e.Kind = correlate.KindStateChange
			b.Events = append(b.Events, e)
		}
		g.add(raft.LogCommand, encodeEntry(&b))
	}
	batch(10)
	g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime, Retention: &correlate.Retention{MaxEvents: 10}}))
	batch(5)
	for _, cuts := range [][]int{{1, 2}, {1}, {2}, nil} {
		f := openFSM(t, fsmTestConfig(1024))
		applyGrouped(t, f, g.log, cuts)
		st, err := f.store.Stats(0)
		if err != nil {
			t.Fatal(err)
		}
		if st.Events != 15 {
			t.Errorf("grouping %v: %d events stored, want 15", cuts, st.Events)
		}
	}
}

// TestDuplicateAfterWindowChangesNothing retries a RETURN after its id left
// the correlator's dedup window: the retry must change nothing — not the
// still-open outer frame, not the store — so the state equals that of the
// same log without the retry, and the retry is counted as a duplicate.
func TestDuplicateAfterWindowChangesNothing(t *testing.T) {
	const window = 4
	build := func(retry bool) []*raft.Log {
		g := newLogGen(3)
		p := g.procs[0]
		ev := func(kind correlate.Kind, f string) correlate.Event {
			g.ts += 1000
			return correlate.Event{ID: g.id(g.ts), Origin: p.Origin, PID: p.PID, Kind: kind,
				TimestampNs: g.ts, Module: "m", Function: f, Arity: 1}
		}
		entry := func(events ...correlate.Event) {
			g.logTime += int64(time.Millisecond)
			g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime, Events: events}))
		}
		outer, inner := ev(correlate.KindCall, "outer"), ev(correlate.KindCall, "inner")
		innerRet := ev(correlate.KindReturn, "inner")
		entry(outer, inner, innerRet)
		for range 2 * window { // other processes' events push innerRet out of the window
			e := g.event()
			e.Origin, e.PID, e.Kind = "app@h", g.procs[1].PID, correlate.KindStateChange
			entry(e)
		}
		outerRet := ev(correlate.KindReturn, "outer")
		if retry {
			entry(innerRet, outerRet)
		} else {
			entry(outerRet)
		}
		return g.log
	}
	without := openFSM(t, fsmTestConfig(window))
	applyGrouped(t, without, build(false), nil)
	with := openFSM(t, fsmTestConfig(window))
	applyGrouped(t, with, build(true), nil)
	if d := diffFSM(captureFSM(t, without), captureFSM(t, with)); d != "" {
		t.Fatalf("a retry older than the dedup window changed the state: %s", d)
	}
	_, a, _ := without.Status()
	_, b, _ := with.Status()
	if b.Duplicates != a.Duplicates+1 {
		t.Fatalf("duplicates counted: %d with the retry, %d without; want one more", b.Duplicates, a.Duplicates)
	}
}

// TestMalformedContentIsSkippedAndCounted: an event no replica can store
// (kind UNSPECIFIED, all-zero id) is skipped and counted as malformed on
// apply — the replica keeps applying, the entry's other events are stored,
// and so are later entries.
func TestMalformedContentIsSkippedAndCounted(t *testing.T) {
	g := newLogGen(4)
	good := func() correlate.Event { e := g.event(); e.Kind = correlate.KindStateChange; return e }
	noKind, noID := good(), good()
	noKind.Kind = correlate.KindUnspecified
	noID.ID = correlate.EventID{}
	first := good()
	g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime, Events: []correlate.Event{noKind, first, noID}}))
	later := good()
	g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime, Events: []correlate.Event{later}}))

	f := openFSM(t, fsmTestConfig(64))
	resp := f.ApplyBatch(g.log[:1])
	if r := resp[0].(ApplyResult); r.Err != nil || r.Counters.Malformed != 2 || r.Counters.Events != 1 {
		t.Fatalf("entry with malformed events: %+v, want no error, 2 malformed, 1 event", r)
	}
	resp = f.ApplyBatch(g.log[1:])
	if r := resp[0].(ApplyResult); r.Err != nil {
		t.Fatalf("later entry: %v", r.Err)
	}
	applied, totals, failed := f.Status()
	if failed != nil || applied != 2 || totals.Malformed != 2 {
		t.Fatalf("status: applied %d, malformed %d, failed %v; want 2, 2, nil", applied, totals.Malformed, failed)
	}
	for _, e := range []correlate.Event{first, later} {
		if _, err := f.store.Get(0, e.ID); err != nil {
			t.Fatalf("event %s not stored: %v", e.ID, err)
		}
	}
}

// TestUnknownEntryVersionStopsTheReplica: an entry whose version this build
// does not read was written by a newer leader, and the replicas that read it
// apply it: skipping it would diverge from them (D34). The replica stops at
// it, with what precedes it stored, while an entry of a known version that
// does not decode (the same bytes everywhere, the same decoder) is skipped.
func TestUnknownEntryVersionStopsTheReplica(t *testing.T) {
	g := newLogGen(5)
	e := g.event()
	e.Kind = correlate.KindStateChange
	g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime, Events: []correlate.Event{e}}))
	g.add(raft.LogCommand, []byte{entryVersion, 0xff, 0xff, 0xff})
	g.add(raft.LogCommand, []byte{reshardEntryVersion + 1, 1, 2, 3})

	f := openFSM(t, fsmTestConfig(64))
	resp := f.ApplyBatch(g.log[:2])
	if r := resp[1].(ApplyResult); !errors.Is(r.Err, ErrBadEntry) {
		t.Fatalf("undecodable entry of a known version: %v, want ErrBadEntry", r.Err)
	}
	if _, _, failed := f.Status(); failed != nil {
		t.Fatalf("an undecodable entry of a known version stopped the replica: %v", failed)
	}
	resp = f.ApplyBatch(g.log[2:])
	if r := resp[0].(ApplyResult); !errors.Is(r.Err, ErrEntryVersion) || !errors.Is(r.Err, ErrReplicaFailed) {
		t.Fatalf("entry of an unknown version: %v, want ErrEntryVersion and ErrReplicaFailed", r.Err)
	}
	applied, _, failed := f.Status()
	if !errors.Is(failed, ErrEntryVersion) || applied != 2 {
		t.Fatalf("status: applied %d, failed %v; want stopped at 2", applied, failed)
	}
	// Stopped for good: nothing after it is applied.
	g.add(raft.LogCommand, encodeEntry(&correlate.Batch{LogTime: g.logTime}))
	if r := f.ApplyBatch(g.log[3:])[0].(ApplyResult); !errors.Is(r.Err, ErrReplicaFailed) {
		t.Fatalf("entry after the stop: %v, want ErrReplicaFailed", r.Err)
	}
	if _, err := f.store.Get(0, e.ID); err != nil {
		t.Fatalf("the event before the unknown entry was not stored: %v", err)
	}
}
