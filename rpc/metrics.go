package rpc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the RPC layer's Prometheus metrics, registered on the
// node's registry.
type metrics struct {
	requests           *prometheus.CounterVec
	latency            *prometheus.HistogramVec
	eventsPerRequest   prometheus.Histogram
	tails              prometheus.Gauge
	hedges             prometheus.Counter
	hedgeWins          prometheus.Counter
	tailSources        prometheus.Gauge
	tailReplans        prometheus.Counter
	tailDropped        prometheus.Counter
	tailGaps           prometheus.Counter
	tailShardsFollowed prometheus.Counter
	eventIDConflicts   prometheus.Counter
	refusals           *prometheus.CounterVec
	memoryCuts         prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_rpc_requests_total",
			Help: "RPCs handled, by procedure and Connect code (ok for success).",
		}, []string{"procedure", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "scope_rpc_duration_seconds",
			Help:    "RPC latency by procedure (for streams: the stream's lifetime).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"procedure"}),
		eventsPerRequest: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "scope_rpc_ingest_events_per_request",
			Help:    "Events per ingest request (per stream message for IngestStream).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		tails: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scope_rpc_tail_streams",
			Help: "Live Tail streams.",
		}),
		hedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_shard_read_hedges_total",
			Help: "ANY shard reads also sent to a second replica (slow or failed first replica).",
		}),
		hedgeWins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_shard_read_hedge_wins_total",
			Help: "Hedged shard reads the second replica answered first.",
		}),
		tailSources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scope_rpc_tail_sources",
			Help: "Live Tail sources (one stream per followed node, local or remote).",
		}),
		tailReplans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_tail_replans_total",
			Help: "Tail shards moved to another replica after their source was lost.",
		}),
		tailDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_tail_dropped_events_total",
			Help: "Tail events dropped because a subscriber's buffer was full (reported as Lagged).",
		}),
		tailGaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_tail_gaps_total",
			Help: "Tail shards resumed on a replica that had stored events past the last sent event (reported as Lagged).",
		}),
		tailShardsFollowed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_tail_shards_followed_total",
			Help: "Shards a running Tail started following when they appeared (a reshard created them).",
		}),
		eventIDConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_event_id_conflicts_total",
			Help: "Lookups by event id that found the id stored on several shards (one id reused for another process's event); answered FAILED_PRECONDITION.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_rpc_refusals_total",
			Help: "Requests refused by a bound or by authentication, by reason: unauthenticated, permission_denied, node_credential, request_bytes, events_per_request, query_deadline, queries_per_caller, queries_total, tails_per_caller, tails_total, query_memory.",
		}, []string{"reason"}),
		memoryCuts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_rpc_query_memory_cuts_total",
			Help: "Events pages and Tail backfills cut short because the events the query buffered reached -query-memory (each page still has an exact cursor).",
		}),
	}
	// Every refusal reason at zero: an alert on a reason sees 0 before the
	// first refusal.
	for _, r := range []string{string(refuseUnauthenticated), string(refusePermission), string(refuseNode),
		reasonRequestBytes, reasonEventsPerRequest, reasonQueryDeadline, reasonQueriesPerCaller,
		reasonQueriesTotal, reasonTailsPerCaller, reasonTailsTotal, reasonQueryMemory} {
		m.refusals.WithLabelValues(r)
	}
	// A second server on the same node (tests, restarts in-process) shares
	// the collectors already registered.
	var err error
	m.requests, err = register(reg, m.requests)
	if err == nil {
		m.latency, err = register(reg, m.latency)
	}
	if err == nil {
		m.eventsPerRequest, err = register(reg, m.eventsPerRequest)
	}
	if err == nil {
		m.tails, err = register(reg, m.tails)
	}
	if err == nil {
		m.hedges, err = register(reg, m.hedges)
	}
	if err == nil {
		m.hedgeWins, err = register(reg, m.hedgeWins)
	}
	if err == nil {
		m.tailSources, err = register(reg, m.tailSources)
	}
	if err == nil {
		m.tailReplans, err = register(reg, m.tailReplans)
	}
	if err == nil {
		m.tailDropped, err = register(reg, m.tailDropped)
	}
	if err == nil {
		m.tailGaps, err = register(reg, m.tailGaps)
	}
	if err == nil {
		m.tailShardsFollowed, err = register(reg, m.tailShardsFollowed)
	}
	if err == nil {
		m.eventIDConflicts, err = register(reg, m.eventIDConflicts)
	}
	if err == nil {
		m.refusals, err = register(reg, m.refusals)
	}
	if err == nil {
		m.memoryCuts, err = register(reg, m.memoryCuts)
	}
	return m, err
}

func register[C prometheus.Collector](reg *prometheus.Registry, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

func (m *metrics) observe(procedure string, start time.Time, err error) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	m.requests.WithLabelValues(procedure, code).Inc()
	m.latency.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
}

// interceptor counts and times every handler call.
func (m *metrics) interceptor() connect.Interceptor { return metricsInterceptor{m} }

type metricsInterceptor struct{ m *metrics }

func (i metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		i.m.observe(req.Spec().Procedure, start, err)
		return resp, err
	}
}

func (i metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		i.m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}
