package correlate

import "testing"

// TestLRULogBounded: the log of touches stays within a constant factor of
// the live processes however often they are touched, also when oldest()
// runs between touches (the TTL check after every batch) and a few hot
// processes keep the part after head short: the skipped prefix grew
// without bound before (a process sending a tick 50 k times a second grew
// it by 800 KB/s).
func TestLRULogBounded(t *testing.T) {
	for _, live := range []int{1, 3, 100} {
		var l lruLog
		procs := make([]*proc, live)
		for i := range procs {
			procs[i] = &proc{}
		}
		maxCap := 0
		for i := range 200_000 {
			p := procs[i%live]
			p.tick = uint64(i)
			l.push(p, live)
			if i%7 == 0 {
				if l.oldest() == nil {
					t.Fatal("no oldest live process")
				}
			}
			maxCap = max(maxCap, cap(l.q))
		}
		if bound := 4 * (2*live + 1024); maxCap > bound {
			t.Errorf("%d live processes: the log reached a capacity of %d entries, want at most %d", live, maxCap, bound)
		}
	}
}
