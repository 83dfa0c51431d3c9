package clustertest

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
)

// shardReadFaults slows the shard reads a node answers for other nodes
// (NodeService.ShardRead): a replica on a busy disk or behind a congested
// link, for hedged-read tests. Other node-to-node calls are untouched.
type shardReadFaults struct {
	delay     atomic.Int64 // ns; 0: none
	delayed   atomic.Uint64
	cancelled atomic.Uint64
}

// wrap returns the NodeService mount with the fault in front of it.
func (f *shardReadFaults) wrap(path string, h http.Handler) (string, http.Handler) {
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := time.Duration(f.delay.Load()); d > 0 && r.URL.Path == nodev1connect.NodeServiceShardReadProcedure {
			f.delayed.Add(1)
			t := time.NewTimer(d)
			select {
			case <-r.Context().Done():
				// The caller gave up (its hedge won): the read is never run.
				t.Stop()
				f.cancelled.Add(1)
				return
			case <-t.C:
			}
		}
		h.ServeHTTP(w, r)
	})
}

// SlowShardReads delays every shard read n answers for another node by d
// (0 restores them).
func (n *Node) SlowShardReads(d time.Duration) { n.shardReads.delay.Store(int64(d)) }

// ShardReadFaults reports how many shard reads n delayed and how many of
// those its caller cancelled while they waited.
func (n *Node) ShardReadFaults() (delayed, cancelled uint64) {
	return n.shardReads.delayed.Load(), n.shardReads.cancelled.Load()
}
