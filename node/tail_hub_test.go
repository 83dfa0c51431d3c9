package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// These tests drive the tail hub the way replica FSMs do (watch under the
// apply lock, then publish each apply's events with their entry spans),
// without raft, so every interleaving is chosen by the test.

// entry is one raft entry's events, by function name.
type entry struct {
	index uint64
	fns   []string
}

// publishEntries publishes entries as one apply of shard.
func publishEntries(h *tailHub, shard uint32, entries ...entry) {
	var events []correlate.Event
	var spans []EntrySpan
	for _, e := range entries {
		for _, fn := range e.fns {
			events = append(events, correlate.Event{Origin: "o", PID: "p", Kind: correlate.KindCall,
				Module: "m", Function: fn, Shard: shard})
		}
		spans = append(spans, EntrySpan{Index: e.index, End: len(events)})
	}
	h.publish(shard, events, spans)
	h.flush() // what the dispatcher does is then visible to the test
}

// drain reads every queued item of s (through Next, so lag reports are
// flushed as a reader would see them) and renders them one per line.
func drain(t *testing.T, s *Subscription) string {
	t.Helper()
	var b strings.Builder
	for {
		if len(s.c) == 0 && s.lagging.Load() == 0 {
			return b.String()
		}
		it, err := s.Next(context.Background())
		if err != nil {
			fmt.Fprintf(&b, "err %v\n", err)
			return b.String()
		}
		b.WriteString(render(it))
	}
}

func render(it TailItem) string {
	switch it.Kind {
	case TailEvent:
		last := ""
		if it.Last {
			last = " last"
		}
		return fmt.Sprintf("event %d %s @%d.%d%s\n", it.Shard, it.Event.Function, it.Index, it.Offset, last)
	case TailLagged:
		return fmt.Sprintf("lagged %d dropped=%d\n", it.Shard, it.Dropped)
	case TailStart:
		return fmt.Sprintf("start %d @%d\n", it.Shard, it.Index)
	case TailGap:
		return fmt.Sprintf("gap %d after=%d start=%d\n", it.Shard, it.After, it.Index)
	case TailGone:
		return fmt.Sprintf("gone %d %s\n", it.Shard, it.Reason)
	}
	return fmt.Sprintf("unknown kind %d\n", it.Kind)
}

func subscribe(t *testing.T, h *tailHub, spec TailSpec, applied map[uint32]uint64) *Subscription {
	t.Helper()
	buffer := spec.Buffer
	if buffer == 0 {
		buffer = DefaultTailBuffer
	}
	s, err := h.add(spec, buffer, len(spec.Shards))
	if err != nil {
		t.Fatal(err)
	}
	for _, shard := range spec.Shards {
		h.watch(s, shard, applied[shard], applied[shard])
	}
	return s
}

func TestTailHubShardsAndMatch(t *testing.T) {
	h := newTestHub(t, 4)
	match := func(e *correlate.Event) bool { return e.Function != "skip" }
	s := subscribe(t, h, TailSpec{Shards: []uint32{1, 2}, Match: match}, map[uint32]uint64{1: 10, 2: 3})
	publishEntries(h, 0, entry{11, []string{"a"}}) // not followed
	publishEntries(h, 1, entry{11, []string{"a", "b", "skip"}}, entry{12, []string{"skip"}}, entry{13, []string{"c"}})
	publishEntries(h, 2, entry{4, []string{"skip", "d"}})
	want := `start 1 @10
start 2 @3
event 1 a @11.0
event 1 b @11.1 last
event 1 c @13.0 last
event 2 d @4.1 last
`
	if got := drain(t, s); got != want {
		t.Fatalf("got:\n%swant:\n%s", got, want)
	}
}

// TestTailHubResume covers where a resumed shard starts: mid-entry without
// a duplicate or a hole, and a gap exactly when the replica applied
// entries holding events past the resume position before the subscription.
func TestTailHubResume(t *testing.T) {
	for _, tc := range []struct {
		name       string
		applied    uint64
		after      TailPosition
		want       string
		lastEvents uint64 // the last entry that stored events
	}{
		{"mid entry", 9, TailPosition{Index: 10, Offset: 1},
			"start 0 @9\nevent 0 c @10.2\nevent 0 d @10.3 last\nevent 0 e @11.0 last\n", 9},
		{"first of entry", 9, TailPosition{Index: 10, Offset: 0},
			"start 0 @9\nevent 0 b @10.1\nevent 0 c @10.2\nevent 0 d @10.3 last\nevent 0 e @11.0 last\n", 9},
		{"last of entry", 9, TailPosition{Index: 10, Offset: 3, Last: true},
			"start 0 @9\nevent 0 e @11.0 last\n", 9},
		{"entries ahead of the replica", 8, TailPosition{Index: 10, Offset: 2},
			"start 0 @8\nevent 0 d @10.3 last\nevent 0 e @11.0 last\n", 8},
		{"applied the whole resumed entry", 10, TailPosition{Index: 10, Offset: 3, Last: true},
			"start 0 @10\nevent 0 e @11.0 last\n", 10},
		{"applied the rest of the entry", 10, TailPosition{Index: 10, Offset: 1},
			"gap 0 after=10 start=10\nevent 0 e @11.0 last\n", 10},
		{"applied later entries", 12, TailPosition{Index: 10, Offset: 3, Last: true},
			"gap 0 after=10 start=12\n", 12},
		{"applied later entries without events", 12, TailPosition{Index: 10, Offset: 3, Last: true},
			"start 0 @12\n", 10},
		{"applied later entries, the last with events", 12, TailPosition{Index: 10, Offset: 3, Last: true},
			"gap 0 after=10 start=12\n", 11},
		{"a new shard from its first entry, no events yet", 5, TailPosition{Index: 0, Last: true},
			"start 0 @5\nevent 0 a @9.0\nevent 0 b @9.1\nevent 0 c @9.2\nevent 0 d @9.3 last\n" +
				"event 0 a @10.0\nevent 0 b @10.1\nevent 0 c @10.2\nevent 0 d @10.3 last\nevent 0 e @11.0 last\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 1)
			spec := TailSpec{Shards: []uint32{0}, After: map[uint32]TailPosition{0: tc.after}}
			s, err := h.add(spec, DefaultTailBuffer, 1)
			if err != nil {
				t.Fatal(err)
			}
			h.watch(s, 0, tc.applied, tc.lastEvents)
			// What the replica applies from here on: entries after its
			// applied index (9: a b c d, 10: a b c d, 11: e).
			all := []entry{{9, []string{"a", "b", "c", "d"}}, {10, []string{"a", "b", "c", "d"}}, {11, []string{"e"}}}
			var next []entry
			for _, e := range all {
				if e.index > tc.applied {
					next = append(next, e)
				}
			}
			if len(next) > 0 {
				publishEntries(h, 0, next...)
			}
			if got := drain(t, s); got != tc.want {
				t.Fatalf("got:\n%swant:\n%s", got, tc.want)
			}
		})
	}
}

// TestTailHubSlowReader fills a small buffer: drops are counted per shard
// and each shard's lag report lands after the events delivered before the
// drops and before its next event, whether the publisher (next event) or
// the reader (room in the buffer) places it.
func TestTailHubSlowReader(t *testing.T) {
	h := newTestHub(t, 2)
	s := subscribe(t, h, TailSpec{Shards: []uint32{0, 1}, Buffer: 4}, nil)
	if got, want := drain(t, s), "start 0 @0\nstart 1 @0\n"; got != want {
		t.Fatalf("got:\n%swant:\n%s", got, want)
	}
	// Four fit, the rest of both shards is dropped.
	publishEntries(h, 0, entry{1, []string{"a", "b", "c"}})
	publishEntries(h, 1, entry{1, []string{"x", "y", "z"}})
	publishEntries(h, 0, entry{2, []string{"d"}})
	if s.lagged[0] != 1 || s.lagged[1] != 2 || s.lagging.Load() != 2 {
		t.Fatalf("lagged %v (%d shards), want [1 2]", s.lagged, s.lagging.Load())
	}
	// The reader takes three: the room lets Next queue shard 0's report.
	var got strings.Builder
	for range 3 {
		it, err := s.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got.WriteString(render(it))
	}
	// Shard 1's next event finds room for its report and itself.
	publishEntries(h, 1, entry{2, []string{"w"}})
	got.WriteString(drain(t, s))
	want := `event 0 a @1.0
event 0 b @1.1
event 0 c @1.2 last
event 1 x @1.0
lagged 0 dropped=1
lagged 1 dropped=2
event 1 w @2.0 last
`
	if got.String() != want {
		t.Fatalf("got:\n%swant:\n%s", got.String(), want)
	}
	if s.lagging.Load() != 0 {
		t.Fatalf("lagging %d after every report was read", s.lagging.Load())
	}

	// Publisher placement: the buffer is full again and shard 0 dropped;
	// the reader makes room for two without calling Next (as a reader that
	// took items before the drops would have), and shard 0's next event
	// carries the report in front of it.
	publishEntries(h, 0, entry{3, []string{"e", "f", "g", "h", "i"}})
	<-s.c
	<-s.c
	<-s.c
	publishEntries(h, 0, entry{4, []string{"j"}})
	want = "event 0 h @3.3\nlagged 0 dropped=1\nevent 0 j @4.0 last\n"
	if got := drain(t, s); got != want {
		t.Fatalf("got:\n%swant:\n%s", got, want)
	}
}

// TestTailHubGoneAndClose: gone reports a pending lag first and ends the
// shard; other shards go on; Close and a closed hub end the subscription
// with ErrClosed.
func TestTailHubGoneAndClose(t *testing.T) {
	h := newTestHub(t, 2)
	s := subscribe(t, h, TailSpec{Shards: []uint32{0, 1}, Buffer: 2}, nil)
	drain(t, s)
	publishEntries(h, 0, entry{1, []string{"a", "b", "c"}})
	h.gone(0, "replica dropped", nil)
	h.gone(0, "replica dropped", nil) // once per shard
	h.flush()
	publishEntries(h, 0, entry{2, []string{"late"}})
	want := "event 0 a @1.0\nevent 0 b @1.1\nlagged 0 dropped=1\ngone 0 replica dropped\n"
	if got := drain(t, s); got != want {
		t.Fatalf("got:\n%swant:\n%s", got, want)
	}
	publishEntries(h, 1, entry{1, []string{"x"}})
	if got, want := drain(t, s), "event 1 x @1.0 last\n"; got != want {
		t.Fatalf("got:\n%swant:\n%s", got, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next with a cancelled context: %v", err)
	}
	s.Close()
	s.Close()
	if _, err := s.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	publishEntries(h, 1, entry{2, []string{"y"}}) // no subscriber: no panic

	s2 := subscribe(t, h, TailSpec{Shards: []uint32{1}}, nil)
	h.close()
	if it, err := s2.Next(context.Background()); err != nil || it.Kind != TailStart {
		t.Fatalf("queued item after the hub closed: %v, %v", it, err)
	}
	if _, err := s2.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after the hub closed: %v", err)
	}
	if _, err := h.add(TailSpec{}, 2, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe on a closed hub: %v", err)
	}
}

func TestTailHubBounds(t *testing.T) {
	h := newTestHub(t, 2)
	if _, err := h.add(TailSpec{After: map[uint32]TailPosition{2: {}}}, 2, 1); !errors.Is(err, ErrNoShard) {
		t.Fatalf("resume on shard 2 of 2: %v", err)
	}
	for range maxSubscribers {
		if _, err := h.add(TailSpec{}, 2, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.add(TailSpec{}, 2, 1); !errors.Is(err, ErrTooManySubscribers) {
		t.Fatalf("subscriber %d: %v", maxSubscribers+1, err)
	}
	h.close()
}

// newTestHub returns a hub that is closed when the test ends (its
// dispatcher goroutine stops).
func newTestHub(t *testing.T, shards uint32) *tailHub {
	h := newTailHub(shards)
	t.Cleanup(h.close)
	return h
}

// TestTailHubDispatchIsolated: publishing never waits for a subscription.
// A filter that blocks holds up the dispatcher only: applies keep being
// published, those beyond the dispatch bound are counted as dropped for
// every subscription watching the shard, in their place in the order, and
// entries applied before a subscription watched a shard are not delivered
// to it even if they were still queued.
func TestTailHubDispatchIsolated(t *testing.T) {
	h := newTestHub(t, 1)
	release := make(chan struct{})
	var blocked sync.Once
	entered := make(chan struct{})
	s := subscribe(t, h, TailSpec{Shards: []uint32{0}, Buffer: 1 << 17, Match: func(e *correlate.Event) bool {
		if e.Function == "block" {
			blocked.Do(func() { close(entered) })
			<-release
		}
		return true
	}}, nil)
	if got := drain(t, s); got != "start 0 @0\n" {
		t.Fatalf("got %q", got)
	}
	publish := func(index uint64, fns ...string) {
		var events []correlate.Event
		for _, fn := range fns {
			events = append(events, correlate.Event{Origin: "o", PID: "p", Kind: correlate.KindCall, Module: "m", Function: fn})
		}
		h.publish(0, events, []EntrySpan{{Index: index, End: len(events)}})
	}
	publish(1, "block")
	<-entered // the dispatcher is inside the filter, holding nothing up but itself
	big := make([]string, maxDispatchEvents/2)
	for i := range big {
		big[i] = "x"
	}
	publish(2, big...)
	publish(3, big...)
	publish(4, big...) // beyond the bound: dropped
	publish(5, "y")    // beyond it too, merged into the same report
	if got := h.overflow.Load(); got != uint64(len(big)+1) {
		t.Fatalf("overflow %d, want %d", got, len(big)+1)
	}
	// A subscription that starts now (applied index 5) must not receive
	// the entries still queued.
	late := subscribe(t, h, TailSpec{Shards: []uint32{0}}, map[uint32]uint64{0: 5})
	close(release)
	h.flush() // the queue drains: room again
	publish(6, "z")
	h.flush()

	var events, lagged int
	var order []string
	for len(s.c) > 0 || s.lagging.Load() > 0 {
		it, err := s.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		switch it.Kind {
		case TailEvent:
			events++
			if it.Event.Function != "x" {
				order = append(order, it.Event.Function)
			}
		case TailLagged:
			lagged += int(it.Dropped)
			order = append(order, "lagged")
		}
	}
	if want := 1 + 2*len(big) + 1; events != want || lagged != len(big)+1 {
		t.Fatalf("%d events and %d reported dropped; want %d and %d", events, lagged, want, len(big)+1)
	}
	if got, want := strings.Join(order, " "), "block lagged z"; got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	if got := drain(t, late); got != "start 0 @5\nevent 0 z @6.0 last\n" {
		t.Fatalf("late subscription got %q", got)
	}
}
