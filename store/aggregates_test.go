package store

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/elixirscope/scope/correlate"
)

// TestAggregates follows the kind counts and function aggregates of a shard
// through apply, a duplicate re-apply, a retention cut inside a bucket and
// one that removes a whole bucket, and through export/import after each.
func TestAggregates(t *testing.T) {
	s := openMem(t)
	var n byte
	ev := func(kind correlate.Kind, ts int64, mfa string, outcome correlate.Outcome, dur int64) correlate.Event {
		n++
		e := correlate.Event{ID: correlate.EventID{15: n}, Origin: "a@h", PID: "<0.1.0>", Kind: kind,
			TimestampNs: ts, Outcome: outcome, DurationNs: dur}
		switch mfa {
		case "bar/1":
			e.Module, e.Function, e.Arity = "Elixir.Foo", "bar", 1
		case "baz/0":
			e.Module, e.Function = "Elixir.Foo", "baz"
		}
		return e
	}
	// Bucket width 2^20 ns: the first three events are in one bucket, the
	// others in a later one.
	events := []correlate.Event{
		ev(correlate.KindCall, 1000, "bar/1", 0, 0),
		ev(correlate.KindCall, 2000, "baz/0", 0, 0),
		ev(correlate.KindReturn, 5000, "baz/0", correlate.OutcomeOK, 3000),
		ev(correlate.KindException, 2_000_000, "bar/1", correlate.OutcomeException, 1_999_000),
		ev(correlate.KindSend, 2_000_100, "", 0, 0),
		ev(correlate.KindException, 2_000_200, "bar/1", 0, 0), // an orphan closes no call
	}
	bar := func(calls, exc uint64, dur int64) FunctionStats {
		return FunctionStats{Module: "Elixir.Foo", Function: "bar", Arity: 1, Calls: calls, Exceptions: exc, DurationNs: dur}
	}
	baz := FunctionStats{Module: "Elixir.Foo", Function: "baz", Calls: 1, DurationNs: 3000}
	kinds := func(call, ret, exc, send uint64) (k [numKinds]uint64) {
		k[correlate.KindCall], k[correlate.KindReturn], k[correlate.KindException], k[correlate.KindSend] = call, ret, exc, send
		return k
	}
	for i, step := range []struct {
		name  string
		res   correlate.Result
		kinds [numKinds]uint64
		fns   []FunctionStats
	}{
		{"apply", correlate.Result{Events: events}, kinds(2, 1, 2, 1), []FunctionStats{bar(1, 1, 1_999_000), baz}},
		{"duplicate re-apply", correlate.Result{Events: events}, kinds(2, 1, 2, 1), []FunctionStats{bar(1, 1, 1_999_000), baz}},
		{"retention cut inside a bucket", correlate.Result{Retention: &correlate.Retention{BeforeNs: 1500}},
			kinds(1, 1, 2, 1), []FunctionStats{bar(0, 1, 1_999_000), baz}},
		{"retention removes a whole bucket", correlate.Result{Retention: &correlate.Retention{BeforeNs: 2_000_050}},
			kinds(0, 0, 1, 1), nil},
		{"retention removes everything", correlate.Result{Retention: &correlate.Retention{BeforeNs: 1 << 40}},
			kinds(0, 0, 0, 0), nil},
	} {
		step.res.Index = uint64(i + 1)
		mustApply(t, s, 2, &step.res)
		st, err := s.Stats(2)
		if err != nil {
			t.Fatal(err)
		}
		if st.Kinds != step.kinds || !reflect.DeepEqual(st.Functions, step.fns) {
			t.Fatalf("%s: kinds %v functions %+v, want %v %+v", step.name, st.Kinds, st.Functions, step.kinds, step.fns)
		}
		var buf bytes.Buffer
		if err := s.ExportShard(2, &buf); err != nil {
			t.Fatal(err)
		}
		dst := openMem(t)
		if err := dst.ImportShard(2, &buf); err != nil {
			t.Fatal(err)
		}
		if got, _ := dst.Stats(2); !reflect.DeepEqual(got, st) {
			t.Fatalf("%s: after export/import %+v, want %+v", step.name, got, st)
		}
	}
	if c := sectionCounts(t, s, 2); c[secKinds] != 0 || c[secFuncAgg] != 0 {
		t.Fatalf("aggregates left in an empty shard: %v", c)
	}
}

func TestFuncAggKeyRoundTrip(t *testing.T) {
	for _, tc := range [][2]string{{"", ""}, {"Elixir.Foo", "bar"}, {"a\x00b", "\x00"}, {"\x00\x00", "x\x00\x01"}} {
		k := funcAggKey(nil, 1, 2, tc[0], tc[1], 7)
		m, f, a, ok := parseFuncAggKey(k)
		if !ok || m != tc[0] || f != tc[1] || a != 7 {
			t.Fatalf("%q: parsed %q %q %d %v", tc, m, f, a, ok)
		}
	}
}
