package clustertest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// logTail keeps the last lines the cluster's nodes logged, so that a test
// that fails shows what the nodes did before it (a flaky failure in CI is
// otherwise a bare "timed out waiting for ..."). Bounded: older lines are
// overwritten and counted.
type logTail struct {
	mu      sync.Mutex
	lines   []string
	next    int // where the next line goes once lines is full
	dropped int
}

// logTailLines is how many lines a failed test shows.
const logTailLines = 600

// Write takes one or more newline-terminated lines (slog handlers write one
// record per call).
func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range bytes.Lines(p) {
		s := string(bytes.TrimRight(line, "\n"))
		if len(l.lines) < logTailLines {
			l.lines = append(l.lines, s)
			continue
		}
		l.lines[l.next] = s
		l.next = (l.next + 1) % logTailLines
		l.dropped++
	}
	return len(p), nil
}

// String returns the kept lines, oldest first.
func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	if l.dropped > 0 {
		fmt.Fprintf(&b, "(%d earlier lines not kept)\n", l.dropped)
	}
	for i := range l.lines {
		b.WriteString(l.lines[(l.next+i)%len(l.lines)])
		b.WriteByte('\n')
	}
	return b.String()
}

// showIfFailed logs the kept lines if t failed.
func (l *logTail) showIfFailed(t testing.TB) {
	if t.Failed() {
		t.Logf("the nodes' last log lines (info and above):\n%s", l)
	}
}
