package clustertest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// LoaderOptions shape a background ingest load.
type LoaderOptions struct {
	// Via are the nodes requests enter through, in turn; a failed request
	// is retried, with the same event ids, through the next one.
	Via []*Node
	// Workers send concurrently, each for its own processes (default 2).
	Workers int
	// PidsPerWorker is the number of traced processes per worker
	// (default 8); a request's processes usually span several shards.
	PidsPerWorker int
	// PairsPerRequest is the CALL+RETURN pairs per request (default 4).
	PairsPerRequest int
	// OpenFrames sends a process's CALL and its RETURN in different
	// requests: each request has 2×PairsPerRequest processes, each closing
	// its open frame or opening one, so frames stay open between requests
	// (and across whatever happens between them: a leader change, a
	// split). A RETURN whose CALL state was lost is then an orphan.
	OpenFrames bool
	// MaxEvents bounds the events the loader sends in all (default
	// 20000); a worker stops sending once the bound is reached.
	MaxEvents int
	// RequestTimeout bounds one request (default 15s).
	RequestTimeout time.Duration
	// Durability of every request (default COMMITTED). ACCEPTED events
	// are acknowledged once a leader's ring holds them: Acked then holds
	// events that must be stored once the cluster has settled.
	Durability scopev1.Durability
}

func (o *LoaderOptions) setDefaults() {
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.PidsPerWorker == 0 {
		o.PidsPerWorker = 8
	}
	if o.PairsPerRequest == 0 {
		o.PairsPerRequest = 4
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = 20000
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 15 * time.Second
	}
	if o.Durability == scopev1.Durability_DURABILITY_UNSPECIFIED {
		o.Durability = scopev1.Durability_DURABILITY_COMMITTED
	}
}

// LoadResult is what a loader sent and what was acknowledged.
type LoadResult struct {
	// Acked holds the ids of events acknowledged (with the loader's
	// durability): each must be stored, exactly once.
	Acked map[string]bool
	// Sent holds every id sent, acknowledged or not: nothing else may be
	// stored.
	Sent     map[string]bool
	Requests uint64 // requests sent, retries included
	Failures uint64 // requests that failed (each retried until acknowledged or stopped)
}

// Merge adds o's ids and counts to r.
func (r *LoadResult) Merge(o LoadResult) {
	for id := range o.Sent {
		r.Sent[id] = true
	}
	for id := range o.Acked {
		r.Acked[id] = true
	}
	r.Requests += o.Requests
	r.Failures += o.Failures
}

// Loader ingests CALL/RETURN pairs in the background, COMMITTED unless
// told otherwise. Each
// request is retried with the same event ids until it is acknowledged or
// the loader stops, so a request that partly committed before failing
// exercises the replicas' duplicate detection.
type Loader struct {
	opts     LoaderOptions
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	mu       sync.Mutex
	acked    map[string]bool
	sent     map[string]bool
	budget   int // events still to send (MaxEvents bound)
	requests atomic.Uint64
	failures atomic.Uint64
	ackCount atomic.Int64
}

// StartLoader starts opts.Workers workers sending through opts.Via.
func StartLoader(opts LoaderOptions) *Loader {
	opts.setDefaults()
	if len(opts.Via) == 0 {
		panic("clustertest: StartLoader: Via: at least one node required")
	}
	l := &Loader{opts: opts, stop: make(chan struct{}), acked: make(map[string]bool),
		sent: make(map[string]bool), budget: opts.MaxEvents}
	for w := range opts.Workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.work(w)
		}()
	}
	return l
}

// Acked is the number of events acknowledged so far.
func (l *Loader) Acked() int { return int(l.ackCount.Load()) }

// Stop stops the workers, lets each finish its request in flight, and
// returns what was sent and acknowledged. It may be called again; the
// result's maps are the loader's own, no longer written once it returned.
func (l *Loader) Stop() LoadResult {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{Acked: l.acked, Sent: l.sent, Requests: l.requests.Load(), Failures: l.failures.Load()}
}

func (l *Loader) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// work sends requests for worker w's processes until stopped or out of
// budget. Events of one process are sent in order: the next request waits
// until the previous one is acknowledged or abandoned.
func (l *Loader) work(w int) {
	via := w % len(l.opts.Via)
	var ts int64
	open := make(map[string]bool) // OpenFrames: processes with a frame open
	for i := 0; !l.stopped(); i++ {
		n := 2 * l.opts.PairsPerRequest
		l.mu.Lock()
		if l.budget < n {
			l.mu.Unlock()
			return
		}
		l.budget -= n
		l.mu.Unlock()

		events := make([]*scopev1.Event, 0, n)
		for p := range 2 * l.opts.PairsPerRequest {
			if !l.opts.OpenFrames {
				break
			}
			pid := fmt.Sprintf("<%d.%d.0>", w, (i*2*l.opts.PairsPerRequest+p)%l.opts.PidsPerWorker)
			kind := scopev1.Kind_KIND_CALL
			if open[pid] {
				kind = scopev1.Kind_KIND_RETURN
			}
			open[pid] = !open[pid]
			ts++
			events = append(events, &scopev1.Event{EventId: ulid.Make().String(), Origin: "load@host",
				Pid: pid, Kind: kind, TimestampNs: ts, Module: "load", Function: "step", Arity: 1})
		}
		for p := range l.opts.PairsPerRequest {
			if l.opts.OpenFrames {
				break
			}
			pid := fmt.Sprintf("<%d.%d.0>", w, (i*l.opts.PairsPerRequest+p)%l.opts.PidsPerWorker)
			for _, kind := range []scopev1.Kind{scopev1.Kind_KIND_CALL, scopev1.Kind_KIND_RETURN} {
				ts++
				events = append(events, &scopev1.Event{EventId: ulid.Make().String(), Origin: "load@host",
					Pid: pid, Kind: kind, TimestampNs: ts, Module: "load", Function: "step", Arity: 1})
			}
		}
		l.mu.Lock()
		for _, e := range events {
			l.sent[e.GetEventId()] = true
		}
		l.mu.Unlock()

		for attempt := 0; ; attempt++ {
			if l.send(l.opts.Via[via], events) {
				l.mu.Lock()
				for _, e := range events {
					l.acked[e.GetEventId()] = true
				}
				l.mu.Unlock()
				l.ackCount.Add(int64(len(events)))
				break
			}
			l.failures.Add(1)
			via = (via + 1) % len(l.opts.Via)
			// Back off a little (bounded) before the retry, so a cluster
			// electing leaders is not flooded; stop abandons the request.
			select {
			case <-l.stop:
				return
			case <-time.After(time.Duration(min(attempt+1, 10)) * 20 * time.Millisecond):
			}
		}
		via = (via + 1) % len(l.opts.Via)
	}
}

// send ingests events through n and reports whether every shard
// acknowledged them.
func (l *Loader) send(n *Node, events []*scopev1.Event) bool {
	l.requests.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.RequestTimeout)
	defer cancel()
	resp, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events,
		Durability: l.opts.Durability}))
	// A retry after an unknown outcome finds some events stored: duplicates.
	return err == nil && int(resp.Msg.GetAccepted()+resp.Msg.GetDuplicates()) == len(events)
}
