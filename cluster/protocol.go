package cluster

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// Protocol versions (docs/DECISIONS.md D34). Everything one node writes and
// another reads, other than gossip metadata (which has its own format
// version, see meta.go), is one numbered protocol: raft command entries,
// raft snapshot streams, and the node-to-node NodeService messages. A build
// reads and writes a range of protocol versions, advertises it in its
// gossip metadata, and:
//
//   - takes part in placement only while its range contains the cluster's
//     protocol (clusterProtocol): a node that cannot read what the cluster
//     writes is never given a replica, and says so (ProtocolError, /readyz,
//     a log line, scope members);
//   - stamps every NodeService request with the version it is written in
//     (ProtocolHeader) and refuses requests in a version it does not read,
//     with FAILED_PRECONDITION naming both.
//
// A format change therefore lands in two releases: release N learns to read
// the new version (its range grows to include it) while still writing the
// old one; once every member runs N, the cluster's protocol is the new
// version and nodes write it; release N+1 may drop the old version. A
// rolling upgrade skips no release (docs/OPERATIONS.md, Upgrades).

// ProtocolRange is the range of protocol versions a node reads and writes,
// Min to Max inclusive; versions start at 1.
type ProtocolRange struct{ Min, Max uint8 }

// BuildProtocol is this build's range: protocol 1 is raft command entry
// version 1, shard snapshot stream version 2 and NodeService v1 with the
// shard-read page and edges_many reads. Protocol 2 adds online resharding
// (docs/DECISIONS.md D39): raft entry version 2 (a split's preparation,
// the split, a handoff), NodeService.Split and Adopt, and the replica status
// of a split; the cluster reshards only once it speaks 2.
var BuildProtocol = ProtocolRange{Min: 1, Max: 2}

// ReshardProtocol is the protocol version resharding needs every member to
// read.
const ReshardProtocol = 2

// legacyProtocol is the range of a node that predates protocol versions
// (its metadata has no protocol section): it speaks protocol 1.
var legacyProtocol = ProtocolRange{Min: 1, Max: 1}

// Valid reports whether r is a non-empty range of versions from 1.
func (r ProtocolRange) Valid() bool { return r.Min >= 1 && r.Min <= r.Max }

// Contains reports whether r includes version v.
func (r ProtocolRange) Contains(v uint8) bool { return r.Min <= v && v <= r.Max }

func (r ProtocolRange) String() string {
	if r.Min == r.Max {
		return fmt.Sprint(r.Min)
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}

// writes is the version a node of range r writes when the cluster speaks
// v: v itself if r contains it, otherwise the nearest version r has (which
// the cluster's nodes then refuse, naming both).
func (r ProtocolRange) writes(v uint8) uint8 {
	return min(max(v, r.Min), r.Max)
}

// clusterProtocol returns the protocol version a cluster of these members
// speaks. Only live members count (alive,
// decodable, not leaving); among them, the members holding replicas decide
// if there are any, since they are the cluster that already exists: the
// version is the one the most of them read, the highest among equals. So a
// newcomer (holding nothing) can never move the cluster's version, a
// rolling upgrade moves it only once every holder reads the new version,
// and a lone holder restarted with a build that skipped a release is the
// one left out. 0 if no member counts.
func clusterProtocol(members []Member) uint8 {
	var live, holders []ProtocolRange
	for _, m := range members {
		if m.State != MemberAlive || m.MetaErr != nil || m.Meta.Leaving {
			continue
		}
		live = append(live, m.Meta.Protocol)
		if m.Meta.HoldsReplicas {
			holders = append(holders, m.Meta.Protocol)
		}
	}
	if len(holders) > 0 {
		live = holders
	}
	// How many ranges contain v changes only at range ends, and falls just
	// past a Max: the best version is one of the Maxes.
	best, bestN := uint8(0), 0
	for _, c := range live {
		n := 0
		for _, r := range live {
			if r.Contains(c.Max) {
				n++
			}
		}
		if n > bestN || (n == bestN && c.Max > best) {
			best, bestN = c.Max, n
		}
	}
	return best
}

// speaksProtocol reports whether m can take part in a cluster speaking v
// (0: no version known yet, so nobody is excluded).
func speaksProtocol(m Member, v uint8) bool { return v == 0 || m.Meta.Protocol.Contains(v) }

// protocolMismatched returns the live members (decodable, alive) whose
// range does not contain v, in the order given.
func protocolMismatched(members []Member, v uint8) []Member {
	var out []Member
	for _, m := range members {
		if m.State == MemberAlive && m.MetaErr == nil && !speaksProtocol(m, v) {
			out = append(out, m)
		}
	}
	return out
}

// protocolMismatch describes protocolMismatched for logs and errors:
// "n4 (2-3)", sorted by name.
func protocolMismatch(members []Member, v uint8) string {
	var out []string
	for _, m := range protocolMismatched(members, v) {
		out = append(out, fmt.Sprintf("%s (%s)", m.Name, m.Meta.Protocol))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// placeable returns the members of this cluster that speak its protocol,
// in order: those placement may choose.
func (c *Cluster) placeable(members []Member) []Member {
	members = c.sameCluster(members)
	v := clusterProtocol(members)
	out := members[:0:0]
	for _, m := range members {
		if speaksProtocol(m, v) {
			out = append(out, m)
		}
	}
	return out
}

// protocolRound runs before every round: it records the cluster's protocol
// version and says, once per change, which members cannot speak it (this
// node included: then ProtocolError says why, and /readyz with it).
func (c *Cluster) protocolRound() {
	members := c.sameCluster(c.members.Members())
	v := clusterProtocol(members)
	self := c.selfProtocol
	var selfErr error
	if v != 0 && !self.Contains(v) {
		selfErr = fmt.Errorf("%w: this node reads and writes protocol %s, the cluster speaks %d (every member but %s): "+
			"it takes no replicas and its requests are refused; run a release that speaks protocol %d "+
			"(docs/OPERATIONS.md, Upgrades)", ErrProtocol, self, v, protocolMismatch(members, v), v)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes.Store(uint32(self.writes(v)))
	if v != c.protocol {
		if c.protocol != 0 && v != 0 {
			c.logger.Info("the cluster's protocol version changed", "from", c.protocol, "to", v, "this_node_reads", self.String())
		}
		c.protocol = v
	}
	if selfErr != nil && c.protocolErr == nil {
		c.logger.Error("this node cannot speak the cluster's protocol version", "err", selfErr)
	}
	c.protocolErr = selfErr
	if c.protocolWarned == nil {
		c.protocolWarned = make(map[string]ProtocolRange)
	}
	seen := make(map[string]bool)
	for _, m := range protocolMismatched(members, v) {
		if m.Name == c.cfg.Name || selfErr != nil {
			continue
		}
		seen[m.Name] = true
		if c.protocolWarned[m.Name] == m.Meta.Protocol {
			continue
		}
		c.protocolWarned[m.Name] = m.Meta.Protocol
		c.logger.Warn("a member cannot speak the cluster's protocol version: it is given no replicas and its requests are refused "+
			"until it runs a release that speaks it (docs/OPERATIONS.md, Upgrades)",
			"member", m.Name, "reads", m.Meta.Protocol.String(), "cluster", v)
	}
	for name := range c.protocolWarned {
		if !seen[name] {
			delete(c.protocolWarned, name)
		}
	}
}

// Protocol returns the cluster's protocol version as last computed (0
// before the first round), and the version this node writes: the same, if
// it speaks it.
func (c *Cluster) Protocol() (cluster, writes uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.protocol, uint8(c.writes.Load())
}

// ProtocolError says why this node cannot take part in the cluster (it
// does not speak the cluster's protocol version), or nil.
func (c *Cluster) ProtocolError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.protocolErr
}

// ProtocolHeader carries, on every NodeService request, the protocol
// version the request is written in. A request without it comes from a
// node that predates protocol versions: version 1.
const ProtocolHeader = "Scope-Protocol"

// protocolInterceptor stamps outgoing NodeService requests with the version
// this node writes, and refuses incoming ones in a version it does not
// read, with FAILED_PRECONDITION naming both (counted).
type protocolInterceptor struct{ c *Cluster }

func (p protocolInterceptor) stamp(h http.Header) {
	// Read without a lock: this runs on every node-to-node request.
	h.Set(ProtocolHeader, strconv.Itoa(int(p.c.writes.Load())))
}

func (p protocolInterceptor) check(h http.Header) error {
	v := uint64(1)
	if s := h.Get(ProtocolHeader); s != "" {
		var err error
		if v, err = strconv.ParseUint(s, 10, 8); err != nil {
			v = 0 // no version: refused below, naming what was sent
		}
	}
	self := p.c.selfProtocol
	if v >= 1 && self.Contains(uint8(v)) {
		return nil
	}
	p.c.metrics.protocolRefused.Inc()
	err := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
		"%w: the request is in protocol %q, node %s reads %s: the sending node must run a release that speaks protocol %s (docs/OPERATIONS.md, Upgrades)",
		ErrProtocol, h.Get(ProtocolHeader), p.c.cfg.Name, self, self))
	// The refusal says which versions this node reads: the caller then
	// knows it is final, not a shard between leaders (remoteError).
	err.Meta().Set(ProtocolHeader, self.String())
	return err
}

func (p protocolInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			p.stamp(req.Header())
		} else if err := p.check(req.Header()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (p protocolInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		p.stamp(conn.RequestHeader())
		return conn
	}
}

func (p protocolInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := p.check(conn.RequestHeader()); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
