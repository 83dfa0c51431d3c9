package correlate

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
	"github.com/vmihailenco/msgpack/v5"
)

// testID returns a deterministic event id whose time part is ms and whose
// entropy is n, so ids sort by (ms, n).
func testID(ms uint64, n uint64) EventID {
	var id ulid.ULID
	_ = id.SetTime(ms)
	var e [10]byte
	for i := 9; i >= 2; i-- {
		e[i] = byte(n)
		n >>= 8
	}
	_ = id.SetEntropy(e[:])
	return id
}

// randomEvent fills every field, with sizes chosen so that each msgpack
// length class (fix, 8, 16, 32 bit) is exercised across calls.
func randomEvent(rng *rand.Rand) Event {
	str := func() string {
		switch rng.IntN(6) {
		case 0:
			return ""
		case 1:
			return strings.Repeat("é", 20+rng.IntN(200))
		case 2:
			return strings.Repeat("x", 300+rng.IntN(70000))
		default:
			return fmt.Sprintf("s%d", rng.Uint64())
		}
	}
	id := func() EventID {
		if rng.IntN(4) == 0 {
			return EventID{}
		}
		return testID(rng.Uint64N(1<<40), rng.Uint64())
	}
	e := Event{
		ID: id(), Origin: str(), PID: str(), Kind: Kind(rng.IntN(int(kindCount))),
		TimestampNs: rng.Int64() - rng.Int64(), Seq: rng.Uint64() >> rng.IntN(64),
		Module: str(), Function: str(), Arity: rng.Uint32() >> rng.IntN(32), CallID: str(),
		Payload: str(), PeerOrigin: str(), PeerPID: str(), MessageHash: rng.Uint64(),
		Reason: str(), CorrelationID: str(), ParentID: id(), RootID: id(),
		DurationNs: rng.Int64N(1<<40) - 1<<39, Outcome: Outcome(rng.IntN(int(outcomeCount))),
		Orphan: rng.IntN(2) == 0, Shard: rng.Uint32(), PayloadTruncated: rng.IntN(2) == 0,
		PayloadSize: rng.Uint32(),
	}
	if n := rng.IntN(20); n > 3 {
		e.Attributes = map[string]string{}
		for range n {
			e.Attributes[str()] = str()
		}
	}
	for range rng.IntN(4) {
		e.Links = append(e.Links, Link{Type: LinkType(1 + rng.IntN(int(linkTypeCount)-1)), Target: id()})
	}
	return e
}

func TestEventRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		e := randomEvent(rng)
		enc := AppendEvent(nil, &e)
		var got Event
		if err := DecodeEvent(enc, &got); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("event %d: round trip\n got %+v\nwant %+v", i, got, e)
		}
		if again := AppendEvent(nil, &got); !bytes.Equal(again, enc) {
			t.Fatalf("event %d: re-encoding differs", i)
		}
	}
}

func TestAttributesEncodeSorted(t *testing.T) {
	m := map[string]string{}
	for i := range 40 {
		m[fmt.Sprintf("k%02d", 39-i)] = "v"
	}
	e := Event{Attributes: m}
	first := AppendEvent(nil, &e)
	for range 20 { // map iteration order is random; the encoding is not
		if !bytes.Equal(AppendEvent(nil, &e), first) {
			t.Fatal("attribute encoding depends on map order")
		}
	}
}

func TestBatchRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 30 {
		b := Batch{LogTime: rng.Int64()}
		for range rng.IntN(40) {
			b.Events = append(b.Events, randomEvent(rng))
		}
		for range rng.IntN(5) {
			b.Notices = append(b.Notices, Notice{Kind: NoticeKind(1 + rng.IntN(2)), EventID: testID(5, rng.Uint64()),
				FromShard: rng.Uint32(), ToShard: rng.Uint32(), Sender: Process{"a", "b"},
				Receiver: Process{"c", "d"}, MessageHash: rng.Uint64(), TimestampNs: -rng.Int64()})
		}
		for range rng.IntN(5) {
			b.Acked = append(b.Acked, testID(9, rng.Uint64()))
		}
		if i%2 == 0 {
			b.Retention = &Retention{BeforeNs: rng.Int64(), MaxEvents: rng.Uint64()}
		}
		enc := AppendBatch(nil, &b)
		got, err := DecodeBatch(enc)
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("batch %d: round trip differs", i)
		}
	}
}

func TestBatchIndexNotEncoded(t *testing.T) {
	b := Batch{Index: 42, LogTime: 7}
	got, err := DecodeBatch(AppendBatch(nil, &b))
	if err != nil || got.Index != 0 || got.LogTime != 7 {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// Every strict prefix of a valid encoding, and every single-byte mutation,
// must be rejected or decoded without panicking; prefixes must be rejected.
func TestDecodeRejectsTruncatedAndMutated(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	e := Event{ID: testID(1, 2), Origin: "o", PID: "p", Kind: KindCall, TimestampNs: -5, Module: "m",
		Function: "f", Arity: 300, Attributes: map[string]string{"a": "1", "b": "2"}, ParentID: testID(3, 4),
		Links: []Link{{LinkCalledFrom, testID(3, 4)}}, Outcome: OutcomeOK, PayloadSize: 70000}
	b := Batch{LogTime: 1, Events: []Event{e, e}, Acked: []EventID{testID(1, 1)}}
	enc := AppendBatch(nil, &b)
	for n := range len(enc) {
		if _, err := DecodeBatch(enc[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("prefix %d/%d: err = %v, want ErrCorrupt", n, len(enc), err)
		}
	}
	for range 2000 {
		m := bytes.Clone(enc)
		m[rng.IntN(len(m))] ^= byte(1 + rng.IntN(255))
		if _, err := DecodeBatch(m); err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("mutation: unexpected error class %v", err)
		}
	}
	var ev Event
	if err := DecodeEvent(append(AppendEvent(nil, &e), 0), &ev); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("trailing byte: err = %v", err)
	}
}

func TestDecodeBoundsForgedLengths(t *testing.T) {
	// An array header claiming 2^32-1 events in 6 bytes must fail before
	// allocating anything of that size.
	forged := []byte{0x96, codecVersion, 0x00, mpArray32, 0xff, 0xff, 0xff, 0xff}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := DecodeBatch(forged); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v", err)
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<16 {
		t.Fatalf("forged count made %d bytes of allocations", d)
	}
	var e Event
	if err := DecodeEvent([]byte{0x90 | eventFields&0xf}, &e); err == nil {
		t.Fatal("short event accepted")
	}
	if _, err := DecodeBatch([]byte{0x96, 99, 0, 0x90, 0x90, 0x90, 0xc0}); !errors.Is(err, ErrVersion) {
		t.Fatalf("unknown version: err = %v", err)
	}
}

func TestEdgeAndNoticeRoundTrip(t *testing.T) {
	ed := Edge{From: testID(1, 2), Type: LinkDeliveredTo, To: testID(3, 4)}
	var ge Edge
	if err := DecodeEdge(AppendEdge(nil, &ed), &ge); err != nil || ge != ed {
		t.Fatalf("edge: %+v %v", ge, err)
	}
	n := Notice{Kind: NoticeSpawn, EventID: testID(1, 1), FromShard: 3, ToShard: 9,
		Sender: Process{"o", "p"}, Receiver: Process{"q", "r"}, MessageHash: 0, TimestampNs: 12}
	var gn Notice
	if err := DecodeNotice(AppendNotice(nil, &n), &gn); err != nil || gn != n {
		t.Fatalf("notice: %+v %v", gn, err)
	}

	// Record notices carry their record; a record that is not one the
	// correlator makes is refused.
	for _, tc := range []struct {
		n    Notice
		fail string
	}{
		{n: Notice{Kind: NoticeEdge, EventID: testID(1, 5), FromShard: 5, ToShard: 1,
			Edge: &Edge{From: testID(1, 2), Type: LinkDeliveredTo, To: testID(3, 4), FromOtherShard: true}}},
		{n: Notice{Kind: NoticeFrameEnd, EventID: testID(1, 6), FromShard: 5, ToShard: 1, TimestampNs: 9,
			Frame: &ClosedFrame{Call: testID(1, 2), Outcome: OutcomeProcessExit, EndNs: 9, By: testID(1, 3)}}},
		{n: Notice{Kind: NoticeFrameEnd, EventID: testID(1, 7), Frame: &ClosedFrame{Call: testID(1, 2),
			Outcome: OutcomeAbandoned, EndNs: -4, Reason: AbandonInactivity}}},
		{n: Notice{Kind: NoticeFrameEnd, EventID: testID(1, 8), Frame: &ClosedFrame{Call: testID(1, 2), Outcome: OutcomeOK}},
			fail: "not a frame end"},
		{n: Notice{Kind: NoticeFrameEnd, EventID: testID(1, 8), Frame: &ClosedFrame{Call: testID(1, 2), Outcome: OutcomeUnwound,
			Reason: AbandonDepthBound}}, fail: "abandon reason"},
		{n: Notice{Kind: NoticeFrameEnd, EventID: testID(1, 8), Frame: &ClosedFrame{Call: testID(1, 2), Outcome: OutcomeAbandoned}},
			fail: "abandon reason"},
		{n: Notice{Kind: NoticeEdge, EventID: testID(1, 9), Edge: &Edge{From: testID(1, 2), To: testID(1, 3)}},
			fail: "link type 0"},
	} {
		var got Notice
		err := DecodeNotice(AppendNotice(nil, &tc.n), &got)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%+v: got %v, want an error with %q", tc.n, err, tc.fail)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.n) {
			t.Errorf("%+v: got %+v, %v", tc.n, got, err)
		}
	}
	// A send notice with a record's extra field, and a record notice
	// without it, are refused.
	send := AppendNotice(nil, &n)
	send[0]++ // the field count
	if err := DecodeNotice(append(send, 0x90), &gn); err == nil {
		t.Error("a spawn notice with 11 fields decoded")
	}
	edge := AppendNotice(nil, &Notice{Kind: NoticeSend})
	edge[1] = byte(NoticeEdge) // the kind
	if err := DecodeNotice(edge, &gn); err == nil {
		t.Error("an edge notice with 10 fields decoded")
	}
}

func FuzzDecodeEvent(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 4 {
		e := randomEvent(rng)
		e.Payload = "p"
		f.Add(AppendEvent(nil, &e))
	}
	f.Add([]byte{})
	f.Add([]byte{0x9b, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Event
		if err := DecodeEvent(data, &e); err != nil {
			return
		}
		// Canonical form: what decodes re-encodes to the same bytes.
		if again := AppendEvent(nil, &e); !bytes.Equal(again, data) {
			t.Fatalf("decoded input does not re-encode identically")
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	rng := rand.New(rand.NewPCG(9, 10))
	e := randomEvent(rng)
	e.Payload = "p"
	f.Add(AppendBatch(nil, &Batch{LogTime: 5, Events: []Event{e}, Acked: []EventID{testID(1, 1)},
		Notices: []Notice{{Kind: NoticeSend, EventID: testID(2, 2)}}, Retention: &Retention{1, 2}}))
	f.Add(AppendBatch(nil, &Batch{Notices: []Notice{
		{Kind: NoticeEdge, EventID: testID(3, 3), Edge: &Edge{From: testID(1, 1), Type: LinkSpawned, To: testID(2, 2)}},
		{Kind: NoticeFrameEnd, EventID: testID(4, 4), Frame: &ClosedFrame{Call: testID(1, 1), Outcome: OutcomeUnwound, By: testID(2, 2)}},
	}}))
	f.Add(AppendBatch(nil, &Batch{}))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeBatch(data)
		if err != nil {
			return
		}
		if again := AppendBatch(nil, &b); !bytes.Equal(again, data) {
			t.Fatalf("decoded batch does not re-encode identically")
		}
	})
}

// benchEvents returns n events shaped like real traffic: short module,
// function and pid strings, payloads of a few dozen to a few hundred bytes,
// one link on most events.
func benchEvents(n int) []Event {
	rng := rand.New(rand.NewPCG(11, 12))
	evs := make([]Event, n)
	for i := range evs {
		e := &evs[i]
		*e = Event{
			ID: testID(uint64(1_700_000_000_000+i), rng.Uint64()), Origin: "app1@host-17",
			PID: fmt.Sprintf("<0.%d.0>", rng.IntN(10000)), Kind: Kind(1 + rng.IntN(8)),
			TimestampNs: 1_700_000_000_000_000_000 + int64(i)*1000, Seq: uint64(i),
			Module: "Elixir.MyApp.Accounts", Function: "get_user", Arity: 2,
			Payload:       strings.Repeat("%{id: 42, name: \"x\"} ", 1+rng.IntN(12)),
			CorrelationID: "01HZX3Q4N5P6R7S8T9V0W1X2Y3", ParentID: testID(1, rng.Uint64()),
			RootID: testID(1, rng.Uint64()), Shard: 3,
			Links: []Link{{Type: LinkCalledFrom, Target: testID(1, rng.Uint64())}},
		}
		if i%8 == 0 {
			e.Attributes = map[string]string{"node": "a", "span": "b"}
		}
	}
	return evs
}

// BenchmarkCodec compares this codec with reflection msgpack (msgpack.Marshal
// of the same struct) on a 256-event batch, in the same run.
func BenchmarkCodec(b *testing.B) {
	const n = 256
	batch := Batch{LogTime: 1, Events: benchEvents(n)}
	enc := AppendBatch(nil, &batch)
	refl, err := msgpack.Marshal(&batch)
	if err != nil {
		b.Fatal(err)
	}
	perEvent := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
	}
	b.Run("codec=hand/op=encode/batch=256", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		buf := make([]byte, 0, len(enc))
		for b.Loop() {
			buf = AppendBatch(buf[:0], &batch)
		}
		perEvent(b)
	})
	b.Run("codec=hand/op=decode/batch=256", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := DecodeBatch(enc); err != nil {
				b.Fatal(err)
			}
		}
		perEvent(b)
	})
	b.Run("codec=reflect/op=encode/batch=256", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(refl)))
		for b.Loop() {
			if _, err := msgpack.Marshal(&batch); err != nil {
				b.Fatal(err)
			}
		}
		perEvent(b)
	})
	b.Run("codec=reflect/op=decode/batch=256", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(refl)))
		for b.Loop() {
			var out Batch
			if err := msgpack.Unmarshal(refl, &out); err != nil {
				b.Fatal(err)
			}
		}
		perEvent(b)
	})
}
