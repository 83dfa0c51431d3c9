package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// nodeForwarder forwards a part to another node in process, as the
// cluster's forwarder does over Connect, and returns its duplicates.
type nodeForwarder struct{ to *node.Node }

func (f nodeForwarder) Forward(ctx context.Context, _ uint32, events []correlate.Event, d node.Durability) (int, error) {
	res := f.to.Ingest(node.NoForward(ctx), append([]correlate.Event(nil), events...), d)
	dups := 0
	for _, s := range res.Shards {
		if s.Err != nil {
			return 0, s.Err
		}
		dups += s.Duplicates + s.Repeats
	}
	return dups, nil
}

// A batch the pool redirects after a lost leadership reaches the new
// leader with its ids; the count of events the shard had stored already
// must come back from it, so that the pool can charge the submitters'
// tickets (D21): through a forward when the leader is elsewhere, from the
// local FSM when leadership came back.
func TestRedirectReportsDuplicates(t *testing.T) {
	const shards = 1
	a := bootstrapped(t, "a", t.TempDir(), shards)
	ra := a.Replica(0)
	stored := call("app@h", "<0.7.0>", "m", "f", 100)
	storedID := mustIngest(t, a.Node, node.Committed, stored).IDs[0]

	b := openTestNode(t, "b", t.TempDir(), shards, nil)
	rb, err := b.OpenReplica(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Raft().AddVoter("b", raft.ServerAddress(b.mux.Addr().String()), 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b catches up", 20*time.Second, func() bool {
		ai, _, _ := ra.Status()
		bi, _, _ := rb.Status()
		return bi == ai
	})
	if err := ra.Raft().LeadershipTransferToServer("b", raft.ServerAddress(b.mux.Addr().String())).Error(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b leads", 10*time.Second, rb.IsLeader)
	// Each forwards to the other, so the checks hold even if an election
	// under load moves the leadership back: the count does not depend on
	// which node leads.
	a.SetForwarder(nodeForwarder{to: b.Node})
	b.SetForwarder(nodeForwarder{to: a.Node})

	batch := func(evs ...correlate.Event) []correlate.Event {
		for i := range evs {
			if evs[i].ID.IsZero() {
				evs[i].ID = correlate.ContentID(&evs[i])
			}
			correlate.Normalize(&evs[i], correlate.DefaultLimits())
			evs[i].Shard = 0
		}
		return evs
	}
	ctx := context.Background()
	old := stored
	old.ID = storedID
	// a no longer leads: forwarded to b, which has one of the two.
	dups, err := a.Redirect(ctx, 0, batch(old, call("app@h", "<0.8.0>", "m", "f", 200)), true)
	if err != nil || dups != 1 {
		t.Fatalf("redirect through a forward: %d duplicates, %v; want 1, nil", dups, err)
	}
	// b leads: proposed to its own replica, which has two of the three.
	dups, err = b.Redirect(ctx, 0, batch(old, call("app@h", "<0.8.0>", "m", "f", 200),
		call("app@h", "<0.9.0>", "m", "f", 300)), true)
	if err != nil || dups != 2 {
		t.Fatalf("redirect on the leader: %d duplicates, %v; want 2, nil", dups, err)
	}
}
