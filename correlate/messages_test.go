package correlate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// strSpan is the memory range [lo, hi) of the strings of a decoded batch,
// which DecodeBatch cuts from one copy of the raft entry.
type strSpan struct{ lo, hi uintptr }

func (s *strSpan) add(x string) {
	if len(x) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(x)))
	if s.lo == 0 || p < s.lo {
		s.lo = p
	}
	s.hi = max(s.hi, p+uintptr(len(x)))
}

func (s *strSpan) holds(x string) bool {
	p := uintptr(unsafe.Pointer(unsafe.StringData(x)))
	return len(x) > 0 && p >= s.lo && p < s.hi
}

// retainedStrings lists every string the correlator keeps between batches,
// with where it is kept.
func retainedStrings(c *Correlator) map[string][]string {
	out := map[string][]string{}
	add := func(where string, ss ...string) { out[where] = append(out[where], ss...) }
	for _, t := range []*pendingTable{&c.sends, &c.recvs, &c.spawns} {
		for k, ps := range t.byKey {
			add(string(t.tag)+" key", k.recv.Origin, k.recv.PID)
			for _, p := range ps {
				add(string(t.tag)+" entry", p.n.Sender.Origin, p.n.Sender.PID, p.n.Receiver.Origin, p.n.Receiver.PID)
			}
		}
	}
	for _, e := range c.outbox.byID {
		add("outbox", e.n.Sender.Origin, e.n.Sender.PID, e.n.Receiver.Origin, e.n.Receiver.PID)
	}
	for _, p := range c.procs.appendAll(nil) {
		add("process", p.key.Origin, p.key.PID)
		for _, f := range p.frames {
			add("frame", f.callID, f.module, f.function)
		}
	}
	for k, v := range c.interned {
		add("interned", k, v)
	}
	for k, v := range c.funcs {
		add("funcs", k[0], k[1], v[0], v[1])
	}
	return out
}

// TestTablesKeepNoDecodedString applies a batch decoded from one raft entry,
// as the FSM does, and requires that nothing the correlator keeps points
// into that entry's memory: a kept substring would pin the whole decoded
// entry (every payload of every event in it) for as long as the entry that
// holds it waits, invisibly to every byte bound.
func TestTablesKeepNoDecodedString(t *testing.T) {
	c, err := New(DefaultConfig(0, 4))
	if err != nil {
		t.Fatal(err)
	}
	a, b := Process{"a@h", "<0.1.0>"}, Process{"b@h", "<0.2.0>"}
	child := Process{"b@h", "<0.3.0>"}
	var far Process // a receiver owned by another shard: its SEND goes to the outbox
	for i := 0; ; i++ {
		far = Process{"far@h", "<0." + string(rune('a'+i)) + ".0>"}
		if ShardOf(far.Origin, far.PID, 4) != 0 {
			break
		}
	}
	in := Batch{LogTime: 1,
		Notices: []Notice{
			{Kind: NoticeSend, EventID: testID(1, 1), Sender: a, Receiver: b, MessageHash: 7, TimestampNs: 5},
			{Kind: NoticeSpawn, EventID: testID(1, 2), Sender: a, Receiver: child, TimestampNs: 5},
		},
		Events: []Event{
			{ID: testID(2, 1), Origin: "c@h", PID: "<0.4.0>", Kind: KindCall, TimestampNs: 6,
				Module: "m", Function: "f", Arity: 1, CallID: "call-1"},
			{ID: testID(2, 2), Origin: "c@h", PID: "<0.4.0>", Kind: KindReceive, TimestampNs: 7,
				PeerOrigin: "d@h", PeerPID: "<0.5.0>", MessageHash: 8},
			{ID: testID(2, 3), Origin: "c@h", PID: "<0.4.0>", Kind: KindSend, TimestampNs: 8,
				PeerOrigin: far.Origin, PeerPID: far.PID, MessageHash: 9},
		},
	}
	dec, err := DecodeBatch(AppendBatch(nil, &in))
	if err != nil {
		t.Fatal(err)
	}
	var span strSpan
	for _, n := range dec.Notices {
		span.add(n.Sender.Origin)
		span.add(n.Sender.PID)
		span.add(n.Receiver.Origin)
		span.add(n.Receiver.PID)
	}
	for _, e := range dec.Events {
		for _, s := range []string{e.Origin, e.PID, e.Module, e.Function, e.CallID, e.PeerOrigin, e.PeerPID} {
			span.add(s)
		}
	}
	c.Apply(dec)
	if c.sends.order.n != 1 || c.spawns.order.n != 1 || c.recvs.order.n != 1 || c.outbox.order.n != 1 {
		t.Fatalf("setup: %d sends, %d spawns, %d receives, %d outbox notices waiting, want 1 each",
			c.sends.order.n, c.spawns.order.n, c.recvs.order.n, c.outbox.order.n)
	}
	for where, ss := range retainedStrings(c) {
		for _, s := range ss {
			if span.holds(s) {
				t.Errorf("%s keeps %q inside the decoded raft entry", where, s)
			}
		}
	}
}

// TestPendingByteBound fills the receive table with entries of long names
// under a byte bound that holds three of them: the oldest are evicted
// first and counted, the table never holds more than the bound, the charge
// is restored with the state, and the entries left still pair.
func TestPendingByteBound(t *testing.T) {
	cfg := DefaultConfig(0, 1)
	cfg.Limits.MaxNameBytes = 32
	recv := Process{"receiver-origin@some.long.host.name", "<0.1234567.0>"}
	entry := pendingSize(&Notice{Receiver: recv})
	cfg.MaxPendingBytes = 3*entry + entry/2
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var evicted uint64
	for i := range 5 {
		res := c.Apply(Batch{LogTime: 1, Events: []Event{{ID: testID(0, uint64(i+1)), Origin: recv.Origin,
			PID: recv.PID, Kind: KindReceive, TimestampNs: int64(100 + i), MessageHash: uint64(i + 1)}}})
		evicted += res.Counters.PendingEvictions
		if c.recvs.bytes > cfg.MaxPendingBytes {
			t.Fatalf("after %d receives the table holds %d bytes, bound %d", i+1, c.recvs.bytes, cfg.MaxPendingBytes)
		}
	}
	if evicted != 2 || c.recvs.order.n != 3 || c.recvs.bytes != 3*entry {
		t.Fatalf("evicted %d, %d entries of %d bytes waiting; want 2 evicted, 3 entries of %d bytes",
			evicted, c.recvs.order.n, c.recvs.bytes, 3*entry)
	}
	r, _ := New(cfg)
	if err := r.Restore(c.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if r.recvs.bytes != c.recvs.bytes {
		t.Fatalf("restored charge %d bytes, want %d", r.recvs.bytes, c.recvs.bytes)
	}
	// The two oldest receives (hashes 1 and 2) are gone; 3..5 still pair.
	var sends []Event
	for h := range 5 {
		sends = append(sends, Event{ID: testID(1, uint64(h+1)), Origin: recv.Origin, PID: "<0.1.0>", Kind: KindSend,
			TimestampNs: 50, PeerOrigin: recv.Origin, PeerPID: recv.PID, MessageHash: uint64(h + 1)})
	}
	if res := r.Apply(Batch{LogTime: 2, Events: sends}); res.Counters.Matched != 3 {
		t.Fatalf("matched %d receives after the evictions, want 3", res.Counters.Matched)
	}
}

func TestConfigMessageBounds(t *testing.T) {
	cfg := DefaultConfig(0, 1)
	cfg.MaxClockSkew = -1
	if err := cfg.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "MaxClockSkew") {
		t.Fatalf("negative MaxClockSkew: %v", err)
	}
	cfg.MaxClockSkew = 0 // one clock everywhere: allowed
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.MaxPendingBytes = pendingEntryBytes + 4*cfg.Limits.MaxNameBytes - 1
	if err := cfg.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "MaxPendingBytes") {
		t.Fatalf("MaxPendingBytes below one maximal entry: %v", err)
	}
	cfg.MaxPendingBytes++
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.MaxOutboxBytes = cfg.MaxPendingBytes - 1
	if err := cfg.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "MaxOutboxBytes") {
		t.Fatalf("MaxOutboxBytes below one maximal notice: %v", err)
	}
}

// pairsOf returns RECEIVE → SEND for every RECEIVED_FROM link in results.
func pairsOf(rs ...Result) map[EventID]EventID {
	out := map[EventID]EventID{}
	for _, r := range rs {
		for _, e := range r.Events {
			for _, l := range e.Links {
				if l.Type == LinkReceivedFrom {
					out[e.ID] = l.Target
				}
			}
		}
		for _, ed := range r.Edges {
			if ed.Type == LinkReceivedFrom {
				out[ed.From] = ed.To
			}
		}
	}
	return out
}

// TestPairingByTime: two processes send messages with the same hash to one
// receiver (phash2 ignores what tells them apart) and their events reach
// the correlator in another order than they happened. Each case lists the
// events in arrival order, one batch each; ids are named by time order.
func TestPairingByTime(t *testing.T) {
	const h = 77
	a1, a2 := Process{"app@h", "<0.1.0>"}, Process{"app@h", "<0.2.0>"}
	srv := Process{"app@h", "<0.9.0>"}
	far := Process{"other@h", "<0.3.0>"} // another origin: another clock
	send := func(id uint64, from Process, ts int64) Event {
		return Event{ID: testID(0, id), Origin: from.Origin, PID: from.PID, Kind: KindSend, TimestampNs: ts,
			PeerOrigin: srv.Origin, PeerPID: srv.PID, MessageHash: h}
	}
	recv := func(id uint64, ts int64) Event {
		return Event{ID: testID(0, id), Origin: srv.Origin, PID: srv.PID, Kind: KindReceive, TimestampNs: ts, MessageHash: h}
	}
	for _, tc := range []struct {
		name    string
		skew    time.Duration
		arrival []Event
		want    map[uint64]uint64 // receive → send
	}{{
		// a1 sends at 10, srv receives it at 20; a2 sends at 30, srv
		// receives it at 40. a2's tracer is faster: its SEND arrives first.
		name:    "send from the receive's future arrives first",
		arrival: []Event{send(3, a2, 30), recv(2, 20), send(1, a1, 10), recv(4, 40)},
		want:    map[uint64]uint64{2: 1, 4: 3},
	}, {
		name:    "both receives wait, later send arrives first",
		arrival: []Event{recv(2, 20), recv(4, 40), send(3, a2, 30), send(1, a1, 10)},
		want:    map[uint64]uint64{2: 1, 4: 3},
	}, {
		name:    "both sends wait, in reverse order",
		arrival: []Event{send(2, a2, 12), send(1, a1, 10), recv(3, 20), recv(4, 40)},
		want:    map[uint64]uint64{3: 1, 4: 2},
	}, {
		// Two messages in flight together (both sent before either is
		// received): the RECEIVE at 20 arrives with only the SEND at 12
		// present and takes it. Time order would give it the SEND at 10,
		// which has not arrived yet; links are never rewritten, and the
		// mailbox could as well have got the message sent at 12 first.
		name:    "in flight together: the first fitting send to arrive",
		arrival: []Event{send(2, a2, 12), recv(3, 20), send(1, a1, 10), recv(4, 40)},
		want:    map[uint64]uint64{3: 2, 4: 1},
	}, {
		name:    "a receive never takes a send from its future",
		arrival: []Event{send(2, a2, 30), recv(1, 20)},
		want:    map[uint64]uint64{},
	}, {
		name:    "another origin's send within the clock skew fits",
		skew:    5,
		arrival: []Event{send(2, far, 24), recv(1, 20)},
		want:    map[uint64]uint64{1: 2},
	}, {
		name:    "another origin's send beyond the clock skew does not",
		skew:    5,
		arrival: []Event{send(2, far, 26), recv(1, 20)},
		want:    map[uint64]uint64{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig(0, 1)
			cfg.MaxClockSkew = tc.skew
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var rs []Result
			for i, e := range tc.arrival {
				rs = append(rs, c.Apply(Batch{LogTime: int64(i), Events: []Event{e}}))
			}
			want := map[EventID]EventID{}
			for r, s := range tc.want {
				want[testID(0, r)] = testID(0, s)
			}
			if got := pairsOf(rs...); !maps.Equal(got, want) {
				t.Fatalf("pairs (receive → send) %v, want %v", names(got), names(want))
			}
		})
	}
}

func names(m map[EventID]EventID) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[name(k)] = name(v)
	}
	return out
}

// TestOutboxByteBound: SENDs to another shard's processes, with long
// names, under an outbox byte bound that holds three notices: the oldest
// are dropped and counted, the outbox never holds more than the bound,
// and the charge is restored with the state.
func TestOutboxByteBound(t *testing.T) {
	cfg := DefaultConfig(0, 2)
	cfg.Limits.MaxNameBytes = 40
	from := Process{"sender-origin@some.long.host.name", "<0.1234567.0>"}
	var to []Process
	for i := 0; len(to) < 5; i++ {
		p := Process{"receiver-origin@some.long.host.name", "<0." + strings.Repeat("7", 10) + string(rune('a'+i)) + ".0>"}
		if ShardOf(p.Origin, p.PID, 2) == 1 {
			to = append(to, p)
		}
	}
	entry := pendingSize(&Notice{Sender: from, Receiver: to[0]})
	cfg.MaxOutboxBytes = 3*entry + entry/2
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var dropped uint64
	for i, p := range to {
		res := c.Apply(Batch{LogTime: 1, Events: []Event{{ID: testID(0, uint64(i+1)), Origin: from.Origin, PID: from.PID,
			Kind: KindSend, TimestampNs: int64(100 + i), PeerOrigin: p.Origin, PeerPID: p.PID, MessageHash: 1}}})
		dropped += res.Counters.OutboxDropped
		if c.outbox.bytes > cfg.MaxOutboxBytes {
			t.Fatalf("after %d sends the outbox holds %d bytes, bound %d", i+1, c.outbox.bytes, cfg.MaxOutboxBytes)
		}
	}
	out := c.Outbox()
	if dropped != 2 || len(out) != 3 || out[0].EventID != testID(0, 3) || c.outbox.bytes != 3*entry {
		t.Fatalf("dropped %d, %d notices of %d bytes (first %s); want 2 dropped, e3..e5 of %d bytes",
			dropped, len(out), c.outbox.bytes, name(out[0].EventID), 3*entry)
	}
	r, _ := New(cfg)
	if err := r.Restore(c.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if r.outbox.bytes != c.outbox.bytes {
		t.Fatalf("restored charge %d bytes, want %d", r.outbox.bytes, c.outbox.bytes)
	}
}

// TestEdgesSayWhoseSourceIsElsewhere: an edge whose source is a SEND or
// SPAWN of another shard (it came in a notice) says so, so the store does
// not look for it on this shard; one whose source is this shard's does not.
func TestEdgesSayWhoseSourceIsElsewhere(t *testing.T) {
	const shards = 4
	procOn := func(shard uint32, name string) Process {
		for i := 0; ; i++ {
			p := Process{name + "@h", fmt.Sprintf("<0.%d.0>", i)}
			if ShardOf(p.Origin, p.PID, shards) == shard {
				return p
			}
		}
	}
	c, err := New(DefaultConfig(0, shards))
	if err != nil {
		t.Fatal(err)
	}
	here, there := procOn(0, "here"), procOn(1, "there")
	sender := procOn(0, "sender")
	// Batch 1: a remote SEND's notice, and a local SEND to here, both
	// waiting for their RECEIVEs.
	c.Apply(Batch{LogTime: 1,
		Notices: []Notice{{Kind: NoticeSend, EventID: testID(1, 1), FromShard: 1, ToShard: 0, Sender: there, Receiver: here,
			MessageHash: 7, TimestampNs: 5}},
		Events: []Event{{ID: testID(1, 2), Origin: sender.Origin, PID: sender.PID, Kind: KindSend, TimestampNs: 5,
			PeerOrigin: here.Origin, PeerPID: here.PID, MessageHash: 8}},
	})
	// Batch 2: the two RECEIVEs; both SENDs are stored already, so each
	// pairing's DELIVERED_TO becomes an edge record.
	res := c.Apply(Batch{LogTime: 2, Events: []Event{
		{ID: testID(2, 1), Origin: here.Origin, PID: here.PID, Kind: KindReceive, TimestampNs: 6, MessageHash: 7},
		{ID: testID(2, 2), Origin: here.Origin, PID: here.PID, Kind: KindReceive, TimestampNs: 7, MessageHash: 8},
	}})
	want := map[EventID]bool{testID(1, 1): true, testID(1, 2): false}
	if len(res.Edges) != len(want) {
		t.Fatalf("edges %+v, want one per stored SEND", res.Edges)
	}
	for _, e := range res.Edges {
		if other, ok := want[e.From]; !ok || e.Type != LinkDeliveredTo || e.FromOtherShard != other {
			t.Errorf("edge %+v: want DELIVERED_TO with FromOtherShard %v", e, other)
		}
	}
}

// TestOutboxHeadsAreTheOutboxCut: OutboxHeads equals Outbox grouped by
// destination and cut to perDest each, in outbox order, for outboxes of
// many notices to a few destinations.
func TestOutboxHeadsAreTheOutboxCut(t *testing.T) {
	const shards = 4
	c, err := New(DefaultConfig(0, shards))
	if err != nil {
		t.Fatal(err)
	}
	if h, d := c.OutboxHeads(8, []uint32{0, 1, 2, 3}), c.OutboxDests(); h != nil || d != nil {
		t.Fatalf("empty outbox: %v %v", h, d)
	}
	var events []Event
	for i := range 500 {
		events = append(events, Event{ID: testID(0, uint64(i+1)), Origin: "a@h", PID: "<0.1.0>", Kind: KindSend,
			TimestampNs: int64(100 + i), PeerOrigin: "b@h", PeerPID: fmt.Sprintf("<0.%d.0>", i%37), MessageHash: uint64(i)})
	}
	c.Apply(Batch{LogTime: 1, Events: events})
	out := c.Outbox()
	if len(out) < 100 {
		t.Fatalf("only %d notices in the outbox", len(out))
	}
	var dests []uint32
	for _, n := range out {
		if !slices.Contains(dests, n.ToShard) {
			dests = append(dests, n.ToShard)
		}
	}
	slices.Sort(dests)
	if got := c.OutboxDests(); !slices.Equal(got, dests) {
		t.Fatalf("OutboxDests %v, want %v", got, dests)
	}
	for _, perDest := range []int{1, 7, 64, 1000} {
		for _, only := range [][]uint32{dests, dests[1:], {dests[0], 99}} {
			want := map[uint32][]Notice{}
			for _, n := range out {
				if slices.Contains(only, n.ToShard) && len(want[n.ToShard]) < perDest {
					want[n.ToShard] = append(want[n.ToShard], n)
				}
			}
			got := c.OutboxHeads(perDest, only)
			if len(got) != len(want) {
				t.Fatalf("perDest %d of %v: %d destinations, want %d", perDest, only, len(got), len(want))
			}
			for d, w := range want {
				if !slices.Equal(got[d], w) {
					t.Fatalf("perDest %d, shard %d: %d notices, want %d (or another order)", perDest, d, len(got[d]), len(w))
				}
			}
		}
	}
}
