package clustertest

import (
	"net/http"
	"sync"
)

// Stalled node-to-node service: a node that gossip calls alive but whose
// NodeService does not answer. Every NodeService call it receives waits
// until the caller gives up (its deadline passes or it cancels), as a hung
// process or a host that drops the port's packets would look to the
// caller. The public services still answer (forwarded ingest works), and
// raft and gossip are untouched: what meets the silence is the background
// work that calls the node (replica moves and status, notice delivery,
// orphan checks).
type stalls struct {
	mu    sync.Mutex
	on    map[string]bool              // node name -> stalled
	held  map[string]map[string]int    // node -> procedure -> calls waiting now
	total map[string]map[string]uint64 // node -> procedure -> calls stalled in all
}

func newStalls() *stalls {
	return &stalls{on: make(map[string]bool), held: make(map[string]map[string]int),
		total: make(map[string]map[string]uint64)}
}

// wrap returns node name's NodeService mount with the stall in front.
func (s *stalls) wrap(name string) func(path string, h http.Handler) (string, http.Handler) {
	return func(path string, h http.Handler) (string, http.Handler) {
		return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			if !s.on[name] {
				s.mu.Unlock()
				h.ServeHTTP(w, r)
				return
			}
			proc := r.URL.Path
			if s.held[name] == nil {
				s.held[name], s.total[name] = make(map[string]int), make(map[string]uint64)
			}
			s.held[name][proc]++
			s.total[name][proc]++
			s.mu.Unlock()
			<-r.Context().Done() // never answered: the caller gives up
			s.mu.Lock()
			s.held[name][proc]--
			s.mu.Unlock()
		})
	}
}

// StallNodeService makes the node called name (running or not yet
// started, e.g. the next AddNode's "n4") leave every NodeService call
// unanswered until its caller gives up, or answer again (on false). Calls
// already waiting stay unanswered.
func (c *Cluster) StallNodeService(name string, on bool) {
	c.stalls.mu.Lock()
	defer c.stalls.mu.Unlock()
	c.stalls.on[name] = on
}

// StalledCalls reports, for the node called name and one NodeService
// procedure (e.g. nodev1connect.NodeServiceDeliverNoticesProcedure), how
// many calls are waiting unanswered now and how many were stalled in all.
func (c *Cluster) StalledCalls(name, procedure string) (held int, total uint64) {
	c.stalls.mu.Lock()
	defer c.stalls.mu.Unlock()
	return c.stalls.held[name][procedure], c.stalls.total[name][procedure]
}
