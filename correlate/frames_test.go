package correlate

import (
	"bytes"
	"testing"

	"pgregory.net/rapid"
)

// Every CALL the correlator outputs ends exactly one way: closed by the
// RETURN/EXCEPTION that COMPLETES it, or listed once in Result.Closed
// (UNWOUND, PROCESS_EXIT, ABANDONED), or still open on its process's
// tracked stack. A frame that is none of these (dropped with its process,
// refused by the depth bound and never ended) would be shown open forever
// by the store; one that is two would be closed twice. Small bounds and
// TTLs make every drop path run.
func TestEveryFrameEndsOnce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := smallConfig(t)
		evs := genStream(t, rapid.IntRange(10, 150).Draw(t, "n"))
		for i := range evs { // unique ids: a re-applied CALL would be a second frame
			evs[i].ID = testID(0, uint64(i+1))
		}
		c, _ := New(cfg)
		ends := map[EventID]int{}
		var calls []EventID
		logTime := int64(0)
		for _, b := range split(t, evs, "cut") {
			logTime += int64(rapid.IntRange(0, 6).Draw(t, "tick"))
			res := c.Apply(Batch{LogTime: logTime, Events: b})
			for _, e := range res.Events {
				if e.Kind == KindCall {
					calls = append(calls, e.ID)
				}
				for _, l := range e.Links {
					if l.Type == LinkCompletes {
						ends[l.Target]++
					}
				}
			}
			for _, f := range res.Closed {
				ends[f.Call]++
				if f.Outcome == OutcomeAbandoned && f.By != (EventID{}) {
					t.Fatalf("abandoned frame %s names closing event %s", name(f.Call), name(f.By))
				}
				if (f.Outcome == OutcomeAbandoned) != (f.Reason != AbandonUnspecified) {
					t.Fatalf("frame %s closed %s with reason %s", name(f.Call), f.Outcome, f.Reason)
				}
			}
		}
		for _, p := range c.procs.appendAll(nil) {
			for _, f := range p.frames {
				ends[f.call]++
			}
		}
		for _, id := range calls {
			if ends[id] != 1 {
				t.Fatalf("CALL %s ended %d times (closed or open on a stack), want exactly 1", name(id), ends[id])
			}
		}
	})
}

// A meta record written before the ABANDONED and resharding counters
// existed (20 counters) restores, with those counters at zero.
func TestRestoreMetaWithoutAbandonedCounters(t *testing.T) {
	c, _ := New(testConfig())
	c.Apply(Batch{LogTime: 1, Events: []Event{{ID: testID(0, 1), Origin: "a", PID: "1", Kind: KindCall, Module: "M", Function: "f"}}})
	snap := c.Snapshot()
	for i, r := range snap {
		if r.Key[0] != tagMeta {
			continue
		}
		v := r.Value
		// array16 header of 6+24 fields; the counters after the first 20
		// are zero, one byte each.
		later := len(counterFields(&Counters{})) - minMetaCounters
		if v[0] != mpArray16 || v[1] != 0 || int(v[2]) != 6+len(counterFields(&Counters{})) || !bytes.Equal(v[len(v)-later:], make([]byte, later)) {
			t.Fatalf("unexpected meta record % x", v)
		}
		old := append([]byte{mpArray16, 0, 6 + minMetaCounters}, v[3:len(v)-later]...)
		snap[i] = StateRecord{Key: r.Key, Value: old}
	}
	d, _ := New(testConfig())
	if err := d.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if d.Totals() != c.Totals() || d.LogTime() != 1 {
		t.Fatalf("restored totals %+v, want %+v", d.Totals(), c.Totals())
	}
}
