package store

import (
	"math"
	"slices"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// callScript builds, for process p:
//
//	t=10 CALL a (root)          t=20 CALL b   t=30 RETURN b
//	t=40 CALL c   t=50 CALL d   t=60 RETURN a (unwinds d and c)
//	t=70 CALL e (new root)      t=80 EXIT (closes e)
func callScript(g *gen, p correlate.Process) (*correlate.Result, map[string]correlate.EventID) {
	ids := map[string]correlate.EventID{}
	res := &correlate.Result{Index: 1}
	ev := func(name string, k correlate.Kind, ts int64, parent, root string, links ...correlate.Link) {
		e := correlate.Event{Origin: p.Origin, PID: p.PID, Kind: k, TimestampNs: ts, Module: "m", Function: name}
		e.ID = g.id(ts)
		ids[name] = e.ID
		e.ParentID, e.RootID, e.Links = ids[parent], ids[root], links
		if root == name {
			e.RootID = e.ID
		}
		res.Events = append(res.Events, e)
	}
	ev("a", correlate.KindCall, 10, "", "a")
	ev("b", correlate.KindCall, 20, "a", "a", correlate.Link{Type: correlate.LinkCalledFrom, Target: ids["a"]})
	ev("rb", correlate.KindReturn, 30, "a", "a", correlate.Link{Type: correlate.LinkCompletes, Target: ids["b"]})
	ev("c", correlate.KindCall, 40, "a", "a", correlate.Link{Type: correlate.LinkCalledFrom, Target: ids["a"]})
	ev("d", correlate.KindCall, 50, "c", "a", correlate.Link{Type: correlate.LinkCalledFrom, Target: ids["c"]})
	ev("ra", correlate.KindReturn, 60, "", "a", correlate.Link{Type: correlate.LinkCompletes, Target: ids["a"]})
	ev("e", correlate.KindCall, 70, "", "e")
	ev("x", correlate.KindExit, 80, "", "")
	res.Closed = []correlate.ClosedFrame{
		{Call: ids["d"], Outcome: correlate.OutcomeUnwound, EndNs: 60, By: ids["ra"]},
		{Call: ids["c"], Outcome: correlate.OutcomeUnwound, EndNs: 60, By: ids["ra"]},
		{Call: ids["e"], Outcome: correlate.OutcomeProcessExit, EndNs: 80, By: ids["x"]},
	}
	return res, ids
}

func TestCallTreeAndStack(t *testing.T) {
	s := openMem(t)
	g := newGen(20, 1)
	p := correlate.Process{Origin: "app@h", PID: "<0.9.0>"}
	res, ids := callScript(g, p)
	mustApply(t, s, 0, res)

	tree, err := s.CallTree(0, ids["a"], 100)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Frames != 4 || tree.Truncated {
		t.Fatalf("tree has %d frames (truncated %v), want 4", tree.Frames, tree.Truncated)
	}
	r := tree.Root
	if r.Outcome != correlate.OutcomeOK || r.DurationNs != 50 || len(r.Children) != 2 {
		t.Fatalf("root %+v", r)
	}
	b, c := r.Children[0], r.Children[1]
	if b.Call.ID != ids["b"] || b.Outcome != correlate.OutcomeOK || b.EndNs != 30 {
		t.Fatalf("frame b %+v", b)
	}
	if c.Call.ID != ids["c"] || c.Outcome != correlate.OutcomeUnwound || c.ClosedBy != ids["ra"] || len(c.Children) != 1 {
		t.Fatalf("frame c %+v", c)
	}
	if d := c.Children[0]; d.Outcome != correlate.OutcomeUnwound || d.DurationNs != 10 {
		t.Fatalf("frame d %+v", d)
	}
	small, err := s.CallTree(0, ids["a"], 2)
	if err != nil || !small.Truncated || small.Frames != 2 {
		t.Fatalf("maxFrames=2: %+v, %v", small, err)
	}

	for _, tc := range []struct {
		t    int64
		want []string
	}{
		{5, nil}, {10, []string{"a"}}, {25, []string{"a", "b"}}, {30, []string{"a"}}, {35, []string{"a"}},
		{55, []string{"a", "c", "d"}}, {60, nil}, {75, []string{"e"}}, {80, nil}, {math.MaxInt64, nil},
	} {
		stack, err := s.CallStackAt(0, p, tc.t)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range stack {
			got = append(got, f.Call.Function)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("stack at %d = %v, want %v", tc.t, got, tc.want)
		}
	}
}

func TestMessageFlow(t *testing.T) {
	s := openMem(t)
	g := newGen(21, 1)
	a := correlate.Process{Origin: "n1", PID: "<0.1.0>"}
	b := correlate.Process{Origin: "n1", PID: "<0.2.0>"}
	c := correlate.Process{Origin: "n2", PID: "<0.3.0>"}
	res := &correlate.Result{Index: 1}
	add := func(p, peer correlate.Process, k correlate.Kind, ts int64, links ...correlate.Link) correlate.EventID {
		e := correlate.Event{Origin: p.Origin, PID: p.PID, PeerOrigin: peer.Origin, PeerPID: peer.PID, Kind: k, TimestampNs: ts, Links: links}
		e.ID = g.id(ts)
		res.Events = append(res.Events, e)
		return e.ID
	}
	s1 := add(a, b, correlate.KindSend, 1)
	add(b, a, correlate.KindReceive, 2, correlate.Link{Type: correlate.LinkReceivedFrom, Target: s1})
	add(a, c, correlate.KindSend, 3) // to someone else
	s2 := add(b, a, correlate.KindSend, 4)
	add(a, correlate.Process{}, correlate.KindReceive, 5, correlate.Link{Type: correlate.LinkReceivedFrom, Target: s2})
	add(a, correlate.Process{}, correlate.KindReceive, 6) // unpaired, unknown sender
	add(a, b, correlate.KindStateChange, 7)
	mustApply(t, s, 0, res)
	page, err := s.MessageFlow(0, a, b, math.MinInt64, math.MaxInt64, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, e := range page.Events {
		got = append(got, e.TimestampNs)
	}
	if !slices.Equal(got, []int64{1, 2, 4, 5}) || page.More {
		t.Fatalf("flow %v more %v", got, page.More)
	}
	page, _ = s.MessageFlow(0, a, b, 2, 4, 1)
	if len(page.Events) != 1 || page.Events[0].TimestampNs != 2 || !page.More {
		t.Fatalf("limited flow %+v", page)
	}
}
