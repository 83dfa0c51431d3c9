package correlate

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// refCorrelator is a deliberately simple model of the correlator (doc.go) for one
// shard with no bound ever hit and no expiry: slices scanned linearly, no
// LRU, no state records. The real correlator must agree with it.
type refCorrelator struct {
	stacks map[Process][]refFrame
	first  map[Process]EventID
	sends  []refMsg // pending send notices, arrival order
	recvs  []refMsg // pending receives, arrival order
	spawns []refMsg // pending spawn notices (recv = child)
	seen   map[EventID]bool
}

type refFrame struct {
	id          EventID
	callID      string
	module, fun string
	arity       uint32
	ts          int64
}

type refMsg struct {
	id     EventID
	sender Process
	recv   Process
	hash   uint64
	ts     int64
}

// refFits is the pairing rule of the model: a SEND is not stamped after
// the RECEIVE, with the default clock skew between origins.
func refFits(send, recv refMsg) bool {
	skew := int64(DefaultConfig(0, 1).MaxClockSkew)
	return send.ts <= recv.ts || send.sender.Origin != recv.recv.Origin && send.ts-recv.ts <= skew
}

type triple struct {
	from EventID
	t    LinkType
	to   EventID
}

type refOut struct {
	events []Event // Scope-set fields only
	links  []triple
	closed []ClosedFrame
}

func newRef() *refCorrelator {
	return &refCorrelator{stacks: map[Process][]refFrame{}, first: map[Process]EventID{}, seen: map[EventID]bool{}}
}

func (r *refCorrelator) apply(in []Event, out *refOut) {
	for _, e := range in {
		if r.seen[e.ID] {
			continue
		}
		r.seen[e.ID] = true
		Normalize(&e, DefaultLimits())
		p := e.Process()
		if _, ok := r.first[p]; !ok {
			r.first[p] = e.ID
			for i, s := range r.spawns {
				if s.recv == p {
					out.links = append(out.links, triple{e.ID, LinkSpawnedBy, s.id}, triple{s.id, LinkSpawned, e.ID})
					r.spawns = slices.Delete(r.spawns, i, i+1)
					break
				}
			}
		}
		st := r.stacks[p]
		top := func() (EventID, EventID) {
			if len(st) == 0 {
				return EventID{}, EventID{}
			}
			return st[len(st)-1].id, st[0].id
		}
		var got Event
		got.ID = e.ID
		switch e.Kind {
		case KindCall:
			got.CorrelationID = e.CallID
			if got.CorrelationID == "" {
				got.CorrelationID = e.ID.String()
			}
			got.ParentID, got.RootID = top()
			if len(st) == 0 {
				got.RootID = e.ID
			} else {
				out.links = append(out.links, triple{e.ID, LinkCalledFrom, got.ParentID})
			}
			r.stacks[p] = append(st, refFrame{e.ID, e.CallID, e.Module, e.Function, e.Arity, e.TimestampNs})
		case KindReturn, KindException:
			i := -1
			for j := len(st) - 1; j >= 0; j-- {
				f := st[j]
				var ok bool
				switch {
				case e.CallID != "":
					ok = f.callID == e.CallID
				case e.Module != "" || e.Function != "":
					ok = (e.Module == "" || e.Module == f.module) && (e.Function == "" || e.Function == f.fun) &&
						(e.Arity == 0 || e.Arity == f.arity)
				default:
					ok = j == len(st)-1
				}
				if ok {
					i = j
					break
				}
			}
			if i < 0 {
				got.Orphan = true
				break
			}
			for j := len(st) - 1; j > i; j-- {
				out.closed = append(out.closed, ClosedFrame{Call: st[j].id, Outcome: OutcomeUnwound, EndNs: e.TimestampNs, By: e.ID})
			}
			f := st[i]
			got.CorrelationID = f.callID
			if got.CorrelationID == "" {
				got.CorrelationID = f.id.String()
			}
			got.RootID = st[0].id
			if i > 0 {
				got.ParentID = st[i-1].id
			}
			got.DurationNs = e.TimestampNs - f.ts
			got.Outcome = OutcomeOK
			if e.Kind == KindException {
				got.Outcome = OutcomeException
			}
			out.links = append(out.links, triple{e.ID, LinkCompletes, f.id})
			r.stacks[p] = st[:i]
		case KindExit:
			got.ParentID, got.RootID = top()
			for j := len(st) - 1; j >= 0; j-- {
				out.closed = append(out.closed, ClosedFrame{Call: st[j].id, Outcome: OutcomeProcessExit, EndNs: e.TimestampNs, By: e.ID})
			}
			r.stacks[p] = nil
		case KindSend:
			got.ParentID, got.RootID = top()
			if e.PeerPID == "" {
				break
			}
			m := refMsg{e.ID, p, e.Peer(), e.MessageHash, e.TimestampNs}
			// The first waiting receive (the receiver's order) it fits.
			if i := slices.IndexFunc(r.recvs, func(x refMsg) bool {
				return x.recv == m.recv && x.hash == m.hash && compatible(x.sender, m.sender) && refFits(m, x)
			}); i >= 0 {
				out.links = append(out.links, triple{r.recvs[i].id, LinkReceivedFrom, e.ID}, triple{e.ID, LinkDeliveredTo, r.recvs[i].id})
				r.recvs = slices.Delete(r.recvs, i, i+1)
			} else {
				r.sends = append(r.sends, m)
			}
		case KindReceive:
			got.ParentID, got.RootID = top()
			m := refMsg{e.ID, e.Peer(), p, e.MessageHash, e.TimestampNs}
			// The oldest waiting send by send time that fits it.
			i := -1
			for j, x := range r.sends {
				if x.recv == m.recv && x.hash == m.hash && compatible(x.sender, m.sender) && refFits(x, m) &&
					(i < 0 || x.ts < r.sends[i].ts) {
					i = j
				}
			}
			if i >= 0 {
				out.links = append(out.links, triple{e.ID, LinkReceivedFrom, r.sends[i].id}, triple{r.sends[i].id, LinkDeliveredTo, e.ID})
				r.sends = slices.Delete(r.sends, i, i+1)
			} else {
				r.recvs = append(r.recvs, m)
			}
		case KindSpawn:
			got.ParentID, got.RootID = top()
			child := e.Peer()
			if f, ok := r.first[child]; ok {
				out.links = append(out.links, triple{f, LinkSpawnedBy, e.ID}, triple{e.ID, LinkSpawned, f})
			} else {
				r.spawns = append(r.spawns, refMsg{id: e.ID, recv: child})
			}
		case KindStateChange:
			got.ParentID, got.RootID = top()
		}
		out.events = append(out.events, got)
	}
}

// collect gathers the real correlator's output in the reference's shape.
func collect(res Result, out *refOut) {
	for _, e := range res.Events {
		out.events = append(out.events, Event{ID: e.ID, CorrelationID: e.CorrelationID, ParentID: e.ParentID,
			RootID: e.RootID, DurationNs: e.DurationNs, Outcome: e.Outcome, Orphan: e.Orphan})
		for _, l := range e.Links {
			out.links = append(out.links, triple{e.ID, l.Type, l.Target})
		}
	}
	for _, ed := range res.Edges {
		out.links = append(out.links, triple{ed.From, ed.Type, ed.To})
	}
	out.closed = append(out.closed, res.Closed...)
}

func sortTriples(ts []triple) {
	slices.SortFunc(ts, func(a, b triple) int {
		return cmp.Or(bytes.Compare(a.from[:], b.from[:]), cmp.Compare(a.t, b.t), bytes.Compare(a.to[:], b.to[:]))
	})
}

var (
	genProcs = []Process{{"a", "1"}, {"a", "2"}, {"b", "1"}, {"c", "9"}}
	genFuns  = []string{"f", "g", "h"}
)

// genStream draws an adversarial event stream: any kind in any order,
// returns with and without call_id or m/f/a, messages with few distinct
// hashes (so FIFO order matters), spawns of known and unknown children,
// sender-less receives, and occasional repeated ids.
func genStream(t *rapid.T, n int) []Event {
	evs := make([]Event, 0, n)
	calls := 0
	for i := range n {
		p := rapid.SampledFrom(genProcs).Draw(t, "proc")
		e := Event{Origin: p.Origin, PID: p.PID, TimestampNs: int64(1000 + i), ID: testID(0, uint64(i+1))}
		if i > 0 && rapid.IntRange(0, 30).Draw(t, "dup") == 0 {
			e.ID = evs[rapid.IntRange(0, len(evs)-1).Draw(t, "dupOf")].ID
		}
		switch rapid.IntRange(0, 9).Draw(t, "kind") {
		case 0, 1, 2:
			e.Kind = KindCall
			e.Module, e.Function = "M", rapid.SampledFrom(genFuns).Draw(t, "fun")
			e.Arity = uint32(rapid.IntRange(0, 2).Draw(t, "arity"))
			if rapid.Bool().Draw(t, "withCallID") {
				calls++
				e.CallID = fmt.Sprintf("c%d", calls)
			}
		case 3, 4:
			e.Kind = rapid.SampledFrom([]Kind{KindReturn, KindReturn, KindException}).Draw(t, "ret")
			switch rapid.IntRange(0, 3).Draw(t, "retShape") {
			case 0:
				e.CallID = fmt.Sprintf("c%d", rapid.IntRange(1, calls+1).Draw(t, "cid"))
			case 1:
				e.Module, e.Function = "M", rapid.SampledFrom(genFuns).Draw(t, "fun")
				e.Arity = uint32(rapid.IntRange(0, 2).Draw(t, "arity"))
			}
		case 5:
			e.Kind = KindSend
			if rapid.IntRange(0, 5).Draw(t, "named") > 0 {
				peer := rapid.SampledFrom(genProcs).Draw(t, "peer")
				e.PeerOrigin, e.PeerPID = peer.Origin, peer.PID
			}
			e.MessageHash = uint64(rapid.IntRange(1, 3).Draw(t, "hash"))
		case 6:
			e.Kind = KindReceive
			if rapid.Bool().Draw(t, "hasSender") {
				peer := rapid.SampledFrom(genProcs).Draw(t, "peer")
				e.PeerOrigin, e.PeerPID = peer.Origin, peer.PID
			}
			e.MessageHash = uint64(rapid.IntRange(1, 3).Draw(t, "hash"))
		case 7:
			e.Kind = KindSpawn
			child := rapid.SampledFrom(append(genProcs, Process{"new", fmt.Sprint(i)})).Draw(t, "child")
			e.PeerOrigin, e.PeerPID = child.Origin, child.PID
		case 8:
			e.Kind = KindStateChange
		default:
			e.Kind = KindExit
		}
		evs = append(evs, e)
	}
	return evs
}

// genWellNested draws proper call trees per process: every RETURN closes
// the innermost open call, in the three RETURN shapes.
func genWellNested(t *rapid.T, n int) []Event {
	var evs []Event
	stacks := map[Process][]Event{}
	for i := range n {
		p := rapid.SampledFrom(genProcs).Draw(t, "proc")
		e := Event{Origin: p.Origin, PID: p.PID, TimestampNs: int64(1000 + i), ID: testID(0, uint64(i+1))}
		st := stacks[p]
		if len(st) > 0 && rapid.Bool().Draw(t, "ret") {
			c := st[len(st)-1]
			e.Kind = KindReturn
			switch rapid.IntRange(0, 2).Draw(t, "shape") {
			case 0:
				e.CallID = c.CallID
			case 1:
				e.Module, e.Function, e.Arity = c.Module, c.Function, c.Arity
			}
			stacks[p] = st[:len(st)-1]
		} else {
			e.Kind = KindCall
			e.Module, e.Function, e.Arity = "M", rapid.SampledFrom(genFuns).Draw(t, "fun"), 1
			e.CallID = fmt.Sprintf("c%d", i)
			stacks[p] = append(st, e)
		}
		evs = append(evs, e)
	}
	return evs
}

// split cuts evs into batches at drawn points.
func split(t *rapid.T, evs []Event, label string) [][]Event {
	var out [][]Event
	for len(evs) > 0 {
		n := rapid.IntRange(1, len(evs)).Draw(t, label)
		out = append(out, slices.Clone(evs[:n]))
		evs = evs[n:]
	}
	return out
}

func testConfig() Config { return DefaultConfig(0, 1) }

func runReal(t *rapid.T, c *Correlator, batches [][]Event) refOut {
	var out refOut
	for i, b := range batches {
		collect(c.Apply(Batch{LogTime: int64(i), Events: slices.Clone(b)}), &out)
	}
	return out
}

func compareWithRef(t *rapid.T, evs []Event) {
	c, _ := New(testConfig())
	got := runReal(t, c, split(t, evs, "cut"))
	var want refOut
	newRef().apply(evs, &want)
	if len(got.events) != len(want.events) {
		t.Fatalf("%d events, reference %d", len(got.events), len(want.events))
	}
	for i := range got.events {
		g, w := got.events[i], want.events[i]
		if g.ID != w.ID || g.CorrelationID != w.CorrelationID || g.ParentID != w.ParentID || g.RootID != w.RootID ||
			g.DurationNs != w.DurationNs || g.Outcome != w.Outcome || g.Orphan != w.Orphan {
			t.Fatalf("event %d (%s):\n got %+v\nwant %+v", i, name(g.ID), g, w)
		}
	}
	sortTriples(got.links)
	sortTriples(want.links)
	if !slices.Equal(got.links, want.links) {
		t.Fatalf("links differ:\n got %v\nwant %v", got.links, want.links)
	}
	if !slices.Equal(got.closed, want.closed) {
		t.Fatalf("closed frames differ:\n got %v\nwant %v", got.closed, want.closed)
	}
}

func TestMatchesReferenceAdversarial(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		compareWithRef(t, genStream(t, rapid.IntRange(20, 150).Draw(t, "n")))
	})
}

func TestMatchesReferenceWellNested(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		evs := genWellNested(t, rapid.IntRange(20, 150).Draw(t, "n"))
		compareWithRef(t, evs)
		c, _ := New(testConfig())
		for _, o := range runReal(t, c, [][]Event{evs}).events {
			if o.Orphan {
				t.Fatalf("well-nested stream produced orphan %s", name(o.ID))
			}
		}
	})
}

// encodeResult is a byte-exact rendering of everything in a Result.
func encodeResult(r Result) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, r.Index)
	for i := range r.Events {
		b = AppendEvent(b, &r.Events[i])
	}
	for i := range r.Edges {
		b = AppendEdge(b, &r.Edges[i])
	}
	for i := range r.Outbox {
		b = AppendNotice(b, &r.Outbox[i])
	}
	for _, f := range r.Closed {
		b = append(b, f.Call[:]...)
		b = append(b, byte(f.Outcome))
		b = binary.BigEndian.AppendUint64(b, uint64(f.EndNs))
		b = append(b, f.By[:]...)
		b = append(b, byte(f.Reason))
	}
	for _, s := range r.State {
		b = appendBin(appendBin(b, s.Key), s.Value)
		b = appendBool(b, s.Value == nil)
	}
	for _, f := range counterFields(&r.Counters) {
		b = binary.BigEndian.AppendUint64(b, *f)
	}
	return b
}

func snapBytes(rs []StateRecord, skipDedup bool) []byte {
	var b []byte
	for _, r := range rs {
		if skipDedup && r.Key[0] == tagDedup {
			continue
		}
		b = appendBin(appendBin(b, r.Key), r.Value)
	}
	return b
}

// smallConfig makes bounds and TTLs small enough to be hit by short streams.
func smallConfig(t *rapid.T) Config {
	cfg := DefaultConfig(0, rapid.SampledFrom([]uint32{1, 2, 3}).Draw(t, "shards"))
	cfg.MaxStackDepth = rapid.IntRange(1, 4).Draw(t, "stack")
	cfg.MaxProcesses = rapid.IntRange(1, 5).Draw(t, "procs")
	cfg.MaxPending = rapid.IntRange(1, 4).Draw(t, "pending")
	cfg.Limits.MaxNameBytes = 8 // the names drawn are shorter; this lets a small byte bound validate
	cfg.MaxPendingBytes = rapid.IntRange(pendingEntryBytes+32, 5*pendingEntryBytes).Draw(t, "pendingBytes")
	cfg.MaxOutboxBytes = rapid.IntRange(pendingEntryBytes+32, 5*pendingEntryBytes).Draw(t, "outboxBytes")
	cfg.MaxOutbox = rapid.IntRange(1, 4).Draw(t, "outbox")
	cfg.DedupWindow = rapid.IntRange(1, 20).Draw(t, "dedup")
	cfg.DedupTTL, cfg.NoticeTTL, cfg.ProcessTTL, cfg.OutboxTTL = 7, 5, 11, 9
	return cfg
}

// Two correlators fed the same batches produce byte-identical results and
// snapshots, and a correlator restored from a snapshot taken at any point
// continues exactly as the uninterrupted one; the persisted records always
// equal the snapshot. Small bounds and TTLs make every eviction path run.
func TestDeterminismAndRestore(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := smallConfig(t)
		evs := genStream(t, rapid.IntRange(10, 100).Draw(t, "n"))
		batches := split(t, evs, "cut")
		at := rapid.IntRange(0, len(batches)).Draw(t, "restoreAt")
		a, _ := New(cfg)
		b, _ := New(cfg)
		kv := map[string][]byte{}
		logTime := int64(0)
		for i, evs := range batches {
			logTime += int64(rapid.IntRange(0, 4).Draw(t, "tick"))
			if i == at {
				c, _ := New(cfg)
				if err := c.Restore(b.Snapshot()); err != nil {
					t.Fatal(err)
				}
				b = c
			}
			batch := Batch{Index: uint64(i), LogTime: logTime}
			if out := a.Outbox(); len(out) > 0 && rapid.Bool().Draw(t, "ack") {
				batch.Acked = []EventID{out[0].EventID}
			}
			batch.Notices = drawNotices(t)
			rb := batch
			batch.Events, rb.Events = slices.Clone(evs), slices.Clone(evs)
			before := a.Outbox()
			ra, rr := a.Apply(batch), b.Apply(rb)
			// Every notice that entered the outbox is announced in Result.Outbox.
			for _, n := range a.Outbox() {
				if !slices.Contains(before, n) && !slices.Contains(ra.Outbox, n) {
					t.Fatalf("batch %d: outbox gained %v without Result.Outbox", i, n)
				}
			}
			if !bytes.Equal(encodeResult(ra), encodeResult(rr)) {
				t.Fatalf("batch %d: results differ", i)
			}
			persist(kv, ra.State)
			checkPersisted(t, kv, a)
			checkBounds(t, a)
		}
		if !bytes.Equal(snapBytes(a.Snapshot(), false), snapBytes(b.Snapshot(), false)) {
			t.Fatal("snapshots differ")
		}
		if !slices.Equal(a.Outbox(), b.Outbox()) || a.Totals() != b.Totals() {
			t.Fatal("outbox or totals differ")
		}
	})
}

func drawNotices(t *rapid.T) []Notice {
	var ns []Notice
	for range rapid.IntRange(0, 2).Draw(t, "notices") {
		k := rapid.SampledFrom([]NoticeKind{NoticeSend, NoticeSpawn}).Draw(t, "nkind")
		ns = append(ns, Notice{Kind: k, EventID: testID(1, uint64(rapid.IntRange(1, 8).Draw(t, "nid"))),
			Sender: rapid.SampledFrom(genProcs).Draw(t, "from"), Receiver: rapid.SampledFrom(genProcs).Draw(t, "to"),
			MessageHash: uint64(rapid.IntRange(1, 3).Draw(t, "hash"))})
	}
	return ns
}

// Splitting a stream into batches differently (same log time) gives the
// same correlation and the same final state, apart from the dedup chunks,
// which are per batch by design.
func TestBatchSplitInvariance(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		evs := genStream(t, rapid.IntRange(10, 100).Draw(t, "n"))
		c1, _ := New(testConfig())
		c2, _ := New(testConfig())
		var o1, o2 refOut
		for _, b := range split(t, evs, "cut1") {
			collect(c1.Apply(Batch{LogTime: 5, Events: b}), &o1)
		}
		for _, b := range split(t, evs, "cut2") {
			collect(c2.Apply(Batch{LogTime: 5, Events: b}), &o2)
		}
		sortTriples(o1.links)
		sortTriples(o2.links)
		if !slices.EqualFunc(o1.events, o2.events, func(a, b Event) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) ||
			!slices.Equal(o1.links, o2.links) || !slices.Equal(o1.closed, o2.closed) {
			t.Fatal("output depends on batch boundaries")
		}
		if !bytes.Equal(snapBytes(c1.Snapshot(), true), snapBytes(c2.Snapshot(), true)) {
			t.Fatal("state depends on batch boundaries")
		}
	})
}

func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, uint8(1))
	f.Add([]byte{0, 0, 0, 3, 3, 3, 5, 6, 6, 5, 7, 7, 1, 2}, uint8(3))
	f.Fuzz(func(t *testing.T, prog []byte, shards uint8) {
		cfg := DefaultConfig(0, uint32(shards%4)+1)
		cfg.MaxStackDepth, cfg.MaxProcesses, cfg.MaxPending, cfg.MaxOutbox, cfg.DedupWindow = 3, 3, 3, 3, 5
		cfg.NoticeTTL, cfg.DedupTTL, cfg.ProcessTTL, cfg.OutboxTTL = 3, 4, 5, 6
		a, _ := New(cfg)
		kv := map[string][]byte{}
		var batch Batch
		for i, op := range prog {
			p := genProcs[int(op>>4)%len(genProcs)]
			q := genProcs[int(op>>6)%len(genProcs)]
			e := Event{ID: testID(0, uint64(i%7+int(op&1)*7)), Origin: p.Origin, PID: p.PID, Kind: Kind(op % 10),
				TimestampNs: int64(i), Module: "M", Function: genFuns[int(op)%3], MessageHash: uint64(op % 3),
				PeerOrigin: q.Origin, PeerPID: q.PID, Seq: uint64(op % 5)}
			if op%4 == 0 {
				e.Module, e.Function = "", ""
			}
			batch.Events = append(batch.Events, e)
			if op%5 == 0 || i == len(prog)-1 {
				batch.LogTime = int64(i)
				batch.Notices = []Notice{{Kind: NoticeKind(op % 3), EventID: testID(2, uint64(op%4)), Sender: q, Receiver: p, MessageHash: uint64(op % 3)}}
				if out := a.Outbox(); len(out) > 0 {
					batch.Acked = []EventID{out[len(out)-1].EventID}
				}
				persist(kv, a.Apply(batch).State)
				checkPersisted(t, kv, a)
				batch = Batch{}
			}
		}
		b, _ := New(cfg)
		if err := b.Restore(a.Snapshot()); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(snapBytes(a.Snapshot(), false), snapBytes(b.Snapshot(), false)) {
			t.Fatal("restore is not exact")
		}
	})
}

// checkBounds fails if any table exceeds its configured bound.
func checkBounds(t *rapid.T, c *Correlator) {
	cfg := c.cfg
	for _, b := range []struct {
		what     string
		n, bound int
	}{
		{"processes", c.procs.len(), cfg.MaxProcesses},
		{"lru log", len(c.lru.q) - c.lru.head, 2*c.procs.len() + 1024},
		{"send notices", c.sends.order.n, cfg.MaxPending},
		{"receives", c.recvs.order.n, cfg.MaxPending},
		{"spawn notices", c.spawns.order.n, cfg.MaxPending},
		{"outbox", c.outbox.order.n, cfg.MaxOutbox},
		{"dedup ids", c.dedup.ids.n, cfg.DedupWindow},
		{"interned", len(c.interned), cfg.MaxInterned},
	} {
		if b.n > b.bound {
			t.Fatalf("%s: %d entries, bound %d", b.what, b.n, b.bound)
		}
	}
	for _, tab := range []*pendingTable{&c.sends, &c.recvs, &c.spawns} {
		sum := 0
		for p := tab.order.head; p != nil; p = p.lk.next {
			sum += pendingSize(&p.n)
		}
		if sum != tab.bytes || sum > cfg.MaxPendingBytes {
			t.Fatalf("pending table %c: %d bytes held, %d charged, bound %d", tab.tag, sum, tab.bytes, cfg.MaxPendingBytes)
		}
	}
	sum := 0
	for e := c.outbox.order.head; e != nil; e = e.lk.next {
		sum += pendingSize(&e.n)
	}
	if sum != c.outbox.bytes || sum > cfg.MaxOutboxBytes {
		t.Fatalf("outbox: %d bytes held, %d charged, bound %d", sum, c.outbox.bytes, cfg.MaxOutboxBytes)
	}
	for _, p := range c.procs.appendAll(nil) {
		if len(p.frames) > cfg.MaxStackDepth {
			t.Fatalf("stack of %s: depth %d, bound %d", p.key, len(p.frames), cfg.MaxStackDepth)
		}
	}
}
