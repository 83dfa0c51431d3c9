package clustertest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// ScanIDs pages through every event via n's Events (the cross-shard
// merge) and returns their ids in answer order, repeats included. A scan
// that fails UNAVAILABLE (a shard between leaders: on a loaded machine a
// leader can lose its lease at any time) is started over, within a minute.
func ScanIDs(t testing.TB, n *Node) []string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ids, err := scan(n)
		if err == nil {
			return ids
		}
		if Code(err) != connect.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("scan via %s: %v", n.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scan(n *Node) ([]string, error) {
	var ids []string
	cursor := ""
	for page := 0; ; page++ {
		if page > 100_000 {
			return nil, fmt.Errorf("more than 100000 pages")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := n.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 500, Cursor: cursor}))
		cancel()
		if err != nil {
			return nil, err
		}
		for _, e := range resp.Msg.GetEvents() {
			ids = append(ids, e.GetEventId())
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			return ids, nil
		}
	}
}

// ShardState is one replica's applied index and span digest.
type ShardState struct {
	Node    string
	Applied uint64
	Digest  uint64
}

// ShardStates returns the state of every live replica of shard.
func (c *Cluster) ShardStates(shard uint32) ([]ShardState, error) {
	var out []ShardState
	for _, n := range c.Live() {
		if n.Node.Replica(shard) == nil {
			continue
		}
		st, err := n.Node.Store().Stats(shard)
		if err != nil {
			return nil, err
		}
		d, err := n.Node.Store().Digest(shard)
		if err != nil {
			return nil, err
		}
		out = append(out, ShardState{Node: n.Name, Applied: st.AppliedIndex, Digest: d})
	}
	return out, nil
}

// Shards is the cluster's shard count now: the newest layout a live node
// routes by (the bootstrap count, doubled by each reshard).
func (c *Cluster) Shards() uint32 {
	most := c.opts.Shards
	for _, n := range c.Live() {
		most = max(most, n.Node.Shards())
	}
	return most
}

// WaitReplicasIdentical waits until every shard has exactly replicas live
// replicas, all at the same applied index with equal span digests.
func (c *Cluster) WaitReplicasIdentical(replicas int, timeout time.Duration) {
	c.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for s := range c.Shards() {
		for {
			states, err := c.ShardStates(s)
			if err == nil && len(states) == replicas && identical(states) {
				break
			}
			last = fmt.Sprintf("shard %d: %v (err %v)", s, states, err)
			if time.Now().After(deadline) {
				c.t.Fatalf("timed out after %v waiting for %d identical replicas: %s", timeout, replicas, last)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func identical(states []ShardState) bool {
	for _, st := range states[1:] {
		if st.Applied != states[0].Applied || st.Digest != states[0].Digest {
			return false
		}
	}
	return true
}

// WaitPlacement waits until every shard's group is exactly its placement
// over names (all voters, leader included), and no live node outside that
// placement still hosts a replica.
func (c *Cluster) WaitPlacement(names []string, timeout time.Duration) {
	c.t.Helper()
	names = slices.Sorted(slices.Values(names))
	WaitForWhy(c.t, fmt.Sprintf("groups converge to the placement over %v", names), timeout, func() string {
		for s := range c.Shards() {
			leader := c.ShardLeader(s)
			if leader == nil {
				return fmt.Sprintf("shard %d has no leader", s)
			}
			f := leader.Node.Replica(s).Raft().GetConfiguration()
			if err := f.Error(); err != nil {
				return fmt.Sprintf("shard %d: configuration: %v", s, err)
			}
			var voters []string
			for _, srv := range f.Configuration().Servers {
				if srv.Suffrage != raft.Voter {
					return fmt.Sprintf("shard %d (leader %s): %s is a non-voter", s, leader.Name, srv.ID)
				}
				voters = append(voters, string(srv.ID))
			}
			desired := cluster.Placement(s, names, c.opts.Replicas)
			sort.Strings(voters)
			sort.Strings(desired)
			if !slices.Equal(voters, desired) {
				return fmt.Sprintf("shard %d (leader %s): voters %v, want %v", s, leader.Name, voters, desired)
			}
			for _, n := range c.Live() {
				if has := n.Node.Replica(s) != nil; has != slices.Contains(desired, n.Name) {
					return fmt.Sprintf("shard %d: %s holds a replica: %v, want %v", s, n.Name, has, !has)
				}
			}
		}
		return ""
	})
}

// CheckLoad checks a load's outcome against a full scan via n and the
// replicas' own counts: every acknowledged event is stored, none is stored
// twice, and nothing is stored that was never sent. It returns the number
// of events stored.
func (c *Cluster) CheckLoad(n *Node, res LoadResult) int {
	c.t.Helper()
	ids := ScanIDs(c.t, n)
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			c.t.Fatalf("event %s answered twice by the scan via %s", id, n.Name)
		}
		seen[id] = true
		if !res.Sent[id] {
			c.t.Fatalf("event %s stored but never sent", id)
		}
	}
	lost := 0
	for id := range res.Acked {
		if !seen[id] {
			lost++
			if lost <= 5 {
				c.t.Errorf("event %s acknowledged but not stored", id)
			}
		}
	}
	if lost > 0 {
		c.t.Fatalf("%d of %d acknowledged events lost", lost, len(res.Acked))
	}
	// A duplicate applied twice would overwrite its own keys and so be
	// invisible to a scan; the per-shard event counts would still show it.
	var counted uint64
	for s := range c.Shards() {
		states, err := c.ShardStates(s)
		if err != nil || len(states) == 0 {
			c.t.Fatalf("shard %d: no live replica to count (err %v)", s, err)
		}
		for _, h := range c.Live() {
			if h.Name != states[0].Node {
				continue
			}
			st, err := h.Node.Store().Stats(s)
			if err != nil {
				c.t.Fatalf("shard %d stats on %s: %v", s, h.Name, err)
			}
			counted += st.Events
		}
	}
	if counted != uint64(len(ids)) {
		c.t.Fatalf("replicas count %d events, the scan finds %d distinct: an event was applied twice", counted, len(ids))
	}
	return len(ids)
}

// Duplicates sums, over the live nodes, the events their replicas skipped
// as already applied: by the correlator's dedup window and by the store's
// own check behind it. A retried request that had partly committed shows
// up here, not in the stored events.
func (c *Cluster) Duplicates() (correlator, stored uint64) {
	for _, n := range c.Live() {
		for _, r := range n.Node.Replicas() {
			_, totals, _ := r.Status()
			correlator += totals.Duplicates
		}
		stored += n.Node.Store().Counters().Duplicates
	}
	return correlator, stored
}
