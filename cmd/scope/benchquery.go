package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// `scope bench queries` loads a data set shaped for queries (benchdata.go)
// and measures the latency of a query mix against it.

// Query kinds of the mix.
const (
	qByPID     = "by-pid"     // Events of one process, limit 100 (one shard)
	qTimeRange = "time-range" // Events in a time range, limit 1000 (every shard, merged)
	qCallTree  = "call-tree"  // CallTree of the 1,000-frame root
	qTrace     = "trace"      // Trace depth 3 from a chain's RECEIVE
)

var allQueryKinds = []string{qByPID, qTimeRange, qCallTree, qTrace}

// Query bench limits.
const (
	byPIDLimit     = 100
	timeRangeLimit = 1000
	// eventsPerProc is the auto -procs target: by-pid queries find about
	// this many events per process, above their limit of 100.
	eventsPerProc = 500
	maxAutoProcs  = 20000
)

// queryBenchFlags configure `scope bench queries`.
type queryBenchFlags struct {
	clientFlags
	load        int
	loadConc    int
	procs       int
	batch       int
	streamLen   int
	concurrency int
	duration    time.Duration
	seed        uint64
	mix         string
	consistency string

	addrs []string            // -addr split on commas
	cons  scopev1.Consistency // -consistency parsed
	kinds []string            // -mix parsed
}

func (q *queryBenchFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&q.load, "load", 0, "first ingest this many generated events plus the landmarks (0: query the data set already loaded)")
	fs.IntVar(&q.loadConc, "load-concurrency", 8, "load streams in parallel (generator parts)")
	fs.IntVar(&q.procs, "procs", 0, "long-lived processes per load part (0: about 500 events per process, at most 20000)")
	fs.IntVar(&q.batch, "batch", 1000, "events per load request (stream message)")
	fs.IntVar(&q.streamLen, "stream-len", 16, "load requests per IngestStream, acknowledged together")
	fs.IntVar(&q.concurrency, "concurrency", 4, "concurrent query workers")
	fs.DurationVar(&q.duration, "duration", 30*time.Second, "run the query mix this long (0: load only)")
	fs.Uint64Var(&q.seed, "seed", 1, "generator seed (same seed: same events)")
	fs.StringVar(&q.consistency, "consistency", "leader", "which replica of a shard answers the queries: leader, or any (this node's own replica first)")
	fs.StringVar(&q.mix, "mix", strings.Join(allQueryKinds, ","), "query kinds to run, comma-separated: "+strings.Join(allQueryKinds, ", "))
}

func runBenchQueries(args []string, stdout, stderr io.Writer) int {
	var q queryBenchFlags
	fs := newFlagSet("bench queries", "", stderr)
	q.clientFlags.register(fs)
	fs.Lookup("addr").Usage = "node HTTP addresses, comma-separated: load streams and queries are spread over them"
	q.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return reportError(stderr, fs, usageError("unexpected arguments %q", fs.Args()))
	}
	if err := q.validate(flagSet(fs, "procs")); err != nil {
		return reportError(stderr, fs, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := q.run(ctx, stdout, stderr); err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// validate checks the flags and fills addrs, kinds and an automatic
// procs. procsSet tells whether -procs was given.
func (q *queryBenchFlags) validate(procsSet bool) error {
	switch q.consistency {
	case "leader":
		q.cons = scopev1.Consistency_CONSISTENCY_LEADER
	case "any":
		q.cons = scopev1.Consistency_CONSISTENCY_ANY
	default:
		return usageError("-consistency %q: want leader or any", q.consistency)
	}
	q.addrs = q.addrs[:0]
	for _, a := range strings.Split(q.addr, ",") {
		if a = strings.TrimSpace(a); a == "" {
			return usageError("-addr %q: empty address in the list", q.addr)
		}
		c := clientFlags{addr: a}
		if _, err := c.baseURL(); err != nil {
			return err
		}
		q.addrs = append(q.addrs, a)
	}
	q.kinds = q.kinds[:0]
	for _, k := range strings.Split(q.mix, ",") {
		k = strings.TrimSpace(k)
		switch {
		case !slices.Contains(allQueryKinds, k):
			return usageError("-mix %q: unknown kind %q, want some of %s", q.mix, k, strings.Join(allQueryKinds, ", "))
		case slices.Contains(q.kinds, k):
			return usageError("-mix %q: %s listed twice", q.mix, k)
		}
		q.kinds = append(q.kinds, k)
	}
	switch {
	case q.load < 0 || q.load > 1e10:
		return usageError("-load %d: must be in 0..10000000000", q.load)
	case q.loadConc < 1 || q.loadConc > 64:
		return usageError("-load-concurrency %d: must be in 1..64", q.loadConc)
	case q.batch < 1 || q.batch > 10000:
		return usageError("-batch %d: must be in 1..10000", q.batch)
	case q.streamLen < 1 || q.streamLen > 1<<16:
		return usageError("-stream-len %d: must be in 1..65536", q.streamLen)
	case q.concurrency < 1 || q.concurrency > 1024:
		return usageError("-concurrency %d: must be in 1..1024", q.concurrency)
	case q.duration < 0:
		return usageError("-duration %v: must be >= 0", q.duration)
	case q.load == 0 && q.duration == 0:
		return usageError("-load 0 -duration 0: nothing to do (load, query, or both)")
	case procsSet && q.load == 0:
		return usageError("-procs %d: only with -load (the loaded data set fixes it)", q.procs)
	case procsSet && (q.procs < 2 || q.procs > 1<<20):
		return usageError("-procs %d: must be in 2..1048576", q.procs)
	}
	if !procsSet && q.load > 0 {
		q.procs = max(2, min(maxAutoProcs, q.load/q.loadConc/eventsPerProc))
	}
	return nil
}

// queryResult is one query kind's figures.
type queryResult struct {
	Kind        string  `json:"kind"`
	Count       uint64  `json:"count"`
	Errors      uint64  `json:"errors"`
	Wrong       uint64  `json:"wrong"`        // answers that differ from the landmark as built
	MeanResults float64 `json:"mean_results"` // events (frames for call-tree) per answer
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	Max         float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

// queryBenchReport is the run's output (-json: one object).
type queryBenchReport struct {
	Load     *loadResult   `json:"load,omitempty"`
	Stored   uint64        `json:"stored_events"` // Stats before the queries
	Loaded   int           `json:"loaded_events"` // generator events of the data set (marker)
	Duration time.Duration `json:"duration_ns"`
	Queries  []queryResult `json:"queries"`
}

func (q *queryBenchFlags) run(ctx context.Context, stdout, stderr io.Writer) error {
	apis := make([]*api, len(q.addrs))
	for i, a := range q.addrs {
		c := q.clientFlags
		c.addr = a
		var err error
		if apis[i], err = c.dial(); err != nil {
			return err
		}
		defer apis[i].hc.CloseIdleConnections()
	}
	rep := queryBenchReport{}
	m, err := q.prepare(ctx, apis, &rep, stderr)
	if err != nil {
		return err
	}
	rctx, cancel := q.requestContext(ctx)
	rep.Stored, err = storedEvents(rctx, apis[0])
	cancel()
	if err != nil {
		return err
	}
	rep.Loaded = m.loaded()
	if q.duration > 0 {
		rep.Duration = q.duration
		rep.Queries = q.runMix(ctx, apis, m)
	}
	if q.json {
		return json.NewEncoder(stdout).Encode(rep)
	}
	printQueryReport(stdout, q, m, &rep)
	return nil
}

// requestContext bounds one request by -timeout.
func (q *queryBenchFlags) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if q.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, q.timeout)
}

// prepare loads (or resumes loading) the data set when -load asks for
// one, and returns the marker of the data set to query.
func (q *queryBenchFlags) prepare(ctx context.Context, apis []*api, rep *queryBenchReport, log io.Writer) (*benchMarker, error) {
	rctx, cancel := q.requestContext(ctx)
	m, err := readMarker(rctx, apis[0])
	cancel()
	if err != nil {
		return nil, err
	}
	if q.load == 0 {
		if m == nil {
			return nil, fmt.Errorf("scope bench: no data set on the cluster (no %s %s marker): run with -load N first", markerOrigin, markerPID)
		}
		if !m.complete() {
			fmt.Fprintf(log, "scope bench: the data set's load stopped at %d of %d events; querying it anyway\n", m.loaded(), m.Target)
		}
		return m, checkLandmarks(ctx, apis[0], m, landmarkCheckTime)
	}
	want := &benchMarker{Version: markerVersion, Seed: q.seed, Target: q.load, Parts: q.loadConc, Procs: q.procs,
		Origins: loadGenOrigins, MaxDepth: loadGenDepth, Acked: make([]int, q.loadConc)}
	mw := &markerWriter{c: apis[0]}
	switch {
	case m != nil && m.complete():
		if err := m.sameShape(want); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "scope bench: data set of %d events already loaded; skipping the load\n", m.Target)
		rep.Load = &loadResult{Target: m.Target, Resumed: m.loaded(), Skipped: true}
		return m, checkLandmarks(ctx, apis[0], m, landmarkCheckTime)
	case m != nil:
		if err := m.sameShape(want); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "scope bench: resuming the load at %d of %d events\n", m.loaded(), m.Target)
	default:
		m = want
		// Landmarks first, ahead of the generated traffic in time.
		m.StartNs = time.Now().UnixNano()
		events := landmarks(m.Seed, m.StartNs, m)
		m.StartNs = events[len(events)-1].TimestampNs + 1000
		m.EndNs = m.StartNs
		rctx, cancel := q.requestContext(ctx)
		err := storeLandmarks(rctx, apis[0], events, landmarkBatch)
		if err == nil {
			err = mw.write(rctx, m)
		}
		cancel()
		if err != nil {
			return nil, err
		}
	}
	l := &loader{apis: apis, batch: q.batch, streamLen: q.streamLen, m: m, log: log}
	res, err := l.run(ctx, mw)
	rep.Load = &res
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("scope bench: load interrupted at %d of %d events: run the same command again to resume", m.loaded(), m.Target)
	}
	if err != nil {
		return nil, err
	}
	return m, checkLandmarks(ctx, apis[0], m, landmarkCheckTime)
}

// queryStats accumulates one kind's results; it is shared by the workers.
type queryStats struct {
	lat                  *latencies
	mu                   sync.Mutex
	count, errors, wrong uint64
	results              uint64
	firstErr             string
}

func (s *queryStats) record(d time.Duration, results int, wrong bool, err error) {
	if err == nil {
		s.lat.add(d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	switch {
	case err != nil:
		s.errors++
		if s.firstErr == "" {
			s.firstErr = err.Error()
		}
	case wrong:
		s.wrong++
	}
	s.results += uint64(results)
}

// runMix runs the query workers for -duration: no query starts after it,
// and the queries in flight complete (each bounded by -timeout), so the
// slowest answers are not cut from the figures.
func (q *queryBenchFlags) runMix(ctx context.Context, apis []*api, m *benchMarker) []queryResult {
	end := time.Now().Add(q.duration)
	stats := make(map[string]*queryStats, len(q.kinds))
	for i, k := range q.kinds {
		stats[k] = &queryStats{lat: &latencies{rng: rand.New(rand.NewPCG(q.seed, uint64(i)))}}
	}
	var wg sync.WaitGroup
	for w := range q.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			qw := queryWorker{q: q, m: m, apis: apis, rng: rand.New(rand.NewPCG(q.seed, uint64(1000+w)))}
			for i := w; ctx.Err() == nil && time.Now().Before(end); i++ {
				kind := q.kinds[i%len(q.kinds)]
				c := apis[i%len(apis)]
				began := time.Now()
				n, wrong, err := qw.one(ctx, c, kind)
				if err != nil && ctx.Err() != nil {
					return // interrupted mid-request: not an error
				}
				stats[kind].record(time.Since(began), n, wrong, err)
			}
		}()
	}
	wg.Wait()
	out := make([]queryResult, 0, len(q.kinds))
	for _, k := range q.kinds {
		s := stats[k]
		r := queryResult{Kind: k, Count: s.count, Errors: s.errors, Wrong: s.wrong, FirstError: s.firstErr}
		if ok := s.count - s.errors; ok > 0 {
			r.MeanResults = float64(s.results) / float64(ok)
		}
		var br benchResult
		br.finish(s.lat)
		r.P50, r.P99, r.Max = br.Latency.P50, br.Latency.P99, br.Latency.Max
		out = append(out, r)
	}
	return out
}

// queryWorker issues queries; it is not safe for concurrent use.
type queryWorker struct {
	q    *queryBenchFlags
	m    *benchMarker
	apis []*api
	rng  *rand.Rand
}

// one runs one query of kind and returns the number of results and
// whether the answer is wrong (landmark kinds only: their answer is known).
func (w *queryWorker) one(ctx context.Context, c *api, kind string) (results int, wrong bool, err error) {
	ctx, cancel := w.q.requestContext(ctx)
	defer cancel()
	m := w.m
	switch kind {
	case qByPID:
		origin, pid := genProcess(w.rng.IntN(m.Parts), w.rng.IntN(m.Procs), m.Origins)
		resp, err := c.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: origin, Pid: pid, Limit: byPIDLimit,
			Consistency: w.q.cons}))
		if err != nil {
			return 0, false, err
		}
		return len(resp.Msg.GetEvents()), false, nil
	case qTimeRange:
		// Start anywhere in the first 90% of the generated traffic, so most
		// ranges hold more than the limit.
		span := max(int64(1), (m.EndNs-m.StartNs)*9/10)
		from := m.StartNs + w.rng.Int64N(span)
		resp, err := c.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{FromNs: from, ToNs: m.EndNs + 1,
			Limit: timeRangeLimit, Consistency: w.q.cons}))
		if err != nil {
			return 0, false, err
		}
		return len(resp.Msg.GetEvents()), false, nil
	case qCallTree:
		resp, err := c.query.CallTree(ctx, connect.NewRequest(&scopev1.CallTreeRequest{EventId: m.TreeRoot,
			MaxFrames: treeFrames, Origin: landmarkOrigin, Pid: m.TreePID, Consistency: w.q.cons}))
		if err != nil {
			return 0, false, err
		}
		n := countFrames(resp.Msg.GetRoot())
		return n, n != treeFrames || resp.Msg.GetTruncated(), nil
	case qTrace:
		i := w.rng.IntN(len(m.ChainRecv))
		n, err := traceOnce(ctx, c, m.ChainRecv[i], m.ChainRecvPID[i], w.q.cons)
		return n, n != chainHops+1, err
	}
	return 0, false, fmt.Errorf("scope bench: unknown query kind %q", kind)
}

func printQueryReport(w io.Writer, q *queryBenchFlags, m *benchMarker, rep *queryBenchReport) {
	if l := rep.Load; l != nil {
		if l.Skipped {
			fmt.Fprintf(w, "load: skipped, %d events already loaded\n", l.Target)
		} else {
			fmt.Fprintf(w, "load: %d events (resumed from %d) in %v: %.0f events/s, %d stream retries\n",
				l.Sent, l.Resumed, l.Elapsed.Round(time.Millisecond), l.EventsPerSec, l.Retries)
		}
	}
	fmt.Fprintf(w, "data set: %d generated events (%d parts x %d processes, seed %d), %d stored in all (Stats)\n",
		rep.Loaded, m.Parts, m.Procs, m.Seed, rep.Stored)
	if len(rep.Queries) == 0 {
		return
	}
	fmt.Fprintf(w, "queries: %v, concurrency %d, %d address(es)\n", q.duration, q.concurrency, len(q.addrs))
	fmt.Fprintf(w, "%-11s %8s %7s %6s %9s %9s %9s %9s\n", "KIND", "COUNT", "ERRORS", "WRONG", "RESULTS", "P50(ms)", "P99(ms)", "MAX(ms)")
	for _, r := range rep.Queries {
		fmt.Fprintf(w, "%-11s %8d %7d %6d %9.1f %9.2f %9.2f %9.2f\n", r.Kind, r.Count, r.Errors, r.Wrong,
			r.MeanResults, r.P50, r.P99, r.Max)
	}
	for _, r := range rep.Queries {
		if r.FirstError != "" {
			fmt.Fprintf(w, "%s first error: %s\n", r.Kind, r.FirstError)
		}
	}
}
