package store

import (
	"fmt"

	"github.com/elixirscope/scope/correlate"
)

// MessageFlow returns this shard's part of the message flow between
// processes a and b in [fromNs, toNs], in (timestamp, id) order, at most
// limit events:
//
//   - SENDs by a to b and by b to a that are stored here;
//   - RECEIVEs by a or b stored here whose sender is the other process, and
//     RECEIVEs whose sender is unknown (BEAM receive traces carry none) but
//     which were paired with a SEND (they carry a RECEIVED_FROM link).
//
// Every event carries its Links (a RECEIVE's RECEIVED_FROM names its SEND;
// a SEND's DELIVERED_TO is stored on the receiver's shard). The contract
// for the caller (rpc): query the shards of a and of b, merge the pages by
// (timestamp, id), and keep a sender-less RECEIVE only if its RECEIVED_FROM
// target is one of the returned SENDs. More is set when either process's
// scan stopped early; resume by narrowing fromNs past the last event.
func (s *Store) MessageFlow(shard uint32, a, b correlate.Process, fromNs, toNs int64, limit int) (Page, error) {
	if limit < 1 || limit > s.opts.MaxLimit {
		return Page{}, fmt.Errorf("%w: limit %d: must be within [1, %d]", ErrInvalidQuery, limit, s.opts.MaxLimit)
	}
	v, err := s.newView(shard)
	if err != nil {
		return Page{}, err
	}
	defer v.close()
	pa, err := v.flowOf(a, b, fromNs, toNs, limit)
	if err != nil {
		return Page{}, err
	}
	if a == b {
		return pa, nil
	}
	pb, err := v.flowOf(b, a, fromNs, toNs, limit)
	if err != nil {
		return Page{}, err
	}
	out := Page{More: pa.More || pb.More, Scanned: v.scanned}
	i, j := 0, 0
	for len(out.Events) < limit && (i < len(pa.Events) || j < len(pb.Events)) {
		if j == len(pb.Events) || (i < len(pa.Events) && before(&pa.Events[i], &pb.Events[j])) {
			out.Events = append(out.Events, pa.Events[i])
			i++
		} else {
			out.Events = append(out.Events, pb.Events[j])
			j++
		}
	}
	if i < len(pa.Events) || j < len(pb.Events) {
		out.More = true
	}
	if n := len(out.Events); n > 0 {
		out.Next = Position{TimestampNs: out.Events[n-1].TimestampNs, ID: out.Events[n-1].ID}
	}
	return out, nil
}

func before(x, y *correlate.Event) bool {
	if x.TimestampNs != y.TimestampNs {
		return x.TimestampNs < y.TimestampNs
	}
	return x.ID.Compare(y.ID) < 0
}

// flowOf returns p's messages with peer in [fromNs, toNs].
func (v *view) flowOf(p, peer correlate.Process, fromNs, toNs int64, limit int) (Page, error) {
	var page Page
	sp := scanSpec{sec: secProcess, group: processGroup(nil, p), from: fromNs, to: toNs}
	r, err := v.scan(sp, func(b uint64, ts int64, id correlate.EventID, _ []byte) (bool, error) {
		var e correlate.Event
		if ok, err := v.event(b, ts, id, &e); err != nil || !ok {
			if err == nil {
				err = corruptKey(eventKey(nil, v.shard, b, ts, id), "index entry without its event")
			}
			return false, err
		}
		if e.Kind != correlate.KindSend && e.Kind != correlate.KindReceive {
			return false, nil
		}
		links, err := v.links(b, id)
		if err != nil {
			return false, err
		}
		e.Links = links
		switch {
		case e.Peer() == peer:
		case e.Kind == correlate.KindReceive && e.PeerOrigin == "" && e.PeerPID == "" && hasLink(&e, correlate.LinkReceivedFrom):
		default:
			return false, nil
		}
		page.Events = append(page.Events, e)
		return len(page.Events) == limit, nil
	})
	page.More = r.more
	return page, err
}

func hasLink(e *correlate.Event, t correlate.LinkType) bool {
	for _, l := range e.Links {
		if l.Type == t {
			return true
		}
	}
	return false
}
