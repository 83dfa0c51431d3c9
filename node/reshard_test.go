package node_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
)

// reshardWorkload is a stream of nested calls and messages between procs
// processes: every RETURN has its CALL and every RECEIVE its SEND, so a
// correlation that loses state across a split shows as an orphan return or
// an unmatched receive.
func reshardWorkload(procs, steps int) (evs []correlate.Event, receives int) {
	ts := int64(1_000_000)
	next := func() int64 { ts += 1000; return ts }
	pid := func(i int) string { return fmt.Sprintf("<0.%d.0>", 100+i) }
	for i := range steps {
		p, q := pid(i%procs), pid((i*7+3)%procs)
		payload := fmt.Sprintf("{job,%d}", i)
		evs = append(evs,
			correlate.Event{Origin: "app@h", PID: p, Kind: correlate.KindCall, TimestampNs: next(), Module: "w", Function: "outer", Arity: 1},
			correlate.Event{Origin: "app@h", PID: p, Kind: correlate.KindCall, TimestampNs: next(), Module: "w", Function: "inner", Arity: 2},
			correlate.Event{Origin: "app@h", PID: p, Kind: correlate.KindSend, TimestampNs: next(), PeerOrigin: "app@h", PeerPID: q, Payload: payload},
			correlate.Event{Origin: "app@h", PID: p, Kind: correlate.KindReturn, TimestampNs: next(), Module: "w", Function: "inner", Arity: 2},
		)
		// The receive comes a step later on q, and the outer frame closes
		// two steps later: state open across requests, and across the split.
		evs = append(evs, correlate.Event{Origin: "app@h", PID: q, Kind: correlate.KindReceive, TimestampNs: next(), Payload: payload})
		receives++
		evs = append(evs, correlate.Event{Origin: "app@h", PID: p, Kind: correlate.KindReturn, TimestampNs: next(), Module: "w", Function: "outer", Arity: 1})
	}
	return evs, receives
}

// openChildren opens and bootstraps the children of a doubling from base
// to 2*base on a one-node cluster, and waits for their leaders (the
// cluster's coordinator does the same before it splits the parents).
func openChildren(t *testing.T, tn *testNode, base uint32) {
	t.Helper()
	self := []raft.Server{{ID: raft.ServerID(tn.ID()), Address: raft.ServerAddress(tn.mux.Addr().String())}}
	for child := base; child < 2*base; child++ {
		r, err := tn.OpenReplica(child)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Bootstrap(self); err != nil {
			t.Fatal(err)
		}
		if !r.Awaiting() {
			t.Fatalf("new child %d does not await its handoff", child)
		}
	}
	testwait.For(t, "children led", 10*time.Second, func() bool {
		for child := base; child < 2*base; child++ {
			if !tn.Replica(child).IsLeader() {
				return false
			}
		}
		return true
	})
}

// Splitting every shard of a node while clients stream events into it
// loses nothing and invents nothing: every acknowledged event is stored
// once, every return completes its call and every receive pairs with its
// send, whether its process moved to the child or stayed; and a resend of
// everything afterwards stores nothing again.
func TestSplitUnderIngest(t *testing.T) {
	const base, clients = 4, 4
	tn := bootstrapped(t, "n1", t.TempDir(), base)
	// The children's groups exist and are led before the load starts, so
	// that the splits land in the middle of it (Split creates them itself
	// otherwise, through the parent's log, which takes an election:
	// TestSplitCreatesTheChildGroup).
	openChildren(t, tn, base)
	evs, receives := reshardWorkload(48, 1000)

	// Each client sends the events of its own processes, in order, 40 to a
	// request, waiting for each acknowledgement: the clients' requests
	// interleave in the shards' logs around the split.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var progress int
	splitDone := make(chan struct{})
	for k := range clients {
		var mine []correlate.Event
		for _, e := range evs {
			var id int
			fmt.Sscanf(e.PID, "<0.%d.0>", &id)
			if id%clients == k {
				mine = append(mine, e)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < len(mine); i += 40 {
				if i >= len(mine)*4/5 {
					<-splitDone // the last fifth after the split: both sides of it are loaded
				}
				part := append([]correlate.Event(nil), mine[i:min(i+40, len(mine))]...)
				res := tn.Ingest(context.Background(), part, node.Committed)
				for _, s := range res.Shards {
					if s.Err != nil || s.Accepted+s.Duplicates != s.Events {
						t.Errorf("client %d, request at event %d: shard %d: accepted %d of %d: %v", k, i, s.Shard, s.Accepted, s.Events, s.Err)
					}
				}
				mu.Lock()
				progress += len(part)
				mu.Unlock()
			}
		}()
	}
	testwait.For(t, "a fifth sent", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return progress >= len(evs)/5
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, base)
	for parent := range uint32(base) {
		go func() { _, err := tn.Split(ctx, parent, 2*base); errs <- err }()
	}
	for range base {
		if err := <-errs; err != nil {
			close(splitDone)
			t.Fatal(err)
		}
	}
	mu.Lock()
	t.Logf("split done with %d of %d events sent", progress, len(evs))
	mu.Unlock()
	close(splitDone)
	wg.Wait()
	if t.Failed() {
		return
	}
	if got := tn.Layout(); got != (correlate.Layout{Base: base, Shards: 2 * base}) {
		t.Fatalf("node layout %+v", got)
	}
	testwait.For(t, "handoffs adopted and outboxes drained", 20*time.Second, func() bool {
		for s := range uint32(2 * base) {
			r := tn.Replica(s)
			if st := r.Reshard(); st.Awaiting || st.Handoffs > 0 || len(r.Outbox()) > 0 {
				return false
			}
		}
		return true
	})

	// Stored once: the shards hold exactly the events sent, each on one
	// of the shards its process lived on.
	var stored uint64
	var totals correlate.Counters
	for s := range uint32(2 * base) {
		st, err := tn.Store().Stats(s)
		if err != nil {
			t.Fatal(err)
		}
		stored += st.Events
		_, c, failed := tn.Replica(s).Status()
		if failed != nil {
			t.Fatal(failed)
		}
		totals.Add(c)
	}
	if stored != uint64(len(evs)) {
		t.Fatalf("%d events stored, %d sent", stored, len(evs))
	}
	t.Logf("%d events rerouted, %d notices forwarded", totals.Rerouted, totals.NoticesForwarded)
	if totals.Orphans != 0 || totals.Matched != uint64(receives) || totals.ReceivesExpired != 0 || totals.Duplicates != 0 {
		t.Fatalf("orphans %d, matched %d of %d receives, expired %d, duplicates %d", totals.Orphans, totals.Matched, receives, totals.ReceivesExpired, totals.Duplicates)
	}
	layout := tn.Layout()
	ids := tn.Ingest(context.Background(), append([]correlate.Event(nil), evs...), node.Committed)
	for i, id := range ids.IDs {
		e := evs[i]
		found := 0
		for _, s := range layout.History(e.Origin, e.PID) {
			got, err := tn.Store().Get(s, id)
			if err != nil {
				continue
			}
			found++
			if e.Kind == correlate.KindReturn && got.CorrelationID == "" {
				t.Fatalf("return %s on shard %d has no call", id, s)
			}
		}
		if found != 1 {
			t.Fatalf("event %d (%s of %s) found on %d shards", i, e.Kind, e.PID, found)
		}
	}
	for _, s := range ids.Shards {
		if s.Err != nil || s.Duplicates != s.Events {
			t.Fatalf("resending every event: shard %d stored %d again (%d duplicates of %d): %v", s.Shard, s.Accepted, s.Duplicates, s.Events, s.Err)
		}
	}
}

// movedAndKept finds a process of shard 0 that the doubling from base moves
// to the child, and one that stays.
func movedAndKept(base uint32) (moved, kept correlate.Process) {
	next := correlate.Layout{Base: base, Shards: 2 * base}
	var haveMoved, haveKept bool
	for i := 0; !haveMoved || !haveKept; i++ {
		p := correlate.Process{Origin: "app@h", PID: fmt.Sprintf("<0.%d.0>", i)}
		if correlate.ShardOf(p.Origin, p.PID, base) != 0 {
			continue
		}
		if next.ShardOf(p.Origin, p.PID) == base {
			moved, haveMoved = p, true
		} else {
			kept, haveKept = p, true
		}
	}
	return moved, kept
}

// Events the writer pool proposed to a shard behind its split entry (the
// node still routed by the old layout) are committed there but not applied:
// the pool sends them to the child, and the client's acknowledgement waits
// for that. The child has the moved process's open frame, so the return
// completes its call. A redirect (a batch proposed again after a lost
// leadership) meets the same and goes the same way.
func TestPoolReroutesWhatASplitGaveAway(t *testing.T) {
	const base = 2
	var gate atomic.Pointer[chan struct{}]
	tn := openTestNode(t, "n1", t.TempDir(), base, func(c *node.Config) {
		c.BeforeApply = func(shard uint32) {
			if g := gate.Load(); g != nil && shard == 0 {
				<-*g
			}
		}
	})
	if err := tn.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "shards led", 10*time.Second, func() bool {
		return tn.Replica(0).IsLeader() && tn.Replica(1).IsLeader()
	})
	openChildren(t, tn, base)
	moved, kept := movedAndKept(base)
	calls := mustIngest(t, tn.Node, node.Committed,
		call(moved.Origin, moved.PID, "m", "f", 10), call(kept.Origin, kept.PID, "m", "f", 11)).IDs

	// Shard 0 commits but does not apply: the split, then the returns.
	g := make(chan struct{})
	gate.Store(&g)
	parent := tn.Replica(0)
	before := parent.LastIndex()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	splitDone := make(chan error, 1)
	go func() { _, err := tn.Split(ctx, 0, 2*base); splitDone <- err }()
	testwait.For(t, "split appended", 10*time.Second, func() bool { return parent.LastIndex() > before })
	returns := []correlate.Event{ret(moved.Origin, moved.PID, "m", "f", 20), ret(kept.Origin, kept.PID, "m", "f", 21)}
	ingestDone := make(chan node.IngestResult, 1)
	go func() { ingestDone <- tn.Ingest(ctx, returns, node.Committed) }()
	testwait.For(t, "returns appended behind the split", 10*time.Second, func() bool { return parent.LastIndex() > before+1 })
	if tn.Layout().Shards != base {
		t.Fatalf("the node learned the layout before the split applied: %+v", tn.Layout())
	}
	gate.Store(nil)
	close(g)
	if err := <-splitDone; err != nil {
		t.Fatal(err)
	}
	res := <-ingestDone
	for _, s := range res.Shards {
		if s.Err != nil || s.Accepted != s.Events {
			t.Fatalf("shard %d: accepted %d of %d: %v", s.Shard, s.Accepted, s.Events, s.Err)
		}
	}
	retMoved, err := tn.Store().Get(base, res.IDs[0])
	if err != nil {
		t.Fatalf("the moved process's return is not on the child: %v", err)
	}
	if !hasLink(retMoved, correlate.LinkCompletes, calls[0]) {
		t.Fatalf("the moved return does not complete its call: %+v", retMoved.Links)
	}
	if _, err := tn.Store().Get(0, res.IDs[0]); err == nil {
		t.Fatal("the moved return is stored on the parent too")
	}
	retKept, err := tn.Store().Get(0, res.IDs[1])
	if err != nil || !hasLink(retKept, correlate.LinkCompletes, calls[1]) {
		t.Fatalf("the kept return on the parent: %+v, %v", retKept.Links, err)
	}
	_, totals, _ := parent.Status()
	if totals.Rerouted != 1 {
		t.Fatalf("parent rerouted %d events, want 1", totals.Rerouted)
	}

	// A redirect straight to the parent's log is rerouted the same way.
	exit := correlate.Event{Origin: moved.Origin, PID: moved.PID, Kind: correlate.KindExit, TimestampNs: 30, ID: correlate.EventID{15: 9}}
	if _, err := tn.Redirect(ctx, 0, []correlate.Event{exit}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.Store().Get(base, exit.ID); err != nil {
		t.Fatalf("the redirected exit is not on the child: %v", err)
	}
}

// Split creates the child's group itself, through the parent's log, with
// the parent's voters; the moved process's open frame is closed on the
// child; and a restart reopens the child and routes by the split layout.
func TestSplitCreatesTheChildGroup(t *testing.T) {
	const base = 2
	dir := t.TempDir()
	tn := bootstrapped(t, "n1", dir, base)
	moved, kept := movedAndKept(base)
	calls := mustIngest(t, tn.Node, node.Committed,
		call(moved.Origin, moved.PID, "m", "f", 10), call(kept.Origin, kept.PID, "m", "f", 11)).IDs
	if tn.Replica(base) != nil {
		t.Fatal("child exists before the split")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if split, err := tn.Split(ctx, 0, 2*base); err != nil || !split {
		t.Fatal(split, err)
	}
	child := tn.Replica(base)
	voters, err := child.Voters()
	if err != nil || len(voters) != 1 || voters[0].ID != "n1" {
		t.Fatalf("child voters %v, %v", voters, err)
	}
	if split, err := tn.Split(ctx, 0, 2*base); err != nil || split { // again: nothing to do
		t.Fatal(split, err)
	}
	res := mustIngest(t, tn.Node, node.Committed, ret(moved.Origin, moved.PID, "m", "f", 20))
	got, err := tn.Store().Get(base, res.IDs[0])
	if err != nil || !hasLink(got, correlate.LinkCompletes, calls[0]) {
		t.Fatalf("moved return on the child: %+v, %v", got.Links, err)
	}

	tn.close(t)
	tn = openTestNode(t, "n1", dir, base, nil)
	if err := tn.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	if tn.Replica(base) == nil || tn.Layout() != (correlate.Layout{Base: base, Shards: 2 * base}) {
		t.Fatalf("after a restart: child %v, layout %+v", tn.Replica(base) != nil, tn.Layout())
	}
	testwait.For(t, "shards led after the restart", 10*time.Second, func() bool {
		for s := range uint32(2 * base) {
			if r := tn.Replica(s); r == nil || !r.IsLeader() {
				return s == 3 // shard 1 did not split: no shard 3
			}
		}
		return true
	})
	res = mustIngest(t, tn.Node, node.Committed, ret(kept.Origin, kept.PID, "m", "f", 21))
	got, err = tn.Store().Get(0, res.IDs[0])
	if err != nil || !hasLink(got, correlate.LinkCompletes, calls[1]) {
		t.Fatalf("kept return on the parent after the restart: %+v, %v", got.Links, err)
	}
}
