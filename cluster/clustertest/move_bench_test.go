package clustertest

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/correlate"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Shard move benchmark: how long one shard of a given size takes to move
// to a new node. A one-node cluster (R=1) is filled so that exactly one
// shard holds -move-bytes of event records; a second node joins and wins
// that shard (and only it) in placement, and the leader's reconciler moves
// the group: the new replica is added as a nonvoter, catches up (raft log
// or snapshot, whichever raft chooses), becomes a voter, takes leadership,
// and the old replica is removed and drops its data. The clock runs from
// the join to the moment the old replica is gone and the new one holds
// every event.
//
//	go test -run '^$' -bench ShardMove -benchtime 1x -timeout 60m ./cluster/clustertest -args -move-bytes=1GiB

var (
	moveBytes = flag.String("move-bytes", "16MiB", "ShardMove: event record bytes to fill the moved shard with (KiB, MiB, GiB suffixes)")
	moveVia   = flag.String("move-via", "log", "ShardMove: how the new replica catches up: log (the leader still holds the whole log) or snapshot (the log is compacted first, as on a long-lived shard)")
)

const (
	movePayload = 4000 // bytes per event: below the default 4 KiB payload limit, so nothing is truncated
	moveBatch   = 200  // events per request (~800 KB)
	movePids    = 16   // processes writing to the shard, split among the fill workers
	moveWorkers = 2
)

// parseSize reads "16MiB", "1GiB", "512KiB" or a plain byte count.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive count with an optional KiB, MiB or GiB suffix", s)
	}
	return n * mult, nil
}

// moveShards returns a shard count S and the one shard that "n2" takes from
// "n1" at R=1, such that n2 wins no other shard: the move measured is that
// shard's alone.
func moveShards() (shards, moved uint32, err error) {
	for s := uint32(1); s <= 64; s++ {
		var won []uint32
		for sh := range s {
			if cluster.Placement(sh, []string{"n1", "n2"}, 1)[0] == "n2" {
				won = append(won, sh)
			}
		}
		if len(won) == 1 {
			return s, won[0], nil
		}
	}
	return 0, 0, fmt.Errorf("no shard count in 1..64 where n2 wins exactly one shard")
}

// moveResult is one move's figures.
type moveResult struct {
	shards, moved                  uint32
	events, recordBytes, diskBytes uint64
	fill, move                     time.Duration
	snapshot                       bool // the new replica caught up from a snapshot, not the log
}

// shardMove fills one shard to target record bytes and moves it. With
// viaSnapshot the leader snapshots and compacts its whole log first, so the
// new replica can only catch up from a snapshot (the shard's span) — the
// case of a shard that has lived longer than TrailingLogs entries.
func shardMove(tb testing.TB, target int64, viaSnapshot bool) moveResult {
	shards, moved, err := moveShards()
	if err != nil {
		tb.Fatal(err)
	}
	c := Start(tb, Options{Nodes: 1, Shards: shards, Replicas: 1})
	defer c.Close()
	n1 := c.Nodes[0]

	var pids []string
	for i := 0; len(pids) < movePids; i++ {
		if pid := fmt.Sprintf("<0.%d.0>", i); correlate.ShardOf("move@host", pid, shards) == moved {
			pids = append(pids, pid)
		}
	}
	res := moveResult{shards: shards, moved: moved}
	began := time.Now()
	fill(tb, n1, pids, target)
	res.fill = time.Since(began)
	st, err := n1.Node.Store().Stats(moved)
	if err != nil {
		tb.Fatal(err)
	}
	res.events, res.recordBytes = st.Events, st.Bytes
	if viaSnapshot {
		r := n1.Node.Replica(moved).Raft()
		rc := r.ReloadableConfig()
		rc.TrailingLogs = 0
		if err := r.ReloadConfig(rc); err != nil {
			tb.Fatal(err)
		}
		if err := r.Snapshot().Error(); err != nil {
			tb.Fatalf("snapshot of shard %d: %v", moved, err)
		}
	}

	began = time.Now()
	n2 := c.AddNode()
	WaitFor(tb, fmt.Sprintf("shard %d moved to n2", moved), 60*time.Minute, func() bool {
		r := n2.Node.Replica(moved)
		if r == nil || !r.IsLeader() || n1.Node.Replica(moved) != nil {
			return false
		}
		f := r.Raft().GetConfiguration()
		if f.Error() != nil {
			return false
		}
		srv := f.Configuration().Servers
		if len(srv) != 1 || srv[0].ID != "n2" || srv[0].Suffrage != raft.Voter {
			return false
		}
		got, err := n2.Node.Store().Stats(moved)
		return err == nil && got.Events == res.events
	})
	res.move = time.Since(began)
	res.snapshot = n2.Node.Replica(moved).Raft().Stats()["last_snapshot_index"] != "0"
	res.diskBytes = dirSize(tb, n2.Dir)
	// Nothing else moved: n2 hosts the one shard.
	if hosted, err := n2.Node.HostedShards(); err != nil || !slices.Equal(hosted, []uint32{moved}) {
		tb.Errorf("n2 hosts %v (%v), want only shard %d", hosted, err, moved)
	}
	return res
}

// dirSize is the size of the files under dir (store and raft logs).
func dirSize(tb testing.TB, dir string) uint64 {
	var n uint64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += uint64(info.Size())
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// fill writes STATE_CHANGE events with movePayload-byte payloads to pids
// through n until target payload bytes are acknowledged COMMITTED.
func fill(tb testing.TB, n *Node, pids []string, target int64) {
	payload := strings.Repeat("x", movePayload)
	perWorker := (target/movePayload + moveWorkers) / moveWorkers
	var wg sync.WaitGroup
	errs := make(chan error, moveWorkers)
	for w := range moveWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := pids[w*len(pids)/moveWorkers : (w+1)*len(pids)/moveWorkers]
			ts := time.Now().UnixNano()
			for sent := int64(0); sent < perWorker; {
				k := min(int64(moveBatch), perWorker-sent)
				events := make([]*scopev1.Event, k)
				for i := range events {
					ts++
					events[i] = &scopev1.Event{Origin: "move@host", Pid: mine[(sent+int64(i))%int64(len(mine))],
						Kind: scopev1.Kind_KIND_STATE_CHANGE, TimestampNs: ts, Payload: payload}
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				resp, err := n.Ingest.Ingest(ctx, connect.NewRequest(&scopev1.IngestRequest{Events: events}))
				cancel()
				if err == nil && int64(resp.Msg.GetAccepted()+resp.Msg.GetDuplicates()) != k {
					err = fmt.Errorf("%d of %d events accepted", resp.Msg.GetAccepted(), k)
				}
				if err != nil {
					errs <- fmt.Errorf("fill worker %d after %d events: %w", w, sent, err)
					return
				}
				sent += k
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

func BenchmarkShardMove(b *testing.B) {
	target, err := parseSize(*moveBytes)
	if err != nil {
		b.Fatalf("-move-bytes: %v", err)
	}
	if *moveVia != "log" && *moveVia != "snapshot" {
		b.Fatalf("-move-via %q: want log or snapshot", *moveVia)
	}
	var total time.Duration
	var bytes uint64
	for range b.N {
		b.StopTimer()
		res := shardMove(b, target, *moveVia == "snapshot")
		total += res.move
		bytes += res.recordBytes
		b.Logf("shard %d of %d: moved %d events, %.1f MiB of records (new node's data directory %.1f MiB) in %v (fill took %v), via %s",
			res.moved, res.shards, res.events, float64(res.recordBytes)/(1<<20), float64(res.diskBytes)/(1<<20), res.move.Round(time.Millisecond),
			res.fill.Round(time.Millisecond), map[bool]string{true: "snapshot", false: "log"}[res.snapshot])
	}
	// The timer is stopped throughout (cluster start and fill are not the
	// move): ns/op means nothing here, s/move and MiB/s are the figures.
	b.ReportMetric(total.Seconds()/float64(b.N), "s/move")
	b.ReportMetric(float64(bytes)/float64(b.N)/(1<<20), "MiB/move")
	b.ReportMetric(float64(bytes)/(1<<20)/total.Seconds(), "MiB/s")
}

// TestShardMoveShort runs the move benchmark's body on a small shard and
// checks what it measures: only the chosen shard moves, and the new node
// ends with every event and the old node with none.
func TestShardMoveShort(t *testing.T) {
	if _, err := parseSize("1.5GiB"); err == nil {
		t.Errorf("parseSize accepted a fraction")
	}
	for in, want := range map[string]int64{"16MiB": 16 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "1000": 1000} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, viaSnapshot := range []bool{false, true} {
		res := shardMove(t, 2<<20, viaSnapshot)
		if res.recordBytes < 2<<20 || res.events < (2<<20)/movePayload {
			t.Errorf("filled %d events, %d record bytes; want at least 2 MiB", res.events, res.recordBytes)
		}
		if viaSnapshot && !res.snapshot {
			t.Errorf("the leader's log was compacted, yet the new replica caught up without a snapshot")
		}
		t.Logf("moved %d events (%d record bytes) in %v via snapshot=%v", res.events, res.recordBytes, res.move, res.snapshot)
	}
}
