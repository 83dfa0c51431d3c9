package correlate

import (
	"errors"
	"strconv"
	"testing"
)

func contentEvent() Event {
	return Event{Origin: "app@h", PID: "<0.1.0>", Kind: KindCall, TimestampNs: 1_700_000_000_123_456_789,
		Seq: 7, Module: "m", Function: "f", Arity: 2, CallID: "c", Payload: "[1, 2]", PeerOrigin: "p@h",
		PeerPID: "<0.2.0>", MessageHash: 9, Reason: "r", Attributes: map[string]string{"k": "v", "j": "w"}}
}

func TestContentID(t *testing.T) {
	base := contentEvent()
	id := ContentID(&base)
	if id.IsZero() || id.Time() != 1_700_000_000_123 {
		t.Fatalf("id %s: time %d, want the timestamp's milliseconds", id, id.Time())
	}
	// What Scope sets, and the id itself, do not change it.
	same := contentEvent()
	same.ID, same.Shard, same.Orphan, same.CorrelationID = EventID{1}, 3, true, "x"
	if got := ContentID(&same); got != id {
		t.Fatalf("Scope's fields changed the id: %s, want %s", got, id)
	}
	// Every client field does.
	for name, edit := range map[string]func(*Event){
		"origin": func(e *Event) { e.Origin = "app@i" }, "pid": func(e *Event) { e.PID = "<0.9.0>" },
		"kind": func(e *Event) { e.Kind = KindReturn }, "timestamp": func(e *Event) { e.TimestampNs++ },
		"seq": func(e *Event) { e.Seq++ }, "module": func(e *Event) { e.Module = "n" },
		"function": func(e *Event) { e.Function = "g" }, "arity": func(e *Event) { e.Arity++ },
		"call_id": func(e *Event) { e.CallID = "d" }, "payload": func(e *Event) { e.Payload = "[1, 3]" },
		"peer_origin": func(e *Event) { e.PeerOrigin = "q@h" }, "peer_pid": func(e *Event) { e.PeerPID = "<0.3.0>" },
		"message_hash": func(e *Event) { e.MessageHash++ }, "reason": func(e *Event) { e.Reason = "s" },
		"attribute value": func(e *Event) { e.Attributes["k"] = "x" },
		"attribute added": func(e *Event) { e.Attributes["l"] = "" },
		// Field boundaries are encoded: moving bytes between fields is
		// another event.
		"module/function boundary": func(e *Event) { e.Module, e.Function = "mf", "" },
	} {
		e := contentEvent()
		edit(&e)
		if ContentID(&e) == id {
			t.Errorf("changing %s kept the id", name)
		}
		if SameContent(&e, &base) {
			t.Errorf("changing %s: SameContent still true", name)
		}
	}
	if !SameContent(&same, &base) {
		t.Error("SameContent false for events differing only in Scope's fields")
	}
	neg := contentEvent()
	neg.TimestampNs = -5
	if got := ContentID(&neg); got.Time() != 0 || got.IsZero() {
		t.Errorf("timestamp before 1970: id %s", got)
	}
}

func TestCheckRepeatedIDs(t *testing.T) {
	a, b := contentEvent(), contentEvent()
	a.ID, b.ID = EventID{15: 1}, EventID{15: 2}
	none := contentEvent() // no id: skipped
	if err := CheckRepeatedIDs([]Event{a, none, b, a, none}); err != nil {
		t.Fatalf("the same event twice: %v", err)
	}
	other := b
	other.Payload = "other"
	err := CheckRepeatedIDs([]Event{a, b, other})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Index != 2 || fe.Field != "event_id" || !errors.Is(err, ErrInvalid) {
		t.Fatalf("one id for two events: %v, want a FieldError for event 2's event_id", err)
	}
}

func BenchmarkContentID(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		e := contentEvent()
		e.Payload = string(make([]byte, size))
		b.Run("payload="+strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = ContentID(&e)
			}
		})
	}
}
