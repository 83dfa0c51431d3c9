package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// benchFlags configure `scope bench`.
type benchFlags struct {
	clientFlags
	events      int
	procs       int
	batch       int
	concurrency int
	durability  string
	rate        float64
	visibility  bool
	duration    time.Duration
	unary       bool
	streamLen   int
	seed        uint64
	baseline    bool
	shards      uint
	payload     int
	retry       bool
}

// Bench bounds.
const (
	progressEvery      = 5 * time.Second
	maxLatencySamples  = 1 << 20 // reservoir of per-batch latencies
	maxConsecutiveErrs = 100     // a worker gives up after this many failures in a row
	// benchResendAttempts bounds the sends of one request with -retry, the
	// first included. With resendRetryable's pauses (at most 2 s) 20
	// attempts span more than the 30 s -timeout, so the request's deadline
	// ends the resends first unless -timeout is 0 or longer.
	benchResendAttempts = 20
)

func runBench(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "queries" {
		return runBenchQueries(args[1:], stdout, stderr)
	}
	var b benchFlags
	fs := newFlagSet("bench", "", stderr)
	b.register(fs)
	fs.IntVar(&b.events, "events", 200_000, "events to send in all (with -duration: at most)")
	fs.IntVar(&b.procs, "procs", 1000, "traced processes, split among the workers")
	fs.IntVar(&b.batch, "batch", 500, "events per request (stream message)")
	fs.IntVar(&b.concurrency, "concurrency", 4, "concurrent workers, each with its own processes and connection stream")
	fs.StringVar(&b.durability, "durability", "committed", "committed or accepted")
	fs.Float64Var(&b.rate, "rate", 0, "target events/s over all workers (0: as fast as possible)")
	fs.DurationVar(&b.duration, "duration", 0, "stop after this long (0: after -events)")
	fs.BoolVar(&b.unary, "unary", false, "one Ingest call per batch instead of IngestStream")
	fs.BoolVar(&b.visibility, "visibility", false, "also probe, every 20ms, the time from an ingest's answer to a LEADER read that sees the event")
	fs.IntVar(&b.streamLen, "stream-len", 8, "batches per IngestStream before it is closed and acknowledged")
	fs.Uint64Var(&b.seed, "seed", 1, "generator seed (same seed: same events)")
	fs.BoolVar(&b.baseline, "baseline", false, "also run the same events through correlate+store.Apply on a temp dir (no RPC, no Raft)")
	fs.UintVar(&b.shards, "baseline-shards", 16, "shards of the baseline store")
	fs.IntVar(&b.payload, "payload-bytes", 0, "pad every event's payload to this many bytes (0: the generator's own, a few bytes)")
	fs.BoolVar(&b.retry, "retry", true, "resend a request that fails with what `scope ingest` resends (UNAVAILABLE, a shard's backpressure), "+
		"the same events, with growing pauses, until it succeeds or -timeout from its first send passes (false: count it failed at once)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if flagSet(fs, "duration") && !flagSet(fs, "events") {
		b.events = 1 << 40 // bounded by -duration only
	}
	failed, err := b.run(stdout, stderr)
	if err != nil {
		return reportError(stderr, fs, err)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "scope bench: %d requests failed\n", failed)
		return exitError
	}
	return exitOK
}

func (b *benchFlags) validate() (scopev1.Durability, error) {
	d, err := parseDurability(b.durability)
	switch {
	case err != nil:
		return 0, err
	case b.events < 1:
		return 0, usageError("-events %d: must be positive", b.events)
	case b.batch < 1 || b.batch > 10000:
		return 0, usageError("-batch %d: must be in 1..10000", b.batch)
	case b.concurrency < 1 || b.concurrency > 1024:
		return 0, usageError("-concurrency %d: must be in 1..1024", b.concurrency)
	case b.procs < 2*b.concurrency:
		return 0, usageError("-procs %d: need at least 2 per worker (%d workers)", b.procs, b.concurrency)
	case b.rate < 0:
		return 0, usageError("-rate %v: must be >= 0", b.rate)
	case b.duration < 0:
		return 0, usageError("-duration %v: must be >= 0", b.duration)
	case b.streamLen < 1 || b.streamLen > 1<<16:
		return 0, usageError("-stream-len %d: must be in 1..65536", b.streamLen)
	case b.shards < 1 || b.shards > 4096:
		return 0, usageError("-baseline-shards %d: must be in 1..4096", b.shards)
	case b.payload < 0 || b.payload > 1<<16:
		return 0, usageError("-payload-bytes %d: must be in 0..65536 (a node keeps -payload-limit bytes, 4KiB by default)", b.payload)
	}
	return d, nil
}

// benchResult is one run's figures.
type benchResult struct {
	Name         string        `json:"name"`
	Events       uint64        `json:"events"`
	Accepted     uint64        `json:"accepted"`
	Refused      uint64        `json:"refused"`
	Errors       uint64        `json:"errors"`
	Elapsed      time.Duration `json:"elapsed_ns"`
	EventsPerSec float64       `json:"events_per_sec"`
	// WireBytes is the protobuf size of every request sent (the agent
	// run; the baseline sends nothing).
	WireBytes     uint64        `json:"wire_bytes,omitempty"`
	P50, P90, P99 time.Duration `json:"-"`
	Max           time.Duration `json:"-"`
	Latency       struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
	} `json:"latency_ms"`
	FirstError string `json:"first_error,omitempty"`
	// With -retry: requests sent more than once, how many times they were
	// sent again in all, and how many of them a resend got acknowledged
	// (the rest count in Errors).
	ResentRequests  uint64 `json:"resent_requests,omitempty"`
	Resends         uint64 `json:"resends,omitempty"`
	ResentSucceeded uint64 `json:"resent_succeeded,omitempty"`
	// Visibility: the -visibility probe (benchvisible.go).
	Visibility *visibility `json:"visibility,omitempty"`
}

// latencies is a bounded reservoir of samples shared by workers.
type latencies struct {
	mu      sync.Mutex
	samples []time.Duration
	seen    uint64
	max     time.Duration
	rng     *rand.Rand
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen++
	l.max = max(l.max, d)
	if len(l.samples) < maxLatencySamples {
		l.samples = append(l.samples, d)
	} else if i := l.rng.Uint64N(l.seen); i < maxLatencySamples {
		l.samples[i] = d
	}
}

func (r *benchResult) finish(l *latencies) {
	if r.Elapsed > 0 {
		r.EventsPerSec = float64(r.Accepted) / r.Elapsed.Seconds()
	}
	if l == nil {
		return
	}
	slices.Sort(l.samples)
	r.P50, r.P90, r.P99, r.Max = percentile(l.samples, 0.50), percentile(l.samples, 0.90), percentile(l.samples, 0.99), l.max
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max = ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max)
}

// run runs the benchmark and prints its summary; failed is the number of
// requests that failed.
func (b *benchFlags) run(stdout, stderr io.Writer) (failed uint64, err error) {
	d, err := b.validate()
	if err != nil {
		return 0, err
	}
	c, err := b.dial()
	if err != nil {
		return 0, err
	}
	defer c.hc.CloseIdleConnections()
	startNs := time.Now().UnixNano()
	res, err := b.runRPC(c, d, startNs, stderr)
	if err != nil {
		return 0, err
	}
	results := []*benchResult{res}
	if b.baseline {
		base, err := runBaseline(b, startNs, uint32(b.shards))
		if err != nil {
			return 0, err
		}
		results = append(results, base)
	}
	if b.json {
		enc := json.NewEncoder(stdout)
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return 0, err
			}
		}
		return res.Errors, nil
	}
	mode := "IngestStream"
	if b.unary {
		mode = "Ingest (unary)"
	}
	fmt.Fprintf(stdout, "scope bench: %s, %s, batch %d, concurrency %d, procs %d, rate %s\n",
		mode, strings.ToLower(strings.TrimPrefix(d.String(), "DURABILITY_")), b.batch, b.concurrency, b.procs, rateText(b.rate))
	fmt.Fprintf(stdout, "%-10s %10s %10s %8s %7s %9s %12s %9s %9s %9s %9s\n",
		"RUN", "EVENTS", "ACCEPTED", "REFUSED", "ERRORS", "ELAPSED", "EVENTS/S", "P50", "P90", "P99", "MAX")
	for _, r := range results {
		lat := func(d time.Duration) string {
			if r.Max == 0 {
				return "-"
			}
			return d.Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(stdout, "%-10s %10d %10d %8d %7d %9s %12.0f %9s %9s %9s %9s\n", r.Name, r.Events, r.Accepted,
			r.Refused, r.Errors, r.Elapsed.Round(time.Millisecond), r.EventsPerSec, lat(r.P50), lat(r.P90), lat(r.P99), lat(r.Max))
	}
	if agent := results[0]; agent.Events > 0 {
		payload := "the generator's payloads of a few bytes"
		if b.payload > 0 {
			payload = fmt.Sprintf("payloads padded to %d B", b.payload)
		}
		fmt.Fprintf(stdout, "shape: events of %.0f B each on the wire (protobuf, mean; %s), %d events per request, %s; %s\n",
			float64(agent.WireBytes)/float64(agent.Events), payload, b.batch, requestShape(b), durabilityMeaning(d))
	}
	if res.ResentRequests > 0 {
		fmt.Fprintf(stdout, "resent %d requests, %d resends in all (%d succeeded on a resend)\n",
			res.ResentRequests, res.Resends, res.ResentSucceeded)
	}
	if res.Visibility != nil {
		fmt.Fprintln(stdout, res.Visibility)
	}
	if res.FirstError != "" {
		fmt.Fprintf(stderr, "first error: %s\n", res.FirstError)
	}
	if len(results) == 2 && results[1].EventsPerSec > 0 {
		fmt.Fprintf(stdout, "agent/baseline throughput: %.2f\n", res.EventsPerSec/results[1].EventsPerSec)
	}
	return res.Errors, nil
}

// requestShape says how requests travel.
func requestShape(b *benchFlags) string {
	if b.unary {
		return "one unary Ingest call each"
	}
	return fmt.Sprintf("%d requests per IngestStream, acknowledged each", b.streamLen)
}

// durabilityMeaning says what an acknowledgement promised.
func durabilityMeaning(d scopev1.Durability) string {
	if d == scopev1.Durability_DURABILITY_ACCEPTED {
		return "acknowledged when in the node's ring buffer (not yet durable)"
	}
	return "acknowledged once committed: in the fsynced raft log of a majority of the shard's replicas"
}

func rateText(r float64) string {
	if r == 0 {
		return "max"
	}
	return fmt.Sprintf("%.0f events/s", r)
}

// runRPC drives the agent with b.concurrency workers.
//
// SIGINT or SIGTERM ends the run early, like -duration: the summary covers
// what was sent. Every progressEvery a line on stderr says how far it got.
func (b *benchFlags) runRPC(c *api, d scopev1.Durability, startNs int64, stderr io.Writer) (*benchResult, error) {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if b.duration > 0 {
		ctx, cancel = context.WithTimeout(ctx, b.duration)
		defer cancel()
	}
	res := &benchResult{Name: "agent"}
	lat := &latencies{rng: rand.New(rand.NewPCG(b.seed, 99))}
	var sent, accepted, refused, errs, wire, resent, resends, resentOK atomic.Uint64
	var firstErr atomic.Pointer[string]
	var wg sync.WaitGroup
	perWorker := b.events / b.concurrency
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	probed := make(chan *visibility, 1)
	if b.visibility {
		go func() { probed <- probeVisibility(probeCtx, c, d) }()
	}
	start := time.Now()
	var progress atomic.Uint64 // events acknowledged so far, all workers
	progressDone := make(chan struct{})
	defer close(progressDone)
	go func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-progressDone:
				return
			case <-t.C:
				el := time.Since(start)
				n := progress.Load()
				fmt.Fprintf(stderr, "  %6s  %d events acknowledged (%.0f/s)\n", el.Round(time.Second), n, float64(n)/el.Seconds())
			}
		}
	}()
	for w := range b.concurrency {
		quota := perWorker
		if w == 0 {
			quota += b.events % b.concurrency
		}
		g, err := newGenerator(genConfig{Seed: b.seed, Procs: b.procs / b.concurrency, Part: w, Origins: 8,
			MaxDepth: 8, StartNs: startNs, PayloadBytes: b.payload})
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := benchWorker{b: b, c: c, d: d, g: g, quota: quota, lat: lat, start: start,
				rate: b.rate / float64(b.concurrency), progress: &progress,
				phase: float64(b.batch) * float64(w) / float64(b.concurrency)}
			wk.run(ctx)
			sent.Add(wk.sent)
			accepted.Add(wk.accepted)
			refused.Add(wk.refused)
			errs.Add(wk.errors)
			wire.Add(wk.wireBytes)
			resent.Add(wk.resent)
			resends.Add(wk.resends)
			resentOK.Add(wk.resentOK)
			if wk.firstErr != "" {
				firstErr.CompareAndSwap(nil, &wk.firstErr)
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	if b.visibility {
		stopProbe()
		res.Visibility = <-probed
	}
	res.Events, res.Accepted, res.Refused, res.Errors = sent.Load(), accepted.Load(), refused.Load(), errs.Load()
	res.WireBytes = wire.Load()
	res.ResentRequests, res.Resends, res.ResentSucceeded = resent.Load(), resends.Load(), resentOK.Load()
	if p := firstErr.Load(); p != nil {
		res.FirstError = *p
	}
	res.finish(lat)
	return res, nil
}

// benchWorker sends one generator's events, paced to rate events/s.
type benchWorker struct {
	b     *benchFlags
	c     *api
	d     scopev1.Durability
	g     *generator
	quota int
	rate  float64
	// phase spreads the paced workers' requests evenly over a request's
	// period (worker w goes w/concurrency of a batch early): with a common
	// schedule every worker would send at the same instant, a burst at
	// full speed whatever the average rate.
	phase float64
	start time.Time
	lat   *latencies
	// progress counts the events acknowledged by every worker (the
	// progress lines).
	progress *atomic.Uint64

	sent, accepted, refused, errors uint64
	wireBytes                       uint64 // protobuf bytes of the requests built
	resent, resends, resentOK       uint64 // requests sent again, times, acknowledged on a resend
	consecutive                     int
	firstErr                        string
}

func (w *benchWorker) run(ctx context.Context) {
	buf := make([]correlate.Event, 0, w.b.batch)
	for w.quota > 0 && ctx.Err() == nil && w.consecutive < maxConsecutiveErrs {
		n := w.b.batch * w.b.streamLen
		if w.b.unary {
			n = w.b.batch
		}
		n = min(n, w.quota)
		w.quota -= n
		// Batches of one request (unary) or one stream.
		var reqs []*scopev1.IngestRequest
		for n > 0 {
			k := min(n, w.b.batch)
			n -= k
			buf = w.g.next(buf[:0], k)
			req := &scopev1.IngestRequest{Events: rpc.EventsToProto(buf), Durability: w.d}
			w.wireBytes += uint64(proto.Size(req))
			reqs = append(reqs, req)
		}
		if w.b.unary {
			w.unary(ctx, reqs[0])
		} else {
			w.stream(ctx, reqs)
		}
	}
}

// pace waits until sending up to the total-th event keeps the worker at
// its rate.
func (w *benchWorker) pace(ctx context.Context, total uint64) {
	if w.rate <= 0 {
		return
	}
	due := paceDue(w.start, total, w.phase, w.rate)
	if wait := time.Until(due); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// paceDue is when a worker paced at rate events/s, phase events early,
// may have sent total events.
func paceDue(start time.Time, total uint64, phase, rate float64) time.Time {
	return start.Add(time.Duration((float64(total) - phase) / rate * float64(time.Second)))
}

// record counts one request (a unary call or a stream) of events events,
// answered by resp or failed with err after resends resends. sendTimes
// are when its batches were first sent: a resent request's latency counts
// from its first send, as a client waiting for it would see it.
func (w *benchWorker) record(events uint64, resp *scopev1.IngestResponse, err error, resends int, sendTimes []time.Time) {
	w.sent += events
	if resends > 0 {
		w.resent++
		w.resends += uint64(resends)
		if err == nil {
			w.resentOK++
		}
	}
	// The last answer says what the request stored. Its duplicates, when it
	// was resent, are events an earlier attempt stored (the generator
	// repeats no id within a run): acknowledged, too.
	acked := func(r *scopev1.IngestResponse) uint64 {
		n := uint64(r.GetAccepted())
		if resends > 0 {
			n += uint64(r.GetDuplicates())
		}
		return n
	}
	if err != nil {
		w.errors++
		w.consecutive++
		if w.firstErr == "" {
			w.firstErr = err.Error()
		}
		if ir := ingestDetail(err); ir != nil {
			w.accepted += acked(ir)
			w.refused += uint64(ir.GetRefused())
		}
		return
	}
	w.consecutive = 0
	w.accepted += acked(resp)
	w.refused += uint64(resp.GetRefused())
	w.progress.Add(acked(resp))
	for _, t := range sendTimes {
		w.lat.add(time.Since(t))
	}
}

// requestContext bounds one request or stream by -timeout (0: none),
// resends included.
func (w *benchWorker) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if w.b.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, w.b.timeout)
}

// resend calls send, and with -retry calls it again while resendRetryable
// allows, within ctx (the request's deadline and the run's end). A worker
// sends one request at a time, so resending delays only its own worker's
// next request, as a slow answer does; that request then goes at once if
// it is due (pace), and the other workers keep their schedules.
func (w *benchWorker) resend(ctx context.Context, send func() error) (resends int, err error) {
	attempts := 1
	if w.b.retry {
		attempts = benchResendAttempts
	}
	return resendRetryable(ctx, attempts, send)
}

func (w *benchWorker) unary(ctx context.Context, req *scopev1.IngestRequest) {
	n := uint64(len(req.GetEvents()))
	w.pace(ctx, w.sent+n)
	began := time.Now()
	rctx, cancel := w.requestContext(ctx)
	defer cancel()
	var resp *connect.Response[scopev1.IngestResponse]
	resends, err := w.resend(rctx, func() error {
		var err error
		resp, err = w.c.ingest.Ingest(rctx, connect.NewRequest(req))
		return err
	})
	if err != nil && ctx.Err() != nil {
		return // -duration ended the run mid-request: neither sent nor an error
	}
	if err != nil {
		w.record(n, nil, err, resends, nil)
		return
	}
	w.record(n, resp.Msg, nil, resends, []time.Time{began})
}

// stream sends reqs on one IngestStream, and again on a new one while
// resend allows. The summary that acknowledges them comes when the stream
// closes, so each batch's latency is measured from its own first Send to
// that acknowledgement: an upper bound of its ingest→ack time (the last
// batch's is exact when the stream was not resent).
func (w *benchWorker) stream(ctx context.Context, reqs []*scopev1.IngestRequest) {
	var n uint64
	for _, r := range reqs {
		n += uint64(len(r.GetEvents()))
	}
	rctx, cancel := w.requestContext(ctx)
	defer cancel()
	sendTimes := make([]time.Time, 0, len(reqs))
	var resp *scopev1.IngestResponse
	resends, err := w.resend(rctx, func() error {
		var err error
		resp, err = w.streamOnce(ctx, rctx, reqs, &sendTimes)
		return err
	})
	if err != nil && ctx.Err() != nil {
		return // -duration ended the run mid-stream: neither sent nor an error
	}
	w.record(n, resp, err, resends, sendTimes)
}

// streamOnce sends reqs on a new IngestStream bounded by rctx. A batch is
// paced (on the run's ctx) and its time noted on its first send only: a
// resend sends at once the batches an earlier attempt sent, which were
// due already.
func (w *benchWorker) streamOnce(ctx, rctx context.Context, reqs []*scopev1.IngestRequest, sendTimes *[]time.Time) (*scopev1.IngestResponse, error) {
	s := w.c.ingest.IngestStream(rctx)
	var sendErr error
	total := w.sent
	for i, r := range reqs {
		total += uint64(len(r.GetEvents()))
		if i == len(*sendTimes) {
			w.pace(ctx, total)
			*sendTimes = append(*sendTimes, time.Now())
		}
		if sendErr = s.Send(r); sendErr != nil {
			break // the server ended the stream: CloseAndReceive has its error
		}
	}
	resp, err := s.CloseAndReceive()
	if err == nil && sendErr != nil {
		err = sendErr
	}
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}
