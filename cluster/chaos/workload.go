package chaos

import (
	"fmt"
	"math/bits"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The workload: conversations between two traced processes, a client P
// and a server Q, each round being
//
//	P CALL client:request/1          (the root of a call tree)
//	P CALL client:ask/1
//	P SEND        → Q
//	Q CALL server:handle/1           (the root of Q's tree)
//	Q RECEIVE     ← P
//	Q SEND        → P
//	Q RETURN or EXCEPTION server:handle/1
//	P RECEIVE     ← Q
//	P RETURN client:ask/1
//	P RETURN client:request/1
//
// so every correlation Scope makes is exercised: returns and exceptions
// to calls, callers to callees, sends to receives across processes, and
// (P and Q hash to shards independently) across shards and origins.
//
// One client goroutine drives a conversation, one event per request, in
// script order, so each process's events arrive in order. The first event
// whose outcome is not a plain "committed" (refused, unknown, or a failed
// request) ends the conversation: both processes are abandoned, as a
// Jepsen client that saw an indeterminate result is replaced by a new one.
// Each process's stored events are therefore a prefix of its script, plus
// possibly the one event whose outcome is unknown — which keeps the
// correlation checks exact (a RETURN whose CALL is missing never happens
// in a process still being driven).

// maxProcessEvents bounds a process's script: its history state is a
// 64-bit set.
const maxProcessEvents = 64

// process is one traced process of the workload. Its script's event i is
// bit i of its history state.
type process struct {
	key         int // index in the workload's process table
	origin, pid string
	events      []*scopev1.Event // the script, ids set
	// treeMask[i], for a root CALL i: the CALL/RETURN/EXCEPTION events of
	// its tree (what CallTree of i reveals once they are stored).
	treeMask map[int]uint64
	// ends[i], for a CALL i: the index of the RETURN/EXCEPTION closing it.
	ends map[int]int
	// parents[i], for a nested CALL i: its caller's CALL.
	parents map[int]int

	conv *conversation

	mu      sync.Mutex
	invoked uint64 // events sent so far (any outcome)
}

// roots returns the root CALLs of p's script, in order.
func (p *process) roots() []int {
	out := make([]int, 0, len(p.treeMask))
	for i := range p.events {
		if _, ok := p.treeMask[i]; ok {
			out = append(out, i)
		}
	}
	return out
}

func (p *process) markInvoked(i int) {
	p.mu.Lock()
	p.invoked |= 1 << i
	p.mu.Unlock()
}

func (p *process) invokedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bits.OnesCount64(p.invoked)
}

// message is a SEND and the RECEIVE of the same message.
type message struct {
	from     *process
	send     int
	to       *process
	received int
}

// step is one event of a conversation's script.
type step struct {
	p *process
	i int
}

// conversation is the script of one client/server pair.
type conversation struct {
	p, q     *process
	steps    []step
	messages []message
	pairs    map[string]string // SEND id → the RECEIVE id of the same message
}

// scriptBuilder builds conversations.
type scriptBuilder struct {
	serial int // process serial, for unique pids
}

// newConversation returns a conversation between two new processes with
// keys pKey and pKey+1. Rounds whose exceptions happen are chosen by
// throw (round index → the server's call ends in an exception).
func (b *scriptBuilder) newConversation(pKey int, throw func(round int) bool) *conversation {
	newProc := func(key int, origin string) *process {
		b.serial++
		return &process{key: key, origin: origin, pid: fmt.Sprintf("<0.%d.0>", b.serial),
			treeMask: make(map[int]uint64), ends: make(map[int]int), parents: make(map[int]int)}
	}
	c := &conversation{p: newProc(pKey, "client@chaos"), q: newProc(pKey+1, "server@chaos"), pairs: make(map[string]string)}
	c.p.conv, c.q.conv = c, c
	add := func(p *process, e *scopev1.Event) int {
		e.EventId = ulid.Make().String()
		e.Origin, e.Pid = p.origin, p.pid
		p.events = append(p.events, e)
		i := len(p.events) - 1
		c.steps = append(c.steps, step{p: p, i: i})
		return i
	}
	call := func(p *process, mod, fun string) *scopev1.Event {
		return &scopev1.Event{Kind: scopev1.Kind_KIND_CALL, Module: mod, Function: fun, Arity: 1}
	}
	ret := func(mod, fun string) *scopev1.Event {
		return &scopev1.Event{Kind: scopev1.Kind_KIND_RETURN, Module: mod, Function: fun, Arity: 1, Payload: "ok"}
	}
	send := func(to *process, hash uint64) *scopev1.Event {
		return &scopev1.Event{Kind: scopev1.Kind_KIND_SEND, PeerOrigin: to.origin, PeerPid: to.pid, MessageHash: hash, Payload: "msg"}
	}
	recv := func(from *process, hash uint64) *scopev1.Event {
		return &scopev1.Event{Kind: scopev1.Kind_KIND_RECEIVE, PeerOrigin: from.origin, PeerPid: from.pid, MessageHash: hash, Payload: "msg"}
	}
	p, q := c.p, c.q
	const pPerRound, qPerRound = 7, 4
	for round := 0; len(p.events)+pPerRound <= maxProcessEvents && len(q.events)+qPerRound <= maxProcessEvents; round++ {
		h1, h2 := uint64(pKey)<<16|uint64(round)<<1|1, uint64(pKey)<<16|uint64(round)<<1|2
		root := add(p, call(p, "client", "request"))
		ask := add(p, call(p, "client", "ask"))
		s1 := add(p, send(q, h1))
		handle := add(q, call(q, "server", "handle"))
		r1 := add(q, recv(p, h1))
		s2 := add(q, send(p, h2))
		var handleEnd int
		if throw(round) {
			handleEnd = add(q, &scopev1.Event{Kind: scopev1.Kind_KIND_EXCEPTION, Module: "server", Function: "handle", Arity: 1, Reason: "badarg"})
		} else {
			handleEnd = add(q, ret("server", "handle"))
		}
		r2 := add(p, recv(q, h2))
		askEnd := add(p, ret("client", "ask"))
		rootEnd := add(p, ret("client", "request"))
		p.ends[root], p.ends[ask], q.ends[handle] = rootEnd, askEnd, handleEnd
		p.parents[ask] = root
		p.treeMask[root] = 1<<root | 1<<ask | 1<<askEnd | 1<<rootEnd
		q.treeMask[handle] = 1<<handle | 1<<handleEnd
		c.messages = append(c.messages, message{from: p, send: s1, to: q, received: r1}, message{from: q, send: s2, to: p, received: r2})
		c.pairs[p.events[s1].GetEventId()] = q.events[r1].GetEventId()
		c.pairs[q.events[s2].GetEventId()] = p.events[r2].GetEventId()
	}
	return c
}

// stamp sets the timestamps of a conversation's events as they are sent:
// wall clock, strictly increasing along the script.
type stamp struct{ last int64 }

func (s *stamp) next() int64 {
	now := time.Now().UnixNano()
	if now <= s.last {
		now = s.last + 1000
	}
	s.last = now
	return now
}
