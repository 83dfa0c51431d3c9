package node

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/store"
)

// BenchmarkFSMApply measures the FSM's apply path alone — decode,
// duplicate screen, correlator, store — on a store in a temporary
// directory: ApplyBatch calls of `entries` raft entries of 512 events each,
// as raft hands a busy follower its backlog. ns/op is per event.
//
//	go test -run '^$' -bench FSMApply -benchtime 100x ./node/
func BenchmarkFSMApply(b *testing.B) {
	for _, entries := range []int{1, 8} {
		b.Run(fmt.Sprintf("entries=%d/events=512", entries), func(b *testing.B) {
			benchFSMApply(b, entries, 512)
		})
	}
}

func benchFSMApply(b *testing.B, entries, size int) {
	o := store.DefaultOptions()
	o.FS = vfs.Default
	o.Logger = slog.New(slog.DiscardHandler)
	st, err := store.Open(b.TempDir(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	cfg := fsmTestConfig(131_072)
	f, err := newShardFSM(0, st, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	// 256 processes, each alternating CALL and RETURN of one function,
	// events 1 µs apart: a live trace's shape.
	g := newLogGen(1)
	n := 0
	group := func() []*raft.Log {
		g.log = g.log[:0]
		for range entries {
			bt := correlate.Batch{LogTime: g.logTime}
			for range size {
				g.ts += 1000
				kind := correlate.KindCall
				if n/256%2 == 1 {
					kind = correlate.KindReturn
				}
				bt.Events = append(bt.Events, correlate.Event{ID: g.id(g.ts), Origin: "app@h",
					PID: fmt.Sprintf("<0.%d.0>", n%256), Kind: kind, TimestampNs: g.ts, Module: "m", Function: "f", Arity: 1,
					Payload: "some payload of a typical size: {:ok, %{user: 42, items: [1, 2, 3]}}"})
				n++
			}
			g.add(raft.LogCommand, encodeEntry(&bt))
		}
		return g.log
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		logs := group()
		b.StartTimer()
		for _, r := range f.ApplyBatch(logs) {
			if err := r.(ApplyResult).Err; err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*entries*size)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*entries*size), "ns/event")
}
