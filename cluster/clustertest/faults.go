package clustertest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Raft link faults. Every node's raft transport runs over a stream layer
// that asks the cluster's Network before each dial and each accepted
// connection, and registers every connection it hands to raft. Partition
// isolates one node's raft traffic in both directions:
//
//   - every connection the node dialed or accepted is closed, and every
//     connection another node dialed to it, so its peers see the link fail
//     at once rather than at the next timeout;
//   - new dials from it and to it are refused, and connections it accepts
//     are closed before raft sees them.
//
// Only raft is cut. Gossip and the node-to-node HTTP API keep working, so
// the isolated node still looks alive to placement and can forward ingest
// to the leaders on the majority side: the case where raft, not
// membership, must keep the minority from committing. Partitions are keyed
// by raft address, so they survive a node's restart.

// errPartitioned is returned by a dial across a partitioned link.
var errPartitioned = errors.New("clustertest: raft link partitioned")

// LinkStats counts what the fault layer did to raft connections.
type LinkStats struct {
	Open           int    // connections currently handed to raft
	RefusedDials   uint64 // dials refused: one end isolated
	RefusedAccepts uint64 // accepted connections closed: this end isolated
	Cut            uint64 // live connections closed by Partition
}

// network holds the partition state shared by every node of a cluster.
type network struct {
	mu       sync.Mutex
	isolated map[string]bool // raft addresses
	conns    map[*faultConn]struct{}

	refusedDials, refusedAccepts, cut atomic.Uint64
}

func newNetwork() *network {
	return &network{isolated: make(map[string]bool), conns: make(map[*faultConn]struct{})}
}

// blockedLocked reports whether the link between raft addresses a and b
// (b may be "" for an accepted connection's unknown remote end) is cut.
func (nw *network) blockedLocked(a, b string) bool {
	return nw.isolated[a] || (b != "" && nw.isolated[b])
}

// isolate cuts addr off and closes every connection it has an end of.
func (nw *network) isolate(addr string) {
	nw.mu.Lock()
	nw.isolated[addr] = true
	var doomed []*faultConn
	for c := range nw.conns {
		if c.local == addr || c.remote == addr {
			doomed = append(doomed, c)
		}
	}
	nw.mu.Unlock()
	for _, c := range doomed {
		nw.cut.Add(1)
		_ = c.Close()
	}
}

func (nw *network) heal(addr string) {
	nw.mu.Lock()
	delete(nw.isolated, addr)
	nw.mu.Unlock()
}

func (nw *network) healAll() {
	nw.mu.Lock()
	clear(nw.isolated)
	nw.mu.Unlock()
}

// admit registers conn unless its link is cut by now (a Partition may
// land between the check before a dial and the dial's return).
func (nw *network) admit(local, remote string, conn net.Conn) (net.Conn, bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.blockedLocked(local, remote) {
		_ = conn.Close()
		return nil, false
	}
	fc := &faultConn{Conn: conn, nw: nw, local: local, remote: remote}
	nw.conns[fc] = struct{}{}
	return fc, true
}

func (nw *network) stats() LinkStats {
	nw.mu.Lock()
	open := len(nw.conns)
	nw.mu.Unlock()
	return LinkStats{Open: open, RefusedDials: nw.refusedDials.Load(),
		RefusedAccepts: nw.refusedAccepts.Load(), Cut: nw.cut.Load()}
}

// faultConn removes itself from the network's registry when closed, so
// the registry holds only connections raft still uses.
type faultConn struct {
	net.Conn
	nw            *network
	local, remote string
	once          sync.Once
}

func (c *faultConn) Close() error {
	c.once.Do(func() {
		c.nw.mu.Lock()
		delete(c.nw.conns, c)
		c.nw.mu.Unlock()
	})
	return c.Conn.Close()
}

// faultStream wraps one shard's raft stream layer on the node whose raft
// address is self.
type faultStream struct {
	raft.StreamLayer
	nw   *network
	self string
}

func (nw *network) wrap(s raft.StreamLayer, self string) raft.StreamLayer {
	return &faultStream{StreamLayer: s, nw: nw, self: self}
}

func (s *faultStream) Accept() (net.Conn, error) {
	for {
		conn, err := s.StreamLayer.Accept()
		if err != nil {
			return nil, err
		}
		if fc, ok := s.nw.admit(s.self, "", conn); ok {
			return fc, nil
		}
		s.nw.refusedAccepts.Add(1)
	}
}

func (s *faultStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	s.nw.mu.Lock()
	blocked := s.nw.blockedLocked(s.self, string(address))
	s.nw.mu.Unlock()
	if blocked {
		s.nw.refusedDials.Add(1)
		return nil, fmt.Errorf("%w: %s -> %s", errPartitioned, s.self, address)
	}
	conn, err := s.StreamLayer.Dial(address, timeout)
	if err != nil {
		return nil, err
	}
	fc, ok := s.nw.admit(s.self, string(address), conn)
	if !ok {
		s.nw.refusedDials.Add(1)
		return nil, fmt.Errorf("%w: %s -> %s", errPartitioned, s.self, address)
	}
	return fc, nil
}

// Partition cuts n's raft traffic with every other node, both ways, until
// Heal. n keeps running; gossip and HTTP are not affected.
func (c *Cluster) Partition(n *Node) { c.net.isolate(n.raftAddr) }

// Heal ends n's partition. Raft reconnects on its own.
func (c *Cluster) Heal(n *Node) { c.net.heal(n.raftAddr) }

// HealAll ends every partition.
func (c *Cluster) HealAll() { c.net.healAll() }

// LinkStats returns the fault layer's counters.
func (c *Cluster) LinkStats() LinkStats { return c.net.stats() }
