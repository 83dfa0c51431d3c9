package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// Link faults. A node talks to the others over three kinds of link, each
// wrapped here by a seam that asks the cluster's network before it sends:
//
//   - raft: every shard's stream layer (dials and accepted connections);
//   - gossip: the memberlist transport (UDP packets and TCP streams);
//   - HTTP: the node-to-node client (forwarding, remote shard reads,
//     notices, replica moves).
//
// Partition isolates a node on the links it names, in both directions:
//
//   - every connection of those links that it dialed or accepted, and
//     every one another node dialed to it, is closed, so its peers see the
//     link fail at once rather than at the next timeout;
//   - new dials from it and to it are refused, connections it accepts are
//     closed before raft sees them, and gossip packets from it or to it
//     are dropped (UDP loses them silently, so does the fault layer).
//
// Partitions are keyed by node name, so they survive a node's restart; a
// destination is mapped to its node by the addresses each node registered
// when it started. Public clients (the test's own, the loaders) are never
// cut: a client on the minority's side still reaches the isolated node.

// Link is a set of link kinds.
type Link uint8

const (
	LinkRaft Link = 1 << iota
	LinkGossip
	LinkHTTP

	// AllLinks is a real network partition.
	AllLinks = LinkRaft | LinkGossip | LinkHTTP
)

// linkKinds lists the single kinds, in LinkStats order.
var linkKinds = [...]Link{LinkRaft, LinkGossip, LinkHTTP}

func (l Link) String() string {
	var parts []string
	for _, k := range linkKinds {
		if l&k == 0 {
			continue
		}
		switch k {
		case LinkRaft:
			parts = append(parts, "raft")
		case LinkGossip:
			parts = append(parts, "gossip")
		case LinkHTTP:
			parts = append(parts, "http")
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "+")
}

// index returns a single kind's position in linkKinds.
func (l Link) index() int {
	for i, k := range linkKinds {
		if k == l {
			return i
		}
	}
	panic(fmt.Sprintf("clustertest: %v is not a single link kind", l))
}

// errPartitioned is returned by a dial across a partitioned link.
var errPartitioned = errors.New("clustertest: link partitioned")

// LinkStats counts what the fault layer did to one kind of link.
type LinkStats struct {
	Open           int    // connections currently open through the fault layer
	RefusedDials   uint64 // dials refused: one end isolated
	RefusedAccepts uint64 // accepted connections closed: this end isolated (raft)
	Cut            uint64 // live connections closed by Partition
	Dropped        uint64 // packets dropped: one end isolated (gossip)
}

type linkCounters struct {
	refusedDials, refusedAccepts, cut, dropped atomic.Uint64
}

// network holds the partition state shared by every node of a cluster.
type network struct {
	mu       sync.Mutex
	isolated map[string]Link   // node name -> links cut
	owner    map[string]string // raft, gossip and HTTP addresses -> node name
	conns    map[*faultConn]struct{}

	counters [len(linkKinds)]linkCounters
}

func newNetwork() *network {
	return &network{isolated: make(map[string]Link), owner: make(map[string]string),
		conns: make(map[*faultConn]struct{})}
}

// register records that addr belongs to node name. A later node bound to
// the same address (a port reused after a restart) takes it over.
func (nw *network) register(name string, addrs ...string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, a := range addrs {
		nw.owner[a] = name
	}
}

// blockedLocked reports whether link kind k between node self and the
// node at address remote is cut. remote "" (an accepted connection's
// unknown far end) or an unknown address checks only self.
func (nw *network) blockedLocked(k Link, self, remote string) bool {
	if nw.isolated[self]&k != 0 {
		return true
	}
	peer, ok := nw.owner[remote]
	return ok && nw.isolated[peer]&k != 0
}

func (nw *network) blocked(k Link, self, remote string) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.blockedLocked(k, self, remote)
}

// isolate cuts node name off on links and closes every connection of
// those links it has an end of.
func (nw *network) isolate(name string, links Link) {
	nw.mu.Lock()
	nw.isolated[name] |= links
	var doomed []*faultConn
	for c := range nw.conns {
		if c.kind&links != 0 && (c.local == name || nw.owner[c.remote] == name) {
			doomed = append(doomed, c)
		}
	}
	nw.mu.Unlock()
	for _, c := range doomed {
		nw.counters[c.kind.index()].cut.Add(1)
		_ = c.Close()
	}
}

func (nw *network) heal(name string) {
	nw.mu.Lock()
	delete(nw.isolated, name)
	nw.mu.Unlock()
}

func (nw *network) healAll() {
	nw.mu.Lock()
	clear(nw.isolated)
	nw.mu.Unlock()
}

// admit registers conn unless its link is cut by now (a Partition may
// land between the check before a dial and the dial's return).
func (nw *network) admit(k Link, self, remote string, conn net.Conn) (net.Conn, bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.blockedLocked(k, self, remote) {
		_ = conn.Close()
		return nil, false
	}
	fc := &faultConn{Conn: conn, nw: nw, kind: k, local: self, remote: remote}
	nw.conns[fc] = struct{}{}
	return fc, true
}

// dial runs dial unless link kind k from self to remote is cut, and
// registers the connection it returns.
func (nw *network) dial(k Link, self, remote string, dial func() (net.Conn, error)) (net.Conn, error) {
	c := &nw.counters[k.index()]
	if nw.blocked(k, self, remote) {
		c.refusedDials.Add(1)
		return nil, fmt.Errorf("%w: %v %s -> %s", errPartitioned, k, self, remote)
	}
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	fc, ok := nw.admit(k, self, remote, conn)
	if !ok {
		c.refusedDials.Add(1)
		return nil, fmt.Errorf("%w: %v %s -> %s", errPartitioned, k, self, remote)
	}
	return fc, nil
}

func (nw *network) stats(k Link) LinkStats {
	nw.mu.Lock()
	open := 0
	for c := range nw.conns {
		if c.kind == k {
			open++
		}
	}
	nw.mu.Unlock()
	c := &nw.counters[k.index()]
	return LinkStats{Open: open, RefusedDials: c.refusedDials.Load(), RefusedAccepts: c.refusedAccepts.Load(),
		Cut: c.cut.Load(), Dropped: c.dropped.Load()}
}

// faultConn removes itself from the network's registry when closed, so
// the registry holds only connections still in use.
type faultConn struct {
	net.Conn
	nw            *network
	kind          Link
	local, remote string // node name, remote address ("" if accepted)
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

// faultStream wraps one shard's raft stream layer on node self.
type faultStream struct {
	raft.StreamLayer
	nw   *network
	self string
}

func (nw *network) wrapRaft(s raft.StreamLayer, self string) raft.StreamLayer {
	return &faultStream{StreamLayer: s, nw: nw, self: self}
}

func (s *faultStream) Accept() (net.Conn, error) {
	for {
		conn, err := s.StreamLayer.Accept()
		if err != nil {
			return nil, err
		}
		if fc, ok := s.nw.admit(LinkRaft, s.self, "", conn); ok {
			return fc, nil
		}
		s.nw.counters[LinkRaft.index()].refusedAccepts.Add(1)
	}
}

func (s *faultStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.nw.dial(LinkRaft, s.self, string(address), func() (net.Conn, error) {
		return s.StreamLayer.Dial(address, timeout)
	})
}

// faultGossip wraps node self's memberlist transport. Only the sending
// side checks: every packet and stream between two nodes is sent or
// dialed by one of them, and a partition is symmetric. Incoming streams
// dialed before a Partition are closed by their dialer's registry entry.
type faultGossip struct {
	*memberlist.NetTransport
	nw   *network
	self string
}

var _ memberlist.NodeAwareTransport = (*faultGossip)(nil)

func (g *faultGossip) drop(addr string) bool {
	if g.nw.blocked(LinkGossip, g.self, addr) {
		g.nw.counters[LinkGossip.index()].dropped.Add(1)
		return true
	}
	return false
}

func (g *faultGossip) WriteTo(b []byte, addr string) (time.Time, error) {
	if g.drop(addr) {
		return time.Now(), nil
	}
	return g.NetTransport.WriteTo(b, addr)
}

func (g *faultGossip) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if g.drop(a.Addr) {
		return time.Now(), nil
	}
	return g.NetTransport.WriteToAddress(b, a)
}

func (g *faultGossip) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return g.nw.dial(LinkGossip, g.self, addr, func() (net.Conn, error) {
		return g.NetTransport.DialTimeout(addr, timeout)
	})
}

func (g *faultGossip) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return g.nw.dial(LinkGossip, g.self, a.Addr, func() (net.Conn, error) {
		return g.NetTransport.DialAddressTimeout(a, timeout)
	})
}

// dialHTTP returns node self's DialContext for its node-to-node client.
func (nw *network) dialHTTP(self string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nw.dial(LinkHTTP, self, addr, func() (net.Conn, error) { return d.DialContext(ctx, network, addr) })
	}
}

// Partition cuts every link between n and the other nodes (raft, gossip
// and node-to-node HTTP), both ways, until Heal: a real network partition.
// n keeps running.
func (c *Cluster) Partition(n *Node) { c.net.isolate(n.Name, AllLinks) }

// PartitionLinks cuts only the given links of n, e.g. LinkRaft alone: n
// then still looks alive to membership and can forward ingest to the
// leaders on the other side.
func (c *Cluster) PartitionLinks(n *Node, links Link) { c.net.isolate(n.Name, links) }

// Heal ends n's partition. Raft reconnects on its own; membership's rejoin
// loop merges the two sides' member tables again.
func (c *Cluster) Heal(n *Node) { c.net.heal(n.Name) }

// HealAll ends every partition.
func (c *Cluster) HealAll() { c.net.healAll() }

// LinkStats returns the fault layer's counters for one link kind.
func (c *Cluster) LinkStats(k Link) LinkStats { return c.net.stats(k) }
