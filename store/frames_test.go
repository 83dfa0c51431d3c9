package store

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// These tests feed events through a real correlator into a real (in-memory
// Pebble) store, as a shard's FSM does, and check what CallStackAt and
// CallTree say about frames the correlator could not close normally:
// orphan returns, CALLs refused by the depth bound, processes dropped for
// inactivity or evicted by the process bound.

// pipe is one shard's correlator in front of a store.
type pipe struct {
	t   *testing.T
	s   *Store
	c   *correlate.Correlator
	g   *gen
	idx uint64
	ids map[string]correlate.EventID // CALL (and other) events by name
}

func newPipe(t *testing.T, edit func(*correlate.Config)) *pipe {
	cfg := correlate.DefaultConfig(0, 1)
	if edit != nil {
		edit(&cfg)
	}
	c, err := correlate.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &pipe{t: t, s: openMem(t), c: c, g: newGen(30, 1), ids: map[string]correlate.EventID{}}
}

// ev is one event: "CALL name", "RETURN", "RETURN cid=x", "RETURN f=name",
// "EXIT", "STATE"; a CALL may carry "cid=x". Its function is its name.
type ev struct {
	p    correlate.Process
	ts   int64
	what string
}

// apply correlates one batch at logTime and stores the result.
func (pp *pipe) apply(logTime int64, steps ...ev) correlate.Result {
	pp.t.Helper()
	b := correlate.Batch{Index: pp.idx + 1, LogTime: logTime}
	for _, st := range steps {
		f := strings.Fields(st.what)
		e := correlate.Event{Origin: st.p.Origin, PID: st.p.PID, TimestampNs: st.ts, ID: pp.g.id(st.ts)}
		k, ok := correlate.ParseKind(f[0])
		if f[0] == "STATE" {
			k, ok = correlate.KindStateChange, true
		}
		if !ok {
			pp.t.Fatalf("bad step %q", st.what)
		}
		e.Kind = k
		for _, a := range f[1:] {
			switch key, v, _ := strings.Cut(a, "="); key {
			case "cid":
				e.CallID = v
			case "f":
				e.Module, e.Function = "m", v
			default:
				e.Module, e.Function = "m", a
				pp.ids[a] = e.ID
			}
		}
		b.Events = append(b.Events, e)
	}
	pp.idx++
	res := pp.c.Apply(b)
	mustApply(pp.t, pp.s, 0, &res)
	return res
}

// stack returns the function names of p's stack at t.
func (pp *pipe) stack(p correlate.Process, t int64) []string {
	pp.t.Helper()
	frames, err := pp.s.CallStackAt(0, p, t)
	if err != nil {
		pp.t.Fatalf("CallStackAt(%d): %v", t, err)
	}
	var out []string
	for _, f := range frames {
		out = append(out, f.Call.Function)
	}
	return out
}

func (pp *pipe) wantStacks(p correlate.Process, want map[int64][]string) {
	pp.t.Helper()
	ts := make([]int64, 0, len(want))
	for t := range want {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	for _, t := range ts {
		if got := pp.stack(p, t); !slices.Equal(got, want[t]) {
			pp.t.Errorf("stack at %d = %v, want %v", t, got, want[t])
		}
	}
}

// tree returns the call tree rooted at the named CALL.
func (pp *pipe) tree(root string) *CallTree {
	pp.t.Helper()
	tr, err := pp.s.CallTree(0, pp.ids[root], 100)
	if err != nil {
		pp.t.Fatalf("CallTree(%s): %v", root, err)
	}
	return tr
}

var (
	procP = correlate.Process{Origin: "app@h", PID: "<0.10.0>"}
	procQ = correlate.Process{Origin: "app@h", PID: "<0.11.0>"}
)

// An orphan RETURN closes nothing, so the frames open before it are still
// open after it (it has no parent, like the close of a bottom frame, and
// must not be taken for one).
func TestCallStackAtOrphanReturn(t *testing.T) {
	pp := newPipe(t, nil)
	res := pp.apply(1,
		ev{procP, 10, "CALL a"},
		ev{procP, 20, "CALL b"},
		ev{procP, 30, "RETURN cid=nope"}, // matches no call_id
		ev{procP, 40, "RETURN f=zz"},     // matches no function
		ev{procP, 50, "RETURN"},          // closes b
		ev{procP, 60, "RETURN cid=nope"},
		ev{procP, 70, "RETURN"}, // closes a
	)
	if res.Counters.Orphans != 3 {
		t.Fatalf("orphans = %d, want 3", res.Counters.Orphans)
	}
	pp.wantStacks(procP, map[int64][]string{
		5: nil, 15: {"a"}, 25: {"a", "b"}, 35: {"a", "b"}, 45: {"a", "b"}, 55: {"a"}, 65: {"a"}, 75: nil,
	})
}

// A CALL refused by the depth bound is not a tracked frame: the stack is
// the tracked frames, before, while and after the refused frame runs.
func TestCallStackAtRefusedCall(t *testing.T) {
	pp := newPipe(t, func(c *correlate.Config) { c.MaxStackDepth = 2 })
	pp.apply(1,
		ev{procP, 10, "CALL a cid=x"},
		ev{procP, 20, "CALL b"},
		ev{procP, 30, "CALL c"}, // refused
		ev{procP, 40, "RETURN"}, // consumes the refused frame: an orphan
		ev{procP, 50, "CALL d"}, // refused
		ev{procP, 60, "RETURN cid=x"},
		ev{procP, 70, "CALL e"},
	)
	pp.wantStacks(procP, map[int64][]string{
		15: {"a"}, 25: {"a", "b"}, 35: {"a", "b"}, 45: {"a", "b"}, 55: {"a", "b"}, 65: nil, 75: {"e"},
	})
}

// Frames of a process dropped for inactivity, or evicted by the process
// bound, are not open forever: they end when the correlator dropped them.
func TestAbandonedFramesClose(t *testing.T) {
	t.Run("inactivity", func(t *testing.T) {
		pp := newPipe(t, func(c *correlate.Config) { c.ProcessTTL = 100 })
		pp.apply(1000, ev{procP, 10, "CALL a"}, ev{procP, 20, "CALL b"})
		pp.apply(1200, ev{procQ, 30, "STATE"}) // P idle for 200 > 100
		pp.wantStacks(procP, map[int64][]string{25: {"a", "b"}, 1100: {"a", "b"}, 1200: nil, 5000: nil})
		tr := pp.tree("a")
		if tr.Root.Open() || len(tr.Root.Children) != 1 || tr.Root.Children[0].Open() {
			t.Fatalf("tree after the process expired: root %+v", tr.Root)
		}
		for _, f := range []*Frame{tr.Root, tr.Root.Children[0]} {
			wantAbandoned(t, f, correlate.AbandonInactivity, 1200)
		}
	})
	t.Run("process bound", func(t *testing.T) {
		pp := newPipe(t, func(c *correlate.Config) { c.MaxProcesses = 1 })
		pp.apply(1000, ev{procP, 10, "CALL a"})
		pp.apply(1100, ev{procQ, 20, "CALL z"}) // evicts P
		pp.wantStacks(procP, map[int64][]string{15: {"a"}, 1100: nil})
		tr := pp.tree("a")
		if tr.Root.Open() {
			t.Fatalf("frame of an evicted process: %+v", tr.Root)
		}
		wantAbandoned(t, tr.Root, correlate.AbandonProcessBound, 1100)
		pp.wantStacks(procQ, map[int64][]string{25: {"z"}})
	})
	t.Run("depth bound", func(t *testing.T) {
		pp := newPipe(t, func(c *correlate.Config) { c.MaxStackDepth = 1 })
		pp.apply(1000, ev{procP, 10, "CALL a cid=x"}, ev{procP, 20, "CALL b"}, ev{procP, 30, "RETURN cid=x"})
		tr := pp.tree("b")
		if tr.Root.Open() {
			t.Fatalf("refused frame unwound by a call_id RETURN: %+v", tr.Root)
		}
		wantAbandoned(t, tr.Root, correlate.AbandonDepthBound, 20)
		pp.wantStacks(procP, map[int64][]string{15: {"a"}, 25: {"a"}, 35: nil})
	})
}

func wantAbandoned(t *testing.T, f *Frame, reason correlate.AbandonReason, endNs int64) {
	t.Helper()
	if f.Outcome != correlate.OutcomeAbandoned || f.AbandonReason != reason || f.EndNs != endNs ||
		f.ClosedBy != (correlate.EventID{}) || f.End != nil || f.DurationNs != endNs-f.Call.TimestampNs {
		t.Fatalf("frame %s: outcome %s reason %s end %d by %s duration %d, want ABANDONED %s at %d",
			f.Call.Function, f.Outcome, f.AbandonReason, f.EndNs, f.ClosedBy, f.DurationNs, reason, endNs)
	}
}

// Frame records without a reason keep their original 25-byte form, so
// records written before ABANDONED existed decode unchanged.
func TestFrameEndRecord(t *testing.T) {
	by := correlate.EventID{1, 2, 3}
	for _, tc := range []struct {
		f    frameEnd
		size int
	}{
		{frameEnd{outcome: correlate.OutcomeUnwound, endNs: -5, by: by}, frameEndLen},
		{frameEnd{outcome: correlate.OutcomeProcessExit, endNs: 7, by: by}, frameEndLen},
		{frameEnd{outcome: correlate.OutcomeAbandoned, endNs: 1 << 40, reason: correlate.AbandonDepthBound}, frameEndLen + 1},
	} {
		v := tc.f.append(nil)
		got, err := decodeFrameEnd(nil, v)
		if len(v) != tc.size || err != nil || got != tc.f {
			t.Fatalf("%+v: %d bytes, decoded %+v, %v", tc.f, len(v), got, err)
		}
	}
	if _, err := decodeFrameEnd(nil, make([]byte, frameEndLen+2)); err == nil {
		t.Fatal("a 27-byte frame record decoded")
	}
}

// Apply refuses a frame end whose outcome and reason disagree.
func TestApplyRejectsBadFrameEnd(t *testing.T) {
	s := openMem(t)
	for name, c := range map[string]correlate.ClosedFrame{
		"ABANDONED without reason": {Outcome: correlate.OutcomeAbandoned},
		"UNWOUND with a reason":    {Outcome: correlate.OutcomeUnwound, Reason: correlate.AbandonInactivity},
		"unknown reason":           {Outcome: correlate.OutcomeAbandoned, Reason: 9},
		"OK":                       {Outcome: correlate.OutcomeOK},
	} {
		err := s.Apply(0, &correlate.Result{Index: 1, Closed: []correlate.ClosedFrame{c}})
		if !errors.Is(err, ErrInvalidResult) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
