package rpc

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/store"
)

// replicaFault is how one fake replica misbehaves.
type replicaFault struct {
	delay time.Duration // answer only after this long (or when ctx ends)
	err   error         // then fail with this
	lag   node.Lag      // reported with every answer
}

// hedgeReplica is a fakeReader behind a fault, counting its calls and
// those that ended by cancellation.
type hedgeReplica struct {
	fakeReader
	name      string
	fault     replicaFault
	calls     atomic.Int64
	cancelled atomic.Int64
}

func (r *hedgeReplica) Events(ctx context.Context, shard uint32, q store.Query) (store.Page, error) {
	r.calls.Add(1)
	if r.fault.delay > 0 {
		t := time.NewTimer(r.fault.delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			r.cancelled.Add(1)
			return store.Page{}, ctx.Err()
		case <-t.C:
		}
	}
	if r.fault.err != nil {
		return store.Page{}, r.fault.err
	}
	ReportLag(ctx, shard, r.name, r.fault.lag)
	return r.fakeReader.Events(ctx, shard, q)
}

// hedgeShards offers every shard's replicas in a fixed order.
type hedgeShards struct{ replicas []*hedgeReplica }

func (h *hedgeShards) Readers(_ uint32, c Consistency) ([]ShardReader, error) {
	if c == ConsistencyLeader {
		return []ShardReader{h.replicas[0]}, nil
	}
	out := make([]ShardReader, len(h.replicas))
	for i, r := range h.replicas {
		out[i] = r
	}
	return out, nil
}

func hedgeFixture(shards uint32, perShard int) *fakeShards {
	f := &fakeShards{events: map[uint32][]correlate.Event{}, scan: 1000}
	for s := range shards {
		for i := range perShard {
			var e correlate.Event
			e.TimestampNs = int64(i*int(shards) + int(s))
			e.ID[0], e.ID[15] = byte(s), byte(i)
			e.Kind = correlate.KindCall
			f.events[s] = append(f.events[s], e)
		}
	}
	return f
}

func hedgePlanner(res Resolver, shards uint32, delay time.Duration) *planner {
	cfg := DefaultConfig()
	cfg.HedgeDelay = delay
	return &planner{res: res, layout: fixedLayout(shards), cfg: &cfg, logger: cfg.Logger,
		hedges: prometheus.NewCounter(prometheus.CounterOpts{Name: "h"}), hedgeWins: prometheus.NewCounter(prometheus.CounterOpts{Name: "w"})}
}

func ids(es []correlate.Event) []correlate.EventID {
	out := make([]correlate.EventID, len(es))
	for i := range es {
		out[i] = es[i].ID
	}
	return out
}

// TestHedgedReads: with the first replica of every shard stalled, ANY
// reads finish in about HedgeDelay instead of the stall, answer exactly
// what an unhedged read of healthy replicas answers, cancel the stalled
// calls, count one hedge per shard read, and report the winner's lag.
func TestHedgedReads(t *testing.T) {
	const shards = 8
	f := hedgeFixture(shards, 20)
	q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: 50}

	healthy := &hedgeShards{replicas: []*hedgeReplica{{fakeReader: fakeReader{f}, name: "a"}}}
	want, err := hedgePlanner(healthy, shards, 0).merge(context.Background(), "test",
		mergeQuery{q: q, shards: allShardIDs(shards), consistency: ConsistencyAny})
	if err != nil {
		t.Fatal(err)
	}

	const stall, delay = 10 * time.Second, 20 * time.Millisecond
	slow := &hedgeReplica{fakeReader: fakeReader{f}, name: "slow", fault: replicaFault{delay: stall}}
	fast := &hedgeReplica{fakeReader: fakeReader{f}, name: "fast", fault: replicaFault{lag: node.Lag{Entries: 7}}}
	p := hedgePlanner(&hedgeShards{replicas: []*hedgeReplica{slow, fast}}, shards, delay)
	ctx, lag := withLag(context.Background())
	start := time.Now()
	got, err := p.merge(ctx, "test", mergeQuery{q: q, shards: allShardIDs(shards), consistency: ConsistencyAny})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if took >= stall/2 {
		t.Fatalf("hedged read took %v: it waited for the stalled replica (%v)", took, stall)
	}
	if took < delay {
		t.Fatalf("hedged read took %v, less than HedgeDelay %v: the first replica was not waited for", took, delay)
	}
	if !slices.Equal(ids(got.events), ids(want.events)) || (got.next == nil) != (want.next == nil) ||
		(got.next != nil && *got.next != *want.next) {
		t.Fatalf("hedged answer differs: %d events next %v, unhedged %d next %v", len(got.events), got.next, len(want.events), want.next)
	}
	reads := slow.calls.Load()
	if fast.calls.Load() != reads {
		t.Fatalf("%d slow calls, %d hedges: want one hedge per shard read", reads, fast.calls.Load())
	}
	if h, w := counterValue(p.hedges), counterValue(p.hedgeWins); h != float64(reads) || w != float64(reads) {
		t.Fatalf("hedges %v wins %v, want %d each", h, w, reads)
	}
	// Every stalled call ends by cancellation once its hedge has won.
	testwait.ForWhy(t, "every stalled call cancelled", 5*time.Second, func() string {
		if n := slow.cancelled.Load(); n != int64(reads) {
			return fmt.Sprintf("%d of %d cancelled", n, reads)
		}
		return ""
	})
	rl := lag.proto()
	if rl.GetMaxEntries() != 7 || len(rl.GetShards()) != shards || rl.GetShards()[0].GetNode() != "fast" {
		t.Fatalf("lag: %v", rl)
	}

	// LEADER reads have one replica that may answer: never hedged.
	lp := hedgePlanner(&hedgeShards{replicas: []*hedgeReplica{
		{fakeReader: fakeReader{f}, name: "leader", fault: replicaFault{delay: 3 * delay}}, fast}}, shards, delay)
	if _, err := lp.merge(context.Background(), "test", mergeQuery{q: q, shards: allShardIDs(shards), consistency: ConsistencyLeader}); err != nil {
		t.Fatal(err)
	}
	if h := counterValue(lp.hedges); h != 0 {
		t.Fatalf("LEADER read sent %v hedges", h)
	}
}

// TestHedgeFailover: a first replica that fails with an error another
// replica may not have starts the hedge at once; one that answers "not
// found" or an invalid query does not (that is the shard's answer); when
// both fail, the first replica's error is reported.
func TestHedgeFailover(t *testing.T) {
	const shards = 2
	f := hedgeFixture(shards, 5)
	q := store.Query{FromNs: math.MinInt64, ToNs: math.MaxInt64, Limit: 50}
	mq := mergeQuery{q: q, shards: allShardIDs(shards), consistency: ConsistencyAny}

	down := &hedgeReplica{fakeReader: fakeReader{f}, name: "down", fault: replicaFault{err: fmt.Errorf("%w: gone", node.ErrNoShard)}}
	ok := &hedgeReplica{fakeReader: fakeReader{f}, name: "ok"}
	p := hedgePlanner(&hedgeShards{replicas: []*hedgeReplica{down, ok}}, shards, time.Hour-time.Minute)
	p.cfg.QueryShardTimeout = time.Hour
	got, err := p.merge(context.Background(), "test", mq)
	if err != nil || len(got.events) != 10 {
		t.Fatalf("failover: %d events, %v", len(got.events), err)
	}

	bad := &hedgeReplica{fakeReader: fakeReader{f}, name: "bad", fault: replicaFault{err: fmt.Errorf("%w: bad", store.ErrInvalidQuery)}}
	p = hedgePlanner(&hedgeShards{replicas: []*hedgeReplica{bad, ok}}, shards, time.Hour-time.Minute)
	p.cfg.QueryShardTimeout = time.Hour
	before := ok.calls.Load()
	if _, err := p.merge(context.Background(), "test", mq); err == nil {
		t.Fatal("invalid query answered")
	}
	if ok.calls.Load() != before {
		t.Fatal("an invalid query was hedged")
	}

	other := &hedgeReplica{fakeReader: fakeReader{f}, name: "other", fault: replicaFault{err: fmt.Errorf("%w: other", node.ErrTimeout)}}
	p = hedgePlanner(&hedgeShards{replicas: []*hedgeReplica{down, other}}, shards, time.Hour-time.Minute)
	p.cfg.QueryShardTimeout = 200 * time.Millisecond // ErrNoShard is retried until the deadline
	res, err := p.merge(context.Background(), "test", mergeQuery{q: q, shards: []uint32{0}, consistency: ConsistencyAny, allowPartial: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.missing) != 1 || res.missing[0].GetCode() != "unavailable" {
		t.Fatalf("both failed: missing %v, want the first replica's unavailable", res.missing)
	}
}

func allShardIDs(n uint32) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
