package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The visibility probe (`scope bench -visibility`): while the load runs,
// every visibilityEvery one more event is ingested on its own (unary, the
// run's durability) and read back by id with LEADER consistency until it is
// found. Its figure is the time from the Ingest's answer (the event
// accepted: in the ring for ACCEPTED, committed for COMMITTED) to the first
// read that returns it: what a user waits between "accepted" and
// "queryable", under the load around it.

const (
	visibilityEvery   = 20 * time.Millisecond
	visibilityPoll    = 200 * time.Microsecond
	visibilityTimeout = 10 * time.Second
	visibilityOrigin  = "visibility@bench"
)

// visibility is the probe's result.
type visibility struct {
	Probes   int     `json:"probes"`
	Failed   int     `json:"failed"`
	P50, P99 float64 // milliseconds
	Max      float64
}

func (v *visibility) String() string {
	return fmt.Sprintf("accepted->queryable over %d probes (%d failed): p50 %.2fms p99 %.2fms max %.2fms",
		v.Probes, v.Failed, v.P50, v.P99, v.Max)
}

// probeVisibility probes until ctx ends.
func probeVisibility(ctx context.Context, c *api, d scopev1.Durability) *visibility {
	var samples []time.Duration
	out := &visibility{}
	t := time.NewTicker(visibilityEvery)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			slices.Sort(samples)
			ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
			if len(samples) > 0 {
				out.P50, out.P99, out.Max = ms(percentile(samples, 0.50)), ms(percentile(samples, 0.99)), ms(samples[len(samples)-1])
			}
			return out
		case <-t.C:
		}
		out.Probes++
		d, err := probeOnce(context.WithoutCancel(ctx), c, d, n)
		if err != nil {
			out.Failed++
			continue
		}
		samples = append(samples, d)
	}
}

// probeOnce ingests one event and times how long until a LEADER read
// returns it.
func probeOnce(ctx context.Context, c *api, d scopev1.Durability, n int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, visibilityTimeout)
	defer cancel()
	id := ulid.Make().String()
	e := &scopev1.Event{EventId: id, Origin: visibilityOrigin, Pid: fmt.Sprintf("<0.%d.0>", n%1000),
		Kind: scopev1.Kind_KIND_STATE_CHANGE, TimestampNs: time.Now().UnixNano()}
	if _, err := c.ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: []*scopev1.Event{e}, Durability: d})); err != nil {
		return 0, err
	}
	accepted := time.Now()
	req := &scopev1.GetEventRequest{EventId: id, Origin: e.Origin, Pid: e.Pid, Consistency: scopev1.Consistency_CONSISTENCY_LEADER}
	for {
		_, err := c.query.GetEvent(ctx, connect.NewRequest(req))
		if err == nil {
			return time.Since(accepted), nil
		}
		if connect.CodeOf(err) != connect.CodeNotFound {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(visibilityPoll):
		}
	}
}
