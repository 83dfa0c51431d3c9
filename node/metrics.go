package node

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// Metrics holds a node's Prometheus metrics. Everything a bound refuses or
// the correlator cannot pair is counted here.
type Metrics struct {
	reg *prometheus.Registry

	ingestedEvents   *prometheus.CounterVec
	pool             *poolMetrics
	appliedEvents    *prometheus.CounterVec
	correlator       *prometheus.CounterVec
	noticesDelivered prometheus.Counter
	noticeFailures   prometheus.Counter
	// noticeRoutesDeferred counts routes that waited for a later round:
	// maxNoticeRoutes workers were running.
	noticeRoutesDeferred prometheus.Counter
	forwarded            prometheus.Counter
	lifecycleWaits       prometheus.Counter
	// snapshotsMaterialized and snapshotBytesMaterialized count the spans
	// written out to send a snapshot to a follower (snapshot.go).
	snapshotsMaterialized     prometheus.Counter
	snapshotBytesMaterialized prometheus.Counter
	// logBudgetSnapshots counts snapshots taken because a shard's raft
	// log reached half of RaftTiming.LogBytes (logbudget.go).
	logBudgetSnapshots prometheus.Counter
	// handoffChunks counts handoff chunks a split shard led here gave its
	// child and the child committed (docs/DECISIONS.md D39).
	handoffChunks prometheus.Counter
}

func newMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		ingestedEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_ingest_acknowledged_events_total",
			Help: "Events acknowledged to clients, per shard.",
		}, []string{"shard"}),
		appliedEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_applied_events_total",
			Help: "Events applied to the store by this node's replicas, per shard.",
		}, []string{"shard"}),
		correlator: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_correlator_total",
			Help: "Correlator outcomes and bounds hit on this node's replicas, by what happened.",
		}, []string{"what"}),
		noticesDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_notices_delivered_total",
			Help: "Cross-shard send/spawn notices delivered from outboxes of shards led here.",
		}),
		noticeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_notice_delivery_failures_total",
			Help: "Notice delivery attempts that failed and will be retried.",
		}),
		noticeRoutesDeferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_notice_routes_deferred_total",
			Help: "Notice deliveries to a node (or to this node's leaders) deferred to a later round: the bound on concurrent delivery workers was reached.",
		}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_ingest_forwarded_events_total",
			Help: "Events forwarded to the leader of their shard on another node.",
		}),
		snapshotsMaterialized: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_raft_snapshots_sent_total",
			Help: "Raft snapshots this node's leaders sent to a follower too far behind for the log; each reads the shard's span (a snapshot taken to cut the log reads nothing).",
		}),
		snapshotBytesMaterialized: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_raft_snapshot_sent_bytes_total",
			Help: "Bytes of the shard spans written out for raft snapshots sent to followers.",
		}),
		handoffChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_reshard_handoff_chunks_total",
			Help: "Handoff chunks a split shard led here delivered to its child, committed there and confirmed.",
		}),
		logBudgetSnapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_raft_log_size_snapshots_total",
			Help: "Raft snapshots taken because the entries a shard applied since its last snapshot held half of -raft-log-size (the others come every SnapshotThreshold entries or SnapshotInterval).",
		}),
		lifecycleWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_replica_lifecycle_waits_total",
			Help: "Replica opens and drops that waited for another open or drop of the same shard to finish.",
		}),
	}
	m.pool = newPoolMetrics(m.reg)
	m.reg.MustRegister(m.ingestedEvents, m.appliedEvents, m.correlator,
		m.noticesDelivered, m.noticeFailures, m.noticeRoutesDeferred, m.forwarded, m.lifecycleWaits,
		m.snapshotsMaterialized, m.snapshotBytesMaterialized, m.logBudgetSnapshots, m.handoffChunks,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry every node metric is registered with; the HTTP
// server exposes it at /metrics and other layers add their collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// watchReplicas registers the gauges read from the node's replicas.
func (m *Metrics) watchReplicas(failed func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "scope_replicas_failed",
		Help: "Replicas on this node that stopped applying because a store write failed (retired from their groups until the node restarts).",
	}, func() float64 { return float64(failed()) }))
}

// watchTail registers the tail hub's dispatch counters.
func (m *Metrics) watchTail(h *tailHub) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "scope_tail_dispatch_dropped_events_total",
		Help: "Applied events not fanned out to Tail subscriptions because the node's dispatch queue was full (each subscription watching the shard reports them as lagged).",
	}, func() float64 { return float64(h.overflow.Load()) }))
}

func shardLabel(shard uint32) string { return strconv.FormatUint(uint64(shard), 10) }

func (m *Metrics) ingested(shard uint32, n int) {
	if n > 0 {
		m.ingestedEvents.WithLabelValues(shardLabel(shard)).Add(float64(n))
	}
}

// poolMetrics backs the writer pool's PoolMetrics with Prometheus.
type poolMetrics struct {
	eventsIn, refused, committed, failed *prometheus.CounterVec
	shed                                 *prometheus.CounterVec
	proposalErrors, retries              *prometheus.CounterVec
	redirected, rerouted                 *prometheus.CounterVec
	restarts                             prometheus.Counter
	batchSize, applyLatency              prometheus.Histogram
	ringUsed, redirectBacklog            *prometheus.GaugeVec
	writersActive, writersBusy           prometheus.Gauge
	scaling                              *prometheus.CounterVec
	shardMoves                           prometheus.Counter
	acceptedToApplied                    prometheus.Histogram
}

func newPoolMetrics(reg prometheus.Registerer) *poolMetrics {
	perShard := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"shard"})
	}
	p := &poolMetrics{
		eventsIn:  perShard("scope_ring_events_in_total", "Events accepted into a shard's ring buffer."),
		refused:   perShard("scope_ring_events_refused_total", "Events refused at submission: ring full, deadline, shard or pool closed."),
		shed:      perShard("scope_ingest_events_shed_total", "COMMITTED events refused at once because the shard's queue would have kept them past their deadline (also in scope_ring_events_refused_total)."),
		committed: perShard("scope_writer_events_committed_total", "Events whose proposal committed."),
		failed:    perShard("scope_writer_events_failed_total", "Accepted events failed back to their submitters."),
		proposalErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_writer_proposal_errors_total",
			Help: "Proposals that resolved with an error, by kind of error.",
		}, []string{"shard", "error"}),
		retries: perShard("scope_writer_retries_total", "Batches scheduled to be proposed again."),
		redirected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_writer_events_redirected_total",
			Help: "Events whose proposal failed on a lost leadership, handed to the shard's new leader, by outcome (ok, refused, unknown).",
		}, []string{"shard", "outcome"}),
		rerouted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scope_writer_events_rerouted_total",
			Help: "Events a shard committed but did not apply because it split and their process is another shard's now, sent to that shard, by outcome (ok, refused, unknown).",
		}, []string{"shard", "outcome"}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scope_writer_restarts_total", Help: "Writers restarted after a panic."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "scope_writer_batch_events", Help: "Events per proposal.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "scope_writer_apply_seconds", Help: "Time from proposal to commit and apply.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		ringUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "scope_ring_used_slots", Help: "Ring buffer occupancy after the last drain, per shard."},
			[]string{"shard"}),
		redirectBacklog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "scope_writer_redirect_backlog_events",
			Help: "Events waiting to be redirected to a shard's new leader after this node lost its leadership, or being redirected."},
			[]string{"shard"}),
	}
	p.writersActive = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "scope_writers_active", Help: "Writer goroutines running and not retiring."})
	p.writersBusy = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "scope_writers_busy_ratio",
		Help: "The writers' mean busy fraction over the scaler's last sample (only with -writers-max)."})
	p.scaling = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "scope_writer_scaling_total", Help: "Writer pool scaling decisions, by direction (up, down)."},
		[]string{"direction"})
	p.shardMoves = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "scope_writer_shard_moves_total", Help: "Shards handed from one writer to another by the scaler."})
	p.acceptedToApplied = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "scope_ingest_accepted_to_applied_seconds",
		Help:    "Time from events' acceptance into a ring to their commit and apply on this node (a LEADER read sees them), per submission and batch.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)})
	p.scaling.WithLabelValues("up")
	p.scaling.WithLabelValues("down")
	reg.MustRegister(p.eventsIn, p.refused, p.shed, p.committed, p.failed, p.proposalErrors, p.retries,
		p.redirected, p.rerouted, p.restarts, p.batchSize, p.applyLatency, p.ringUsed, p.redirectBacklog,
		p.writersActive, p.writersBusy, p.scaling, p.shardMoves, p.acceptedToApplied)
	return p
}

var _ PoolMetrics = (*poolMetrics)(nil)

func (p *poolMetrics) EventsIn(shard uint32, n int) {
	p.eventsIn.WithLabelValues(shardLabel(shard)).Add(float64(n))
}
func (p *poolMetrics) EventsRefused(shard uint32, n int) {
	p.refused.WithLabelValues(shardLabel(shard)).Add(float64(n))
}
func (p *poolMetrics) EventsShed(shard uint32, n int) {
	p.shed.WithLabelValues(shardLabel(shard)).Add(float64(n))
}
func (p *poolMetrics) EventsCommitted(shard uint32, n int) {
	p.committed.WithLabelValues(shardLabel(shard)).Add(float64(n))
}
func (p *poolMetrics) EventsFailed(shard uint32, n int) {
	p.failed.WithLabelValues(shardLabel(shard)).Add(float64(n))
}
func (p *poolMetrics) Batch(_ uint32, events int) { p.batchSize.Observe(float64(events)) }
func (p *poolMetrics) ApplyLatency(_ uint32, d time.Duration) {
	p.applyLatency.Observe(d.Seconds())
}
func (p *poolMetrics) ProposalError(shard uint32, err error) {
	kind := "other"
	switch {
	case errors.Is(err, ErrNotLeader):
		kind = "not_leader"
	case errors.Is(err, ErrLeadershipLost):
		kind = "leadership_lost"
	}
	p.proposalErrors.WithLabelValues(shardLabel(shard), kind).Inc()
}
func (p *poolMetrics) Retry(shard uint32) { p.retries.WithLabelValues(shardLabel(shard)).Inc() }
func (p *poolMetrics) WriterRestart(int)  { p.restarts.Inc() }
func (p *poolMetrics) Redirected(shard uint32, n int, err error) {
	p.redirected.WithLabelValues(shardLabel(shard), outcomeLabel(err)).Add(float64(n))
}
func (p *poolMetrics) Rerouted(shard uint32, n int, err error) {
	p.rerouted.WithLabelValues(shardLabel(shard), outcomeLabel(err)).Add(float64(n))
}

// outcomeLabel names an outcome: ok, refused (nothing stored) or unknown.
func outcomeLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case Refused(err):
		return "refused"
	}
	return "unknown"
}
func (p *poolMetrics) RedirectBacklog(shard uint32, events int) {
	p.redirectBacklog.WithLabelValues(shardLabel(shard)).Set(float64(events))
}
func (p *poolMetrics) RingFill(shard uint32, used, _ int) {
	p.ringUsed.WithLabelValues(shardLabel(shard)).Set(float64(used))
}

// ShardAdded creates the shard's series at zero, so that a dashboard or an
// alert sees 0 rather than nothing before the first event, error or
// redirect.
func (p *poolMetrics) ShardAdded(shard uint32) {
	l := shardLabel(shard)
	for _, v := range []*prometheus.CounterVec{p.eventsIn, p.refused, p.shed, p.committed, p.failed, p.retries} {
		v.WithLabelValues(l)
	}
	for _, kind := range []string{"not_leader", "leadership_lost", "other"} {
		p.proposalErrors.WithLabelValues(l, kind)
	}
	for _, outcome := range []string{"ok", "refused", "unknown"} {
		p.redirected.WithLabelValues(l, outcome)
		p.rerouted.WithLabelValues(l, outcome)
	}
	p.ringUsed.WithLabelValues(l)
	p.redirectBacklog.WithLabelValues(l)
}

func (p *poolMetrics) WritersActive(n int)            { p.writersActive.Set(float64(n)) }
func (p *poolMetrics) WriterUtilisation(busy float64) { p.writersBusy.Set(busy) }
func (p *poolMetrics) ShardMoved(uint32)              { p.shardMoves.Inc() }
func (p *poolMetrics) WritersScaled(up bool) {
	if up {
		p.scaling.WithLabelValues("up").Inc()
	} else {
		p.scaling.WithLabelValues("down").Inc()
	}
}
func (p *poolMetrics) AcceptedToApplied(_ uint32, d time.Duration) {
	p.acceptedToApplied.Observe(d.Seconds())
}

// applied records a durable apply's counters.
func (m *Metrics) applied(shard uint32, res *correlate.Result) {
	c := &res.Counters
	m.appliedEvents.WithLabelValues(shardLabel(shard)).Add(float64(len(res.Events)))
	for _, kv := range []struct {
		what string
		n    uint64
	}{
		{"duplicate", c.Duplicates}, {"out_of_order", c.OutOfOrder}, {"orphan", c.Orphans},
		{"unwound", c.Unwound}, {"exit_closed", c.ExitClosed}, {"matched", c.Matched},
		{"notice_applied", c.NoticesApplied}, {"notice_expired", c.NoticesExpired},
		{"receive_expired", c.ReceivesExpired}, {"stack_overflow", c.StackOverflows},
		{"process_eviction", c.ProcessEvictions}, {"pending_eviction", c.PendingEvictions},
		{"dedup_eviction", c.DedupEvictions}, {"payload_truncated", c.PayloadsTruncated},
		{"attributes_dropped", c.AttributesDropped}, {"malformed", c.Malformed},
		{"frame_abandoned_inactivity", c.AbandonedInactivity},
		{"frame_abandoned_process_bound", c.AbandonedProcessBound},
		{"rerouted", c.Rerouted}, {"notice_forwarded", c.NoticesForwarded},
		{"record_forwarded", c.RecordsForwarded},
	} {
		if kv.n > 0 {
			m.correlator.WithLabelValues(kv.what).Add(float64(kv.n))
		}
	}
}

// watchStore exports the store's own counters: records it chose not to
// write (see store.Counters).
func (m *Metrics) watchStore(st *store.Store) {
	for _, c := range []struct {
		name, help string
		get        func(store.Counters) uint64
	}{
		{"scope_store_duplicates_total", "Events the store did not write because their id was stored already (behind the FSM's own screen).",
			func(c store.Counters) uint64 { return c.Duplicates }},
		{"scope_store_edges_dropped_total", "Link records dropped because neither of their events is stored on the shard (deleted by retention).",
			func(c store.Counters) uint64 { return c.EdgesDropped }},
		{"scope_store_frames_lost_total", "Frame-end records dropped because their CALL is not stored on the shard (deleted by retention).",
			func(c store.Counters) uint64 { return c.FramesLost }},
	} {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(c.get(st.Counters())) }))
	}
}
