package rpc

import (
	"testing"

	"connectrpc.com/connect"
)

// TestLimiter: per-caller and total bounds, the refusal's reason, and that
// a released slot (released twice, harmlessly) is reusable and leaves no
// entry behind.
func TestLimiter(t *testing.T) {
	l := newLimiter("queries", 3, 2, "-max-queries", "-max-queries-per-caller", reasonQueriesTotal, reasonQueriesPerCaller)
	a1, _, err := l.acquire("a")
	if err != nil {
		t.Fatal(err)
	}
	a2, _, err := l.acquire("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, reason, err := l.acquire("a"); reason != reasonQueriesPerCaller || connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a's third: %q %v, want per-caller refusal", reason, err)
	}
	b1, _, err := l.acquire("b")
	if err != nil {
		t.Fatal(err)
	}
	if _, reason, err := l.acquire("c"); reason != reasonQueriesTotal || connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("c at the total: %q %v, want total refusal", reason, err)
	}
	a1()
	a1() // a second release is a no-op
	if l.n != 2 || l.byName["a"] != 1 {
		t.Fatalf("after one release: n %d, a %d", l.n, l.byName["a"])
	}
	c1, _, err := l.acquire("c")
	if err != nil {
		t.Fatalf("c after a release: %v", err)
	}
	a2()
	b1()
	c1()
	if l.n != 0 || len(l.byName) != 0 {
		t.Fatalf("all released: n %d, map %v", l.n, l.byName)
	}
}
