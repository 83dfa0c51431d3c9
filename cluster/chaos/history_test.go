package chaos

import (
	"math"
	"math/bits"
	"testing"
	"time"
)

// The model must accept every linearizable history and reject the stale,
// invented and lost reads the campaign exists to find: a checker that
// accepts everything would make the campaign a test that cannot fail.
func TestProcessModel(t *testing.T) {
	const inf = math.MaxInt64
	ingest := func(bit int, call, ret int64) op {
		return op{in: opInput{kind: opIngest, bit: bit}, call: call, ret: ret}
	}
	read := func(mask uint64, call, ret int64) op {
		return op{in: opInput{kind: opRead}, out: opOutput{mask: mask}, call: call, ret: ret}
	}
	tree := func(root int, found bool, mask uint64, call, ret int64) op {
		return op{in: opInput{kind: opTree, bit: root}, out: opOutput{found: found, mask: mask}, call: call, ret: ret}
	}
	// Root 0's tree holds events 0, 1 and 3 (event 2 is a SEND).
	trees := map[int]uint64{0: 1<<0 | 1<<1 | 1<<3}
	for _, tc := range []struct {
		name string
		ops  []op
		ok   bool
	}{
		{"read after ingest sees it", []op{ingest(0, 0, 10), read(1, 20, 30)}, true},
		{"read concurrent with ingest may miss it", []op{ingest(0, 0, 10), read(0, 5, 30)}, true},
		{"read concurrent with ingest may see it", []op{ingest(0, 0, 10), read(1, 5, 30)}, true},
		{"stale read: after the ack, before the event", []op{ingest(0, 0, 10), read(0, 20, 30)}, false},
		{"read of an event never sent", []op{ingest(0, 0, 10), read(1|1<<5, 20, 30)}, false},
		{"unknown ingest may never take effect", []op{ingest(0, 0, inf), read(0, 20, 30), read(0, 40, 50)}, true},
		{"unknown ingest may take effect late", []op{ingest(0, 0, inf), read(0, 20, 30), read(1, 40, 50)}, true},
		{"an event once seen does not vanish", []op{ingest(0, 0, inf), read(1, 20, 30), read(0, 40, 50)}, false},
		{"reads in order", []op{ingest(0, 0, 10), ingest(1, 11, 20), read(1, 12, 30), read(3, 31, 40)}, true},
		{"a later read sees less", []op{ingest(0, 0, 10), ingest(1, 11, 20), read(3, 21, 30), read(1, 31, 40)}, false},
		{"tree of a missing root is not found", []op{tree(0, false, 0, 0, 10)}, true},
		{"tree of a stored root is found", []op{ingest(0, 0, 10), tree(0, false, 0, 20, 30)}, false},
		{"tree shows its stored frames", []op{ingest(0, 0, 10), ingest(1, 11, 20), ingest(2, 21, 30), tree(0, true, 1|1<<1, 31, 40)}, true},
		{"tree shows events outside the tree", []op{ingest(0, 0, 10), ingest(2, 21, 30), tree(0, true, 1|1<<2, 31, 40)}, false},
		{"tree misses an acknowledged frame", []op{ingest(0, 0, 10), ingest(1, 11, 20), tree(0, true, 1, 31, 40)}, false},
		{"tree and read agree", []op{ingest(0, 0, 10), ingest(1, 5, inf), tree(0, true, 3, 31, 40), read(1, 41, 50)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &history{start: time.Now()}
			for _, o := range tc.ops {
				h.add(o)
			}
			procs := []*process{{key: 0, origin: "a@h", pid: "<0.1.0>", treeMask: trees}}
			res := h.check(procs, "", 10*time.Second)
			if got := len(res.Violations) == 0; got != tc.ok {
				t.Fatalf("linearizable = %v, want %v (%+v)", got, tc.ok, res)
			}
		})
	}
}

// Every conversation's script fits the 64-bit model, closes every call it
// opens, and pairs every SEND with a RECEIVE of the same hash.
func TestConversationScript(t *testing.T) {
	var b scriptBuilder
	for k := range 3 {
		c := b.newConversation(2*k, func(round int) bool { return round%2 == 1 })
		for _, p := range []*process{c.p, c.q} {
			if len(p.events) > maxProcessEvents || len(p.events) == 0 {
				t.Fatalf("process %s has %d events", p.pid, len(p.events))
			}
			depth := 0
			for i, e := range p.events {
				if e.GetEventId() == "" || e.GetOrigin() != p.origin || e.GetPid() != p.pid {
					t.Fatalf("event %d of %s: %+v", i, p.pid, e)
				}
				switch e.GetKind().String() {
				case "KIND_CALL":
					depth++
					if _, ok := p.ends[i]; !ok {
						t.Fatalf("CALL %d of %s never ends", i, p.pid)
					}
				case "KIND_RETURN", "KIND_EXCEPTION":
					depth--
				}
				if depth < 0 {
					t.Fatalf("%s returns more than it calls at %d", p.pid, i)
				}
			}
			if depth != 0 {
				t.Fatalf("%s ends with %d open calls", p.pid, depth)
			}
			for root, mask := range p.treeMask {
				if mask&(1<<root) == 0 || mask&(1<<p.ends[root]) == 0 || bits.OnesCount64(mask)%2 != 0 {
					t.Fatalf("%s: tree of %d: %s", p.pid, root, maskString(mask))
				}
			}
		}
		for _, m := range c.messages {
			s, r := m.from.events[m.send], m.to.events[m.received]
			if s.GetMessageHash() != r.GetMessageHash() || s.GetPeerPid() != m.to.pid || r.GetPeerPid() != m.from.pid {
				t.Fatalf("message %+v / %+v", s, r)
			}
		}
	}
	if c := b.newConversation(0, func(int) bool { return true }); c.q.events[c.q.ends[0]].GetKind().String() != "KIND_EXCEPTION" {
		t.Fatalf("a throwing round does not end in an exception")
	}
}
