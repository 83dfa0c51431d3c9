// Package clustertest runs an N-node Scope cluster in one process on
// loopback: every node has its own data directory, raft mux, memberlist
// member, node-to-node API and public HTTP server, exactly as `scope agent`
// wires them. Tests drive it through the public Connect clients.
package clustertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Options shape a test cluster.
type Options struct {
	Nodes    int    // nodes started at once (bootstrap-expect)
	Shards   uint32 // default 4
	Replicas int    // default 3
	// Verbose sends node logs to stderr (so does SCOPE_TEST_LOG=1 in the
	// environment, for every cluster a test run starts).
	Verbose bool
	// StoreFaults puts every store on the fault seam Node.FailStore uses
	// (an errorfs wrapper) and makes every store apply fsync its WAL: with
	// unsynced applies pebble reports a failed WAL write by a panic that
	// the store does not turn into store.ErrFailed.
	StoreFaults bool
	// StabilizationTime is cluster.Config.StabilizationTime: 0 means
	// 300 ms (short, so that tests adding or killing nodes see replicas
	// move soon); negative disables flap damping.
	StabilizationTime time.Duration
	// RPCTimeout is cluster.Config.RPCTimeout (0: its default, 10 s).
	RPCTimeout time.Duration
	// NamePrefix names the nodes (default "n": n1, n2, ...); two clusters
	// whose gossip meets need different names.
	NamePrefix string
}

// Cluster is a running test cluster.
type Cluster struct {
	t      testing.TB
	opts   Options
	root   string
	logs   *logTail // shown when the test fails (logtail.go)
	net    *network // link faults (faults.go)
	stalls *stalls  // stalled NodeService (stall.go)
	Nodes  []*Node
	// protocols: the protocol range a node advertises, by name, where it
	// is not this build's (AddNodeSpeaking); kept across restarts.
	protocols map[string]cluster.ProtocolRange
	// shardCounts overrides Options.Shards for some nodes (AddNodeWithShards).
	shardCounts map[string]uint32
	// beforeStart, when set, runs once, on the next node started, between
	// its HTTP server and gossip coming up and its cluster layer's Start
	// (which reopens the replicas on disk).
	beforeStart func(*Node)
}

// Node is one running node of a test cluster.
type Node struct {
	Name string
	Dir  string
	// Identity is the data directory's identity (node id, cluster id,
	// epoch), as the node opened it.
	Identity *cluster.IdentityStore

	Node    *node.Node
	Mux     *cluster.Mux
	Members *cluster.Membership
	Cluster *cluster.Cluster
	Server  *rpc.Server
	HTTP    *http.Server
	URL     string

	Ingest scopev1connect.IngestServiceClient
	Query  scopev1connect.QueryServiceClient
	Admin  scopev1connect.ClusterServiceClient

	httpAddr, raftAddr, gossipAddr string
	stopped                        bool
	shardReads                     shardReadFaults // slow.go
	storeFaults                    storeFaults     // store.go
	disk                           *diskSeam       // disk.go
	applyHold                      applyHold       // store.go
}

// Start starts opts.Nodes nodes that bootstrap together and waits until
// every shard has a leader known to every node.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Shards == 0 {
		opts.Shards = 4
	}
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.NamePrefix == "" {
		opts.NamePrefix = "n"
	}
	switch {
	case opts.StabilizationTime == 0:
		opts.StabilizationTime = 300 * time.Millisecond
	case opts.StabilizationTime < 0:
		opts.StabilizationTime = 0
	}
	c := &Cluster{t: t, opts: opts, root: t.TempDir(), net: newNetwork(), stalls: newStalls(), logs: &logTail{}}
	t.Cleanup(c.Close)
	t.Cleanup(func() { c.logs.showIfFailed(t) }) // runs first: before the nodes stop
	for i := range opts.Nodes {
		c.Nodes = append(c.Nodes, c.startNode(fmt.Sprintf("%s%d", opts.NamePrefix, i+1), opts.Nodes, "", "", ""))
	}
	c.WaitReady(60 * time.Second)
	return c
}

// AddNode starts a new node that joins the cluster through the first live
// node's gossip address.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	n := c.startNode(fmt.Sprintf("%s%d", c.opts.NamePrefix, len(c.Nodes)+1), 0, "", "", "")
	c.Nodes = append(c.Nodes, n)
	return n
}

// AddNodeSpeaking is AddNode for a node that advertises the protocol range
// r instead of this build's: a node of another release, as far as the
// cluster's version negotiation can tell (its formats stay this build's).
func (c *Cluster) AddNodeSpeaking(r cluster.ProtocolRange) *Node {
	c.t.Helper()
	if c.protocols == nil {
		c.protocols = make(map[string]cluster.ProtocolRange)
	}
	c.protocols[fmt.Sprintf("%s%d", c.opts.NamePrefix, len(c.Nodes)+1)] = r
	return c.AddNode()
}

// AddNodeWithShards is AddNode for a node started with shards shards
// instead of the cluster's: a misconfigured node.
func (c *Cluster) AddNodeWithShards(shards uint32) *Node {
	c.t.Helper()
	if c.shardCounts == nil {
		c.shardCounts = make(map[string]uint32)
	}
	c.shardCounts[fmt.Sprintf("%s%d", c.opts.NamePrefix, len(c.Nodes)+1)] = shards
	return c.AddNode()
}

// shardsOf returns the shard count node name was started with.
func (c *Cluster) shardsOf(name string) uint32 {
	if s, ok := c.shardCounts[name]; ok {
		return s
	}
	return c.opts.Shards
}

// seeds returns the gossip addresses of the live nodes.
func (c *Cluster) seeds() []string {
	var out []string
	for _, n := range c.Nodes {
		if !n.stopped {
			out = append(out, n.gossipAddr)
		}
	}
	return out
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	// A restarted node reuses its ports; the old sockets may linger briefly.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func (c *Cluster) logger(name string) *slog.Logger {
	var w io.Writer = c.logs
	if c.opts.Verbose || os.Getenv("SCOPE_TEST_LOG") == "1" {
		w = io.MultiWriter(os.Stderr, c.logs)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
}

// startNode starts (or restarts, with fixed addresses) one node.
func (c *Cluster) startNode(name string, expect int, httpAddr, raftAddr, gossipAddr string) *Node {
	t := c.t
	t.Helper()
	logger := c.logger(name)
	dir := filepath.Join(c.root, name)
	raftLn := listen(t, raftAddr)
	httpLn := listen(t, httpAddr)
	mux, err := cluster.NewMux(raftLn, cluster.DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{Name: name, Dir: dir, Mux: mux, httpAddr: httpLn.Addr().String(), raftAddr: raftLn.Addr().String(),
		disk: newDiskSeam()}
	c.net.register(name, n.raftAddr, n.httpAddr)

	ncfg := node.DefaultConfig(name, dir)
	ncfg.RaftAddr = n.raftAddr
	ncfg.Shards = c.shardsOf(name)
	ncfg.Logger = logger
	ncfg.Store.Logger = logger
	ncfg.BeforeApply = n.applyHold.wait
	if c.opts.StoreFaults {
		ncfg.Store.FS = n.storeFaults.wrap(vfs.Default)
		ncfg.Store.Sync = true
	}
	ncfg.Disk.Usage = n.disk.usage
	ncfg.Disk.Interval = 10 * time.Millisecond
	ncfg.Disk.Reserve = 0 // the node tests cover it; no 64 MiB file per test node
	ncfg.Raft.HeartbeatTimeout = 300 * time.Millisecond
	ncfg.Raft.ElectionTimeout = 300 * time.Millisecond
	ncfg.Raft.LeaderLeaseTimeout = 150 * time.Millisecond
	ncfg.Raft.CommitTimeout = 5 * time.Millisecond
	ncfg.CommitTimeout = 10 * time.Second
	ncfg.Transport = func(shard uint32) (raft.Transport, error) {
		stream, err := mux.StreamLayer(shard)
		if err != nil {
			return nil, err
		}
		return cluster.NewRaftTransport(c.net.wrapRaft(stream, name), 5*time.Second, nil), nil
	}
	n.Node, err = node.Open(ncfg)
	if err != nil {
		t.Fatal(err)
	}

	gossip := c.gossipTransport(name, gossipAddr, logger)
	mcfg := cluster.DefaultMembershipConfig()
	mcfg.Name = name
	mcfg.BindAddr = gossip.addr
	mcfg.Profile = cluster.ProfileLocal
	mcfg.RejoinInterval = 500 * time.Millisecond
	mcfg.DeadNodeReclaimTime = 100 * time.Millisecond
	mcfg.UpdateTimeout = time.Second
	mcfg.Logger = logger
	mcfg.Tune = func(mc *memberlist.Config) {
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 150 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.PushPullInterval = 2 * time.Second
		mc.TCPTimeout = time.Second
		mc.Transport = gossip.transport
		mc.BindPort, mc.AdvertisePort = gossip.port, gossip.port
	}
	hosted, err := n.Node.HostedShards()
	if err != nil {
		t.Fatal(err)
	}
	if n.Identity, err = cluster.OpenIdentity(dir); err != nil {
		t.Fatal(err)
	}
	id := n.Identity.Get()
	n.Members, err = cluster.NewMembership(mcfg, cluster.Meta{Name: name, HTTPAddr: n.httpAddr,
		RaftAddr: n.raftAddr, Version: "test", Shards: c.shardsOf(name), Formed: len(hosted) > 0, HoldsReplicas: len(hosted) > 0,
		NodeID: id.NodeID, ClusterID: id.ClusterID, Epoch: id.Epoch, Run: n.Identity.Run(), Protocol: c.protocols[name]})
	if err != nil {
		t.Fatal(err)
	}
	n.gossipAddr = n.Members.Addr()
	if seeds := c.seeds(); len(seeds) > 0 {
		if _, err := n.Members.Join(seeds); err != nil {
			t.Fatalf("%s: join %v: %v", name, seeds, err)
		}
	}

	ccfg := cluster.DefaultConfig(name)
	ccfg.RaftAddr = n.raftAddr
	ccfg.Shards = c.shardsOf(name)
	ccfg.Replicas = c.opts.Replicas
	ccfg.BootstrapExpect = expect
	ccfg.ReconcileInterval = 200 * time.Millisecond
	// Founders bootstrap within a second of one another on loopback; the
	// window keeps a slow one under -race from taking the others for an
	// existing cluster. A node that lost its data is replaced soon.
	ccfg.FormationWindow = 5 * time.Second
	ccfg.LostVoterGrace = 3 * time.Second
	// Loopback calls return in milliseconds: a leader's open-then-add takes
	// far less than this, and tests need not wait the default 30 s.
	ccfg.OrphanGrace = 2 * time.Second
	ccfg.StabilizationTime = c.opts.StabilizationTime
	if c.opts.RPCTimeout > 0 {
		ccfg.RPCTimeout = c.opts.RPCTimeout
	}
	ccfg.Identity = n.Identity
	ccfg.HTTPClient = c.peerClient(name)
	ccfg.Logger = logger
	n.Cluster, err = cluster.New(ccfg, n.Node, n.Members)
	if err != nil {
		t.Fatal(err)
	}

	rcfg := rpc.DefaultConfig()
	rcfg.Logger = logger
	n.Server, err = rpc.NewServer(n.Node, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	n.Server.SetResolver(n.Cluster.Resolver(rpc.LocalResolver(n.Node)))
	n.Server.SetCluster(n.Cluster.Info())
	n.Server.SetTailSources(n.Cluster.TailSources())
	n.Server.Mount(c.stalls.wrap(name)(n.shardReads.wrap(n.Cluster.Handler())))
	n.HTTP = n.Server.HTTPServer(n.httpAddr)
	go func() { _ = n.HTTP.Serve(httpLn) }()
	n.URL = "http://" + n.httpAddr
	if hook := c.beforeStart; hook != nil {
		c.beforeStart = nil
		hook(n)
	}
	if err := n.Cluster.Start(); err != nil {
		t.Fatal(err)
	}

	client := &http.Client{}
	n.Ingest = scopev1connect.NewIngestServiceClient(client, n.URL)
	n.Query = scopev1connect.NewQueryServiceClient(client, n.URL)
	n.Admin = scopev1connect.NewClusterServiceClient(client, n.URL)
	return n
}

// boundGossip is a node's gossip transport, bound before memberlist starts
// so that the fault layer sits under it.
type boundGossip struct {
	transport *faultGossip
	addr      string // ip:port bound
	port      int
}

// gossipTransport binds node name's memberlist transport on addr
// (127.0.0.1:0 if empty) and registers the address bound.
func (c *Cluster) gossipTransport(name, addr string, logger *slog.Logger) boundGossip {
	c.t.Helper()
	port := 0
	if addr != "" {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			c.t.Fatal(err)
		}
		if port, err = strconv.Atoi(p); err != nil {
			c.t.Fatal(err)
		}
	}
	cfg := &memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: port,
		Logger: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	// A kernel-chosen TCP port may be taken for UDP: try a few, as
	// memberlist.Create does for its own transport.
	nt, err := memberlist.NewNetTransport(cfg)
	for try := 0; err != nil && port == 0 && try < 10; try++ {
		nt, err = memberlist.NewNetTransport(cfg)
	}
	if err != nil {
		c.t.Fatalf("%s: gossip transport: %v", name, err)
	}
	port = nt.GetAutoBindPort()
	bound := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c.net.register(name, bound)
	return boundGossip{transport: &faultGossip{NetTransport: nt, nw: c.net, self: name}, addr: bound, port: port}
}

// peerClient returns node name's node-to-node HTTP client: the cluster
// package's default (HTTP/1.1 and cleartext HTTP/2) dialing through the
// fault layer.
func (c *Cluster) peerClient(name string) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	t.MaxIdleConnsPerHost = 16
	t.DialContext = c.net.dialHTTP(name)
	return &http.Client{Transport: t}
}

// Stop stops a node abruptly, as a crash would look to the others: no
// leave, no leadership transfer. Its data directory stays.
func (c *Cluster) Stop(n *Node) {
	c.t.Helper()
	if n.stopped {
		return
	}
	n.stopped = true
	_ = n.Members.Shutdown()
	n.Server.Close()
	_ = n.HTTP.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = n.Cluster.Close(ctx)
	_ = n.Node.Close(ctx)
	_ = n.Mux.Close()
}

// Restart starts a stopped node again on its data directory and addresses.
func (c *Cluster) Restart(n *Node) *Node {
	c.t.Helper()
	if !n.stopped {
		c.t.Fatalf("%s is running", n.Name)
	}
	fresh := c.startNode(n.Name, 0, n.httpAddr, n.raftAddr, "")
	for i, old := range c.Nodes {
		if old == n {
			c.Nodes[i] = fresh
		}
	}
	return fresh
}

// RestartWiped starts a stopped node again under its name and addresses
// with an empty data directory (its disk lost or replaced), with
// bootstrap-expect set to expect, as an unchanged unit file would.
func (c *Cluster) RestartWiped(n *Node, expect int) *Node {
	c.t.Helper()
	if !n.stopped {
		c.t.Fatalf("%s is running", n.Name)
	}
	if err := os.RemoveAll(n.Dir); err != nil {
		c.t.Fatal(err)
	}
	fresh := c.startNode(n.Name, expect, n.httpAddr, n.raftAddr, "")
	for i, old := range c.Nodes {
		if old == n {
			c.Nodes[i] = fresh
		}
	}
	return fresh
}

// Live returns the running nodes.
func (c *Cluster) Live() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if !n.stopped {
			out = append(out, n)
		}
	}
	return out
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		c.Stop(n)
	}
}

// WaitReady waits until every live node answers /readyz with 200: every
// shard has a leader that node knows of.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.t.Helper()
	WaitFor(c.t, "cluster ready", timeout, func() bool {
		for _, n := range c.Live() {
			resp, err := http.Get(n.URL + "/readyz")
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	})
}

// WaitShardLeader waits up to 30 s for a live node to lead shard and
// returns it. Use it rather than ShardLeader outside a wait: leadership
// balancing moves leaders after a start or a join, and a shard has no
// leader for the moment of each transfer.
func (c *Cluster) WaitShardLeader(shard uint32) *Node {
	c.t.Helper()
	var l *Node
	WaitFor(c.t, fmt.Sprintf("a leader of shard %d", shard), 30*time.Second, func() bool {
		l = c.ShardLeader(shard)
		return l != nil
	})
	return l
}

// ShardLeader returns the live node whose replica leads shard, or nil.
func (c *Cluster) ShardLeader(shard uint32) *Node {
	for _, n := range c.Live() {
		if r := n.Node.Replica(shard); r != nil && r.IsLeader() {
			return n
		}
	}
	return nil
}

// WaitFor polls cond until it holds, failing t after timeout
// (testwait.For, for the tests that use this package).
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testwait.For(t, what, timeout, cond)
}

// WaitForWhy is WaitFor for a condition that says why it does not hold
// yet ("" once it holds): a timeout reports the last reason.
func WaitForWhy(t testing.TB, what string, timeout time.Duration, why func() string) {
	t.Helper()
	testwait.ForWhy(t, what, timeout, why)
}

// Code returns err's Connect code (connect.CodeUnknown for non-Connect
// errors, 0 for nil).
func Code(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}
