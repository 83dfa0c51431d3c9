package correlate

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// This file checks message pairing against time order over real OTP
// traces (testdata/erlang) whose message hashes are made to collide, fed to
// the correlator in random interleavings that keep each process's own
// order, as different tracers, batches and shards deliver them.
//
// The reference is the pairing of time order: per (receiver, hash), each
// RECEIVE in the receiver's order takes the oldest unpaired SEND (by send
// time) that fits it (not stamped after it; across origins, up to the clock
// skew later). The correlator cannot reproduce it for every interleaving:
// links are written once, and when two colliding messages were in flight
// together, a RECEIVE that arrives with only the younger SEND present
// cannot know that an older one is still on its way (sends s1 < s2 <
// receive r1 < r2, arriving s2, r1, s1, r2: any online pairing without
// revision links r1 with s2). Both pairings are then consistent with the
// trace: the receiver's mailbox could have got either message first. So
// the property is:
//
//   - every pairing is causal: no RECEIVE is linked with a SEND that does
//     not fit it, and every event is paired at most once;
//   - as many pairs as time order (the pending tables never hold a
//     RECEIVE and a SEND that fit each other);
//   - for every (receiver, hash) where time order is unambiguous (no
//     RECEIVE ever had two fitting sends to choose from), exactly the
//     pairing of time order, whatever the interleaving.

type pairKey struct {
	recv Process
	hash uint64
}

// timeOrder returns the reference pairing (receive → send) and the keys
// where some receive had more than one fitting send to choose from.
func timeOrder(evs []Event, skew time.Duration) (map[EventID]EventID, map[pairKey]bool) {
	traced := map[Process]bool{}
	for i := range evs {
		traced[evs[i].Process()] = true
	}
	type msg struct {
		e    *Event
		used bool
	}
	sends := map[pairKey][]*msg{}
	var recvs []*Event
	for i := range evs {
		e := &evs[i]
		switch {
		case e.Kind == KindSend && e.PeerPID != "" && traced[e.Peer()]:
			k := pairKey{e.Peer(), e.MessageHash}
			sends[k] = append(sends[k], &msg{e: e})
		case e.Kind == KindReceive:
			recvs = append(recvs, e)
		}
	}
	// Receives in time order; the receiver's own order among equal stamps
	// (a stable sort of the trace, which is in each process's order).
	slices.SortStableFunc(recvs, func(a, b *Event) int { return int(min(max(a.TimestampNs-b.TimestampNs, -1), 1)) })
	pairs, ambiguous := map[EventID]EventID{}, map[pairKey]bool{}
	for _, r := range recvs {
		k := pairKey{r.Process(), r.MessageHash}
		var best *msg
		fitting := 0
		for _, s := range sends[k] {
			if s.used || !fitsTime(s.e, r, skew) {
				continue
			}
			fitting++
			if best == nil || s.e.TimestampNs < best.e.TimestampNs {
				best = s
			}
		}
		if fitting > 1 {
			ambiguous[k] = true
		}
		if best != nil {
			best.used = true
			pairs[r.ID] = best.e.ID
		}
	}
	return pairs, ambiguous
}

func fitsTime(send, recv *Event, skew time.Duration) bool {
	return send.TimestampNs <= recv.TimestampNs ||
		send.Origin != recv.Origin && send.TimestampNs-recv.TimestampNs <= int64(skew)
}

// interleave returns evs in a random order that keeps each process's
// events in their order: either a random merge of the processes' streams,
// or each process's stream delayed by its own latency (a tracer or a shard
// that lags), ordered by stamp plus latency.
func interleave(t *rapid.T, evs []Event) []Event {
	rng := rand.New(rand.NewPCG(rapid.Uint64().Draw(t, "seed"), 1))
	byProc := map[Process][]Event{}
	var procs []Process
	for _, e := range evs {
		p := e.Process()
		if byProc[p] == nil {
			procs = append(procs, p)
		}
		byProc[p] = append(byProc[p], e)
	}
	out := make([]Event, 0, len(evs))
	if rapid.Bool().Draw(t, "merge") {
		for len(procs) > 0 {
			i := rng.IntN(len(procs))
			q := byProc[procs[i]]
			out = append(out, q[0])
			if byProc[procs[i]] = q[1:]; len(q) == 1 {
				procs = slices.Delete(procs, i, i+1)
			}
		}
		return out
	}
	span := evs[len(evs)-1].TimestampNs - evs[0].TimestampNs + 1
	lag := map[Process]int64{}
	for _, p := range procs {
		lag[p] = rng.Int64N(span)
	}
	out = append(out, evs...)
	slices.SortStableFunc(out, func(a, b Event) int {
		x, y := a.TimestampNs+lag[a.Process()], b.TimestampNs+lag[b.Process()]
		return int(min(max(x-y, -1), 1))
	})
	// Stamps are not strictly increasing within a process; restore each
	// process's order in the positions its events took.
	next := map[Process]int{}
	for i := range out {
		p := out[i].Process()
		out[i] = byProc[p][next[p]]
		next[p]++
	}
	return out
}

// collide rewrites a trace so that messages collide: every hash is taken
// modulo mod (1: every message to a receiver collides), and, when origins
// is 2, processes are spread over two origins (pids with an odd number on
// a second one), so that pairing crosses clocks.
func collide(evs []Event, mod uint64, origins int) []Event {
	out := slices.Clone(evs)
	move := func(origin, pid string) string {
		var a, b, c int
		if origins == 2 && pid != "" {
			if _, err := fmt.Sscanf(pid, "<%d.%d.%d>", &a, &b, &c); err == nil && b%2 == 1 {
				return origin + ".b"
			}
		}
		return origin
	}
	for i := range out {
		e := &out[i]
		if e.MessageHash != 0 {
			e.MessageHash %= mod
			if e.MessageHash == 0 {
				e.MessageHash = mod // 0 means "hash the payload"
			}
		}
		e.Origin = move(e.Origin, e.PID)
		if e.PeerPID != "" {
			e.PeerOrigin = move(e.PeerOrigin, e.PeerPID)
		}
	}
	return out
}

// feed applies evs (in arrival order) in batches of drawn sizes to shards
// correlators, delivering each batch's outbox notices a drawn number of
// rounds later, and returns every RECEIVED_FROM and DELIVERED_TO link.
func feed(t *rapid.T, evs []Event, shards uint32, skew time.Duration) (recvFrom, delivTo map[EventID][]EventID, matched uint64) {
	cors := make([]*Correlator, shards)
	for s := range cors {
		cfg := DefaultConfig(uint32(s), shards)
		cfg.MaxClockSkew = skew
		cfg.DedupWindow = 4096 // holds every id of a run; the default table costs more to clear than the run
		cors[s], _ = New(cfg)
	}
	recvFrom, delivTo = map[EventID][]EventID{}, map[EventID][]EventID{}
	add := func(res Result) {
		for _, e := range res.Events {
			for _, l := range e.Links {
				switch l.Type {
				case LinkReceivedFrom:
					recvFrom[e.ID] = append(recvFrom[e.ID], l.Target)
				case LinkDeliveredTo:
					delivTo[e.ID] = append(delivTo[e.ID], l.Target)
				}
			}
		}
		for _, ed := range res.Edges {
			switch ed.Type {
			case LinkReceivedFrom:
				recvFrom[ed.From] = append(recvFrom[ed.From], ed.To)
			case LinkDeliveredTo:
				delivTo[ed.From] = append(delivTo[ed.From], ed.To)
			}
		}
		matched += res.Counters.Matched
	}
	var logTime int64
	inFlight := map[int][]Notice{} // round → notices delivered then
	deliver := func(ns []Notice) {
		byDest := make([][]Notice, shards)
		acks := make([][]EventID, shards)
		for _, n := range ns {
			byDest[n.ToShard] = append(byDest[n.ToShard], n)
			acks[n.FromShard] = append(acks[n.FromShard], n.EventID)
		}
		for s := range cors {
			if len(byDest[s]) > 0 {
				add(cors[s].Apply(Batch{LogTime: logTime, Notices: byDest[s]}))
			}
			if len(acks[s]) > 0 {
				add(cors[s].Apply(Batch{LogTime: logTime, Acked: acks[s]}))
			}
		}
	}
	round := 0
	for len(evs) > 0 {
		n := min(len(evs), rapid.IntRange(1, 128).Draw(t, "batch"))
		per := make([][]Event, shards)
		for _, e := range evs[:n] {
			logTime = max(logTime, e.TimestampNs)
			s := ShardOf(e.Origin, e.PID, shards)
			per[s] = append(per[s], e)
		}
		evs = evs[n:]
		for s, b := range per {
			if len(b) > 0 {
				res := cors[s].Apply(Batch{LogTime: logTime, Events: b})
				add(res)
				if len(res.Outbox) > 0 {
					at := round + rapid.IntRange(0, 3).Draw(t, "delay")
					inFlight[at] = append(inFlight[at], res.Outbox...)
				}
			}
		}
		deliver(inFlight[round])
		delete(inFlight, round)
		round++
	}
	for r := range round + 4 {
		deliver(inFlight[r])
	}
	return recvFrom, delivTo, matched
}

func TestPairingFollowsTimeOrder(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "erlang", "*.jsonl"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures in testdata/erlang (%v)", err)
	}
	traces := make([][]Event, len(paths))
	for i, p := range paths {
		traces[i] = loadErlang(t, p)
	}
	var checked, exactKeys, ambiguousKeys int
	rapid.Check(t, func(t *rapid.T) {
		tr := traces[rapid.IntRange(0, len(traces)-1).Draw(t, "trace")]
		tr = tr[:rapid.IntRange(min(200, len(tr)), min(1000, len(tr))).Draw(t, "prefix")] // bounded: fast under -race
		skew := rapid.SampledFrom([]time.Duration{0, time.Microsecond, 100 * time.Millisecond}).Draw(t, "skew")
		evs := collide(tr, rapid.SampledFrom([]uint64{1, 2, 3, 1 << 32}).Draw(t, "mod"),
			rapid.IntRange(1, 2).Draw(t, "origins"))
		want, ambiguous := timeOrder(evs, skew)
		arrival := interleave(t, evs)
		shards := rapid.SampledFrom([]uint32{1, 4}).Draw(t, "shards")
		recvFrom, delivTo, matched := feed(t, arrival, shards, skew)

		byID := map[EventID]*Event{}
		for i := range evs {
			byID[evs[i].ID] = &evs[i]
		}
		for r, ss := range recvFrom {
			if len(ss) != 1 {
				t.Fatalf("receive %s received from %d sends", name(r), len(ss))
			}
			if back := delivTo[ss[0]]; len(back) != 1 || back[0] != r {
				t.Fatalf("receive %s received from %s, which was delivered to %v", name(r), name(ss[0]), back)
			}
			s, rv := byID[ss[0]], byID[r]
			if !fitsTime(s, rv, skew) {
				t.Fatalf("receive %s at %d paired with send %s at %d, from its future", name(r), rv.TimestampNs, name(s.ID), s.TimestampNs)
			}
		}
		if len(delivTo) != len(recvFrom) || matched != uint64(len(recvFrom)) {
			t.Fatalf("%d receives paired, %d sends delivered, %d matched", len(recvFrom), len(delivTo), matched)
		}
		if len(recvFrom) != len(want) {
			t.Fatalf("%d pairs, time order has %d", len(recvFrom), len(want))
		}
		for i := range evs {
			r := &evs[i]
			if r.Kind != KindReceive || ambiguous[pairKey{r.Process(), r.MessageHash}] {
				continue
			}
			got := EventID{}
			if ss := recvFrom[r.ID]; len(ss) == 1 {
				got = ss[0]
			}
			if got != want[r.ID] {
				t.Fatalf("receive %s (%q at %d) paired with %s, time order pairs it with %s",
					name(r.ID), r.Payload, r.TimestampNs, name(got), name(want[r.ID]))
			}
		}
		checked++
		keys := map[pairKey]bool{}
		for i := range evs {
			if evs[i].Kind == KindReceive {
				keys[pairKey{evs[i].Process(), evs[i].MessageHash}] = true
			}
		}
		ambiguousKeys += len(ambiguous)
		exactKeys += len(keys) - len(ambiguous)
	})
	t.Logf("%d interleavings: %d (receiver, hash) keys held to time order exactly, %d ambiguous keys held to causality and count",
		checked, exactKeys, ambiguousKeys)
}
