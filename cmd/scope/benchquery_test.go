package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/rpctest"
)

func TestBenchQueriesFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // substring; "" means valid
		check   func(t *testing.T, q *queryBenchFlags)
	}{
		{name: "defaults query an existing data set", args: nil, check: func(t *testing.T, q *queryBenchFlags) {
			if q.load != 0 || q.procs != 0 || q.duration != 30*time.Second || len(q.addrs) != 1 ||
				strings.Join(q.kinds, ",") != "by-pid,time-range,call-tree,trace" {
				t.Errorf("defaults: %+v", q)
			}
		}},
		{name: "auto procs: 500 events each", args: []string{"-load", "10000000"}, check: func(t *testing.T, q *queryBenchFlags) {
			if q.procs != 2500 { // 10M / 8 parts / 500
				t.Errorf("procs %d, want 2500", q.procs)
			}
		}},
		{name: "auto procs capped", args: []string{"-load", "1000000000", "-load-concurrency", "1"}, check: func(t *testing.T, q *queryBenchFlags) {
			if q.procs != maxAutoProcs {
				t.Errorf("procs %d, want %d", q.procs, maxAutoProcs)
			}
		}},
		{name: "auto procs floor", args: []string{"-load", "10"}, check: func(t *testing.T, q *queryBenchFlags) {
			if q.procs != 2 {
				t.Errorf("procs %d, want 2", q.procs)
			}
		}},
		{name: "address list and mix", args: []string{"-addr", "127.0.0.1:1, http://127.0.0.1:2", "-mix", "trace,by-pid", "-load", "5"},
			check: func(t *testing.T, q *queryBenchFlags) {
				if len(q.addrs) != 2 || q.addrs[1] != "http://127.0.0.1:2" || strings.Join(q.kinds, ",") != "trace,by-pid" {
					t.Errorf("addrs %q kinds %q", q.addrs, q.kinds)
				}
			}},
		{name: "load only", args: []string{"-load", "100", "-duration", "0"}},
		{name: "explicit procs", args: []string{"-load", "100", "-procs", "7"}, check: func(t *testing.T, q *queryBenchFlags) {
			if q.procs != 7 {
				t.Errorf("procs %d", q.procs)
			}
		}},
		{name: "nothing to do", args: []string{"-duration", "0"}, wantErr: "-load 0 -duration 0: nothing to do"},
		{name: "negative load", args: []string{"-load", "-1"}, wantErr: "-load -1: must be in 0..10000000000"},
		{name: "procs without load", args: []string{"-procs", "10"}, wantErr: "-procs 10: only with -load"},
		{name: "procs too few", args: []string{"-load", "10", "-procs", "1"}, wantErr: "-procs 1: must be in 2..1048576"},
		{name: "unknown kind", args: []string{"-mix", "by-pid,joins"}, wantErr: `-mix "by-pid,joins": unknown kind "joins"`},
		{name: "kind twice", args: []string{"-mix", "trace,trace"}, wantErr: "trace listed twice"},
		{name: "empty address", args: []string{"-addr", "127.0.0.1:1,"}, wantErr: "empty address in the list"},
		{name: "unknown consistency", args: []string{"-consistency", "quorum"}, wantErr: `-consistency "quorum": want leader or any`},
		{name: "bad address", args: []string{"-addr", "127.0.0.1:1,nope"}, wantErr: `-addr "nope": want host:port`},
		{name: "batch", args: []string{"-batch", "0"}, wantErr: "-batch 0: must be in 1..10000"},
		{name: "stream length", args: []string{"-stream-len", "0"}, wantErr: "-stream-len 0"},
		{name: "load concurrency", args: []string{"-load-concurrency", "65"}, wantErr: "-load-concurrency 65: must be in 1..64"},
		{name: "concurrency", args: []string{"-concurrency", "0"}, wantErr: "-concurrency 0: must be in 1..1024"},
		{name: "negative duration", args: []string{"-duration", "-1s"}, wantErr: "-duration -1s: must be >= 0"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q queryBenchFlags
			var errOut bytes.Buffer
			fs := newFlagSet("bench queries", "", &errOut)
			q.clientFlags.register(fs)
			q.register(fs)
			if _, ok := parseFlags(fs, tc.args); !ok {
				if !strings.Contains(errOut.String(), tc.wantErr) || tc.wantErr == "" {
					t.Fatalf("parse %q: %s", tc.args, errOut.String())
				}
				return
			}
			err := q.validate(flagSet(fs, "procs"))
			if err == nil && fs.NArg() > 0 {
				err = usageError("unexpected arguments %q", fs.Args())
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("validate %q: %v", tc.args, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("validate %q: error %v, want %q", tc.args, err, tc.wantErr)
			case tc.check != nil && err == nil:
				tc.check(t, &q)
			}
		})
	}
	// Through the command: a usage error exits 2 and names the flag.
	var out, errOut bytes.Buffer
	if code := run([]string{"bench", "queries", "-mix", "x"}, &out, &errOut); code != exitUsage ||
		!strings.Contains(errOut.String(), `unknown kind "x"`) {
		t.Errorf("bench queries -mix x: exit %d, stderr %q", code, errOut.String())
	}
}

// benchQueries runs `scope bench queries` with -json and decodes the
// report.
func benchQueries(t *testing.T, args ...string) queryBenchReport {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(append([]string{"bench", "queries", "-json"}, args...), &out, &errOut); code != exitOK {
		t.Fatalf("bench queries %q: exit %d\nstderr: %s", args, code, errOut.String())
	}
	var rep queryBenchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bench queries %q: output %q: %v", args, out.String(), err)
	}
	return rep
}

// TestBenchQueriesSmoke loads a small data set into an in-process node,
// runs the mix, queries the data set again through the marker, and resumes
// a load whose marker says it stopped halfway: the events it sends again
// are the same events (same ids), so nothing is stored twice.
func TestBenchQueriesSmoke(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{})
	const load = 2000
	landmarkEvents := 2*treeFrames + 4*chainCount
	addr := []string{"-addr", n.URL, "-concurrency", "4", "-batch", "250", "-stream-len", "2", "-load-concurrency", "2"}

	rep := benchQueries(t, append(addr, "-load", "2000", "-duration", "300ms")...)
	if rep.Load == nil || rep.Load.Sent != load || rep.Load.Skipped || rep.Loaded != load {
		t.Fatalf("load: %+v, loaded %d", rep.Load, rep.Loaded)
	}
	// The generated events, the landmarks and at least the first and last
	// markers.
	if rep.Stored < load+uint64(landmarkEvents)+2 {
		t.Errorf("stored %d, want at least %d", rep.Stored, load+landmarkEvents+2)
	}
	want := map[string]float64{qByPID: 100, qTimeRange: 1000, qCallTree: treeFrames, qTrace: chainHops + 1}
	if len(rep.Queries) != len(want) {
		t.Fatalf("queries: %+v", rep.Queries)
	}
	for _, r := range rep.Queries {
		results := r.MeanResults == want[r.Kind]
		if r.Kind == qTimeRange { // a range starting late holds fewer than the limit
			results = r.MeanResults > 100 && r.MeanResults <= 1000
		}
		if r.Count == 0 || r.Errors != 0 || r.Wrong != 0 || !results || r.P99 <= 0 || r.Max < r.P99 {
			t.Errorf("%s: %+v, want %v results each", r.Kind, r, want[r.Kind])
		}
	}

	// -load 0 finds the data set through its marker; the same -load skips.
	rep = benchQueries(t, append(addr, "-mix", "call-tree", "-duration", "1ms")...)
	if rep.Load != nil || rep.Loaded != load || len(rep.Queries) != 1 || rep.Queries[0].Wrong != 0 || rep.Queries[0].Errors != 0 {
		t.Errorf("-load 0: %+v", rep)
	}
	rep = benchQueries(t, append(addr, "-load", "2000", "-duration", "0")...)
	if rep.Load == nil || !rep.Load.Skipped || rep.Queries != nil {
		t.Errorf("same -load again: %+v", rep)
	}
	generated := func(stored uint64) uint64 { // stored events less the markers
		t.Helper()
		resp, err := n.Query.Events(context.Background(), connect.NewRequest(&scopev1.EventsRequest{Origin: markerOrigin,
			Pid: markerPID, Limit: 10000}))
		if err != nil {
			t.Fatal(err)
		}
		return stored - uint64(len(resp.Msg.GetEvents()))
	}
	before := generated(rep.Stored)
	if before != load+uint64(landmarkEvents) {
		t.Errorf("stored without markers %d, want %d", before, load+landmarkEvents)
	}

	// Pretend the load stopped halfway: the resumed load sends the second
	// half again, and the dedup window drops every one of them.
	c := clientFlags{addr: n.URL, timeout: 10 * time.Second}
	a, err := c.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer a.hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := readMarker(ctx, a)
	if err != nil || m == nil {
		t.Fatalf("marker: %+v, %v", m, err)
	}
	for p := range m.Acked {
		m.Acked[p] /= 2
	}
	if err := (&markerWriter{c: a}).write(ctx, m); err != nil {
		t.Fatal(err)
	}
	rep = benchQueries(t, append(addr, "-load", "2000", "-duration", "0")...)
	if rep.Load == nil || rep.Load.Resumed != load/2 || rep.Load.Sent != load/2 {
		t.Fatalf("resumed load: %+v", rep.Load)
	}
	if after := generated(rep.Stored); after != before {
		t.Errorf("stored without markers after the resumed load: %d, want %d (no generated event twice)", after, before)
	}

	// Another -load on this data set names the difference.
	var out, errOut bytes.Buffer
	if code := run([]string{"bench", "queries", "-addr", n.URL, "-load", "5000", "-load-concurrency", "2", "-duration", "0"}, &out, &errOut); code != exitUsage ||
		!strings.Contains(errOut.String(), "-load 5000: the cluster's data set was loaded with -load 2000") {
		t.Errorf("different -load: exit %d, stderr %q", code, errOut.String())
	}
}
