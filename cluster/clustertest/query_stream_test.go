package clustertest

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// stream is a deterministic workload of traced processes: nested calls,
// returns, exceptions, messages between processes (mostly on different
// shards), spawns, state changes and exits. Every event carries a
// client-chosen, time-ordered id, so the same stream stored under any
// topology has the same ids and the answers can be compared exactly.
type stream struct {
	events []*scopev1.Event
	// procs lists every process that emitted an event, in first-seen order.
	procs []*scopev1.Process
	// sends are the SEND events whose receiver later RECEIVEs them;
	// spawns the SPAWN events whose child later emits events.
	sends, spawns []*scopev1.Event
	// receives lists every RECEIVE, roots every CALL that opens a tree.
	receives, roots []*scopev1.Event
	// crashes are the EXCEPTION events.
	crashes []*scopev1.Event
	first   int64 // first and last timestamps
	last    int64
}

// streamProc is one traced process while the stream is built.
type streamProc struct {
	p       *scopev1.Process
	stack   []*scopev1.Event // open CALLs
	inbox   []*scopev1.Event // SENDs to it, not yet received
	exited  bool
	started bool
}

// eventID makes the id of the n-th event at tsNs: a ULID whose time part is
// the event's millisecond and whose entropy is n, so ids sort like (time, n).
func eventID(tsNs int64, n int) string {
	var id correlate.EventID
	ms := uint64(tsNs / int64(time.Millisecond))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ms)
	copy(id[:6], b[2:])
	binary.BigEndian.PutUint64(id[8:], uint64(n))
	return id.String()
}

// buildStream makes a stream of about n events from seed. Timestamps start
// at 1 s and advance 0–2 µs per event, so many events share a timestamp
// (order then falls to the id).
func buildStream(seed uint64, n int) *stream {
	rng := rand.New(rand.NewPCG(seed, seed^0x5c0fe))
	s := &stream{}
	var procs []*streamProc
	newProc := func(origin string) *streamProc {
		p := &streamProc{p: &scopev1.Process{Origin: origin, Pid: fmt.Sprintf("<0.%d.0>", 100+len(procs))}}
		procs = append(procs, p)
		return p
	}
	for i := range 8 {
		origin := "app@host"
		if i%4 == 3 {
			origin = "db@host"
		}
		newProc(origin)
	}
	modules := []string{"gen_server", "worker", "repo"}
	functions := []string{"handle_call", "run", "fetch", "encode"}
	ts := int64(time.Second)
	emit := func(p *streamProc, e *scopev1.Event) *scopev1.Event {
		e.Origin, e.Pid, e.TimestampNs = p.p.Origin, p.p.Pid, ts
		e.EventId = eventID(ts, len(s.events))
		if !p.started {
			p.started = true
			s.procs = append(s.procs, p.p)
		}
		s.events = append(s.events, e)
		ts += int64(rng.IntN(3)) * 1000
		return e
	}
	for len(s.events) < n {
		live := procs[:0:0]
		for _, p := range procs {
			if !p.exited {
				live = append(live, p)
			}
		}
		p := live[rng.IntN(len(live))]
		switch r := rng.IntN(100); {
		case len(p.inbox) > 0 && r < 30:
			send := p.inbox[0]
			p.inbox = p.inbox[1:]
			recv := &scopev1.Event{Kind: scopev1.Kind_KIND_RECEIVE, Payload: send.GetPayload()}
			if rng.IntN(2) == 0 { // BEAM's receive trace names no sender
				recv.PeerOrigin, recv.PeerPid = send.GetOrigin(), send.GetPid()
			}
			s.receives = append(s.receives, emit(p, recv))
		case r < 40 && len(p.stack) < 5:
			call := emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_CALL, Module: modules[rng.IntN(len(modules))],
				Function: functions[rng.IntN(len(functions))], Arity: uint32(rng.IntN(3)),
				Payload: fmt.Sprintf("[%d]", len(s.events))})
			if len(p.stack) == 0 {
				s.roots = append(s.roots, call)
			}
			p.stack = append(p.stack, call)
		case r < 62 && len(p.stack) > 0:
			call := p.stack[len(p.stack)-1]
			p.stack = p.stack[:len(p.stack)-1]
			end := &scopev1.Event{Kind: scopev1.Kind_KIND_RETURN, Module: call.GetModule(),
				Function: call.GetFunction(), Arity: call.GetArity(), Payload: ":ok"}
			if rng.IntN(8) == 0 {
				end.Kind, end.Payload, end.Reason = scopev1.Kind_KIND_EXCEPTION, "", "badarg"
				s.crashes = append(s.crashes, emit(p, end))
			} else {
				emit(p, end)
			}
		case r < 78:
			to := procs[rng.IntN(len(procs))]
			if to == p || to.exited {
				continue
			}
			send := emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_SEND, PeerOrigin: to.p.Origin,
				PeerPid: to.p.Pid, Payload: fmt.Sprintf("{msg,%d}", len(s.events))})
			to.inbox = append(to.inbox, send)
			s.sends = append(s.sends, send)
		case r < 84 && len(procs) < 16:
			child := newProc(p.p.Origin)
			s.spawns = append(s.spawns, emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_SPAWN,
				PeerOrigin: child.p.Origin, PeerPid: child.p.Pid}))
			// The child runs at once, so every spawn has a first event.
			emit(child, &scopev1.Event{Kind: scopev1.Kind_KIND_STATE_CHANGE, Payload: "init"})
		case r < 94:
			emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_STATE_CHANGE, Payload: fmt.Sprintf("%%{n: %d}", len(s.events))})
		case r < 96 && len(live) > 6 && len(p.inbox) == 0:
			emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_EXIT, Reason: "normal"})
			p.exited, p.stack = true, nil
		}
	}
	// Deliver what is still in flight, so that every SEND is paired (a
	// process exits only with an empty inbox, and nothing is sent to it
	// after).
	for _, p := range procs {
		for _, send := range p.inbox {
			s.receives = append(s.receives, emit(p, &scopev1.Event{Kind: scopev1.Kind_KIND_RECEIVE, Payload: send.GetPayload()}))
		}
		p.inbox = nil
	}
	s.first, s.last = s.events[0].GetTimestampNs(), s.events[len(s.events)-1].GetTimestampNs()
	return s
}

// ingestStream sends the stream in order, batch events per request,
// rotating over the live nodes (COMMITTED: each batch is applied before
// the next is sent, so every process's events stay in order). A batch
// refused as UNAVAILABLE (a shard between leaders: elections of many
// groups on a loaded machine) is sent again, as a client would: the ids
// are fixed, so a retry never stores an event twice.
func ingestStream(t testing.TB, c *Cluster, s *stream, batch int) {
	t.Helper()
	live := c.Live()
	for i := 0; i < len(s.events); i += batch {
		end := min(i+batch, len(s.events))
		n := live[(i/batch)%len(live)]
		var err error
		WaitFor(t, fmt.Sprintf("events %d..%d ingested via %s", i, end, n.Name), 60*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err = n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: s.events[i:end]}))
			if err != nil && Code(err) != connect.CodeUnavailable {
				t.Fatalf("ingest events %d..%d via %s: %v", i, end, n.Name, err)
			}
			return err == nil
		})
	}
}

// hasLink reports whether e has a link of type typ.
func hasLink(e *scopev1.Event, typ scopev1.LinkType) bool {
	for _, l := range e.GetLinks() {
		if l.GetType() == typ {
			return true
		}
	}
	return false
}

// waitPaired waits until every SEND is delivered to its RECEIVE and every
// SPAWN is linked to its child: the cross-shard notices have been applied.
func waitPaired(t testing.TB, n *Node, s *stream) {
	t.Helper()
	check := func(evs []*scopev1.Event, typ scopev1.LinkType) func() bool {
		next := 0
		return func() bool {
			for ; next < len(evs); next++ {
				resp, err := n.Query.GetEvent(context.Background(), connect.NewRequest(&scopev1.GetEventRequest{
					EventId: evs[next].GetEventId()}))
				if err != nil || !hasLink(resp.Msg.GetEvent(), typ) {
					return false
				}
			}
			return true
		}
	}
	WaitFor(t, "sends delivered to their receives", 60*time.Second, check(s.sends, scopev1.LinkType_LINK_TYPE_DELIVERED_TO))
	WaitFor(t, "spawns linked to their children", 60*time.Second, check(s.spawns, scopev1.LinkType_LINK_TYPE_SPAWNED))
}
