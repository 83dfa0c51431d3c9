package clustertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/cluster"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// member returns what n's ClusterService says of the member called name.
func member(t *testing.T, n *Node, name string) (*scopev1.Member, uint32) {
	t.Helper()
	resp, err := n.Admin.Members(context.Background(), connect.NewRequest(&scopev1.MembersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.Msg.GetMembers() {
		if m.GetName() == name {
			return m, resp.Msg.GetProtocol()
		}
	}
	return nil, resp.Msg.GetProtocol()
}

// readyz returns n's /readyz status and body.
func readyz(t *testing.T, n *Node) (int, string) {
	t.Helper()
	resp, err := http.Get(n.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// replicaStatus calls n's NodeService as a node writing protocol version
// (nothing: a node from before protocol versions).
func replicaStatus(n *Node, version string) error {
	client := nodev1connect.NewNodeServiceClient(http.DefaultClient, n.URL)
	req := connect.NewRequest(&nodev1.ReplicaStatusRequest{Shard: 0})
	if version != "" {
		req.Header().Set(cluster.ProtocolHeader, version)
	}
	_, err := client.ReplicaStatus(context.Background(), req)
	return err
}

// TestVersionNegotiation: a node advertising only a protocol version newer
// than the cluster's is refused with a clear error everywhere (never given
// a replica, its node-to-node requests refused, itself not ready and
// saying why), while a node that also speaks the cluster's version joins
// as any other and the cluster keeps speaking the version every replica
// holder reads (docs/DECISIONS.md D34).
func TestVersionNegotiation(t *testing.T) {
	// The cluster speaks this build's newest version, cur; a node of a
	// later release speaks cur+1 only.
	cur := cluster.BuildProtocol.Max
	vCur, vNext := fmt.Sprint(cur), fmt.Sprint(cur+1)
	c := Start(t, Options{Nodes: 3})
	n1 := c.Nodes[0]
	newer := c.AddNodeSpeaking(cluster.ProtocolRange{Min: cur + 1, Max: cur + 1})

	WaitForWhy(t, "n1 lists "+newer.Name+" as excluded", 30*time.Second, func() string {
		m, v := member(t, n1, newer.Name)
		if m == nil || m.GetStatus() != scopev1.MemberStatus_MEMBER_STATUS_ALIVE || m.GetProtocolMin() != uint32(cur+1) ||
			!strings.Contains(m.GetExcluded(), "protocol") || v != uint32(cur) {
			return fmt.Sprintf("member %v, cluster protocol %d", m, v)
		}
		return ""
	})
	WaitFor(t, newer.Name+" knows it cannot take part", 30*time.Second, func() bool {
		return errors.Is(newer.Cluster.ProtocolError(), cluster.ErrProtocol)
	})
	if code, body := readyz(t, newer); code != http.StatusServiceUnavailable || !strings.Contains(body, "protocol "+vNext+", the cluster speaks "+vCur) {
		t.Fatalf("/readyz of %s: %d %q; want 503 naming both versions", newer.Name, code, body)
	}

	// Node-to-node requests in a version the receiver does not read are
	// refused, naming it; a request without a version is version 1.
	refusedBefore := counterValue(t, n1, "scope_cluster_protocol_refused_total")
	for _, tt := range []struct {
		to      *Node
		version string
		refused bool
	}{
		{n1, vCur, false}, {n1, "1", false}, {n1, "", false}, {n1, vNext, true}, {n1, "x", true},
		{newer, vNext, false}, {newer, vCur, true}, {newer, "", true},
	} {
		err := replicaStatus(tt.to, tt.version)
		if refused := Code(err) == connect.CodeFailedPrecondition && strings.Contains(err.Error(), "protocol"); refused != tt.refused {
			t.Fatalf("request in protocol %q to %s: %v; want refused %v", tt.version, tt.to.Name, err, tt.refused)
		}
	}
	if got := counterValue(t, n1, "scope_cluster_protocol_refused_total") - refusedBefore; got != 2 {
		t.Fatalf("n1 counted %v refusals, want 2", got)
	}
	// The newer node's own reads go out in its version: refused, not
	// misread. A query through it names the protocol.
	_, err := newer.Query.Events(context.Background(), connect.NewRequest(&scopev1.EventsRequest{Limit: 1,
		Consistency: scopev1.Consistency_CONSISTENCY_LEADER}))
	if Code(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "protocol version mismatch") {
		t.Fatalf("query through %s: %v; want FAILED_PRECONDITION naming the protocol", newer.Name, err)
	}

	// Placement never picks it: after several rounds on every node, it
	// holds no replica.
	rounds := make([]float64, 3)
	for i, n := range c.Nodes[:3] {
		rounds[i] = counterValue(t, n, "scope_cluster_rounds_total")
	}
	WaitFor(t, "five more rounds on every node", 30*time.Second, func() bool {
		for i, n := range c.Nodes[:3] {
			if counterValue(t, n, "scope_cluster_rounds_total") < rounds[i]+5 {
				return false
			}
		}
		return true
	})
	if reps := newer.Node.Replicas(); len(reps) != 0 {
		t.Fatalf("%s holds %d replicas", newer.Name, len(reps))
	}

	// A node of the next release (it also speaks cur) is placed as usual;
	// the cluster keeps speaking cur, which every holder reads.
	next := c.AddNodeSpeaking(cluster.ProtocolRange{Min: cur, Max: cur + 1})
	WaitFor(t, next.Name+" holds a replica", 60*time.Second, func() bool { return len(next.Node.Replicas()) > 0 })
	m, v := member(t, n1, next.Name)
	if m.GetExcluded() != "" || v != uint32(cur) || next.Cluster.ProtocolError() != nil {
		t.Fatalf("%s: excluded %q, cluster protocol %d, its error %v; want included at %d", next.Name, m.GetExcluded(), v,
			next.Cluster.ProtocolError(), cur)
	}
	if cv, writes := next.Cluster.Protocol(); cv != cur || writes != cur {
		t.Fatalf("%s: cluster protocol %d, writes %d; want %d, %d", next.Name, cv, writes, cur, cur)
	}
}

// TestNodeWithAnotherShardCountSaysSo: a node started with another shard
// count than its cluster's holds no replica, and says why where an
// operator looks: its /readyz (503, both counts and the fix) and log, and
// the others' member lists (and logs).
func TestNodeWithAnotherShardCountSaysSo(t *testing.T) {
	c := Start(t, Options{Nodes: 3, Shards: 4})
	odd := c.AddNodeWithShards(8)
	WaitForWhy(t, "n1 lists "+odd.Name+" as excluded", 30*time.Second, func() string {
		m, _ := member(t, c.Nodes[0], odd.Name)
		if m == nil || m.GetStatus() != scopev1.MemberStatus_MEMBER_STATUS_ALIVE || m.GetExcluded() != "started with 8 shards, this node with 4" {
			return fmt.Sprintf("member %v", m)
		}
		return ""
	})
	WaitFor(t, odd.Name+" knows it takes no part", 30*time.Second, func() bool {
		return errors.Is(odd.Cluster.ShardCountError(), cluster.ErrShardCount)
	})
	if code, body := readyz(t, odd); code != http.StatusServiceUnavailable || !strings.Contains(body, "started with 8 shards, the cluster has 4") ||
		!strings.Contains(body, "-shards 4") {
		t.Fatalf("/readyz of %s: %d %q; want 503 naming both counts and the fix", odd.Name, code, body)
	}
	for _, n := range c.Nodes[:3] {
		if err := n.Cluster.ShardCountError(); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
	}
	// Placement never chose it: after many rounds it still holds nothing.
	rounds := c.Nodes[0].Cluster.Stats().Rounds
	WaitFor(t, "ten more rounds on n1", 30*time.Second, func() bool { return c.Nodes[0].Cluster.Stats().Rounds >= rounds+10 })
	if hosted, err := odd.Node.HostedShards(); err != nil || len(hosted) != 0 {
		t.Fatalf("%s hosts %v (%v)", odd.Name, hosted, err)
	}
}
