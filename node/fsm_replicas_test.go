package node_test

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// TestMalformedEntryAppliesOnEveryReplica proposes, through real raft, an
// entry holding events no store accepts (kind UNSPECIFIED, all-zero id —
// what an older or newer node or a bug could put in the log), then a
// normal entry. Both replicas must apply both entries, store the good
// events, count the bad ones (metric), and keep applying.
func TestMalformedEntryAppliesOnEveryReplica(t *testing.T) {
	a := openTestNode(t, "a", t.TempDir(), 1, nil)
	if err := a.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ra := a.Replica(0)
	testwait.For(t, "leader", 10*time.Second, ra.IsLeader)
	b := openTestNode(t, "b", t.TempDir(), 1, nil)
	_, err := b.OpenReplica(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Raft().AddVoter("b", raft.ServerAddress(b.mux.Addr().String()), 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}

	good := call("app@h", "<0.1.0>", "m", "f", 100)
	good.ID = correlate.EventID{1}
	noKind := good
	noKind.ID, noKind.Kind = correlate.EventID{2}, correlate.KindUnspecified
	noID := good
	noID.ID = correlate.EventID{}
	if err := ra.Propose(&correlate.Batch{Events: []correlate.Event{noKind, good, noID}}, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	later := ret("app@h", "<0.1.0>", "m", "f", 200)
	later.ID = correlate.EventID{3}
	f := ra.Propose(&correlate.Batch{Events: []correlate.Event{later}}, 10*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	last := f.Index()
	for _, n := range []*testNode{a, b} {
		r := n.Replica(0)
		testwait.For(t, n.ID()+" applies the later entry", 10*time.Second, func() bool {
			applied, _, _ := r.Status()
			return applied >= last
		})
		_, totals, failed := r.Status()
		if failed != nil || totals.Malformed != 2 {
			t.Fatalf("%s: failed %v, malformed %d; want nil, 2", n.ID(), failed, totals.Malformed)
		}
		for _, e := range []correlate.Event{good, later} {
			if _, err := n.Store().Get(0, e.ID); err != nil {
				t.Fatalf("%s: event %s: %v", n.ID(), e.ID, err)
			}
		}
		if got := metricValue(t, n.Node, "scope_correlator_total", "what", "malformed"); got != 2 {
			t.Fatalf("%s: scope_correlator_total{what=malformed} = %v, want 2", n.ID(), got)
		}
	}
}

// counter returns the value of the unlabelled counter name in n's registry
// (0 when absent).
func counter(t *testing.T, n *node.Node, name string) float64 {
	t.Helper()
	mfs, err := n.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// metricValue returns the value of the counter name{label=value} in n's
// registry (0 when absent).
func metricValue(t *testing.T, n *node.Node, name, label, value string) float64 {
	t.Helper()
	mfs, err := n.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
