package clustertest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestQueryPartialResults stops the only replica of some shards (R=1):
// with allow_partial, Events returns every event of the other shards and
// lists exactly the shards that could not answer; without it the query
// fails with UNAVAILABLE naming them. Never a silent gap.
func TestQueryPartialResults(t *testing.T) {
	const shards = 4
	c := Start(t, Options{Nodes: 3, Shards: shards, Replicas: 1})
	byShard := make(map[uint32][]string)
	for i := range 24 {
		pid := fmt.Sprintf("<0.%d.0>", 300+i)
		ids := ingest(t, c.Nodes[i%3], ev(scopev1.Kind_KIND_STATE_CHANGE, pid, int64(1000+i)))
		s := correlate.ShardOf("app@host", pid, shards)
		byShard[s] = append(byShard[s], ids...)
	}
	// Stop a node that leads at least one shard; keep one that does not
	// lead them all to ask.
	var victim *Node
	var lost []uint32
	for s := range uint32(shards) {
		if l := c.ShardLeader(s); l != nil && (victim == nil || l == victim) {
			victim = l
			lost = append(lost, s)
		}
	}
	if victim == nil || len(lost) == shards {
		t.Fatalf("placement put shards %v on one node", lost)
	}
	c.Stop(victim)
	asked := c.Live()[0]
	var want []string
	for s := range uint32(shards) {
		if !slices.Contains(lost, s) {
			want = append(want, byShard[s]...)
		}
	}
	slices.Sort(want)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := asked.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 1000, AllowPartial: true}))
	if err != nil {
		t.Fatalf("allow_partial Events: %v", err)
	}
	var got []string
	for _, e := range resp.Msg.GetEvents() {
		got = append(got, e.GetEventId())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("allow_partial Events returned %d events, want the %d of shards other than %v", len(got), len(want), lost)
	}
	if !slices.Equal(resp.Msg.GetMissingShards(), lost) {
		t.Fatalf("missing_shards %v, want exactly %v", resp.Msg.GetMissingShards(), lost)
	}
	for _, m := range resp.Msg.GetMissing() {
		if m.GetCode() != connect.CodeUnavailable.String() || m.GetReason() == "" {
			t.Fatalf("missing shard %d: code %q reason %q, want unavailable with a reason", m.GetShard(), m.GetCode(), m.GetReason())
		}
	}

	_, err = asked.Query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 1000}))
	if Code(err) != connect.CodeUnavailable {
		t.Fatalf("Events without allow_partial: %v, want UNAVAILABLE", err)
	}
	names := make([]string, len(lost))
	for i, s := range lost {
		names[i] = fmt.Sprint(s)
	}
	if want := "could not answer (" + strings.Join(names, ", ") + ")"; !strings.Contains(err.Error(), want) {
		t.Fatalf("UNAVAILABLE does not name exactly shards %v (%q): %v", lost, want, err)
	}
}
