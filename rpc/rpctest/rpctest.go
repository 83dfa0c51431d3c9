// Package rpctest starts real single-node Scope servers for tests: a node
// in a temporary directory over a real raft mux on loopback, bootstrapped
// with every shard led locally, and the rpc.Server's handler on a real
// http.Server (HTTP/1.1 and unencrypted HTTP/2). The rpc and cmd tests
// share it.
package rpctest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Options configure a test node. The zero value starts node "n1" with 4
// shards and fast raft timing.
type Options struct {
	ID     string
	Shards uint32
	// Dir is the data directory; empty: t.TempDir().
	Dir string
	// EditNode and EditRPC adjust the configurations before they are used.
	EditNode func(*node.Config)
	EditRPC  func(*rpc.Config)
	// Logger for the node, store and server; nil discards logs.
	Logger *slog.Logger
}

// Node is a running single-node server and clients for it.
type Node struct {
	Node   *node.Node
	Server *rpc.Server
	Mux    *cluster.Mux
	HTTP   *http.Server
	// URL is the server's base URL (http://127.0.0.1:port).
	URL string

	// HTTP1 speaks HTTP/1.1 only (Connect); H2C speaks unencrypted HTTP/2
	// only (gRPC).
	HTTP1, H2C *http.Client
	// Connect clients over HTTP1 (Connect protocol, binary).
	Ingest  scopev1connect.IngestServiceClient
	Query   scopev1connect.QueryServiceClient
	Cluster scopev1connect.ClusterServiceClient

	serveDone chan error
	closed    bool
}

// FastTiming is raft timing for tests: elections in ~100 ms.
func FastTiming() node.RaftTiming {
	t := node.DefaultRaftTiming()
	t.HeartbeatTimeout = 100 * time.Millisecond
	t.ElectionTimeout = 100 * time.Millisecond
	t.LeaderLeaseTimeout = 50 * time.Millisecond
	t.CommitTimeout = 5 * time.Millisecond
	return t
}

// Discard is a logger that drops everything.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Start starts a node, waits until it leads every shard, and serves its
// API. t.Cleanup closes everything.
func Start(t testing.TB, o Options) *Node {
	t.Helper()
	if o.ID == "" {
		o.ID = "n1"
	}
	if o.Shards == 0 {
		o.Shards = 4
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = Discard()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mc := cluster.DefaultMuxConfig()
	mc.Logger = o.Logger
	mux, err := cluster.NewMux(ln, mc)
	if err != nil {
		_ = ln.Close()
		t.Fatal(err)
	}
	cfg := node.DefaultConfig(o.ID, o.Dir)
	cfg.RaftAddr = mux.Addr().String()
	cfg.Shards = o.Shards
	cfg.Correlator.Shards = o.Shards
	cfg.Raft = FastTiming()
	cfg.Logger = o.Logger
	cfg.Store.Logger = o.Logger
	cfg.Store.CacheSize = 8 << 20
	cfg.Store.MemTableSize = 4 << 20
	cfg.Transport = func(shard uint32) (raft.Transport, error) {
		stream, err := mux.StreamLayer(shard)
		if err != nil {
			return nil, err
		}
		return cluster.NewRaftTransport(stream, 2*time.Second, nil), nil
	}
	if o.EditNode != nil {
		o.EditNode(&cfg)
	}
	n, err := node.Open(cfg)
	if err != nil {
		_ = mux.Close()
		t.Fatal(err)
	}
	tn := &Node{Node: n, Mux: mux}
	t.Cleanup(func() { tn.Close(t) })
	if err := n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.WaitLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, "every shard led locally", 20*time.Second, func() bool {
		for _, r := range n.Replicas() {
			if !r.IsLeader() {
				return false
			}
		}
		return true
	})

	rc := rpc.DefaultConfig()
	rc.Logger = o.Logger
	rc.Limits = cfg.Correlator.Limits
	if o.EditRPC != nil {
		o.EditRPC(&rc)
	}
	srv, err := rpc.NewServer(n, rc)
	if err != nil {
		t.Fatal(err)
	}
	tn.Server = srv
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tn.HTTP = srv.HTTPServer(hl.Addr().String())
	tn.URL = "http://" + hl.Addr().String()
	tn.serveDone = make(chan error, 1)
	go func() { tn.serveDone <- tn.HTTP.Serve(hl) }()

	tn.HTTP1 = &http.Client{Transport: &http.Transport{}}
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	tn.H2C = &http.Client{Transport: &http.Transport{Protocols: &h2}}
	tn.Ingest = scopev1connect.NewIngestServiceClient(tn.HTTP1, tn.URL)
	tn.Query = scopev1connect.NewQueryServiceClient(tn.HTTP1, tn.URL)
	tn.Cluster = scopev1connect.NewClusterServiceClient(tn.HTTP1, tn.URL)
	return tn
}

// Close stops the HTTP server (ending Tail streams first), the node and
// the mux. It is idempotent.
func (n *Node) Close(t testing.TB) {
	if n.closed {
		return
	}
	n.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n.Server != nil {
		n.Server.Close()
	}
	if n.HTTP != nil {
		if err := n.HTTP.Shutdown(ctx); err != nil {
			t.Errorf("rpctest: http shutdown: %v", err)
		}
		if err := <-n.serveDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("rpctest: serve: %v", err)
		}
	}
	for _, c := range []*http.Client{n.HTTP1, n.H2C} {
		if c != nil {
			c.CloseIdleConnections()
		}
	}
	if err := n.Node.Close(ctx); err != nil {
		t.Errorf("rpctest: close node: %v", err)
	}
	_ = n.Mux.Close()
}

// WaitFor polls cond until it holds, failing t after timeout
// (testwait.For, for the tests that use this package).
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testwait.For(t, what, timeout, cond)
}

// LoadJSONL reads events, one proto3 JSON Event per line (the format of
// `scope ingest` and of the Erlang captures under correlate/testdata),
// failing t on a line that does not decode.
func LoadJSONL(t testing.TB, path string) []*scopev1.Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var evs []*scopev1.Event
	for line := 1; sc.Scan(); line++ {
		ev := new(scopev1.Event)
		if err := protojson.Unmarshal(sc.Bytes(), ev); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}
