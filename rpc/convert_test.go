package rpc

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"pgregory.net/rapid"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The domain enums are the wire enums by number. Checking names both ways
// catches a value added on one side only, or a renumbering on either.
func TestEnumNumberingMatchesWire(t *testing.T) {
	type domain interface{ String() string }
	cases := []struct {
		name    string
		wire    map[int32]string
		prefix  string
		domain  func(n int32) domain
		unknown string // prefix of String() for an undefined domain value
	}{
		{"Kind", scopev1.Kind_name, "KIND_", func(n int32) domain { return correlate.Kind(n) }, "Kind("},
		{"Outcome", scopev1.Outcome_name, "OUTCOME_", func(n int32) domain { return correlate.Outcome(n) }, "Outcome("},
		{"LinkType", scopev1.LinkType_name, "LINK_TYPE_", func(n int32) domain { return correlate.LinkType(n) }, "LinkType("},
		{"AbandonReason", scopev1.AbandonReason_name, "ABANDON_REASON_",
			func(n int32) domain { return correlate.AbandonReason(n) }, "AbandonReason("},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for n, wireName := range c.wire {
				if got, want := c.domain(n).String(), strings.TrimPrefix(wireName, c.prefix); got != want {
					t.Errorf("wire %s = %d, domain value %d is %s", wireName, n, n, got)
				}
			}
			// Every defined domain value has a wire name: count the domain
			// values up to the first undefined one.
			var defined int
			for n := int32(0); n < 256; n++ {
				if strings.HasPrefix(c.domain(n).String(), c.unknown) {
					break
				}
				defined++
			}
			if defined != len(c.wire) {
				t.Errorf("domain defines %d values, wire %d", defined, len(c.wire))
			}
		})
	}
}

func TestEnumFromProto(t *testing.T) {
	// 257 and 264 would wrap to valid uint8 values (1 and 8) if cast blindly.
	unknown := []int32{-1, 9, 255, 256, 257, 264, math.MaxInt32, math.MinInt32}
	for n, name := range scopev1.Kind_name {
		k, ok := KindFromProto(scopev1.Kind(n))
		if !ok || int32(k) != n || KindToProto(k) != scopev1.Kind(n) {
			t.Errorf("KindFromProto(%s) = %v, %v", name, k, ok)
		}
	}
	for n, name := range scopev1.Outcome_name {
		o, ok := OutcomeFromProto(scopev1.Outcome(n))
		if !ok || int32(o) != n || OutcomeToProto(o) != scopev1.Outcome(n) {
			t.Errorf("OutcomeFromProto(%s) = %v, %v", name, o, ok)
		}
	}
	for n, name := range scopev1.LinkType_name {
		l, ok := LinkTypeFromProto(scopev1.LinkType(n))
		if !ok || int32(l) != n || LinkTypeToProto(l) != scopev1.LinkType(n) {
			t.Errorf("LinkTypeFromProto(%s) = %v, %v", name, l, ok)
		}
	}
	for _, n := range unknown {
		if k, ok := KindFromProto(scopev1.Kind(n)); ok {
			t.Errorf("KindFromProto(%d) = %v, accepted", n, k)
		}
	}
	for _, n := range append(unknown[:1:1], 6, 256, 257, math.MaxInt32) {
		if o, ok := OutcomeFromProto(scopev1.Outcome(n)); ok {
			t.Errorf("OutcomeFromProto(%d) = %v, accepted", n, o)
		}
	}
	for _, n := range append(unknown[:1:1], 8, 256, 257, math.MaxInt32) {
		if l, ok := LinkTypeFromProto(scopev1.LinkType(n)); ok {
			t.Errorf("LinkTypeFromProto(%d) = %v, accepted", n, l)
		}
	}
}

var (
	idA = ulid.MustParseStrict("01JB8Z6Y2K3M4N5P6Q7R8S9T0V")
	idB = ulid.MustParseStrict("01JB8Z6Y2K3M4N5P6Q7R8S9T0W")
	idC = ulid.MustParseStrict("01JB8Z6Y2K3M4N5P6Q7R8S9T0X")
)

// clientEvent has every field a client may give set to a distinct value.
func clientEvent() correlate.Event {
	return correlate.Event{
		ID: idA, Origin: "app1@host", PID: "<0.123.0>", Kind: correlate.KindSend,
		TimestampNs: 1_700_000_000_123_456_789, Seq: 42, Module: "Elixir.Shop.Cart",
		Function: "add_item", Arity: 3, CallID: "c-7", Payload: "{:add, 1}",
		PeerOrigin: "app2@host", PeerPID: "<0.9.0>", MessageHash: math.MaxUint64, Reason: "normal",
		Attributes: map[string]string{"node_role": "web", "ü": "ß"},
	}
}

func clientProto() *scopev1.Event {
	return &scopev1.Event{
		EventId: idA.String(), Origin: "app1@host", Pid: "<0.123.0>", Kind: scopev1.Kind_KIND_SEND,
		TimestampNs: 1_700_000_000_123_456_789, Seq: 42, Module: "Elixir.Shop.Cart",
		Function: "add_item", Arity: 3, CallId: "c-7", Payload: "{:add, 1}",
		PeerOrigin: "app2@host", PeerPid: "<0.9.0>", MessageHash: math.MaxUint64, Reason: "normal",
		Attributes: map[string]string{"node_role": "web", "ü": "ß"},
	}
}

// scopeFields sets every field Scope owns on a copy of p.
func withScopeFields(p *scopev1.Event) *scopev1.Event {
	p = proto.Clone(p).(*scopev1.Event)
	p.CorrelationId = "c-7"
	p.ParentId = idB.String()
	p.RootId = idC.String()
	p.Links = []*scopev1.Link{
		{Type: scopev1.LinkType_LINK_TYPE_CALLED_FROM, TargetEventId: idB.String()},
		{Type: scopev1.LinkType_LINK_TYPE_DELIVERED_TO, TargetEventId: idC.String()},
	}
	p.DurationNs = 1500
	p.Outcome = scopev1.Outcome_OUTCOME_EXCEPTION
	p.Orphan = true
	p.Shard = 15
	p.PayloadTruncated = true
	p.PayloadSize = 9000
	return p
}

func TestEventFromProto(t *testing.T) {
	cases := []struct {
		name  string
		in    *scopev1.Event
		want  correlate.Event
		field string // non-empty: expected FieldError field
	}{
		{name: "all client fields", in: clientProto(), want: clientEvent()},
		{name: "scope fields ignored", in: withScopeFields(clientProto()), want: clientEvent()},
		{name: "nil is an empty event", in: nil, want: correlate.Event{}},
		{name: "empty id stays zero", in: &scopev1.Event{Origin: "o", Pid: "p", Kind: scopev1.Kind_KIND_CALL},
			want: correlate.Event{Origin: "o", PID: "p", Kind: correlate.KindCall}},
		{name: "lower-case id", in: &scopev1.Event{EventId: strings.ToLower(idA.String())}, want: correlate.Event{ID: idA}},
		{name: "unspecified kind converts for validation to name", in: &scopev1.Event{Origin: "o"},
			want: correlate.Event{Origin: "o"}},
		{name: "empty attributes become nil", in: &scopev1.Event{Attributes: map[string]string{}}, want: correlate.Event{}},
		{name: "id not base32", in: &scopev1.Event{EventId: "01JB8Z6Y2K3M4N5P6Q7R8S9TUU"}, field: "event_id"},
		{name: "id too short", in: &scopev1.Event{EventId: "01JB8Z6Y2K3M4N5P6Q7R8S9T0"}, field: "event_id"},
		{name: "id too long", in: &scopev1.Event{EventId: idA.String() + "0"}, field: "event_id"},
		{name: "id overflows 128 bits", in: &scopev1.Event{EventId: "8ZZZZZZZZZZZZZZZZZZZZZZZZZ"}, field: "event_id"},
		{name: "id is a uuid", in: &scopev1.Event{EventId: "3f1c2a9e-7d4b-4c1a-9b2e-5f6a7b8c9d0e"}, field: "event_id"},
		{name: "unknown kind", in: &scopev1.Event{Kind: 9}, field: "kind"},
		{name: "kind that wraps uint8 to CALL", in: &scopev1.Event{Kind: 257}, field: "kind"},
		{name: "negative kind", in: &scopev1.Event{Kind: -1}, field: "kind"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := EventFromProto(c.in)
			if c.field != "" {
				var ce *correlate.FieldError
				if !errors.As(err, &ce) || ce.Field != c.field {
					t.Fatalf("err = %v, want a FieldError on %s", err, c.field)
				}
				if ce.Rule == "" || !strings.Contains(err.Error(), c.field) {
					t.Fatalf("error %q does not name the field and the rule", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !eventsEqual(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestEventFromProtoDoesNotAliasAttributes(t *testing.T) {
	p := clientProto()
	e, err := EventFromProto(p)
	if err != nil {
		t.Fatal(err)
	}
	p.Attributes["node_role"] = "changed"
	if e.Attributes["node_role"] != "web" {
		t.Fatal("domain event shares the wire event's attribute map")
	}
	back := EventToProto(&e)
	e.Attributes["node_role"] = "changed again"
	if back.Attributes["node_role"] != "web" {
		t.Fatal("wire event shares the domain event's attribute map")
	}
}

func TestEventsFromProtoNamesTheIndex(t *testing.T) {
	good := clientProto()
	bad := clientProto()
	bad.EventId = "nope"
	if _, err := EventsFromProto([]*scopev1.Event{good, good, bad, good}); err == nil {
		t.Fatal("accepted a bad event")
	} else {
		var ce *correlate.FieldError
		if !errors.As(err, &ce) || ce.Index != 2 || ce.Field != "event_id" || ce.Value != "nope" {
			t.Fatalf("err = %#v", err)
		}
		if !errors.Is(err, correlate.ErrInvalid) {
			t.Fatalf("err = %v does not wrap correlate.ErrInvalid", err)
		}
		if want := `[2].event_id: "nope"`; !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %q, want it to contain %q", err, want)
		}
	}
	es, err := EventsFromProto([]*scopev1.Event{good, nil})
	if err != nil || len(es) != 2 || !eventsEqual(es[0], clientEvent()) || !eventsEqual(es[1], correlate.Event{}) {
		t.Fatalf("EventsFromProto = %+v, %v", es, err)
	}
}

func TestFieldErrorClipsValue(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes, two per rune
	_, err := EventFromProto(&scopev1.Event{EventId: long})
	var ce *correlate.FieldError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	if len(ce.Value) > maxErrorValue+len("…") || !strings.HasSuffix(ce.Value, "…") {
		t.Fatalf("value not clipped: %d bytes", len(ce.Value))
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(ce.Value, "…")) {
		t.Fatalf("clipped value %q splits a rune", ce.Value)
	}
}

func TestEventToProto(t *testing.T) {
	full := clientEvent()
	full.CorrelationID = "c-7"
	full.ParentID = idB
	full.RootID = idC
	full.Links = []correlate.Link{{Type: correlate.LinkCalledFrom, Target: idB}, {Type: correlate.LinkDeliveredTo, Target: idC}}
	full.DurationNs = 1500
	full.Outcome = correlate.OutcomeException
	full.Orphan = true
	full.Shard = 15
	full.PayloadTruncated = true
	full.PayloadSize = 9000

	cases := []struct {
		name string
		in   correlate.Event
		want *scopev1.Event
	}{
		{"every field", full, withScopeFields(clientProto())},
		{"zero event", correlate.Event{}, &scopev1.Event{}},
		{"zero ids print empty", correlate.Event{Kind: correlate.KindReturn, Links: []correlate.Link{{Type: correlate.LinkCompletes}}},
			&scopev1.Event{Kind: scopev1.Kind_KIND_RETURN, Links: []*scopev1.Link{{Type: scopev1.LinkType_LINK_TYPE_COMPLETES}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := EventToProto(&c.in); !proto.Equal(got, c.want) {
				t.Fatalf("got  %v\nwant %v", got, c.want)
			}
		})
	}
	batch := EventsToProto([]correlate.Event{full, {}})
	if len(batch) != 2 || !proto.Equal(batch[0], cases[0].want) || !proto.Equal(batch[1], cases[1].want) {
		t.Fatalf("EventsToProto = %v", batch)
	}
}

// The JSON a client posts (the docs/API.md example) decodes and converts.
func TestEventFromConnectJSON(t *testing.T) {
	const body = `{"events":[{"eventId":"01JB8Z6Y2K3M4N5P6Q7R8S9T0V","origin":"app1@host","pid":"<0.123.0>",
		"kind":"KIND_CALL","timestampNs":"1700000000123456789","module":"Elixir.Shop.Cart","function":"add_item",
		"arity":3,"payload":"[cart, 1, 2]","attributes":{"node_role":"web"}},
		{"origin":"app1@host","pid":"<0.123.0>","kind":"KIND_RETURN","timestampNs":1700000000123999999,"seq":"2"}],
		"durability":"DURABILITY_COMMITTED"}`
	var req scopev1.IngestRequest
	if err := protojson.Unmarshal([]byte(body), &req); err != nil {
		t.Fatal(err)
	}
	es, err := EventsFromProto(req.GetEvents())
	if err != nil {
		t.Fatal(err)
	}
	want := []correlate.Event{
		{ID: idA, Origin: "app1@host", PID: "<0.123.0>", Kind: correlate.KindCall, TimestampNs: 1700000000123456789,
			Module: "Elixir.Shop.Cart", Function: "add_item", Arity: 3, Payload: "[cart, 1, 2]",
			Attributes: map[string]string{"node_role": "web"}},
		{Origin: "app1@host", PID: "<0.123.0>", Kind: correlate.KindReturn, TimestampNs: 1700000000123999999, Seq: 2},
	}
	for i := range want {
		if !eventsEqual(es[i], want[i]) {
			t.Errorf("event %d: got %+v, want %+v", i, es[i], want[i])
		}
	}
}

// Property: any client event survives domain → wire → domain, and any
// client-only wire event survives wire → domain → wire.
func TestRoundTripProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := drawClientEvent(t)
		back, err := EventFromProto(EventToProto(&e))
		if err != nil {
			t.Fatal(err)
		}
		if !eventsEqual(back, e) {
			t.Fatalf("domain round trip:\n got  %+v\n want %+v", back, e)
		}
		p := EventToProto(&e)
		again, err := EventFromProto(p)
		if err != nil {
			t.Fatal(err)
		}
		if p2 := EventToProto(&again); !proto.Equal(p2, p) {
			t.Fatalf("wire round trip:\n got  %v\n want %v", p2, p)
		}
	})
}

func drawClientEvent(t *rapid.T) correlate.Event {
	var id correlate.EventID
	if rapid.Bool().Draw(t, "hasID") {
		copy(id[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "id"))
	}
	attrs := rapid.MapOfN(rapid.String(), rapid.String(), 0, 4).Draw(t, "attributes")
	if len(attrs) == 0 {
		attrs = nil // the conversion normalises empty maps to nil
	}
	e := correlate.Event{
		ID:          id,
		Origin:      rapid.String().Draw(t, "origin"),
		PID:         rapid.String().Draw(t, "pid"),
		Kind:        correlate.Kind(rapid.IntRange(0, 8).Draw(t, "kind")),
		TimestampNs: rapid.Int64().Draw(t, "ts"),
		Seq:         rapid.Uint64().Draw(t, "seq"),
		Module:      rapid.String().Draw(t, "module"),
		Function:    rapid.String().Draw(t, "function"),
		Arity:       rapid.Uint32().Draw(t, "arity"),
		CallID:      rapid.String().Draw(t, "callID"),
		Payload:     rapid.String().Draw(t, "payload"),
		PeerOrigin:  rapid.String().Draw(t, "peerOrigin"),
		PeerPID:     rapid.String().Draw(t, "peerPID"),
		MessageHash: rapid.Uint64().Draw(t, "hash"),
		Reason:      rapid.String().Draw(t, "reason"),
		Attributes:  attrs,
	}
	if e.PeerPID != "" && e.PeerOrigin == "" {
		e.PeerOrigin = e.Origin // what the API makes of a peer given by pid alone
	}
	return e
}

// eventsEqual compares events deeply, treating nil and empty attribute
// maps and link slices alike.
func eventsEqual(a, b correlate.Event) bool {
	return reflect.DeepEqual(normalise(a), normalise(b))
}

func normalise(e correlate.Event) correlate.Event {
	if len(e.Attributes) == 0 {
		e.Attributes = nil
	}
	if len(e.Links) == 0 {
		e.Links = nil
	}
	return e
}

func BenchmarkConvert(b *testing.B) {
	full := clientEvent()
	full.ParentID, full.RootID = idB, idC
	full.Links = []correlate.Link{{Type: correlate.LinkCalledFrom, Target: idB}}
	wire := clientProto()
	b.Run("dir=to_proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = EventToProto(&full)
		}
	})
	b.Run("dir=from_proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := EventFromProto(wire); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Every request body in docs/API.md (`-d '...'` of curl and grpcurl) must
// be a valid JSON request for the method it is sent to, so that the guide
// cannot drift from the proto file.
func TestAPIDocExamplesAreValidRequests(t *testing.T) {
	doc, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	// A body, then (lazily) the next method path: both curl's URL and
	// grpcurl's trailing argument end in scope.v1.<Service>/<Method>.
	re := regexp.MustCompile(`(?s)-d '([^']*)'.*?(scope\.v1\.\w+)/(\w+)`)
	matches := re.FindAllStringSubmatch(string(doc), -1)
	if len(matches) < 8 {
		t.Fatalf("found %d request examples in docs/API.md, expected at least 8", len(matches))
	}
	for _, m := range matches {
		body, service, method := m[1], m[2], m[3]
		t.Run(service+"/"+method, func(t *testing.T) {
			d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
			if err != nil {
				t.Fatalf("unknown service: %v", err)
			}
			sd, ok := d.(protoreflect.ServiceDescriptor)
			if !ok {
				t.Fatalf("%s is not a service", service)
			}
			md := sd.Methods().ByName(protoreflect.Name(method))
			if md == nil {
				t.Fatalf("%s has no method %s", service, method)
			}
			mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			if err != nil {
				t.Fatal(err)
			}
			msg := mt.New().Interface()
			if err := protojson.Unmarshal([]byte(body), msg); err != nil {
				t.Fatalf("body is not a valid %s: %v\n%s", md.Input().FullName(), err, body)
			}
			if req, ok := msg.(*scopev1.IngestRequest); ok {
				if _, err := EventsFromProto(req.GetEvents()); err != nil {
					t.Fatalf("events do not convert: %v", err)
				}
			}
		})
	}
}

// The architecture contract fixes these names and numbers (external clients
// rely on them). buf breaking guards changes against git history; this test
// guards them in every `go test` run, against the contract itself.
func TestFixedWireContract(t *testing.T) {
	fixed := map[string]string{
		"Kind": "KIND_UNSPECIFIED=0 KIND_CALL=1 KIND_RETURN=2 KIND_EXCEPTION=3 KIND_SEND=4 KIND_RECEIVE=5 " +
			"KIND_SPAWN=6 KIND_EXIT=7 KIND_STATE_CHANGE=8",
		"Outcome": "OUTCOME_UNSPECIFIED=0 OUTCOME_OK=1 OUTCOME_EXCEPTION=2 OUTCOME_UNWOUND=3 OUTCOME_PROCESS_EXIT=4",
		"LinkType": "LINK_TYPE_UNSPECIFIED=0 LINK_TYPE_CALLED_FROM=1 LINK_TYPE_COMPLETES=2 LINK_TYPE_RECEIVED_FROM=3 " +
			"LINK_TYPE_DELIVERED_TO=4 LINK_TYPE_SPAWNED=5 LINK_TYPE_SPAWNED_BY=6",
		"Durability": "DURABILITY_UNSPECIFIED=0 DURABILITY_COMMITTED=1 DURABILITY_ACCEPTED=2",
		"Event": "event_id=1 origin=2 pid=3 kind=4 timestamp_ns=5 seq=6 module=7 function=8 arity=9 call_id=10 " +
			"payload=11 peer_origin=12 peer_pid=13 message_hash=14 reason=15 attributes=16 correlation_id=20 " +
			"parent_id=21 root_id=22 links=23 duration_ns=24 outcome=25 orphan=26 shard=27 payload_truncated=28 " +
			"payload_size=29",
		"Link":           "type=1 target_event_id=2",
		"IngestRequest":  "events=1 durability=2",
		"IngestResponse": "event_ids=1 accepted=2 refused=3",
		"EventsRequest": "origin=1 pid=2 kinds=3 module=4 function=5 arity=6 from_ns=7 to_ns=8 correlation_id=9 " +
			"root_id=10 descending=11 limit=12 cursor=13 allow_partial=14",
		"EventsResponse": "events=1 next_cursor=2 missing_shards=3",
	}
	file := scopev1.File_scope_v1_scope_proto
	if file.Package() != "scope.v1" {
		t.Fatalf("package %s", file.Package())
	}
	for name, pairs := range fixed {
		for _, pair := range strings.Fields(pairs) {
			field, num, _ := strings.Cut(pair, "=")
			if e := file.Enums().ByName(protoreflect.Name(name)); e != nil {
				v := e.Values().ByName(protoreflect.Name(field))
				if v == nil || fmt.Sprint(v.Number()) != num {
					t.Errorf("enum %s: %s is %v, contract says %s", name, field, v, num)
				}
				continue
			}
			m := file.Messages().ByName(protoreflect.Name(name))
			if m == nil {
				t.Fatalf("no message or enum %s", name)
			}
			f := m.Fields().ByName(protoreflect.Name(field))
			if f == nil || fmt.Sprint(f.Number()) != num {
				t.Errorf("message %s: field %s is %v, contract says %s", name, field, f, num)
			}
		}
	}
	// The few type details the contract fixes beyond names and numbers.
	ev := file.Messages().ByName("Event").Fields()
	if !ev.ByName("attributes").IsMap() || ev.ByName("links").Cardinality() != protoreflect.Repeated ||
		ev.ByName("message_hash").Kind() != protoreflect.Uint64Kind || ev.ByName("timestamp_ns").Kind() != protoreflect.Int64Kind {
		t.Error("Event field types differ from the contract")
	}
	if !file.Messages().ByName("EventsRequest").Fields().ByName("arity").HasPresence() {
		t.Error("EventsRequest.arity must be optional (explicit presence)")
	}
	for svc, methods := range map[string]string{
		"IngestService":  "Ingest IngestStream",
		"QueryService":   "GetEvent Events CallTree CallStackAt MessageFlow StateAt Trace Tail Stats",
		"ClusterService": "Members Shards Join Leave",
	} {
		sd := file.Services().ByName(protoreflect.Name(svc))
		if sd == nil {
			t.Fatalf("no service %s", svc)
		}
		for _, m := range strings.Fields(methods) {
			if sd.Methods().ByName(protoreflect.Name(m)) == nil {
				t.Errorf("%s has no method %s", svc, m)
			}
		}
	}
	if md := file.Services().ByName("IngestService").Methods().ByName("IngestStream"); !md.IsStreamingClient() || md.IsStreamingServer() {
		t.Error("IngestStream must be client streaming")
	}
	if md := file.Services().ByName("QueryService").Methods().ByName("Tail"); md.IsStreamingClient() || !md.IsStreamingServer() {
		t.Error("Tail must be server streaming")
	}
}
