package chaos

import (
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// The history: every operation the clients invoked, with when it was
// invoked and when it returned (monotonic ns since the campaign started),
// checked for linearizability with porcupine, one process at a time (a
// process's events live on one shard; reads of different processes are
// independent).
//
// The model of one process is the set of its events stored so far, a
// 64-bit set (bit i: script event i):
//   - ingest(i): adds bit i. An ingest whose outcome is unknown (a
//     timeout, a dropped connection, an UNAVAILABLE after the event may
//     have been proposed, an "unknown" count in the response) may take
//     effect at any time after it was invoked, or never: it is given a
//     return time after every other operation's (Jepsen's "info").
//     A refused ingest is not an operation: it must never take effect,
//     which the final check verifies.
//   - read: Events(origin, pid) at LEADER consistency must return exactly
//     the set.
//   - tree(root): CallTree(root) at LEADER consistency must answer "not
//     found" when bit root is not set, and otherwise show exactly the
//     set's CALL/RETURN/EXCEPTION events of root's tree.
// A read or tree that failed (an error, no answer) is left out: it
// observed nothing.

type opKind uint8

const (
	opIngest opKind = iota
	opRead
	opTree
)

type opInput struct {
	kind opKind
	bit  int // ingest: the event; tree: the root CALL
}

type opOutput struct {
	mask  uint64
	found bool // tree: the root was found
}

// op is one completed operation of the history.
type op struct {
	key    int
	client int
	in     opInput
	out    opOutput
	call   int64
	ret    int64 // math.MaxInt64: outcome unknown
}

// history records operations; safe for concurrent use.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []op
}

func newHistory() *history { return &history{start: time.Now()} }

// now is the history's clock: monotonic ns since the start.
func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(o op) {
	h.mu.Lock()
	h.ops = append(h.ops, o)
	h.mu.Unlock()
}

// processModel is the porcupine model of one process (one partition).
func processModel(trees map[int]uint64) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return uint64(0) },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(uint64), input.(opInput), output.(opOutput)
			switch in.kind {
			case opIngest:
				return true, s | 1<<in.bit
			case opRead:
				return out.mask == s, s
			default: // opTree
				if s&(1<<in.bit) == 0 {
					return !out.found, s
				}
				return out.found && out.mask == s&trees[in.bit], s
			}
		},
		Equal: func(a, b any) bool { return a.(uint64) == b.(uint64) },
		Hash:  func(s any) uint64 { return s.(uint64) },
		DescribeOperation: func(input, output any) string {
			in, out := input.(opInput), output.(opOutput)
			switch in.kind {
			case opIngest:
				return fmt.Sprintf("ingest(%d)", in.bit)
			case opRead:
				return fmt.Sprintf("read() → %s", maskString(out.mask))
			default:
				if !out.found {
					return fmt.Sprintf("tree(%d) → not found", in.bit)
				}
				return fmt.Sprintf("tree(%d) → %s", in.bit, maskString(out.mask))
			}
		},
		DescribeState: func(s any) string { return maskString(s.(uint64)) },
	}
}

// maskString lists a set's bits: "{0 1 5}".
func maskString(m uint64) string {
	s := "{"
	for m != 0 {
		i := bits.TrailingZeros64(m)
		m &^= 1 << i
		if len(s) > 1 {
			s += " "
		}
		s += fmt.Sprint(i)
	}
	return s + "}"
}

// maxViolations bounds the violations a report describes.
const maxViolations = 20

// linearizability is the result of checking a history.
type linearizability struct {
	Processes  int `json:"processes"`  // processes checked
	Operations int `json:"operations"` // operations checked
	Unknown    int `json:"unknown"`    // ingests whose outcome was unknown
	// ViolationCount processes have a history that is not linearizable;
	// Violations describes the first maxViolations.
	ViolationCount int      `json:"violation_count"`
	Violations     []string `json:"violations"`
	TimedOut       int      `json:"timed_out"`  // processes whose check did not finish in time
	Visualized     []string `json:"visualized"` // HTML files showing violations
	CheckTimeNs    int64    `json:"check_time_ns"`
}

// check checks every process's history. Violations are visualized into
// dir (when not empty), at most a few.
func (h *history) check(procs []*process, dir string, timeout time.Duration) linearizability {
	start := time.Now()
	h.mu.Lock()
	ops := append([]op(nil), h.ops...)
	h.mu.Unlock()
	byKey := make(map[int][]porcupine.Operation)
	var res linearizability
	for _, o := range ops {
		if o.ret == math.MaxInt64 {
			res.Unknown++
		}
		byKey[o.key] = append(byKey[o.key], porcupine.Operation{ClientId: o.client, Input: o.in, Call: o.call, Output: o.out, Return: o.ret})
	}
	keys := make([]int, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		p := procs[k]
		model := processModel(p.treeMask)
		res.Processes++
		res.Operations += len(byKey[k])
		result, info := porcupine.CheckOperationsVerbose(model, byKey[k], timeout)
		switch result {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			res.TimedOut++
			continue
		}
		res.ViolationCount++
		if len(res.Violations) >= maxViolations {
			continue
		}
		res.Violations = append(res.Violations, fmt.Sprintf("process %s/%s (key %d): %d operations are not linearizable",
			p.origin, p.pid, k, len(byKey[k])))
		if dir != "" && len(res.Visualized) < 5 {
			path := filepath.Join(dir, fmt.Sprintf("violation-key%d.html", k))
			if f, err := os.Create(path); err == nil {
				if porcupine.Visualize(model, info, f) == nil {
					res.Visualized = append(res.Visualized, path)
				}
				_ = f.Close()
			}
		}
	}
	res.CheckTimeNs = int64(time.Since(start))
	return res
}
