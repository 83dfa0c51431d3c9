package ui_test

import (
	"fmt"
	"testing"
	"time"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// wideTree is the events of one process whose call tree has 1 + fanout +
// fanout² frames: a root calling fanout functions that each call fanout
// leaves (every second leaf raises). Timestamps are 1 µs apart.
func wideTree(fanout int) []*scopev1.Event {
	var evs []*scopev1.Event
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	seq := uint64(0)
	add := func(kind scopev1.Kind, fn string, reason string) {
		seq++
		ts += 1000
		evs = append(evs, &scopev1.Event{Origin: "bench@host", Pid: "<0.1.0>", Kind: kind, TimestampNs: ts, Seq: seq,
			Module: "bench", Function: fn, Arity: 1, Reason: reason})
	}
	add(scopev1.Kind_KIND_CALL, "root", "")
	for i := range fanout {
		mid := fmt.Sprintf("mid_%d", i)
		add(scopev1.Kind_KIND_CALL, mid, "")
		for j := range fanout {
			leaf := fmt.Sprintf("leaf_%d", j)
			add(scopev1.Kind_KIND_CALL, leaf, "")
			if j%2 == 1 {
				add(scopev1.Kind_KIND_EXCEPTION, leaf, "badarg")
			} else {
				add(scopev1.Kind_KIND_RETURN, leaf, "")
			}
		}
		add(scopev1.Kind_KIND_RETURN, mid, "")
	}
	add(scopev1.Kind_KIND_RETURN, "root", "")
	return evs
}

// BenchmarkTree10000Frames: the call tree page of a 10,101-frame tree in
// headless Chromium. ms/render is from navigation to the tree laid out
// (the CallTree call included); ms/collapse is a click on the root's
// toggle until the browser has laid the page out again.
func BenchmarkTree10000Frames(b *testing.B) {
	n := rpctest.Start(b, rpctest.Options{})
	evs := wideTree(100)
	root := ingest(b, n.Ingest, evs)[0]
	p := newPage(b)
	url := n.URL + "/ui/tree/" + root
	var render, fetch, build, collapse time.Duration
	for b.Loop() {
		start := time.Now()
		p.open(url)
		p.waitJS("the tree", `document.body.dataset.buildMs !== undefined && document.querySelector("#tree-lazy") !== null`, 30*time.Second)
		eval[int](p, `document.body.offsetHeight`) // laid out
		render += time.Since(start)
		fetch += time.Duration(eval[int](p, `Number(document.body.dataset.fetchMs)`)) * time.Millisecond
		build += time.Duration(eval[int](p, `Number(document.body.dataset.buildMs)`)) * time.Millisecond
		ms := eval[float64](p, `(() => { const t = performance.now();
			document.querySelector("#frame-`+root+` .toggle").click();
			document.body.offsetHeight;
			return performance.now() - t; })()`)
		collapse += time.Duration(ms * float64(time.Millisecond))
	}
	b.ReportMetric(float64(render.Milliseconds())/float64(b.N), "ms/render")
	b.ReportMetric(float64(fetch.Milliseconds())/float64(b.N), "ms/fetch")
	b.ReportMetric(float64(build.Milliseconds())/float64(b.N), "ms/build")
	b.ReportMetric(float64(collapse.Microseconds())/1000/float64(b.N), "ms/collapse")
	p.noErrors("tree of 10,101 frames")
}
