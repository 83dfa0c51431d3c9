package testwait

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeT records a Fatalf and ends its goroutine, as testing.T does.
type fakeT struct {
	testing.TB
	failed string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestForReturnsOnceTheConditionHolds(t *testing.T) {
	var polls atomic.Int32
	start := time.Now()
	For(t, "the third poll", time.Minute, func() bool { return polls.Add(1) >= 3 })
	if polls.Load() != 3 || time.Since(start) > time.Second {
		t.Fatalf("%d polls in %v, want 3 at once", polls.Load(), time.Since(start))
	}
}

func TestForWhyFailsAfterTheTimeoutWithTheReason(t *testing.T) {
	f := &fakeT{TB: t}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ForWhy(f, "the answer", 50*time.Millisecond, func() string { return "still 41" })
	}()
	<-done
	if !strings.Contains(f.failed, "waiting for the answer: still 41") || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("failed %q after %v; want the reason, after the timeout", f.failed, time.Since(start))
	}
}
