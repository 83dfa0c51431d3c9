package main

import (
	"strings"
	"testing"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRaftMetricsReachRegistry: what hashicorp/raft emits (through the
// go-metrics compat package, as raft v1.7.3 does) lands on the registry
// the agent serves at /metrics. The e2e test checks the same on a real
// agent's /metrics.
func TestRaftMetricsReachRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := installRaftMetrics(reg); err != nil {
		t.Fatal(err)
	}
	gometrics.IncrCounter([]string{"raft", "apply"}, 3)
	gometrics.SetGauge([]string{"raft", "commitNumLogs"}, 7)
	gometrics.AddSampleWithLabels([]string{"raft", "rpc", "appendEntries"}, 1.5, []gometrics.Label{{Name: "peer", Value: "n2"}})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[f.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[f.GetName()] = m.GetGauge().GetValue()
			case m.GetSummary() != nil:
				got[f.GetName()] = float64(m.GetSummary().GetSampleCount())
			}
		}
	}
	for name, want := range map[string]float64{
		"scope_raft_apply": 3, "scope_raft_commitNumLogs": 7, "scope_raft_rpc_appendEntries": 1,
	} {
		if got[name] != want {
			var names []string
			for n := range got {
				names = append(names, n)
			}
			t.Errorf("%s = %v, want %v (have %s)", name, got[name], want, strings.Join(names, ", "))
		}
	}
}
