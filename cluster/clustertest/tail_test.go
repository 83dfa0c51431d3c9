package clustertest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// tailLog collects a tail stream's items.
type tailLog struct {
	mu     sync.Mutex
	events []*scopev1.Event
	lagged []*scopev1.Lagged
	shards map[uint32]bool
	err    error
}

func (l *tailLog) read(s *connect.ServerStreamForClient[scopev1.TailResponse]) {
	for s.Receive() {
		l.mu.Lock()
		switch x := s.Msg().GetItem().(type) {
		case *scopev1.TailResponse_Event:
			l.events = append(l.events, x.Event)
			l.shards[x.Event.GetShard()] = true
		case *scopev1.TailResponse_Lagged:
			l.lagged = append(l.lagged, x.Lagged)
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.err = s.Err()
	l.mu.Unlock()
}

// applyOrder records where each event was applied (shard, raft index,
// offset in the entry) from node-level subscriptions on every node: every
// replica applies the same log, so any replica's position is the event's.
type applyOrder struct {
	mu  sync.Mutex
	pos map[string]node.TailItem
	wg  sync.WaitGroup
}

func (a *applyOrder) follow(ctx context.Context, t *testing.T, n *node.Node) {
	sub, err := n.Subscribe(node.TailSpec{Buffer: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer sub.Close()
		for {
			it, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if it.Kind == node.TailEvent {
				it.Event = correlate.Event{ID: it.Event.ID}
				a.mu.Lock()
				a.pos[it.Event.ID.String()] = it
				a.mu.Unlock()
			}
		}
	}()
}

// TestTailClusterWide tails through a node that does not host every shard
// while another node ingests, then stops the node the tail follows for
// some shards: every acknowledged event arrives exactly once and in order
// per process (so per shard), except on a shard the tail reports Lagged
// for.
func TestTailClusterWide(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 4, Shards: shards, Replicas: 3})
	defer c.Close()
	tailer := c.Nodes[0]
	missing := -1
	for s := range uint32(shards) {
		if tailer.Node.Replica(s) == nil {
			missing = int(s)
		}
	}
	if missing < 0 {
		t.Fatalf("%s hosts every shard; the test needs one it does not", tailer.Name)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	order := &applyOrder{pos: make(map[string]node.TailItem)}
	for _, n := range c.Nodes {
		order.follow(ctx, t, n.Node)
	}
	defer order.wg.Wait()
	log := &tailLog{shards: make(map[uint32]bool)}
	done := make(chan struct{})
	go func() {
		// The call returns with the response headers, which the server
		// sends with its first item: open it off the test goroutine.
		defer close(done)
		stream, err := tailer.Query.Tail(ctx, connect.NewRequest(&scopev1.TailRequest{}))
		if err != nil {
			log.mu.Lock()
			log.err = err
			log.mu.Unlock()
			return
		}
		log.read(stream)
	}()
	defer func() { cancel(); <-done }()

	// The sources start asynchronously: probe until every shard has sent.
	others := c.Nodes[1:]
	WaitFor(t, "tail follows every shard", 15*time.Second, func() bool {
		var probes []*scopev1.Event
		for i := range 32 {
			probes = append(probes, &scopev1.Event{Origin: "probe@host", Pid: fmt.Sprintf("<9.%d.0>", i),
				Kind: scopev1.Kind_KIND_STATE_CHANGE, TimestampNs: time.Now().UnixNano(), Module: "probe", Function: "p"})
		}
		_, _ = others[0].Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: probes,
			Durability: scopev1.Durability_DURABILITY_COMMITTED}))
		log.mu.Lock()
		defer log.mu.Unlock()
		return len(log.shards) == shards
	})

	// Find a node the tail follows for the shard the tailer lacks (LEADER:
	// the leader), to stop mid-load.
	victim := c.WaitShardLeader(uint32(missing))
	if victim == tailer {
		t.Fatalf("shard %d: leader %v", missing, victim)
	}
	var via []*Node
	for _, n := range others {
		if n != victim {
			via = append(via, n)
		}
	}
	l := StartLoader(LoaderOptions{Via: via, MaxEvents: 3000})
	WaitFor(t, "half the load acknowledged", 20*time.Second, func() bool { return l.Acked() >= 1500 })
	c.Stop(victim)
	WaitFor(t, "load acknowledged", 30*time.Second, func() bool { return l.Acked() >= 3000 })
	res := l.Stop()

	lost := func() map[uint32]bool {
		out := make(map[uint32]bool)
		for _, lg := range log.lagged {
			if lg.Shard == nil {
				t.Errorf("Lagged without a shard: %v", lg)
				continue
			}
			out[lg.GetShard()] = true
		}
		return out
	}
	WaitFor(t, "every acknowledged event tailed or its shard reported lagged", 20*time.Second, func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		seen := make(map[string]bool)
		for _, e := range log.events {
			seen[e.GetEventId()] = true
		}
		gaps := lost()
		for id := range res.Acked {
			if !seen[id] && len(gaps) == 0 {
				return false
			}
		}
		return true
	})

	log.mu.Lock()
	defer log.mu.Unlock()
	if log.err != nil {
		t.Fatalf("tail ended: %v", log.err)
	}
	seen := make(map[string]bool)
	lastTs := make(map[string]int64)
	for _, e := range log.events {
		id := e.GetEventId()
		if seen[id] {
			t.Errorf("event %s delivered twice", id)
		}
		seen[id] = true
		if e.GetOrigin() != "load@host" {
			continue
		}
		if !res.Sent[id] {
			t.Errorf("event %s was never sent", id)
		}
		p := e.GetPid()
		if e.GetTimestampNs() <= lastTs[p] {
			t.Errorf("pid %s: event at %d after %d (out of apply order)", p, e.GetTimestampNs(), lastTs[p])
		}
		lastTs[p] = e.GetTimestampNs()
	}
	// Per shard, the tail's events come in raft apply order: strictly
	// increasing (index, offset).
	order.mu.Lock()
	prev := make(map[uint32]node.TailItem)
	checked := 0
	for _, e := range log.events {
		p, ok := order.pos[e.GetEventId()]
		if !ok {
			continue
		}
		checked++
		if q, ok := prev[p.Shard]; ok && !(p.Index > q.Index || p.Index == q.Index && p.Offset > q.Offset) {
			t.Errorf("shard %d: event %s at %d.%d tailed after %d.%d", p.Shard, e.GetEventId(), p.Index, p.Offset, q.Index, q.Offset)
		}
		prev[p.Shard] = p
	}
	order.mu.Unlock()
	if checked < len(log.events)/2 {
		t.Errorf("only %d of %d tailed events have a recorded apply position", checked, len(log.events))
	}
	gaps := lost()
	missed := 0
	for id := range res.Acked {
		if !seen[id] {
			missed++
		}
	}
	if missed > 0 && len(gaps) == 0 {
		t.Errorf("%d acknowledged events never tailed and no Lagged reported", missed)
	}
	t.Logf("tailed %d events; %d acknowledged missed; lagged on shards %v", len(log.events), missed, gaps)
}
