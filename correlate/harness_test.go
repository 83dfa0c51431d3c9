package correlate

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// This file drives the scenario files in testdata/ (cockroachdb/datadriven;
// regenerate expected output with `go test ./correlate -run Scenarios -rewrite`).
//
// Commands:
//
//	new [name=c] [shard=0] [shards=1] [max-stack=N] [max-procs=N] [max-pending=N]
//	    [max-outbox=N] [dedup=N] [dedup-ttl=N] [notice-ttl=N] [proc-ttl=N] [outbox-ttl=N]
//	    [payload=N] [attrs=N] [skew=N]              (TTLs in ns of log time, skew in ns)
//	apply [on=c] [time=T]        one batch; input lines are events, "notice ..." or "ack eN"
//	deliver from=a to=b [time=T] a's outbox notices for b's shard → b; then b's ack → a
//	state [on=c]                 processes, pending tables, outbox
//	restart [on=c]               snapshot → new correlator → restore
//
// Event line: KIND origin/pid id=N ts=N [seq=N] [m=M] [f=F] [a=N] [cid=S] [peer=o/p]
// [hash=N] [payload=S] [reason=S] [attr=k:v]... ; KIND is the lower-case kind name.
// Notice line: notice send|spawn id=N from=o/p to=o/p [hash=N] [ts=N].
// Ids are written eN: event id with time 0 and entropy N.
//
// After every batch the harness checks that the persisted state (every
// Result.State record applied to a key-value map) equals Snapshot(),
// byte for byte, so each scenario also tests incremental persistence.

type scenario struct {
	t    *testing.T
	cors map[string]*Correlator
	kv   map[string]map[string][]byte // per correlator: persisted state
}

func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if filepath.Ext(path) != ".txt" { // skip rapid/fuzz failure files
			t.Skip()
		}
		s := &scenario{t: t, cors: map[string]*Correlator{}, kv: map[string]map[string][]byte{}}
		datadriven.RunTest(t, path, s.run)
	})
}

func (s *scenario) arg(d *datadriven.TestData, key, def string) string {
	for _, a := range d.CmdArgs {
		if a.Key == key {
			return strings.Join(a.Vals, ",")
		}
	}
	return def
}

func (s *scenario) num(d *datadriven.TestData, key string, def int64) int64 {
	v, err := strconv.ParseInt(s.arg(d, key, strconv.FormatInt(def, 10)), 10, 64)
	if err != nil {
		d.Fatalf(s.t, "%s: %v", key, err)
	}
	return v
}

func (s *scenario) run(t *testing.T, d *datadriven.TestData) string {
	name := s.arg(d, "on", s.arg(d, "name", "c"))
	switch d.Cmd {
	case "new":
		cfg := DefaultConfig(uint32(s.num(d, "shard", 0)), uint32(s.num(d, "shards", 1)))
		for _, o := range []struct {
			key string
			dst *int
		}{{"max-stack", &cfg.MaxStackDepth}, {"max-procs", &cfg.MaxProcesses}, {"max-pending", &cfg.MaxPending},
			{"max-outbox", &cfg.MaxOutbox}, {"dedup", &cfg.DedupWindow}, {"payload", &cfg.Limits.MaxPayloadBytes},
			{"attrs", &cfg.Limits.MaxAttributes}} {
			*o.dst = int(s.num(d, o.key, int64(*o.dst)))
		}
		for _, o := range []struct {
			key string
			dst *time.Duration
		}{{"dedup-ttl", &cfg.DedupTTL}, {"notice-ttl", &cfg.NoticeTTL}, {"proc-ttl", &cfg.ProcessTTL},
			{"outbox-ttl", &cfg.OutboxTTL}, {"skew", &cfg.MaxClockSkew}} {
			*o.dst = time.Duration(s.num(d, o.key, int64(*o.dst)))
		}
		c, err := New(cfg)
		if err != nil {
			return err.Error()
		}
		s.cors[name], s.kv[name] = c, map[string][]byte{}
		return ""
	case "apply":
		b := Batch{LogTime: s.num(d, "time", 0)}
		for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
			if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			s.parseLine(d, line, &b)
		}
		return s.apply(name, b)
	case "deliver":
		from, to := s.cors[s.arg(d, "from", "")], s.arg(d, "to", "")
		dst := s.cors[to]
		b := Batch{LogTime: s.num(d, "time", 0)}
		var acks Batch
		acks.LogTime = b.LogTime
		for _, n := range from.Outbox() {
			if n.ToShard == dst.cfg.Shard {
				b.Notices = append(b.Notices, n)
				acks.Acked = append(acks.Acked, n.EventID)
			}
		}
		out := to + ":\n" + s.apply(to, b)
		return out + s.arg(d, "from", "") + ":\n" + s.apply(s.arg(d, "from", ""), acks)
	case "state":
		return dumpState(s.cors[name])
	case "restart":
		old := s.cors[name]
		snap := old.Snapshot()
		c, _ := New(old.cfg)
		if err := c.Restore(snap); err != nil {
			return err.Error()
		}
		if !recordsEqual(snap, c.Snapshot()) {
			t.Fatalf("snapshot after restore differs")
		}
		s.cors[name] = c
		return fmt.Sprintf("restored %d records\n", len(snap))
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

func parseProc(v string) Process {
	o, p, _ := strings.Cut(v, "/")
	return Process{Origin: o, PID: p}
}

func parseID(t *testing.T, v string) EventID {
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "e"), 10, 64)
	if err != nil {
		t.Fatalf("bad id %q", v)
	}
	return testID(0, n)
}

func (s *scenario) parseLine(d *datadriven.TestData, line string, b *Batch) {
	f := strings.Fields(line)
	kv := map[string]string{}
	var attrs []string
	for _, x := range f[2:] {
		k, v, _ := strings.Cut(x, "=")
		if k == "attr" {
			attrs = append(attrs, v)
			continue
		}
		kv[k] = v
	}
	u := func(k string) uint64 {
		if kv[k] == "" {
			return 0
		}
		n, err := strconv.ParseUint(kv[k], 10, 64)
		if err != nil {
			d.Fatalf(s.t, "%s: %v", line, err)
		}
		return n
	}
	switch f[0] {
	case "ack":
		b.Acked = append(b.Acked, parseID(s.t, f[1]))
		return
	case "notice":
		n := Notice{Kind: NoticeSend, EventID: parseID(s.t, kv["id"]), Sender: parseProc(kv["from"]),
			Receiver: parseProc(kv["to"]), MessageHash: u("hash"), TimestampNs: int64(u("ts"))}
		if f[1] == "spawn" {
			n.Kind = NoticeSpawn
		}
		b.Notices = append(b.Notices, n)
		return
	}
	k, ok := ParseKind(strings.ToUpper(f[0]))
	if !ok {
		d.Fatalf(s.t, "unknown kind in %q", line)
	}
	p, peer := parseProc(f[1]), parseProc(kv["peer"])
	e := Event{Kind: k, Origin: p.Origin, PID: p.PID, TimestampNs: int64(u("ts")), Seq: u("seq"),
		Module: kv["m"], Function: kv["f"], Arity: uint32(u("a")), CallID: kv["cid"], Payload: kv["payload"],
		PeerOrigin: peer.Origin, PeerPID: peer.PID, MessageHash: u("hash"), Reason: kv["reason"]}
	if kv["id"] != "" {
		e.ID = parseID(s.t, kv["id"])
	}
	for _, a := range attrs {
		if e.Attributes == nil {
			e.Attributes = map[string]string{}
		}
		k, v, _ := strings.Cut(a, ":")
		e.Attributes[k] = v
	}
	b.Events = append(b.Events, e)
}

func (s *scenario) apply(name string, b Batch) string {
	c := s.cors[name]
	res := c.Apply(b)
	persist(s.kv[name], res.State)
	checkPersisted(s.t, s.kv[name], c)
	return formatResult(res)
}

// persist applies state records to a key-value map, as the store does.
func persist(kv map[string][]byte, recs []StateRecord) {
	for _, r := range recs {
		if r.Value == nil {
			delete(kv, string(r.Key))
		} else {
			kv[string(r.Key)] = bytes.Clone(r.Value)
		}
	}
}

func kvRecords(kv map[string][]byte) []StateRecord {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]StateRecord, len(keys))
	for i, k := range keys {
		out[i] = StateRecord{Key: []byte(k), Value: kv[k]}
	}
	return out
}

func recordsEqual(a, b []StateRecord) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Key, b[i].Key) || !bytes.Equal(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

// checkPersisted fails unless the persisted records equal the snapshot.
func checkPersisted(t interface{ Fatalf(string, ...any) }, kv map[string][]byte, c *Correlator) {
	snap, got := c.Snapshot(), kvRecords(kv)
	if !recordsEqual(snap, got) {
		t.Fatalf("persisted state differs from snapshot:\npersisted %s\nsnapshot  %s", keyList(got), keyList(snap))
	}
}

func keyList(rs []StateRecord) string {
	var sb strings.Builder
	for _, r := range rs {
		sb.WriteString(keyName(r.Key) + " ")
	}
	return sb.String()
}

func keyName(k []byte) string {
	if len(k) == 9 {
		return fmt.Sprintf("%c%d", k[0], binaryBE(k[1:]))
	}
	return string(k)
}

func binaryBE(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// name prints a test id as eN; other ids in full.
func name(id EventID) string {
	if id == (EventID{}) {
		return "-"
	}
	if id.Time() == 0 {
		return "e" + strconv.FormatUint(binaryBE(id[8:]), 10)
	}
	return id.String()
}

func corrName(s string) string {
	if id, err := ParseEventID(s); err == nil {
		return name(id)
	}
	return s
}

func formatResult(r Result) string {
	var sb strings.Builder
	for i := range r.Events {
		e := &r.Events[i]
		fmt.Fprintf(&sb, "%s %s %s/%s", name(e.ID), e.Kind, e.Origin, e.PID)
		if e.CorrelationID != "" {
			fmt.Fprintf(&sb, " corr=%s", corrName(e.CorrelationID))
		}
		if e.ParentID != (EventID{}) {
			fmt.Fprintf(&sb, " parent=%s", name(e.ParentID))
		}
		if e.RootID != (EventID{}) {
			fmt.Fprintf(&sb, " root=%s", name(e.RootID))
		}
		for _, l := range e.Links {
			fmt.Fprintf(&sb, " %s:%s", l.Type, name(l.Target))
		}
		if e.Outcome != OutcomeUnspecified {
			fmt.Fprintf(&sb, " %s dur=%d", e.Outcome, e.DurationNs)
		}
		if e.Orphan {
			sb.WriteString(" orphan")
		}
		if e.PayloadTruncated {
			fmt.Fprintf(&sb, " payload=%q size=%d", e.Payload, e.PayloadSize)
		}
		if len(e.Attributes) > 0 {
			keys := make([]string, 0, len(e.Attributes))
			for k := range e.Attributes {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			fmt.Fprintf(&sb, " attrs=%s", strings.Join(keys, ","))
		}
		sb.WriteString("\n")
	}
	for _, e := range r.Edges {
		fmt.Fprintf(&sb, "edge %s %s %s\n", name(e.From), e.Type, name(e.To))
	}
	for _, f := range r.Closed {
		fmt.Fprintf(&sb, "closed %s %s end=%d by=%s", name(f.Call), f.Outcome, f.EndNs, name(f.By))
		if f.Reason != AbandonUnspecified {
			fmt.Fprintf(&sb, " reason=%s", f.Reason)
		}
		sb.WriteString("\n")
	}
	for _, n := range r.Outbox {
		fmt.Fprintf(&sb, "outbox %s\n", formatNotice(n))
	}
	if cs := formatCounters(r.Counters); cs != "" {
		sb.WriteString("counters " + cs + "\n")
	}
	sb.WriteString("state")
	for _, rec := range r.State {
		if rec.Value == nil {
			sb.WriteString(" -" + keyName(rec.Key))
		} else {
			sb.WriteString(" +" + keyName(rec.Key))
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

func formatNotice(n Notice) string {
	k := "send"
	if n.Kind == NoticeSpawn {
		k = "spawn"
	}
	s := fmt.Sprintf("%s %s %s->%s", k, name(n.EventID), n.Sender, n.Receiver)
	if n.Kind == NoticeSend {
		s += fmt.Sprintf(" hash=%d", n.MessageHash)
	}
	return s + fmt.Sprintf(" shard %d->%d", n.FromShard, n.ToShard)
}

var counterNames = []string{"events", "duplicates", "out-of-order", "orphans", "unwound", "exit-closed",
	"matched", "notices", "notices-expired", "receives-expired", "stack-overflows", "process-evictions",
	"pending-evictions", "dedup-evictions", "truncated", "attrs-dropped", "malformed", "processes-expired",
	"outbox-dropped", "spawns-linked", "abandoned-inactivity", "abandoned-process-bound"}

func formatCounters(c Counters) string {
	var parts []string
	for i, f := range counterFields(&c) {
		if *f != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", counterNames[i], *f))
		}
	}
	return strings.Join(parts, " ")
}

func dumpState(c *Correlator) string {
	var sb strings.Builder
	for _, e := range c.lru.q[c.lru.head:] {
		p := e.p
		if p.dead || p.tick != e.tick {
			continue
		}
		fmt.Fprintf(&sb, "proc %s first=%s", p.key, name(p.first))
		if p.overflow > 0 {
			fmt.Fprintf(&sb, " overflow=%d", p.overflow)
		}
		sb.WriteString(" stack=[")
		for i, f := range p.frames {
			if i > 0 {
				sb.WriteString(" ")
			}
			fmt.Fprintf(&sb, "%s:%s.%s/%d", name(f.call), f.module, f.function, f.arity)
		}
		sb.WriteString("]\n")
	}
	for _, t := range []*pendingTable{&c.sends, &c.recvs, &c.spawns} {
		for p := t.order.head; p != nil; p = p.lk.next {
			fmt.Fprintf(&sb, "pending %c %s\n", p.tag, formatNotice(p.n))
		}
	}
	for _, n := range c.Outbox() {
		fmt.Fprintf(&sb, "outbox %s\n", formatNotice(n))
	}
	fmt.Fprintf(&sb, "dedup %d ids, log time %d\n", c.dedup.ids.n, c.logTime)
	return sb.String()
}
