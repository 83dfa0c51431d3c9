package main

import (
	"fmt"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprom "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// installRaftMetrics makes the metrics hashicorp/raft, the raft log stores and
// memberlist emit visible on reg (the node's registry, served at /metrics).
//
// Those libraries do not take a metrics object: they call the package-level
// functions of github.com/hashicorp/go-metrics/compat, which (without the
// hashicorpmetrics build tag, as here) forward to armon/go-metrics' global
// sink. So the sink must be go-metrics' Prometheus sink *from the compat
// package* (the same build tag picks the same implementation as the
// emitters) installed as the global sink. It is process-wide: call it once
// per process.
//
// Metric names become scope_raft_..., scope_raft_raftlog_..., with
// dots turned into underscores; samples (timers) are Prometheus summaries.
func installRaftMetrics(reg prometheus.Registerer) error {
	sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{
		// A metric not updated for this long is dropped (raft emits
		// per-peer and per-operation series that come and go).
		Expiration: 5 * time.Minute,
		Registerer: reg,
		Name:       "scope_gometrics_sink",
	})
	if err != nil {
		return fmt.Errorf("scope: register raft metrics sink: %w", err)
	}
	cfg := gometrics.DefaultConfig("scope")
	cfg.EnableHostname = false       // the node label belongs to the scraper
	cfg.EnableHostnameLabel = false  //
	cfg.EnableRuntimeMetrics = false // the Go collector already exports them
	cfg.EnableServiceLabel = false
	if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
		return fmt.Errorf("scope: install raft metrics sink: %w", err)
	}
	return nil
}
