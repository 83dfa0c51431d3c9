package main

import (
	"bytes"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elixirscope/scope/rpc/rpctest"
)

// TestBenchStatesItsShape: `scope bench` says what it measured — the mean
// size of an event on the wire, the request shape and what an
// acknowledgement promised — so its figures can be set beside a peer's.
func TestBenchStatesItsShape(t *testing.T) {
	n := rpctest.Start(t, rpctest.Options{})
	size := regexp.MustCompile(`shape: events of (\d+) B each on the wire`)
	for _, tc := range []struct {
		args      []string
		minSize   int
		maxSize   int
		wantWords []string
	}{
		{[]string{"-durability", "committed"}, 40, 199, []string{"the generator's payloads", "100 events per request",
			"4 requests per IngestStream", "fsynced raft log of a majority"}},
		{[]string{"-durability", "accepted", "-payload-bytes", "200", "-unary"}, 200, 400, []string{"payloads padded to 200 B",
			"one unary Ingest call each", "ring buffer (not yet durable)"}},
	} {
		var out, errOut bytes.Buffer
		args := append([]string{"bench", "-addr", n.URL, "-events", "2000", "-batch", "100", "-stream-len", "4", "-concurrency", "2", "-procs", "20"}, tc.args...)
		if code := run(args, &out, &errOut); code != exitOK {
			t.Fatalf("%q: exit %d, stderr %s", args, code, errOut.String())
		}
		m := size.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("%q: no shape line in %s", args, out.String())
		}
		if got, _ := strconv.Atoi(m[1]); got < tc.minSize || got > tc.maxSize {
			t.Errorf("%q: events of %d B on the wire, want %d..%d", args, got, tc.minSize, tc.maxSize)
		}
		for _, w := range tc.wantWords {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%q: output lacks %q:\n%s", args, w, out.String())
			}
		}
	}
}

// TestPacedWorkersAreSpread: paced workers send their batches at evenly
// spread instants, not all at once (a burst at full speed whatever the
// average rate).
func TestPacedWorkersAreSpread(t *testing.T) {
	start := time.Unix(1000, 0)
	const batch, workers, rate = 500, 4, 1000.0 // per worker: a batch every 0.5 s
	var dues []time.Duration
	for w := range workers {
		phase := float64(batch) * float64(w) / workers
		dues = append(dues, paceDue(start, batch, phase, rate).Sub(start))
	}
	want := []time.Duration{500 * time.Millisecond, 375 * time.Millisecond, 250 * time.Millisecond, 125 * time.Millisecond}
	if !slices.Equal(dues, want) {
		t.Fatalf("first batches due at %v, want %v", dues, want)
	}
}
