package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metrics exports the cluster's counters and gauges (membership, placement,
// moves, forwarding) on the node's registry.
type metrics struct {
	c *Cluster

	additions, promotions, removals, movesDeferred prometheus.Counter
	leaderTransfers, orphansDropped, lostVoters    prometheus.Counter
	leaderTransferFailures                         prometheus.Counter
	bootstrapDeclined                              prometheus.Counter
	forwards, forwardFailures, forwardRetries      prometheus.Counter
	rounds, stepsDeferred                          prometheus.Counter
	epochEvictions, staleRuns, resyncs             prometheus.Counter
	staleRunsUnsent                                prometheus.Gauge
	dropsRefused, transfers, protocolRefused       prometheus.Counter

	members, ledShards, replicas, movesInFlight, peerCallsRefused, foreignMembers *prometheus.Desc
	protocol, protocolMismatched, membership                                      *prometheus.Desc
}

func newMetrics(c *Cluster) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	return &metrics{
		c:               c,
		additions:       counter("scope_cluster_replica_additions_total", "Replicas added as non-voters by shards led here."),
		promotions:      counter("scope_cluster_replica_promotions_total", "Non-voters promoted to voters by shards led here."),
		removals:        counter("scope_cluster_replica_removals_total", "Replicas removed from groups led here."),
		movesDeferred:   counter("scope_cluster_moves_deferred_total", "Replica additions deferred: MaxConcurrentMoves replicas catching up from this node."),
		leaderTransfers: counter("scope_cluster_leader_transfers_total", "Leaderships handed to a less loaded voter to balance leaders."),
		leaderTransferFailures: counter("scope_cluster_leader_transfer_failures_total",
			"Leadership balancing transfers that failed (the target did not take over in time); the shard is then left alone for 5 s."),
		orphansDropped:    counter("scope_cluster_orphans_dropped_total", "Replicas dropped here because their group's leader no longer names this node."),
		bootstrapDeclined: counter("scope_cluster_bootstrap_declined_total", "Bootstraps this node declined because the cluster was already formed (it joined instead)."),
		lostVoters:        counter("scope_cluster_lost_voters_replaced_total", "Voters removed from groups led here because their node holds no replica of the group (it came back without its data, or never created a split child's replica), then added back as new replicas."),
		forwards:          counter("scope_cluster_forwards_total", "Ingest parts forwarded to shard leaders on other nodes."),
		forwardFailures:   counter("scope_cluster_forward_failures_total", "Forwarded ingest parts that failed."),
		forwardRetries:    counter("scope_cluster_forward_retries_total", "Forwards retried: no leader known, or the node asked was not the leader."),
		rounds:            counter("scope_cluster_rounds_total", "Reconciliation rounds started (each starts a step for every local replica without one running)."),
		transfers:         counter("scope_cluster_requested_transfers_total", "Leaderships of shards led here handed over on request (ClusterService.TransferLeadership)."),
		dropsRefused:      counter("scope_cluster_drops_refused_total", "DropReplica calls refused here because the shard's leader did not confirm that its group no longer names this node."),
		stepsDeferred:     counter("scope_cluster_steps_deferred_total", "Shard steps deferred to a later round: the bound on concurrent steps was reached."),
		protocolRefused: counter("scope_cluster_protocol_refused_total",
			"Node-to-node requests refused here: written in a protocol version this node does not read (D34)."),
		epochEvictions: counter("scope_cluster_identity_records_evicted_total",
			"Node ids whose highest epoch this node forgot: the bound on remembered node ids was reached (D27)."),
		staleRuns: counter("scope_cluster_stale_runs_detected_total",
			"Starts of members from an old copy of their data directory seen by this node (D27)."),
		resyncs: counter("scope_cluster_resyncs_total",
			"Times this node learned that its data directory is an old copy and dropped the replicas reopened from it (D27)."),
		staleRunsUnsent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scope_cluster_stale_runs_unsent",
			Help: "Members running from an old data directory copy that did not fit this node's gossip (at most 4 are named at once)."}),
		foreignMembers: prometheus.NewDesc("scope_cluster_foreign_members",
			"Alive members whose cluster id differs from this node's: refused, never given replicas (D27).", nil, nil),
		peerCallsRefused: prometheus.NewDesc("scope_cluster_peer_calls_refused_total",
			"Background calls (replica moves, status, drops) refused at once: the bound on calls in flight to that peer was reached.", nil, nil),
		protocol: prometheus.NewDesc("scope_cluster_protocol_version",
			"The protocol version the cluster speaks, as this node computes it (0 before it knows; D34).", nil, nil),
		protocolMismatched: prometheus.NewDesc("scope_cluster_protocol_mismatched_members",
			"Alive members, this node included, that cannot speak the cluster's protocol version: never given replicas (D34).", nil, nil),
		membership: prometheus.NewDesc("scope_membership_events_total",
			"Gossip membership events on this node: memberlist notifications (join, leave, update), metadata that did not decode, rejoin attempts and failures, members forgotten, members or seeds not kept (bounds reached), metadata re-advertisements and their timeouts, change signals coalesced.",
			[]string{"event"}, nil),
		members:       prometheus.NewDesc("scope_cluster_members", "Known members by state.", []string{"state"}, nil),
		ledShards:     prometheus.NewDesc("scope_cluster_led_shards", "Shards this node leads.", nil, nil),
		replicas:      prometheus.NewDesc("scope_cluster_replicas", "Shard replicas hosted on this node.", nil, nil),
		movesInFlight: prometheus.NewDesc("scope_cluster_moves_in_flight", "Non-voters catching up in the groups this node leads (each receives a snapshot from it).", nil, nil),
	}
}

func (m *metrics) counters() []prometheus.Counter {
	return []prometheus.Counter{m.additions, m.promotions, m.removals, m.movesDeferred, m.leaderTransfers, m.orphansDropped, m.forwards,
		m.forwardFailures, m.forwardRetries, m.rounds, m.stepsDeferred, m.lostVoters, m.bootstrapDeclined,
		m.epochEvictions, m.staleRuns, m.resyncs, m.dropsRefused, m.transfers, m.protocolRefused, m.leaderTransferFailures}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.counters() {
		c.Describe(ch)
	}
	ch <- m.members
	ch <- m.ledShards
	ch <- m.replicas
	ch <- m.movesInFlight
	ch <- m.peerCallsRefused
	ch <- m.foreignMembers
	ch <- m.protocol
	ch <- m.protocolMismatched
	ch <- m.membership
	m.staleRunsUnsent.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.counters() {
		c.Collect(ch)
	}
	byState := map[MemberState]int{MemberAlive: 0, MemberDead: 0, MemberLeft: 0}
	foreign := 0
	for _, mem := range m.c.members.Members() {
		byState[mem.State]++
		if mem.State == MemberAlive && m.c.foreign(mem) {
			foreign++
		}
	}
	ch <- prometheus.MustNewConstMetric(m.foreignMembers, prometheus.GaugeValue, float64(foreign))
	same := m.c.sameCluster(m.c.members.Members())
	v := clusterProtocol(same)
	ch <- prometheus.MustNewConstMetric(m.protocol, prometheus.GaugeValue, float64(v))
	ch <- prometheus.MustNewConstMetric(m.protocolMismatched, prometheus.GaugeValue, float64(len(protocolMismatched(same, v))))
	ms := m.c.members.Stats()
	for event, n := range map[string]uint64{"join": ms.Joins, "leave": ms.Leaves, "update": ms.Updates,
		"meta_decode_error": ms.MetaDecodeErrors, "rejoin": ms.Rejoins, "rejoin_failure": ms.RejoinFailures,
		"forgotten": ms.Forgotten, "members_overflow": ms.MembersOverflow, "seeds_overflow": ms.SeedsOverflow,
		"meta_publish": ms.MetaPublishes, "meta_publish_timeout": ms.MetaPublishTimeouts, "coalesced": ms.Coalesced} {
		ch <- prometheus.MustNewConstMetric(m.membership, prometheus.CounterValue, float64(n), event)
	}
	m.staleRunsUnsent.Collect(ch)
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(m.members, prometheus.GaugeValue, float64(n), s.String())
	}
	led, total := 0, 0
	for _, r := range m.c.node.Replicas() {
		total++
		if r.IsLeader() {
			led++
		}
	}
	ch <- prometheus.MustNewConstMetric(m.ledShards, prometheus.GaugeValue, float64(led))
	ch <- prometheus.MustNewConstMetric(m.replicas, prometheus.GaugeValue, float64(total))
	ch <- prometheus.MustNewConstMetric(m.movesInFlight, prometheus.GaugeValue, float64(m.c.moves.inFlight()))
	ch <- prometheus.MustNewConstMetric(m.peerCallsRefused, prometheus.CounterValue, float64(m.c.peers.refused.Load()))
}

// Stats is a snapshot of the cluster's counters on this node.
type Stats struct {
	Additions, Promotions, Removals uint64 // membership changes made by groups led here
	MovesDeferred                   uint64 // additions deferred: MaxConcurrentMoves in flight
	Rounds                          uint64 // reconciliation rounds started
	StepsDeferred                   uint64 // shard steps deferred: maxConcurrentSteps running
	PeerCallsRefused                uint64 // background calls refused: maxBackgroundCallsPerPeer in flight
}

// Stats returns the cluster's counters (also exported as metrics).
func (c *Cluster) Stats() Stats {
	m := c.metrics
	return Stats{
		Additions: counterValue(m.additions), Promotions: counterValue(m.promotions), Removals: counterValue(m.removals),
		MovesDeferred: counterValue(m.movesDeferred), Rounds: counterValue(m.rounds), StepsDeferred: counterValue(m.stepsDeferred),
		PeerCallsRefused: c.peers.refused.Load(),
	}
}

func counterValue(c prometheus.Counter) uint64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}
