// Package testwait is the one way Scope's tests wait: poll a condition
// until it holds, failing the test after a deadline. Tests never sleep a
// fixed time; they wait for what they need, as long as it takes and no
// longer, and a timeout says what was awaited.
package testwait

import (
	"testing"
	"time"
)

// maxInterval bounds the polling interval, which starts at 100 µs and
// doubles: fast conditions (a ring consumer waking) are seen at once, slow
// ones (a raft election) cost few polls.
const maxInterval = 20 * time.Millisecond

// For polls cond until it holds, failing t after timeout.
func For(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	ForWhy(t, what, timeout, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	})
}

// ForWhy is For for a condition that says why it does not hold yet ("" once
// it holds): a timeout reports the last reason.
func ForWhy(t testing.TB, what string, timeout time.Duration, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 100 * time.Microsecond
	for {
		reason := why()
		if reason == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, reason)
		}
		time.Sleep(interval)
		interval = min(2*interval, maxInterval)
	}
}
