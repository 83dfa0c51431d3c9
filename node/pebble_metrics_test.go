package node_test

import (
	"testing"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
)

// TestPebbleMetricsExported: both databases' Pebble metrics are in the
// node's registry, labelled by database, and follow what was written.
func TestPebbleMetricsExported(t *testing.T) {
	n := bootstrapped(t, "n1", t.TempDir(), 1)
	var evs []correlate.Event
	for i := range 200 {
		evs = append(evs, correlate.Event{Origin: "pm@h", PID: "<0.1.0>", Kind: correlate.KindStateChange,
			TimestampNs: int64(i + 1), Payload: "state"})
	}
	mustIngest(t, n.Node, node.Committed, evs...)
	mfs, err := n.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "db" {
					if got[mf.GetName()] == nil {
						got[mf.GetName()] = map[string]float64{}
					}
					got[mf.GetName()][lp.GetValue()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	for _, name := range []string{"scope_pebble_disk_usage_bytes", "scope_pebble_l0_files", "scope_pebble_l0_sublevels",
		"scope_pebble_compaction_debt_bytes", "scope_pebble_memtable_bytes", "scope_pebble_block_cache_bytes",
		"scope_pebble_compactions_total", "scope_pebble_flushes_total", "scope_pebble_block_cache_hits_total",
		"scope_pebble_block_cache_misses_total", "scope_pebble_write_stalls_total"} {
		if _, ok := got[name]["store"]; !ok {
			t.Errorf("%s{db=store} missing", name)
		}
		if _, ok := got[name]["raftlog"]; !ok {
			t.Errorf("%s{db=raftlog} missing", name)
		}
	}
	for _, db := range []string{"store", "raftlog"} {
		if got["scope_pebble_disk_usage_bytes"][db] <= 0 || got["scope_pebble_memtable_bytes"][db] <= 0 {
			t.Errorf("%s: disk usage %v, memtables %v: want both above zero after writes", db,
				got["scope_pebble_disk_usage_bytes"][db], got["scope_pebble_memtable_bytes"][db])
		}
	}
}
