package correlate

import (
	"errors"
	"strings"
	"testing"
)

func validCall() Event {
	return Event{Origin: "app@h", PID: "<0.1.0>", Kind: KindCall, TimestampNs: 1, Module: "M", Function: "f"}
}

func TestValidate(t *testing.T) {
	lim := DefaultLimits()
	for _, tc := range []struct {
		name  string
		edit  func(*Event)
		field string
		msg   string
	}{
		{"ok", func(*Event) {}, "", ""},
		{"origin", func(e *Event) { e.Origin = "" }, "origin", "event[2].origin: required"},
		{"pid", func(e *Event) { e.PID = "" }, "pid", "event[2].pid: required"},
		{"kind missing", func(e *Event) { e.Kind = 0 }, "kind", "event[2].kind: required"},
		{"kind unknown", func(e *Event) { e.Kind = 42 }, "kind", `event[2].kind: "Kind(42)": must be one of`},
		{"timestamp", func(e *Event) { e.TimestampNs = 0 }, "timestamp_ns", "required"},
		{"call module", func(e *Event) { e.Module = "" }, "module", "required for CALL"},
		{"call function", func(e *Event) { e.Function = "" }, "function", "required for CALL"},
		{"spawn peer", func(e *Event) { e.Kind = KindSpawn; e.PeerOrigin = "o" }, "peer_pid", "required for SPAWN"},
		{"receive without sender", func(e *Event) { e.Kind = KindReceive }, "", ""},
		{"send to a name", func(e *Event) { e.Kind = KindSend; e.PeerOrigin = "o" }, "", ""},
		{"peer pid without origin", func(e *Event) { e.Kind = KindSend; e.PeerPID = "<0.2.0>" }, "peer_origin", "required when peer_pid"},
		{"utf8", func(e *Event) { e.Payload = "\xff" }, "payload", "valid UTF-8"},
		{"long module", func(e *Event) { e.Module = strings.Repeat("m", 257) }, "module", "257 bytes, at most 256"},
		{"long payload is fine", func(e *Event) { e.Payload = strings.Repeat("p", 1<<20) }, "", ""},
		{"attr count", func(e *Event) {
			e.Attributes = map[string]string{}
			for i := range 33 {
				e.Attributes[strings.Repeat("k", i+1)] = "v"
			}
		}, "attributes", "at most 32"},
		{"attr value", func(e *Event) { e.Attributes = map[string]string{"k": strings.Repeat("v", 1025)} }, "attributes", "value of 1025 bytes"},
		{"attr empty key", func(e *Event) { e.Attributes = map[string]string{"": "v"} }, "attributes", "non-empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := []Event{validCall(), validCall(), validCall()}
			tc.edit(&evs[2])
			err := ValidateEvents(evs, lim)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) || fe.Field != tc.field || fe.Index != 2 ||
				!strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (%#v), want field %s containing %q", err, fe, tc.field, tc.msg)
			}
		})
	}
	e := validCall()
	e.PID = ""
	if err := Validate(&e, lim); err == nil || err.Error() != "event.pid: required" {
		t.Fatalf("Validate: %v", err)
	}
}

func TestNormalize(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxPayloadBytes = 5
	e := Event{Kind: KindSend, Payload: "aéé€", CorrelationID: "x", Orphan: true, Links: []Link{{}}, Shard: 9}
	if !Normalize(&e, lim) {
		t.Fatal("not truncated")
	}
	// "a"(1) "é"(2) "é"(2) = 5 bytes; "€" would split.
	if e.Payload != "aéé" || !e.PayloadTruncated || e.PayloadSize != 8 || e.MessageHash == 0 {
		t.Fatalf("got %+v", e)
	}
	if e.CorrelationID != "" || e.Orphan || e.Links != nil || e.Shard != 0 {
		t.Fatal("scope-set fields not cleared")
	}
	before := e
	if Normalize(&e, lim) || e.Payload != before.Payload || e.PayloadSize != 8 || e.MessageHash != before.MessageHash {
		t.Fatalf("not idempotent: %+v", e)
	}
	// The hash is of the full payload: a message truncated on one side
	// still pairs with its untruncated twin.
	full := Event{Kind: KindReceive, Payload: "aéé€"}
	Normalize(&full, DefaultLimits())
	if full.MessageHash != before.MessageHash {
		t.Fatal("hash depends on truncation")
	}
	cut := truncateUTF8("€€", 4)
	if cut != "€" {
		t.Fatalf("truncateUTF8 = %q", cut)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, shard := range []uint32{3, 16, 31, 1 << 15, 1<<16 - 1} { // a base shard, split children
		if err := DefaultConfig(shard, 16).Validate(); err != nil {
			t.Fatal(err)
		}
	}
	for _, edit := range []func(*Config){
		func(c *Config) { c.Shards = 0 },
		func(c *Config) { c.Shard = 1 << 16 }, // beyond the most doublings
		func(c *Config) { c.Shards = 3; c.Shard = 3 << 14 },
		func(c *Config) { c.Shards = 1<<16 + 1 },
		func(c *Config) { c.MaxPending = 0 },
		func(c *Config) { c.NoticeTTL = -1 },
		func(c *Config) { c.Limits.MaxPayloadBytes = 0 },
	} {
		cfg := DefaultConfig(3, 16)
		edit(&cfg)
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Fatalf("New(%+v) err = %v", cfg, err)
		}
	}
}

// Apply never fails: an event of unknown kind, or with no id, is stored,
// uncorrelated, and counted.
func TestApplyStoresMalformed(t *testing.T) {
	c, _ := New(DefaultConfig(0, 1))
	res := c.Apply(Batch{LogTime: 1, Events: []Event{{Kind: 99, Origin: "o", PID: "p"}, {Kind: KindReturn, Origin: "o", PID: "p"}},
		Notices: []Notice{{Kind: 7, EventID: testID(1, 1)}}})
	if len(res.Events) != 2 || res.Counters.Malformed != 2 || res.Counters.Orphans != 1 || res.Events[0].Shard != 0 {
		t.Fatalf("got %+v", res.Counters)
	}
}

func TestRestoreRejectsCorrupt(t *testing.T) {
	c, _ := New(DefaultConfig(0, 1))
	c.Apply(Batch{LogTime: 1, Events: []Event{{ID: testID(0, 1), Kind: KindCall, Origin: "o", PID: "p", Module: "m", Function: "f"}}})
	snap := c.Snapshot()
	for i := range snap {
		bad := make([]StateRecord, len(snap))
		copy(bad, snap)
		bad[i].Value = bad[i].Value[:len(bad[i].Value)-1]
		if err := c.Restore(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("record %d truncated: err = %v", i, err)
		}
	}
	if err := c.Restore([]StateRecord{{Key: []byte{'Z', 0, 0, 0, 0, 0, 0, 0, 0}, Value: []byte{0x90}}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown tag: err = %v", err)
	}
	if err := c.Restore(snap); err != nil {
		t.Fatal(err)
	}
}
