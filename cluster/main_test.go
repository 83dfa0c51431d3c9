package cluster

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// A memberlist probe under way when its member shuts down waits out
		// its timeout (up to a probe interval, 1 s on a LAN) before it
		// returns. A member that was not shut down leaves its listeners and
		// timers, which are still reported.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
