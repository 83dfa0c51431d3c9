package node

import (
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// Frames the correlator closes as ABANDONED are visible in
// scope_correlator_total, by reason (the depth bound's are the refused
// CALLs, stack_overflow).
func TestMetricsCountAbandonedFrames(t *testing.T) {
	m := newMetrics()
	m.applied(0, &correlate.Result{Counters: correlate.Counters{AbandonedInactivity: 2, AbandonedProcessBound: 3,
		StackOverflows: 4}})
	for what, want := range map[string]float64{"frame_abandoned_inactivity": 2, "frame_abandoned_process_bound": 3,
		"stack_overflow": 4} {
		if got := correlatorTotal(t, m, what); got != want {
			t.Errorf("scope_correlator_total{what=%q} = %v, want %v", what, got, want)
		}
	}
}

func correlatorTotal(t *testing.T, m *Metrics, what string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "scope_correlator_total" {
			continue
		}
		for _, c := range mf.GetMetric() {
			for _, l := range c.GetLabel() {
				if l.GetName() == "what" && l.GetValue() == what {
					return c.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
