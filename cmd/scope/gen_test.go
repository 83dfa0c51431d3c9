package main

import (
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// TestGeneratorEventsAreValidAndCorrelate runs generated events through
// correlate.Validate and a one-shard correlator (delivering its own outbox
// back to it, as a node would): every event must be valid, every RETURN
// and EXCEPTION must close a frame, every RECEIVE must pair with its SEND,
// and the mix must be the advertised one.
func TestGeneratorEventsAreValidAndCorrelate(t *testing.T) {
	const total = 40_000
	g, err := newGenerator(genConfig{Seed: 7, Procs: 50, Part: 1, Origins: 3, MaxDepth: 6, StartNs: 1_700_000_000_000_000_000})
	if err != nil {
		t.Fatal(err)
	}
	corr, err := correlate.New(correlate.DefaultConfig(0, 1))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[correlate.Kind]int{}
	ids := map[correlate.EventID]bool{}
	var totals correlate.Counters
	var notices []correlate.Notice
	var acked []correlate.EventID
	for index := uint64(1); index*500 <= total; index++ {
		events := g.next(nil, 500)
		if len(events) != 500 {
			t.Fatalf("next(500) gave %d events", len(events))
		}
		for i := range events {
			e := &events[i]
			if err := correlate.Validate(e, correlate.DefaultLimits()); err != nil {
				t.Fatalf("event %d (%s) invalid: %v", i, e.Kind, err)
			}
			if ids[e.ID] {
				t.Fatalf("duplicate event id %s", e.ID)
			}
			ids[e.ID] = true
			kinds[e.Kind]++
		}
		res := corr.Apply(correlate.Batch{Index: index, LogTime: events[len(events)-1].TimestampNs,
			Events: events, Notices: notices, Acked: acked})
		totals.Add(res.Counters)
		notices, acked = res.Outbox, nil
		for _, n := range res.Outbox {
			acked = append(acked, n.EventID)
		}
	}
	if totals.Orphans != 0 || totals.OutOfOrder != 0 || totals.Duplicates != 0 || totals.StackOverflows != 0 {
		t.Errorf("correlator counters: %+v", totals)
	}
	if totals.Matched != uint64(kinds[correlate.KindReceive]) {
		t.Errorf("matched %d receives of %d", totals.Matched, kinds[correlate.KindReceive])
	}
	// Every SEND but the last few (whose RECEIVE is still owed) has one.
	if d := kinds[correlate.KindSend] - kinds[correlate.KindReceive]; d < 0 || d > 1 {
		t.Errorf("%d sends, %d receives", kinds[correlate.KindSend], kinds[correlate.KindReceive])
	}
	share := func(ks ...correlate.Kind) float64 {
		n := 0
		for _, k := range ks {
			n += kinds[k]
		}
		return float64(n) / total
	}
	for _, c := range []struct {
		name     string
		got      float64
		min, max float64
	}{
		{"CALL", share(correlate.KindCall), 0.37, 0.45},
		{"RETURN+EXCEPTION", share(correlate.KindReturn, correlate.KindException), 0.37, 0.45},
		{"SEND+RECEIVE", share(correlate.KindSend, correlate.KindReceive), 0.12, 0.18},
		{"SPAWN+EXIT+STATE_CHANGE", share(correlate.KindSpawn, correlate.KindExit, correlate.KindStateChange), 0.02, 0.07},
		{"EXCEPTION", share(correlate.KindException), 0.002, 0.03},
	} {
		if c.got < c.min || c.got > c.max {
			t.Errorf("%s share %.3f, want %.3f..%.3f", c.name, c.got, c.min, c.max)
		}
	}
}

// TestGeneratorDeterministic: the same seed and part give the same events;
// different parts own different processes.
func TestGeneratorDeterministic(t *testing.T) {
	cfg := genConfig{Seed: 3, Procs: 10, Origins: 2, MaxDepth: 4, StartNs: 1}
	a, _ := newGenerator(cfg)
	b, _ := newGenerator(cfg)
	cfg.Part = 1
	c, _ := newGenerator(cfg)
	ea, eb, ec := a.next(nil, 1000), b.next(nil, 1000), c.next(nil, 1000)
	pids := map[string]bool{}
	for i := range ea {
		if ea[i].ID != eb[i].ID || ea[i].PID != eb[i].PID || ea[i].Kind != eb[i].Kind {
			t.Fatalf("event %d differs between equal generators", i)
		}
		pids[ea[i].PID] = true
	}
	for i := range ec {
		if pids[ec[i].PID] {
			t.Fatalf("part 1 emitted pid %s of part 0", ec[i].PID)
		}
	}
}

func TestGeneratorConfigErrors(t *testing.T) {
	for _, cfg := range []genConfig{
		{Procs: 1, Origins: 1, MaxDepth: 1, StartNs: 1},
		{Procs: 2, Origins: 0, MaxDepth: 1, StartNs: 1},
		{Procs: 2, Origins: 1, MaxDepth: 0, StartNs: 1},
		{Procs: 2, Origins: 1, MaxDepth: 1, StartNs: 0},
	} {
		if _, err := newGenerator(cfg); err == nil {
			t.Errorf("newGenerator(%+v) accepted", cfg)
		}
	}
}

func TestGeneratorPadsPayloads(t *testing.T) {
	g, err := newGenerator(genConfig{Seed: 3, Procs: 10, Origins: 2, MaxDepth: 4, StartNs: 1, PayloadBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range g.next(nil, 500) {
		if len(e.Payload) != 200 {
			t.Fatalf("event %d (%v): payload of %d bytes, want 200", i, e.Kind, len(e.Payload))
		}
	}
	if _, err := newGenerator(genConfig{Procs: 2, Origins: 1, MaxDepth: 1, StartNs: 1, PayloadBytes: -1}); err == nil {
		t.Error("negative PayloadBytes accepted")
	}
}
