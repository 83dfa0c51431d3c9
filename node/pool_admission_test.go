package node

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// admissionOutcomes counts what became of COMMITTED submissions.
type admissionOutcomes struct {
	committed, shed, unknown atomic.Int64
	slowShed                 atomic.Int64 // shed, but not at once
	badShed                  atomic.Value // a shed error that does not say what it is
}

// overload runs submitters that each send 16 events COMMITTED with a
// 300 ms deadline, one after another, against a shard that commits 16
// events every 20 ms (800 events/s): 32 of them queue 512 events, 640 ms of
// work, so that without admission control most submissions outlive their
// deadline after being accepted (outcome unknown). Submissions made in the
// first 600 ms (the queue filling) are not counted.
func overload(t *testing.T, admission bool) *admissionOutcomes {
	cfg := testConfig(1)
	cfg.RingCapacity = 4096
	cfg.BatchSize = 16
	cfg.MaxInflight = 1
	cfg.FlushInterval = 0
	cfg.Writers = 1
	cfg.noAdmission = !admission
	m := &countingMetrics{}
	pool := newTestPool(t, cfg, NewMemProposer(20*time.Millisecond, false), m)
	pool.Start()
	var out admissionOutcomes
	start := time.Now()
	warm, end := start.Add(600*time.Millisecond), start.Add(2100*time.Millisecond)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for seq := 0; time.Now().Before(end); seq += 16 {
				began := time.Now()
				counted := began.After(warm)
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				tk, err := pool.Submit(ctx, 0, events(string(rune('a'+g)), seq, 16), true)
				switch {
				case errors.Is(err, ErrOverloaded):
					if counted {
						out.shed.Add(1)
						if time.Since(began) > 100*time.Millisecond {
							out.slowShed.Add(1)
						}
						if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "retry after") {
							out.badShed.Store(err.Error())
						}
					}
					// A client told to retry later does so.
					time.Sleep(50 * time.Millisecond)
				case err != nil:
					// The ring waited past the deadline: refused, not stored.
				default:
					if werr := tk.Wait(ctx); werr == nil {
						if counted {
							out.committed.Add(1)
						}
					} else if counted {
						out.unknown.Add(1)
					}
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if admission && m.shed.Load() == 0 {
		t.Error("no shed events counted")
	}
	return &out
}

// TestPoolShedsWhatWouldMissItsDeadline: under a load twice what the shard
// commits within the submitters' deadline, admission control refuses
// submissions at once, saying so and when to retry, so that far fewer
// accepted submissions end with an unknown outcome than without it, and
// more commit in time (without it the queue keeps every submission past
// its deadline: none commits in time).
func TestPoolShedsWhatWouldMissItsDeadline(t *testing.T) {
	without := overload(t, false)
	with := overload(t, true)
	t.Logf("without admission control: committed %d, unknown %d; with: committed %d, unknown %d, shed %d",
		without.committed.Load(), without.unknown.Load(), with.committed.Load(), with.unknown.Load(), with.shed.Load())
	if without.unknown.Load() == 0 {
		t.Fatal("the load never made a submission outlive its deadline: the test does not overload the shard")
	}
	if with.shed.Load() == 0 {
		t.Fatal("nothing was shed")
	}
	if v := with.badShed.Load(); v != nil {
		t.Errorf("a shed error does not wrap ErrFull or name a retry: %s", v)
	}
	if n := with.slowShed.Load(); n > 0 {
		t.Errorf("%d submissions were shed after waiting, not at once", n)
	}
	if 2*with.unknown.Load() > without.unknown.Load() {
		t.Errorf("unknown outcomes with admission control %d, without %d: want at most half", with.unknown.Load(), without.unknown.Load())
	}
	if with.committed.Load() <= without.committed.Load() {
		t.Errorf("committed with admission control %d, without %d: shedding should let more through in time",
			with.committed.Load(), without.committed.Load())
	}
}

// TestAdmitRule checks the rule on its own: no deadline, a queue within
// one pipeline, or no measured time per event always admit; a long queue
// is refused only when its expected wait is over half the time left.
func TestAdmitRule(t *testing.T) {
	cfg := testConfig(1) // BatchSize 16 × MaxInflight 4: a pipeline of 64 events
	p := &Pool{cfg: cfg}
	for _, c := range []struct {
		name     string
		redirect bool
		deadline time.Duration // 0: none
		queued   int64
		perEvent time.Duration
		refused  bool
	}{
		{"no deadline", false, 0, 10_000, time.Millisecond, false},
		{"queue within a pipeline", false, time.Second, 64, time.Second, false},
		{"nothing measured yet", false, time.Second, 10_000, 0, false},
		{"long queue, short wait", false, time.Second, 1000, 100 * time.Microsecond, false}, // 100 ms of 1 s
		{"long queue, wait over half the time left", false, time.Second, 1000, time.Millisecond, true},
		{"a redirect of admitted events", true, time.Second, 1000, time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sh := &poolShard{id: 7}
			sh.outstanding.Store(c.queued)
			sh.perEvent.ns.Store(int64(c.perEvent))
			ctx := context.Background()
			if c.redirect {
				ctx = MarkRedirect(ctx)
			}
			if c.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.deadline)
				defer cancel()
			}
			err := p.admit(ctx, sh, 16)
			if (err != nil) != c.refused {
				t.Fatalf("admit: %v, want refused %v", err, c.refused)
			}
			if err != nil && (!errors.Is(err, ErrOverloaded) || !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "shard 7")) {
				t.Errorf("refusal %v does not wrap ErrOverloaded and ErrFull or name the shard", err)
			}
		})
	}
}

// TestPerEventTimeAverages: the first observation is taken as it is, later
// ones move the average by a fifth of the difference.
func TestPerEventTimeAverages(t *testing.T) {
	var p perEventTime
	p.observe(100*time.Millisecond, 100) // 1 ms per event
	if got := p.get(); got != time.Millisecond {
		t.Fatalf("after one observation %v, want 1ms", got)
	}
	p.observe(600*time.Millisecond, 100) // 6 ms per event
	if got := p.get(); got != 2*time.Millisecond {
		t.Fatalf("after two %v, want 2ms", got)
	}
	p.observe(time.Second, 0) // no events: ignored
	if got := p.get(); got != 2*time.Millisecond {
		t.Fatalf("an observation of 0 events moved the average to %v", got)
	}
}
