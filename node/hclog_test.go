package node

import (
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestRoutineRaftMessages(t *testing.T) {
	for _, tc := range []struct {
		level hclog.Level
		msg   string
		args  []any
		want  hclog.Level
	}{
		{hclog.Warn, "heartbeat timeout reached, starting election", []any{"last-leader-addr", "", "last-leader-id", ""}, hclog.Info},
		{hclog.Warn, "heartbeat timeout reached, starting election", []any{"last-leader-addr", "127.0.0.1:1", "last-leader-id", "n2"}, hclog.Warn},
		{hclog.Error, "peer has newer term, stopping replication", []any{"peer", "n3"}, hclog.Info},
		{hclog.Warn, "rejecting pre-vote request since we have a leader", nil, hclog.Info},
		{hclog.Error, "failed to appendEntries to", []any{"peer", "n2", "error", "EOF"}, hclog.Error},
		{hclog.Debug, "peer has newer term, stopping replication", nil, hclog.Debug},
	} {
		if got := routine(tc.level, tc.msg, tc.args); got != tc.want {
			t.Errorf("%v %q %v: %v, want %v", tc.level, tc.msg, tc.args, got, tc.want)
		}
	}
}
