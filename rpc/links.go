package rpc

import (
	"context"
	"fmt"
	"slices"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// Links stored away from their event. The correlator writes a SEND's
// DELIVERED_TO and a SPAWN's SPAWNED link as edge records on the shard of
// the receive or the child, where the pairing happens; a shard read of the
// SEND returns only the links its own shard holds. So that an answer does
// not depend on how many shards there are (whether the peer happens to
// share the SEND's shard), every query that returns events adds those
// links from the peer's shard before answering.

// peerLinkType is the link e's peer shard may hold for e, if any.
func peerLinkType(e *correlate.Event) (correlate.LinkType, bool) {
	switch {
	case e.PeerPID == "":
		return 0, false
	case e.Kind == correlate.KindSend:
		return correlate.LinkDeliveredTo, true
	case e.Kind == correlate.KindSpawn:
		return correlate.LinkSpawned, true
	}
	return 0, false
}

// addPeerLinks adds to every SEND and SPAWN among events the links stored
// on its peer's shard, when that is another shard. One reader per peer
// shard, shards in parallel (the planner's fan-out bound), and one
// EdgesMany call per peer shard (per store.MaxEdgesMany events): a
// time-range answer's hundred remote SENDs cost one node-to-node call,
// not a hundred sequential ones. A shard that cannot answer is returned
// as a failure and its events keep only their own shard's links.
func (s *Server) addPeerLinks(ctx context.Context, events []*correlate.Event, c Consistency) []shardFailure {
	byShard := make(map[uint32][]*correlate.Event)
	for _, e := range events {
		if _, ok := peerLinkType(e); !ok {
			continue
		}
		own := correlate.ShardOf(e.Origin, e.PID, s.planner.shards)
		peer := correlate.ShardOf(e.PeerOrigin, e.PeerPID, s.planner.shards)
		if peer != own {
			byShard[peer] = append(byShard[peer], e)
		}
	}
	if len(byShard) == 0 {
		return nil
	}
	shards := make([]uint32, 0, len(byShard))
	for shard := range byShard {
		shards = append(shards, shard)
	}
	slices.Sort(shards)
	// Each event is in one shard's list, so the goroutines touch disjoint
	// events.
	return s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		for es := range slices.Chunk(byShard[shard], store.MaxEdgesMany) {
			ids := make([]correlate.EventID, len(es))
			for i, e := range es {
				ids[i] = e.ID
			}
			found, err := r.EdgesMany(ctx, shard, ids)
			if err != nil {
				return err
			}
			if len(found) != len(ids) {
				return fmt.Errorf("rpc: shard %d: EdgesMany answered %d of %d ids", shard, len(found), len(ids))
			}
			for i, e := range es {
				want, _ := peerLinkType(e)
				for _, lk := range found[i] {
					if lk.Type == want && !slices.Contains(e.Links, lk) {
						e.Links = append(e.Links, lk)
					}
				}
			}
		}
		return nil
	})
}

// eventPtrs returns pointers to the elements of events.
func eventPtrs(events []correlate.Event) []*correlate.Event {
	out := make([]*correlate.Event, len(events))
	for i := range events {
		out[i] = &events[i]
	}
	return out
}
