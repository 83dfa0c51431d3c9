package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"time"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// verify runs the final checks once the faults are repaired and the load
// has stopped:
//  1. every process is read once more at LEADER (these reads join the
//     history), and every acknowledged event's correlations are checked:
//     a RETURN or EXCEPTION completes its CALL, a nested CALL names its
//     caller, a RECEIVE is linked to its SEND and back, and every
//     conversation's MessageFlow pairs each acknowledged SEND with its
//     acknowledged RECEIVE;
//  2. the history is checked for linearizability;
//  3. the agents are stopped gracefully and every replica's store is
//     opened directly: each acknowledged event is on every replica of its
//     shard exactly once, no refused event is anywhere, and the replicas
//     of each shard hold identical content (same applied index, same
//     digest of the shard's whole key span).
func (c *campaign) verify(ctx context.Context, w *workload, hist *history) error {
	// Links across shards are made when the sender shard's notice reaches
	// the receiver's shard, which may be delayed by a fault just repaired:
	// the correlation checks are repeated until they pass or a minute has
	// gone, and only the last round's problems count.
	var events map[string]*scopev1.Event
	deadline := time.Now().Add(time.Minute)
	for {
		var problems []string
		events, problems = c.finalReads(ctx, w, hist)
		problems = append(problems, c.checkCorrelations(ctx, w, events)...)
		if len(problems) == 0 || time.Now().After(deadline) || !sleepCtx(ctx, 2*time.Second) {
			for _, p := range problems {
				c.anom.add("%s", p)
			}
			break
		}
		c.logf("final check: %d correlation problems, e.g. %s; reading again", len(problems), problems[0])
	}
	c.report.Linearizability = hist.check(w.procs, c.cfg.Dir, c.cfg.CheckTimeout)
	c.logf("linearizability: %d processes, %d operations (%d of unknown outcome), %d violations, checked in %v",
		c.report.Linearizability.Processes, c.report.Linearizability.Operations, c.report.Linearizability.Unknown,
		len(c.report.Linearizability.Violations), time.Duration(c.report.Linearizability.CheckTimeNs).Round(time.Millisecond))

	replicas, err := c.quiesce(ctx)
	if err != nil {
		c.anom.add("before the replica check: %v", err)
	}
	c.stopAll()
	return c.checkReplicas(w, events, replicas)
}

// finalReads reads every process at LEADER, retrying a failed read a few
// times (the cluster is whole by now). It returns the events read by id,
// and the reads that failed.
func (c *campaign) finalReads(ctx context.Context, w *workload, hist *history) (map[string]*scopev1.Event, []string) {
	out := make(map[string]*scopev1.Event)
	var problems []string
	rnd := rand.New(rand.NewPCG(c.cfg.Seed, 0xf1a1))
	for _, p := range w.procs {
		if p.invokedCount() == 0 {
			continue
		}
		var err error
		for range 10 {
			ep := c.endpoints[rnd.IntN(len(c.endpoints))]
			call := hist.now()
			var mask uint64
			var evs []*scopev1.Event
			mask, evs, err = w.eventsOf(ctx, ep, p)
			if err == nil {
				hist.add(op{key: p.key, client: -1, in: opInput{kind: opRead}, out: opOutput{mask: mask}, call: call, ret: hist.now()})
				for _, e := range evs {
					out[e.GetEventId()] = e
				}
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("final read of %s/%s failed 10 times: %v", p.origin, p.pid, err))
		}
	}
	return out, problems
}

// checkCorrelations checks what Scope linked among acknowledged events and
// returns the problems found.
func (c *campaign) checkCorrelations(ctx context.Context, w *workload, events map[string]*scopev1.Event) []string {
	var problems []string
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	w.mu.Lock()
	acked, refusedIDs := w.acked, w.refusedIDs
	w.mu.Unlock()
	hasLink := func(e *scopev1.Event, t scopev1.LinkType, target string) bool {
		for _, l := range e.GetLinks() {
			if l.GetType() == t && l.GetTargetEventId() == target {
				return true
			}
		}
		return false
	}
	for _, p := range w.procs {
		for _, e := range p.events {
			id := e.GetEventId()
			if acked[id] && events[id] == nil {
				problem("acknowledged event %s (%s of %s/%s) is missing from the final read", id, e.GetKind(), p.origin, p.pid)
			}
			if refusedIDs[id] && events[id] != nil {
				problem("refused event %s (%s of %s/%s) was stored", id, e.GetKind(), p.origin, p.pid)
			}
		}
		for call, end := range p.ends {
			callID, endID := p.events[call].GetEventId(), p.events[end].GetEventId()
			got := events[endID]
			if !acked[callID] || !acked[endID] || got == nil {
				continue
			}
			want := scopev1.Outcome_OUTCOME_OK
			if p.events[end].GetKind() == scopev1.Kind_KIND_EXCEPTION {
				want = scopev1.Outcome_OUTCOME_EXCEPTION
			}
			if got.GetCorrelationId() != callID || got.GetOrphan() || got.GetOutcome() != want ||
				!hasLink(got, scopev1.LinkType_LINK_TYPE_COMPLETES, callID) {
				problem("%s %s of %s/%s does not complete its CALL %s: correlation %q, orphan %v, outcome %s, links %v",
					got.GetKind(), endID, p.origin, p.pid, callID, got.GetCorrelationId(), got.GetOrphan(), got.GetOutcome(), got.GetLinks())
			}
		}
		for child, parent := range p.parents {
			childID, parentID := p.events[child].GetEventId(), p.events[parent].GetEventId()
			got := events[childID]
			if !acked[childID] || !acked[parentID] || got == nil {
				continue
			}
			if got.GetParentId() != parentID || !hasLink(got, scopev1.LinkType_LINK_TYPE_CALLED_FROM, parentID) {
				problem("CALL %s of %s/%s does not name its caller %s: parent %q, links %v",
					childID, p.origin, p.pid, parentID, got.GetParentId(), got.GetLinks())
			}
		}
	}
	for _, conv := range w.convs {
		var flow map[string]string
		var err error
		for range 10 {
			if flow, err = w.readFlow(ctx, c.endpoints[rand.IntN(len(c.endpoints))], conv); err == nil {
				break
			}
		}
		if err != nil {
			problem("final MessageFlow of %s/%s and %s/%s failed 10 times: %v", conv.p.origin, conv.p.pid, conv.q.origin, conv.q.pid, err)
		}
		for _, m := range conv.messages {
			sendID, recvID := m.from.events[m.send].GetEventId(), m.to.events[m.received].GetEventId()
			send, recv := events[sendID], events[recvID]
			if !acked[sendID] || !acked[recvID] || send == nil || recv == nil {
				continue
			}
			if err == nil && flow[sendID] != recvID {
				problem("MessageFlow of %s/%s and %s/%s does not pair acknowledged SEND %s with its RECEIVE %s",
					conv.p.origin, conv.p.pid, conv.q.origin, conv.q.pid, sendID, recvID)
			}
			if !hasLink(recv, scopev1.LinkType_LINK_TYPE_RECEIVED_FROM, sendID) || !hasLink(send, scopev1.LinkType_LINK_TYPE_DELIVERED_TO, recvID) {
				problem("RECEIVE %s (%s/%s) and SEND %s (%s/%s) are not linked: receive links %v, send links %v",
					recvID, m.to.origin, m.to.pid, sendID, m.from.origin, m.from.pid, recv.GetLinks(), send.GetLinks())
			}
		}
	}
	return problems
}

// quiesce waits until every replica of every shard has applied what its
// leader has (the load has stopped), and returns each shard's replicas.
func (c *campaign) quiesce(ctx context.Context) (map[uint32][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := c.whole(ctx, 0)
		if err == nil {
			views, err := c.clusterView(ctx)
			if err == nil {
				out := make(map[uint32][]string)
				for shard, v := range views {
					out[shard] = v.servers
				}
				return out, nil
			}
		}
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return nil, fmt.Errorf("replicas did not catch up: %v", err)
		}
	}
}

// replicaContent is what one replica's store holds for its shard.
type replicaContent struct {
	node    string
	applied uint64
	digest  string
	ids     map[string]int // event id → records
}

// checkReplicas opens every stopped agent's store and compares the
// replicas of each shard.
func (c *campaign) checkReplicas(w *workload, events map[string]*scopev1.Event, replicas map[uint32][]string) error {
	byNode := make(map[string]map[uint32]*replicaContent)
	for _, a := range c.agents {
		content, err := readStore(filepath.Join(a.dir, "store"), uint32(c.cfg.Shards))
		if err != nil {
			c.anom.add("%s: reading its store: %v", a.name, err)
			continue
		}
		for _, rc := range content {
			rc.node = a.name
		}
		byNode[a.name] = content
	}
	w.mu.Lock()
	acked, refusedIDs := w.acked, w.refusedIDs
	w.mu.Unlock()
	for node, shards := range byNode {
		for shard, rc := range shards {
			for id := range refusedIDs {
				if rc.ids[id] > 0 {
					c.anom.add("refused event %s is stored on %s (shard %d)", id, node, shard)
				}
			}
			for id, n := range rc.ids {
				if n > 1 {
					c.anom.add("event %s is stored %d times on %s (shard %d)", id, n, node, shard)
				}
			}
		}
	}
	for shard := range uint32(c.cfg.Shards) {
		nodes := replicas[shard]
		if len(nodes) == 0 {
			c.anom.add("shard %d: no replica known at the end", shard)
			continue
		}
		var first *replicaContent
		for _, node := range nodes {
			rc := byNode[node][shard]
			if rc == nil {
				c.anom.add("shard %d: %s is a replica but its store holds nothing of the shard", shard, node)
				continue
			}
			c.report.ReplicasCompared++
			if first == nil {
				first = rc
				continue
			}
			if rc.applied != first.applied || rc.digest != first.digest {
				c.report.ReplicaMismatches++
				c.anom.add("shard %d: replicas differ: %s applied %d digest %s, %s applied %d digest %s",
					shard, first.node, first.applied, first.digest, rc.node, rc.applied, rc.digest)
			}
		}
		for id := range acked {
			e := events[id]
			if e == nil || e.GetShard() != shard {
				continue
			}
			c.report.EventsVerified++
			for _, node := range nodes {
				if rc := byNode[node][shard]; rc != nil && rc.ids[id] == 0 {
					c.anom.add("acknowledged event %s (shard %d) is missing on replica %s", id, shard, node)
				}
			}
		}
	}
	return nil
}

// readStore opens a stopped agent's store and reads, for every shard it
// holds (a non-zero applied index), the applied index, a digest of the
// shard's span and its events' ids.
func readStore(dir string, shards uint32) (map[uint32]*replicaContent, error) {
	opts := store.DefaultOptions()
	opts.Logger = slog.New(slog.DiscardHandler)
	st, err := store.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	out := make(map[uint32]*replicaContent)
	for shard := range shards {
		applied, err := st.AppliedIndex(shard)
		if err != nil {
			return nil, err
		}
		if applied == 0 {
			continue
		}
		h := sha256.New()
		if err := st.ExportShard(shard, h); err != nil {
			return nil, fmt.Errorf("shard %d: export: %w", shard, err)
		}
		rc := &replicaContent{applied: applied, digest: hex.EncodeToString(h.Sum(nil))[:16], ids: make(map[string]int)}
		q := store.Unbounded(store.DefaultOptions().MaxLimit)
		for {
			page, err := st.Events(shard, q)
			if err != nil {
				return nil, fmt.Errorf("shard %d: events: %w", shard, err)
			}
			for _, e := range page.Events {
				rc.ids[e.ID.String()]++
			}
			if !page.More {
				break
			}
			q.After = &store.Position{TimestampNs: page.Next.TimestampNs, ID: page.Next.ID}
		}
		out[shard] = rc
	}
	return out, nil
}
