package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Load bounds.
const (
	maxLoadAttempts   = 20              // one stream is retried this often before the load fails
	maxLoadBackoff    = 2 * time.Second // longest wait between attempts
	markerEvery       = 2 * time.Second // progress marker period
	landmarkBatch     = 500             // events per landmark request
	loadGenOrigins    = 8
	loadGenDepth      = 16 // deeper stacks than the ingest benchmark's 8
	landmarkCheckTime = 60 * time.Second
)

// loadResult is what a load did.
type loadResult struct {
	Target       int           `json:"target"`
	Resumed      int           `json:"resumed_from"` // events already loaded by an earlier run
	Sent         int           `json:"sent"`         // events sent by this run and acknowledged
	Retries      uint64        `json:"retries"`      // streams sent again after a failure
	Elapsed      time.Duration `json:"elapsed_ns"`
	EventsPerSec float64       `json:"events_per_sec"`
	Skipped      bool          `json:"skipped"` // the data set was complete already
}

// loader streams one data set into the cluster: parts generators, each on
// its own IngestStreams (one part's processes stay in order on one
// stream), spread over the addresses. Each stream is acknowledged
// COMMITTED before the part's progress advances; a failed stream is sent
// again with the same event ids (the replicas' dedup window drops what
// already committed). Progress goes into the marker, so an interrupted
// load resumes where its acknowledged prefix ends.
type loader struct {
	apis      []*api
	batch     int
	streamLen int
	m         *benchMarker // shape; Acked and EndNs are written only by the progress loop
	log       io.Writer

	acked   []atomic.Int64 // per part, events acknowledged
	lastNs  []atomic.Int64 // per part, last acknowledged timestamp
	retries atomic.Uint64
}

// run loads what m still lacks and writes markers as it goes.
func (l *loader) run(ctx context.Context, mw *markerWriter) (loadResult, error) {
	res := loadResult{Target: l.m.Target, Resumed: l.m.loaded()}
	l.acked = make([]atomic.Int64, l.m.Parts)
	l.lastNs = make([]atomic.Int64, l.m.Parts)
	for p, a := range l.m.Acked {
		l.acked[p].Store(int64(a))
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, l.m.Parts)
	var wg sync.WaitGroup
	for p := range l.m.Parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.part(ctx, p); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	tick := time.NewTicker(markerEvery)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-tick.C:
			// A periodic marker is only progress for a later resume: one
			// that fails (a slow commit under the load itself) is reported
			// and the next tick writes a newer one; the final write below
			// must succeed.
			if err := mw.write(ctx, l.progress()); err != nil && ctx.Err() == nil {
				fmt.Fprintf(l.log, "scope bench: progress marker not written (the next one will be): %v\n", err)
			}
			fmt.Fprintf(l.log, "scope bench: loaded %d of %d events\n", l.m.loaded(), l.m.Target)
		}
	}
	res.Elapsed = time.Since(start)
	res.Retries = l.retries.Load()
	res.Sent = l.progress().loaded() - res.Resumed
	if res.Elapsed > 0 {
		res.EventsPerSec = float64(res.Sent) / res.Elapsed.Seconds()
	}
	// The acknowledged prefix is recorded even when the load failed, so a
	// rerun resumes from it.
	final := context.WithoutCancel(ctx)
	if err := mw.write(final, l.progress()); err != nil {
		return res, err
	}
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	return res, ctx.Err()
}

// progress copies the parts' counters into the marker.
func (l *loader) progress() *benchMarker {
	for p := range l.m.Parts {
		l.m.Acked[p] = int(l.acked[p].Load())
		l.m.EndNs = max(l.m.EndNs, l.lastNs[p].Load())
	}
	return l.m
}

// part sends part p's quota from where it stands. The generator is
// deterministic, so the events already acknowledged are generated again
// and skipped: the rest have the same ids and timestamps as in the run
// that was interrupted.
func (l *loader) part(ctx context.Context, p int) error {
	g, err := newGenerator(genConfig{Seed: l.m.Seed, Procs: l.m.Procs, Part: p, Origins: l.m.Origins,
		MaxDepth: l.m.MaxDepth, StartNs: l.m.StartNs})
	if err != nil {
		return err
	}
	quota := l.m.quota(p)
	done := int(l.acked[p].Load())
	buf := make([]correlate.Event, 0, l.batch)
	for skip := done; skip > 0; {
		k := min(skip, l.batch)
		buf = g.next(buf[:0], k)
		skip -= k
	}
	c := l.apis[p%len(l.apis)]
	for done < quota {
		n := min(l.batch*l.streamLen, quota-done)
		reqs := make([]*scopev1.IngestRequest, 0, l.streamLen)
		for left := n; left > 0; {
			k := min(left, l.batch)
			buf = g.next(buf[:0], k)
			reqs = append(reqs, &scopev1.IngestRequest{Events: rpc.EventsToProto(buf),
				Durability: scopev1.Durability_DURABILITY_COMMITTED})
			left -= k
		}
		for attempt := 1; ; attempt++ {
			err := sendStream(ctx, c, reqs, n)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil // cancelled: the acknowledged prefix stands
			}
			if attempt == maxLoadAttempts {
				return fmt.Errorf("scope bench: load part %d: stream of %d events after event %d failed %d times: %w",
					p, n, done, attempt, err)
			}
			l.retries.Add(1)
			c = l.apis[(p+attempt)%len(l.apis)]
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(min(time.Duration(attempt)*100*time.Millisecond, maxLoadBackoff)):
			}
		}
		done += n
		l.lastNs[p].Store(g.nowNs)
		l.acked[p].Store(int64(done))
	}
	return nil
}

// sendStream sends reqs on one IngestStream and requires all n events
// acknowledged.
func sendStream(ctx context.Context, c *api, reqs []*scopev1.IngestRequest, n int) error {
	s := c.ingest.IngestStream(ctx)
	var sendErr error
	for _, r := range reqs {
		if sendErr = s.Send(r); sendErr != nil {
			break // the server ended the stream: CloseAndReceive has its error
		}
	}
	resp, err := s.CloseAndReceive()
	switch {
	case err != nil:
		return err
	case sendErr != nil:
		return sendErr
	case int(resp.Msg.GetAccepted()+resp.Msg.GetDuplicates()) != n:
		return fmt.Errorf("stream acknowledged %d of %d events (refused %d)", resp.Msg.GetAccepted(), n, resp.Msg.GetRefused())
	}
	return nil
}

// storedEvents asks Stats for the number of stored events.
func storedEvents(ctx context.Context, c *api) (uint64, error) {
	resp, err := c.query.Stats(ctx, connect.NewRequest(&scopev1.StatsRequest{TopN: 1}))
	if err != nil {
		return 0, fmt.Errorf("scope bench: stats: %w", err)
	}
	return resp.Msg.GetEvents(), nil
}
