package main

import (
	"bytes"
	"slices"
	"strings"
	"sync"
	"testing"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestMergeShards: the configuration comes from the leader's answer, each
// replica's applied index from its own node, lag against the leader.
func TestMergeShards(t *testing.T) {
	voter := scopev1.Suffrage_SUFFRAGE_VOTER
	group := func(self string, applied uint64, leader string) *scopev1.ShardInfo {
		s := &scopev1.ShardInfo{Shard: 0, Leader: leader, Term: 3, Events: 7}
		for _, n := range []string{"a", "b", "c"} {
			r := &scopev1.Replica{Node: n, Suffrage: voter}
			if n == self {
				r.AppliedIndex = applied
			}
			s.Replicas = append(s.Replicas, r)
		}
		return s
	}
	views := map[string]*scopev1.ShardsResponse{
		"a": {ShardCount: 2, Shards: []*scopev1.ShardInfo{group("a", 10, "b")}},
		"b": {ShardCount: 2, Shards: []*scopev1.ShardInfo{group("b", 12, "b"), {Shard: 1, Leader: "c"}}},
		// c did not answer.
	}
	// Asked first: "a", which does not host shard 1 and knows its leader.
	base := &scopev1.ShardsResponse{ShardCount: 2, ReplicationFactor: 3,
		Shards: []*scopev1.ShardInfo{group("a", 10, "b"), {Shard: 1, Leader: "c"}}}
	got := mergeShards(base, views)
	if got.GetShardCount() != 2 || got.GetReplicationFactor() != 3 || len(got.GetShards()) != 2 {
		t.Fatalf("merged: %v", got)
	}
	s0 := got.GetShards()[0]
	want := map[string][2]uint64{"a": {10, 2}, "b": {12, 0}, "c": {0, 12}}
	for _, r := range s0.GetReplicas() {
		if w := want[r.GetNode()]; r.GetAppliedIndex() != w[0] || r.GetLag() != w[1] {
			t.Errorf("replica %s: applied %d lag %d, want %v", r.GetNode(), r.GetAppliedIndex(), r.GetLag(), w)
		}
	}
	if s0.GetLeader() != "b" || s0.GetTerm() != 3 || s0.GetEvents() != 7 {
		t.Errorf("shard 0: %v", s0)
	}
	if s1 := got.GetShards()[1]; s1.GetLeader() != "c" || len(s1.GetReplicas()) != 0 {
		t.Errorf("shard 1 (leader unreachable): %v", s1)
	}
}

// TestMergeShardsTakesTheHighestTerm: a node cut off (or a deposed leader)
// that still names an old leader does not make the table show it; the
// answer of the highest term does.
func TestMergeShardsTakesTheHighestTerm(t *testing.T) {
	voter := scopev1.Suffrage_SUFFRAGE_VOTER
	view := func(leader string, term uint64) *scopev1.ShardsResponse {
		var reps []*scopev1.Replica
		for _, n := range []string{"a", "b", "c"} {
			reps = append(reps, &scopev1.Replica{Node: n, Suffrage: voter})
		}
		return &scopev1.ShardsResponse{ShardCount: 1, Shards: []*scopev1.ShardInfo{{Shard: 0, Leader: leader, Term: term, Replicas: reps}}}
	}
	views := map[string]*scopev1.ShardsResponse{
		"a": view("a", 3), // the old leader, cut off: still thinks it leads
		"b": view("b", 4),
		"c": view("b", 4),
	}
	for _, base := range []string{"a", "b", "c"} {
		got := mergeShards(views[base], views)
		if s := got.GetShards()[0]; s.GetLeader() != "b" || s.GetTerm() != 4 {
			t.Errorf("asked %s first: leader %s term %d, want b in term 4", base, s.GetLeader(), s.GetTerm())
		}
	}
}

func TestDevClusterPlan(t *testing.T) {
	cfg := devClusterConfig{n: 3, basePort: 7070, dataDir: "d", shards: 16, replicas: 3, logLevel: "info"}
	nodes := cfg.plan()
	if len(nodes) != 3 {
		t.Fatalf("%d nodes", len(nodes))
	}
	n2 := nodes[1]
	if n2.name != "node2" || n2.http != "127.0.0.1:7080" || n2.raft != "127.0.0.1:7081" || n2.gossip != "127.0.0.1:7082" {
		t.Errorf("node2: %+v", n2)
	}
	args := strings.Join(n2.args, " ")
	for _, want := range []string{"agent -name node2 -data-dir d/node2", "-bootstrap-expect 3", "-join 127.0.0.1:7072,127.0.0.1:7092",
		"-gossip-profile local", "-replicas 3"} {
		if !strings.Contains(args, want) {
			t.Errorf("node2 args %q lack %q", args, want)
		}
	}
	// Every plan parses as agent flags.
	for _, nd := range nodes {
		if _, _, err := parseAgentFlags(nd.args[1:], &bytes.Buffer{}); err != nil {
			t.Errorf("%s: %v", nd.name, err)
		}
	}
	// One node: bootstraps alone, joins nobody.
	one := devClusterConfig{n: 1, basePort: 7070, dataDir: "d", shards: 16, replicas: 3, logLevel: "info"}.plan()
	if slices.Contains(one[0].args, "-join") {
		t.Errorf("one node joins: %q", one[0].args)
	}
	if _, _, err := parseAgentFlags(one[0].args[1:], &bytes.Buffer{}); err != nil {
		t.Error(err)
	}
}

func TestDevClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-n", "0"}, "-n 0: must be in 1..9"},
		{[]string{"-n", "10"}, "-n 10"},
		{[]string{"-base-port", "65530"}, "-base-port 65530: the ports 65530..65552"},
		{[]string{"-replicas", "0"}, "-replicas 0"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		if _, code, ok := parseDevClusterFlags(tc.args, &stderr); ok || code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: ok %v code %d stderr %q, want %q", tc.args, ok, code, stderr.String(), tc.want)
		}
	}
}

// TestLineWriter: lines of two writers never interleave, each prefixed; a
// trailing partial line is written by flush.
func TestLineWriter(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	a := &lineWriter{mu: &mu, w: &out, prefix: "a | "}
	b := &lineWriter{mu: &mu, w: &out, prefix: "b | "}
	_, _ = a.Write([]byte("one\ntw"))
	_, _ = b.Write([]byte("x\n"))
	_, _ = a.Write([]byte("o\nthree"))
	a.flush()
	if got, want := out.String(), "a | one\nb | x\na | two\na | three\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
