package rpc

import (
	"context"
	"fmt"
	"maps"
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
// links from the peer's shards before answering: every shard the peer has
// lived on (a split does not move stored events, so the shard that applied
// the receive may be an older one).

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
// on its peer's shards other than its own (e.Shard, the shard that stored
// it and whose links it carries already). One reader per peer shard,
// shards in parallel (the planner's fan-out bound), and one EdgesMany call
// per peer shard (per store.MaxEdgesMany events): a time-range answer's
// hundred remote SENDs cost one node-to-node call, not a hundred
// sequential ones. The links found are added once every shard answered,
// shard by shard in ascending order. A shard that cannot answer is
// returned as a failure; its events lack the links it did not return.
func (s *Server) addPeerLinks(ctx context.Context, events []*correlate.Event, c Consistency) []shardFailure {
	byShard := make(map[uint32][]*correlate.Event)
	for _, e := range events {
		if _, ok := peerLinkType(e); !ok {
			continue
		}
		for _, peer := range s.planner.history(e.Peer()) {
			if peer != e.Shard {
				byShard[peer] = append(byShard[peer], e)
			}
		}
	}
	if len(byShard) == 0 {
		return nil
	}
	shards := slices.Sorted(maps.Keys(byShard))
	// found[shard][i] are the links of byShard[shard][i]: an event may be
	// in several shards' lists, so the goroutines only read the events.
	found := make(map[uint32][][]correlate.Link, len(shards))
	for _, shard := range shards {
		found[shard] = make([][]correlate.Link, len(byShard[shard]))
	}
	failures := s.planner.each(ctx, shards, c, func(ctx context.Context, r ShardReader, shard uint32) error {
		out := found[shard]
		for i := 0; i < len(out); i += store.MaxEdgesMany {
			es := byShard[shard][i:min(i+store.MaxEdgesMany, len(out))]
			ids := make([]correlate.EventID, len(es))
			for j, e := range es {
				ids[j] = e.ID
			}
			links, err := r.EdgesMany(ctx, shard, ids)
			if err != nil {
				return err
			}
			if len(links) != len(ids) {
				return fmt.Errorf("rpc: shard %d: EdgesMany answered %d of %d ids", shard, len(links), len(ids))
			}
			copy(out[i:], links)
		}
		return nil
	})
	for _, shard := range shards {
		for i, e := range byShard[shard] { // nil where the shard did not answer
			want, _ := peerLinkType(e)
			for _, lk := range found[shard][i] {
				if lk.Type == want && !slices.Contains(e.Links, lk) {
					e.Links = append(e.Links, lk)
				}
			}
		}
	}
	return failures
}

// eventPtrs returns pointers to the elements of events.
func eventPtrs(events []correlate.Event) []*correlate.Event {
	out := make([]*correlate.Event, len(events))
	for i := range events {
		out[i] = &events[i]
	}
	return out
}
