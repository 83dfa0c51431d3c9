package cluster

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/elixirscope/scope/internal/testwait"
)

// scaleModelFull runs the scale model at every size (docs/bench/scale.md);
// without it, tests run the smallest size only.
var scaleModelFull = os.Getenv("SCOPE_SCALE_MODEL") != ""

// gossipMeasured holds what TestGossipConvergence measured, per cluster
// size, on loopback with the production (LAN) profile: over three runs
// (2026-12-03, docs/bench/scale.md), the earliest and the latest time a
// member saw each change. The scale model draws each node's delay from
// these ranges (gossipAt).
var gossipMeasured = map[int]gossipTimes{
	10:  {join: ms2(1, 402), dead: ms2(5_358, 7_168), update: ms2(194, 218)},
	30:  {join: ms2(1, 596), dead: ms2(6_989, 10_343), update: ms2(157, 613)},
	100: {join: ms2(2, 706), dead: ms2(9_104, 11_222), update: ms2(81, 724)},
}

func ms2(lo, hi int) [2]time.Duration {
	return [2]time.Duration{time.Duration(lo) * time.Millisecond, time.Duration(hi) * time.Millisecond}
}

// gossipAt returns the measured gossip times for the nearest measured size
// at or above nodes (the largest beyond it).
func gossipAt(nodes int) gossipTimes {
	sizes := make([]int, 0, len(gossipMeasured))
	for n := range gossipMeasured {
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	for _, n := range sizes {
		if n >= nodes {
			return gossipMeasured[n]
		}
	}
	return gossipMeasured[sizes[len(sizes)-1]]
}

// TestGossipConvergence measures, with real memberlist on loopback and the
// production profile (ProfileLAN), how long a join, a metadata change, a
// graceful leave and a crash take to reach every member of a cluster of
// 10 (and, with SCOPE_SCALE_MODEL, 30 and 100) members. It fails if a
// change does not reach every member within the bounds the profile
// implies; its figures are the scale model's gossip delays
// (gossipMeasured).
func TestGossipConvergence(t *testing.T) {
	sizes := []int{10}
	if scaleModelFull {
		sizes = []int{10, 30, 100}
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := formLANCluster(t, n)
			// A join: a member more, through one seed.
			joiner := startMember(t, lanMembershipConfig(fmt.Sprintf("g%03d", n)))
			start := time.Now()
			if _, err := joiner.Join([]string{ms[0].Addr()}); err != nil {
				t.Fatal(err)
			}
			join := awaitEveryone(t, ms, start, 30*time.Second, "sees the joiner alive", func(m *Membership) bool {
				mem, ok := memberView(m, joiner.Name())
				return ok && mem.State == MemberAlive
			})
			ms = append(ms, joiner)
			// A metadata change (shards led, leaving) of one member.
			subject := ms[1]
			start = time.Now()
			if err := subject.UpdateMeta(func(m *Meta) { m.Led = []uint32{1, 2, 3} }); err != nil {
				t.Fatal(err)
			}
			update := awaitEveryone(t, without(ms, subject), start, 30*time.Second, "sees the metadata change", func(m *Membership) bool {
				mem, ok := memberView(m, subject.Name())
				return ok && len(mem.Meta.Led) == 3
			})
			// A crash: shut down without leaving.
			victim := ms[2]
			start = time.Now()
			if err := victim.Shutdown(); err != nil {
				t.Fatal(err)
			}
			rest := without(ms, victim)
			dead := awaitEveryone(t, rest, start, 90*time.Second, "sees the crashed member dead", func(m *Membership) bool {
				mem, ok := memberView(m, victim.Name())
				return ok && mem.State == MemberDead
			})
			// A graceful leave.
			leaver := rest[3]
			start = time.Now()
			if err := leaver.Leave(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			left := awaitEveryone(t, without(rest, leaver), start, 30*time.Second, "sees the leaver gone", func(m *Membership) bool {
				mem, ok := memberView(m, leaver.Name())
				return ok && mem.State == MemberLeft
			})
			t.Logf("%d members (LAN profile): join seen in %v–%v, metadata change %v–%v, crash seen dead %v–%v, leave %v–%v",
				n, join[0], join[1], update[0], update[1], dead[0], dead[1], left[0], left[1])
		})
	}
}

// lanMembershipConfig is the production membership configuration on a
// loopback port of its own.
func lanMembershipConfig(name string) MembershipConfig {
	cfg := DefaultMembershipConfig()
	cfg.Name = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

func formLANCluster(t *testing.T, n int) []*Membership {
	t.Helper()
	ms := make([]*Membership, n)
	for i := range ms {
		ms[i] = startMember(t, lanMembershipConfig(fmt.Sprintf("g%03d", i)))
		if i > 0 {
			if _, err := ms[i].Join([]string{ms[0].Addr()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, m := range ms {
		testwait.For(t, m.Name()+" sees everyone alive", 60*time.Second, func() bool { return len(m.LiveNames()) == n })
	}
	return ms
}

func without(ms []*Membership, drop *Membership) []*Membership {
	return slices.DeleteFunc(slices.Clone(ms), func(m *Membership) bool { return m == drop })
}

// awaitEveryone polls every member until each has seen what holds
// describes, and returns the earliest and latest time one first did,
// from start.
func awaitEveryone(t *testing.T, ms []*Membership, start time.Time, limit time.Duration, what string, holds func(*Membership) bool) [2]time.Duration {
	t.Helper()
	seen := make([]time.Duration, len(ms))
	left := len(ms)
	testwait.For(t, fmt.Sprintf("every member %s", what), limit, func() bool {
		for i, m := range ms {
			if seen[i] == 0 && holds(m) {
				seen[i] = max(time.Since(start), time.Millisecond)
				left--
			}
		}
		return left == 0
	})
	return [2]time.Duration{slices.Min(seen), slices.Max(seen)}
}
