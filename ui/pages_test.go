package ui_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

const origin = "scope_capture@vm" // the fixtures' origin

// loaded is an agent holding the real Erlang fixture small.jsonl.
type loaded struct {
	*rpctest.Node
	guarded string // a CALL of scope_workload:guarded/1: a tree whose bottom raises
}

func startLoaded(t *testing.T) *loaded {
	t.Helper()
	n := rpctest.Start(t, rpctest.Options{})
	ingest(t, n.Ingest, loadFixture(t, "small.jsonl"))
	resp, err := n.Query.Events(context.Background(), connect.NewRequest(&scopev1.EventsRequest{
		Origin: origin, Kinds: []scopev1.Kind{scopev1.Kind_KIND_CALL}, Module: "scope_workload", Function: "guarded", Limit: 1}))
	if err != nil || len(resp.Msg.GetEvents()) != 1 {
		t.Fatalf("find guarded/1: %v %v", resp, err)
	}
	return &loaded{Node: n, guarded: resp.Msg.GetEvents()[0].GetEventId()}
}

func procPath(pid string) string {
	return "/ui/process/" + url.PathEscape(origin) + "/" + url.PathEscape(pid)
}

// TestPagesLoad opens every view on an agent loaded with a real BEAM
// trace: each renders what it is for, with no error shown and nothing
// written to the console, and is saved as a screenshot.
func TestPagesLoad(t *testing.T) {
	n := startLoaded(t)
	p := newPage(t)
	flow := "/ui/flow?a=" + url.QueryEscape(origin+"/<0.92.0>") + "&b=" + url.QueryEscape(origin+"/<0.95.0>")
	for _, c := range []struct {
		name, path string
		shows      string // a selector that must match once the view rendered
	}{
		{"search", "/ui/?origin=" + url.QueryEscape(origin) + "&kind=EXCEPTION", "table.events tbody tr"},
		{"process", procPath("<0.92.0>"), "table.timeline tbody tr"},
		{"tree", "/ui/tree/" + n.guarded, ".frame.EXCEPTION"},
		{"flame", "/ui/tree/" + n.guarded + "?view=flame", ".flame .bar.EXCEPTION"},
		{"flow", flow, "svg.flow circle.end.RECEIVE"},
		{"trace", "/ui/trace/" + n.guarded + "?order=1", "table.lanes tr.start"},
		{"event", "/ui/event/" + n.guarded, "dl.fields"},
		{"tail", "/ui/tail?origin=" + url.QueryEscape(origin) + "&backfill=5", "table.tail tbody tr"},
		{"cluster", "/ui/cluster", "table.members tbody tr"},
		{"not-found", "/ui/nothing/here", "main h1"},
	} {
		p.open(n.URL + c.path)
		p.waitJS(c.name+" shows "+c.shows, fmt.Sprintf("document.querySelector(%q) !== null", c.shows), 20*time.Second)
		p.noErrors(c.name)
		p.screenshot(c.name)
	}
	// The root sends a browser to the UI.
	p.open(n.URL + "/")
	if path := eval[string](p, "location.pathname"); path != "/ui/" {
		t.Errorf("/ led to %s, want /ui/", path)
	}
}

// frameView is a frame as the tree page shows it.
type frameView struct {
	ID, Outcome, Dur string
}

// TestTreeShowsFramesAndCollapses compares the tree page with CallTree:
// every frame is there with its outcome and duration (the exception at the
// bottom of a deep recursion and the frames it unwound stand out), and
// collapsing and expanding hide and show the callees.
func TestTreeShowsFramesAndCollapses(t *testing.T) {
	n := startLoaded(t)
	resp, err := n.Query.CallTree(context.Background(), connect.NewRequest(&scopev1.CallTreeRequest{EventId: n.guarded, MaxFrames: 100000}))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]frameView{}
	outcomes := map[string]int{}
	var walk func(f *scopev1.CallFrame)
	walk = func(f *scopev1.CallFrame) {
		v := frameView{ID: f.GetCall().GetEventId(), Outcome: strings.TrimPrefix(f.GetOutcome().String(), "OUTCOME_")}
		if f.GetOpen() {
			v.Outcome = "OPEN"
		} else {
			v.Dur = fmtDur(f.GetDurationNs())
		}
		want[v.ID] = v
		outcomes[v.Outcome]++
		for _, c := range f.GetChildren() {
			walk(c)
		}
	}
	walk(resp.Msg.GetRoot())
	if outcomes["EXCEPTION"] == 0 || len(want) < 10 {
		t.Fatalf("the fixture's guarded/1 tree has %d frames, outcomes %v: want a deep tree with an exception", len(want), outcomes)
	}

	p := newPage(t)
	p.open(n.URL + "/ui/tree/" + n.guarded)
	got := eval[[]frameView](p, `[...document.querySelectorAll(".frame")].map((f) => ({
		ID: f.dataset.event, Outcome: f.classList[1], Dur: f.querySelector(".dur").textContent }))`)
	if len(got) != len(want) {
		t.Fatalf("the page shows %d frames, CallTree has %d", len(got), len(want))
	}
	for _, g := range got {
		if w, ok := want[g.ID]; !ok || g != w {
			t.Errorf("frame %s: page shows %+v, CallTree says %+v", g.ID, g, w)
		}
	}
	p.noErrors("tree")

	// The root's first callee is visible; collapsing the root hides it.
	root := resp.Msg.GetRoot()
	child := root.GetChildren()[0].GetCall().GetEventId()
	visible := func(id string) string {
		return fmt.Sprintf(`document.getElementById("frame-%s").offsetParent !== null`, id)
	}
	p.waitJS("the callee shown", visible(child), 5*time.Second)
	p.click("#frame-" + root.GetCall().GetEventId() + " .toggle")
	p.waitJS("the callee hidden", "!("+visible(child)+")", 5*time.Second)
	p.click("#frame-" + root.GetCall().GetEventId() + " .toggle")
	p.waitJS("the callee shown again", visible(child), 5*time.Second)
	p.click("#collapse-all")
	if v := eval[int](p, `[...document.querySelectorAll(".frame")].filter((f) => f.offsetParent !== null).length`); v != 1 {
		t.Errorf("collapse all leaves %d frames visible, want the root only", v)
	}
	p.click("#expand-all")
	if v := eval[int](p, `[...document.querySelectorAll(".frame")].filter((f) => f.offsetParent !== null).length`); v != len(want) {
		t.Errorf("expand all shows %d frames, want %d", v, len(want))
	}
	// Clicking a frame shows its details: the exception's reason.
	deepest := ""
	for id, w := range want {
		if w.Outcome == "EXCEPTION" {
			deepest = id
		}
	}
	p.click("#frame-" + deepest + " .mfa")
	p.waitJS("the frame's details", `document.querySelector("#detail dl") !== null`, 5*time.Second)
	if d := p.text("#detail"); !strings.Contains(d, "exception") || !strings.Contains(d, "too_deep") {
		t.Errorf("details of an exception frame: %q, want its reason", d)
	}
}

// TestFlowReceiveLandsOnSend: in the sequence diagram, clicking a RECEIVE
// brings its SEND into focus, and the address names it.
func TestFlowReceiveLandsOnSend(t *testing.T) {
	n := startLoaded(t)
	a := &scopev1.Process{Origin: origin, Pid: "<0.92.0>"}
	b := &scopev1.Process{Origin: origin, Pid: "<0.95.0>"}
	resp, err := n.Query.MessageFlow(context.Background(), connect.NewRequest(&scopev1.MessageFlowRequest{A: a, B: b}))
	if err != nil {
		t.Fatal(err)
	}
	var msg *scopev1.Message
	for _, m := range resp.Msg.GetMessages() {
		if m.GetSend() != nil && m.GetReceive() != nil {
			msg = m
		}
	}
	if msg == nil {
		t.Fatal("no received message between the fixture's processes")
	}
	p := newPage(t)
	p.open(n.URL + "/ui/flow?a=" + url.QueryEscape(origin+"/<0.92.0>") + "&b=" + url.QueryEscape(origin+"/<0.95.0>"))
	if got := eval[int](p, `document.querySelectorAll("svg.flow g.msg").length`); got != len(resp.Msg.GetMessages()) {
		t.Errorf("the diagram shows %d messages, MessageFlow has %d", got, len(resp.Msg.GetMessages()))
	}
	send, recv := msg.GetSend().GetEventId(), msg.GetReceive().GetEventId()
	p.click("#ev-" + recv)
	p.waitJS("the SEND in focus", fmt.Sprintf(`document.querySelector(".focus") && document.querySelector(".focus").id === "ev-%s"`, send), 5*time.Second)
	if h := eval[string](p, "location.hash"); h != "#ev-"+send {
		t.Errorf("address after the click ends in %q, want #ev-%s", h, send)
	}
	if k := eval[string](p, `document.querySelector(".focus").dataset.kind`); k != "SEND" {
		t.Errorf("focused element is a %s", k)
	}
	p.noErrors("flow")
}

// TestTailShowsNewEvents: the tail page shows events ingested after it
// opened; paused, it holds them and shows them on resume.
func TestTailShowsNewEvents(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{})
	p := newPage(t)
	p.open(n.URL + "/ui/tail?origin=tail%40test")
	p.waitJS("the tail subscribed", `document.getElementById("tail-state").dataset.started === "1"`, 20*time.Second)
	ev := func(seq uint64) *scopev1.Event {
		return &scopev1.Event{Origin: "tail@test", Pid: "<0.1.0>", Kind: scopev1.Kind_KIND_STATE_CHANGE,
			TimestampNs: time.Now().UnixNano(), Seq: seq, Payload: fmt.Sprintf("state %d", seq)}
	}
	first := ingest(t, n.Ingest, []*scopev1.Event{ev(1)})[0]
	p.waitJS("the new event shown", fmt.Sprintf(`document.querySelector('tr[data-event="%s"]') !== null`, first), 20*time.Second)

	p.click("#pause")
	second := ingest(t, n.Ingest, []*scopev1.Event{ev(2)})[0]
	p.waitJS("the event held", `document.getElementById("tail-count").textContent.includes("1 held while paused")`, 20*time.Second)
	if eval[bool](p, fmt.Sprintf(`document.querySelector('tr[data-event="%s"]') !== null`, second)) {
		t.Error("an event is shown while the tail is paused")
	}
	p.click("#pause")
	p.waitJS("the held event shown on resume", fmt.Sprintf(`document.querySelector('tr[data-event="%s"]') !== null`, second), 5*time.Second)
	p.noErrors("tail")
}
