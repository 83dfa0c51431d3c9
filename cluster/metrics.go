package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics exports the cluster's counters and gauges (membership, placement,
// moves, forwarding) on the node's registry.
type metrics struct {
	c *Cluster

	additions, promotions, removals, movesDeferred prometheus.Counter
	leaderTransfers, orphansDropped, lostVoters    prometheus.Counter
	bootstrapDeclined                              prometheus.Counter
	forwards, forwardFailures, forwardRetries      prometheus.Counter

	members, ledShards, replicas, movesInFlight *prometheus.Desc
}

func newMetrics(c *Cluster) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	return &metrics{
		c:                 c,
		additions:         counter("scope_cluster_replica_additions_total", "Replicas added as non-voters by shards led here."),
		promotions:        counter("scope_cluster_replica_promotions_total", "Non-voters promoted to voters by shards led here."),
		removals:          counter("scope_cluster_replica_removals_total", "Replicas removed from groups led here."),
		movesDeferred:     counter("scope_cluster_moves_deferred_total", "Replica additions deferred: MaxConcurrentMoves in flight."),
		leaderTransfers:   counter("scope_cluster_leader_transfers_total", "Leaderships handed to a less loaded voter to balance leaders."),
		orphansDropped:    counter("scope_cluster_orphans_dropped_total", "Replicas dropped here because their group's leader no longer names this node."),
		bootstrapDeclined: counter("scope_cluster_bootstrap_declined_total", "Bootstraps this node declined because the cluster was already formed (it joined instead)."),
		lostVoters:        counter("scope_cluster_lost_voters_replaced_total", "Voters removed from groups led here because their node came back without its data (then added back as new replicas)."),
		forwards:          counter("scope_cluster_forwards_total", "Ingest parts forwarded to shard leaders on other nodes."),
		forwardFailures:   counter("scope_cluster_forward_failures_total", "Forwarded ingest parts that failed."),
		forwardRetries:    counter("scope_cluster_forward_retries_total", "Forwards retried: no leader known, or the node asked was not the leader."),
		members:           prometheus.NewDesc("scope_cluster_members", "Known members by state.", []string{"state"}, nil),
		ledShards:         prometheus.NewDesc("scope_cluster_led_shards", "Shards this node leads.", nil, nil),
		replicas:          prometheus.NewDesc("scope_cluster_replicas", "Shard replicas hosted on this node.", nil, nil),
		movesInFlight:     prometheus.NewDesc("scope_cluster_moves_in_flight", "Replica additions in flight on this node.", nil, nil),
	}
}

func (m *metrics) counters() []prometheus.Counter {
	return []prometheus.Counter{m.additions, m.promotions, m.removals, m.movesDeferred, m.leaderTransfers, m.orphansDropped, m.forwards,
		m.forwardFailures, m.forwardRetries, m.lostVoters, m.bootstrapDeclined}
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
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.counters() {
		c.Collect(ch)
	}
	byState := map[MemberState]int{MemberAlive: 0, MemberDead: 0, MemberLeft: 0}
	for _, mem := range m.c.members.Members() {
		byState[mem.State]++
	}
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
	ch <- prometheus.MustNewConstMetric(m.movesInFlight, prometheus.GaugeValue, float64(len(m.c.moves)))
}
