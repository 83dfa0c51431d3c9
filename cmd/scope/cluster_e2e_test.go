package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// clusterNode is one agent of a subprocess cluster with its fixed
// addresses and arguments, so it can be restarted as it was.
type clusterNode struct {
	name, http, raft, gossip, dir string
	args                          []string
	proc                          *agentProc
}

// startClusterProcs starts n agents that form a cluster with
// -bootstrap-expect n on free loopback ports and waits until every one is
// ready.
func startClusterProcs(t *testing.T, n int) []*clusterNode {
	t.Helper()
	root := t.TempDir()
	nodes := make([]*clusterNode, n)
	for i := range nodes {
		nodes[i] = &clusterNode{name: fmt.Sprintf("n%d", i+1), http: freeAddr(t), raft: freeAddr(t), gossip: freeAddr(t),
			dir: filepath.Join(root, fmt.Sprintf("n%d", i+1))}
	}
	for _, nd := range nodes {
		var peers []string
		for _, p := range nodes {
			if p != nd {
				peers = append(peers, p.gossip)
			}
		}
		nd.args = []string{"agent", "-name", nd.name, "-data-dir", nd.dir, "-http", nd.http, "-raft", nd.raft,
			"-gossip", nd.gossip, "-gossip-profile", "local", "-bootstrap-expect", fmt.Sprint(n), "-shards", "4",
			"-join", strings.Join(peers, ","), "-log-level", "info"}
		nd.proc = spawnAgent(t, nd.http, nd.args)
	}
	for _, nd := range nodes {
		nd.proc.waitReady(t)
	}
	return nodes
}

// TestClusterFailover: three agent processes form a cluster; a CALL
// committed through node 1 survives a SIGKILL of its shard's leader, and
// the RETURN sent through a survivor is matched to it. The killed node
// then restarts on its data directory (its -bootstrap-expect is ignored:
// it resumes) and finally leaves with `scope leave`, which drains it and
// stops its agent.
func TestClusterFailover(t *testing.T) {
	nodes := startClusterProcs(t, 3)
	byName := map[string]*clusterNode{}
	for _, nd := range nodes {
		byName[nd.name] = nd
	}

	members := mustScope(t, "", "members", "-addr", nodes[0].http)
	if strings.Count(members, "ALIVE") != 3 {
		t.Fatalf("members:\n%s", members)
	}

	const call = "01HZZZZZZZZZZZZZZZZZZZZZF1"
	const ret = "01HZZZZZZZZZZZZZZZZZZZZZF2"
	mustScope(t, `{"eventId":"`+call+`","origin":"app@h","pid":"<0.7.0>","kind":"KIND_CALL","timestampNs":"1700000000000000000","module":"M","function":"f","arity":0}`+"\n",
		"ingest", "-durability", "committed", "-addr", nodes[0].http)
	var got struct {
		Event struct {
			jsonEvent
			Shard uint32 `json:"shard"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(mustScope(t, "", "get", "-json", call, "-addr", nodes[0].http)), &got); err != nil {
		t.Fatal(err)
	}
	shard := got.Event.Shard

	// The shard's leader, from the merged `scope shards -json`.
	var shards struct {
		Shards []struct {
			Shard    uint32 `json:"shard"`
			Leader   string `json:"leader"`
			Replicas []struct {
				Node     string `json:"node"`
				Suffrage string `json:"suffrage"`
			} `json:"replicas"`
		} `json:"shards"`
	}
	if err := json.Unmarshal([]byte(mustScope(t, "", "shards", "-json", "-addr", nodes[0].http)), &shards); err != nil {
		t.Fatal(err)
	}
	var leader *clusterNode
	for _, s := range shards.Shards {
		if s.Shard == shard {
			leader = byName[s.Leader]
			if len(s.Replicas) != 3 {
				t.Errorf("shard %d replicas %+v, want 3", shard, s.Replicas)
			}
		}
	}
	if leader == nil {
		t.Fatalf("no leader for shard %d in %+v", shard, shards)
	}
	if err := leader.proc.signal(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent exited cleanly after SIGKILL?")
	}
	var survivors []*clusterNode
	for _, nd := range nodes {
		if nd != leader {
			survivors = append(survivors, nd)
		}
	}

	// The RETURN through a survivor: retried until a new leader takes it
	// (the same event id makes the retry idempotent).
	killed := time.Now()
	retLine := `{"eventId":"` + ret + `","origin":"app@h","pid":"<0.7.0>","kind":"KIND_RETURN","timestampNs":"1700000000000500000"}` + "\n"
	waitFor(t, "RETURN accepted after the leader's SIGKILL", func() bool {
		_, _, code := scope(t, retLine, "ingest", "-durability", "committed", "-timeout", "5s", "-addr", survivors[1].http)
		return code == 0
	})
	t.Logf("shard %d: ingest succeeded %v after SIGKILL of its leader %s", shard, time.Since(killed).Round(time.Millisecond), leader.name)
	for _, nd := range survivors {
		nd.proc.waitReady(t)
	}
	var gotRet struct {
		Event jsonEvent `json:"event"`
	}
	if err := json.Unmarshal([]byte(mustScope(t, "", "get", "-json", ret, "-addr", survivors[0].http)), &gotRet); err != nil {
		t.Fatal(err)
	}
	if e := gotRet.Event; e.CorrelationID != call || e.DurationNs != "500000" || e.Outcome != "OUTCOME_OK" || !hasLink(e, "LINK_TYPE_COMPLETES", call) {
		t.Errorf("RETURN after failover not matched to the CALL: %+v", e)
	}

	// Restart on the same data directory with the same flags: resumes.
	leader.proc = spawnAgent(t, leader.http, leader.args)
	leader.proc.waitReady(t)
	if !strings.Contains(leader.proc.stderr.String(), "ignoring -bootstrap-expect") {
		t.Errorf("restart did not log that -bootstrap-expect is ignored:\n%s", leader.proc.stderr)
	}
	waitFor(t, "three members alive", func() bool {
		out, _, code := scope(t, "", "members", "-addr", leader.http)
		return code == 0 && strings.Count(out, "ALIVE") == 3
	})
	out := mustScope(t, "", "get", "-json", ret, "-addr", leader.http)
	if !strings.Contains(out, call) {
		t.Errorf("restarted node cannot read the RETURN: %s", out)
	}

	// Graceful leave of the restarted node: it drains, leaves, and its agent
	// exits 0. In a 3-node R=3 cluster this shrinks every group to two
	// voters. This step used to hang: a removed server never receives the
	// configuration that removes it, so it refused DropReplica; the leader
	// now sends the removal's index (DropReplicaRequest.removed_at).
	out = mustScope(t, "", "leave", "-addr", leader.http)
	if !strings.Contains(out, "draining") || !strings.Contains(out, leader.name+" left the cluster") {
		t.Errorf("leave output:\n%s", out)
	}
	select {
	case <-leader.proc.done:
		if leader.proc.waitErr != nil {
			t.Errorf("agent exit after leave: %v", leader.proc.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent still running 30s after leave")
	}
	out = mustScope(t, "", "members", "-addr", survivors[0].http)
	if !strings.Contains(out, leader.name) || !strings.Contains(out, "LEFT") {
		t.Errorf("members after leave:\n%s", out)
	}
	// The two survivors hold every shard now and still answer with the pair.
	for _, nd := range survivors {
		if out := mustScope(t, "", "get", "-json", ret, "-addr", nd.http); !strings.Contains(out, call) {
			t.Errorf("%s after %s left cannot read the RETURN matched to the CALL: %s", nd.name, leader.name, out)
		}
	}
	for _, nd := range survivors {
		if err := nd.proc.signal(t, syscall.SIGTERM); err != nil {
			t.Errorf("%s exit after SIGTERM: %v", nd.name, err)
		}
	}
}
