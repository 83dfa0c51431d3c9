package cluster

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// maxPeers bounds the cached clients (one per peer HTTP address).
const maxPeers = 4096

// maxBackgroundCallsPerPeer bounds the reconciler's calls in flight to one
// peer (OpenReplica, ReplicaStatus, DropReplica). A peer that gossip calls
// alive but that does not answer then holds at most this many shard steps
// until their deadline; the other shards' steps fail fast with
// ErrPeerBusy and try again next round, and every other peer is unaffected.
const maxBackgroundCallsPerPeer = 4

// peers caches Connect clients to other nodes, by HTTP address.
type peers struct {
	client  *http.Client
	opts    []connect.ClientOption // for NodeService clients
	timeout time.Duration
	scheme  string // of addresses given without one: "http://" or "https://"

	mu      sync.Mutex
	byAddr  map[string]*peer
	evicted uint64
	// busy counts background calls in flight per address (entries are
	// removed at zero, so it holds only peers being called).
	busy    map[string]int
	refused atomic.Uint64 // background calls refused: maxBackgroundCallsPerPeer in flight
}

type peer struct {
	node   nodev1connect.NodeServiceClient
	ingest scopev1connect.IngestServiceClient
}

func newPeers(client *http.Client, timeout time.Duration, tls bool, opts ...connect.ClientOption) *peers {
	scheme := "http://"
	if tls {
		scheme = "https://"
	}
	return &peers{client: client, opts: opts, timeout: timeout, scheme: scheme, byAddr: make(map[string]*peer), busy: make(map[string]int)}
}

// get returns the clients for the node serving HTTP at addr.
func (p *peers) get(addr string) (*peer, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: no HTTP address", ErrUnknownPeer)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.byAddr[addr]; ok {
		return c, nil
	}
	if len(p.byAddr) >= maxPeers {
		// Addresses of departed nodes accumulate only through churn; start
		// over rather than grow without bound.
		clear(p.byAddr)
		p.evicted++
	}
	base := addr
	if !strings.Contains(base, "://") {
		base = p.scheme + base
	}
	// No gzip between nodes: on a LAN compressing every shard read's
	// answer cost more CPU than the bytes it saved (BenchmarkRemoteEvents:
	// deflate was 18% of a remote Events query's CPU).
	noGzip := connect.WithAcceptCompression("gzip", nil, nil)
	c := &peer{
		node:   nodev1connect.NewNodeServiceClient(p.client, base, append([]connect.ClientOption{connect.WithGRPC(), noGzip}, p.opts...)...),
		ingest: scopev1connect.NewIngestServiceClient(p.client, base, connect.WithGRPC(), noGzip),
	}
	p.byAddr[addr] = c
	return c, nil
}

// call runs f against the node at addr with the per-call timeout.
func (p *peers) call(ctx context.Context, addr string, f func(context.Context, *peer) error) error {
	c, err := p.get(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return f(ctx, c)
}

// background is call for the reconciler's calls: it fails at once with
// ErrPeerBusy when maxBackgroundCallsPerPeer are in flight to addr.
func (p *peers) background(ctx context.Context, addr string, f func(context.Context, *peer) error) error {
	p.mu.Lock()
	if p.busy[addr] >= maxBackgroundCallsPerPeer {
		p.mu.Unlock()
		p.refused.Add(1)
		return fmt.Errorf("%w: %s: %d calls in flight", ErrPeerBusy, addr, maxBackgroundCallsPerPeer)
	}
	p.busy[addr]++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if p.busy[addr]--; p.busy[addr] <= 0 {
			delete(p.busy, addr)
		}
		p.mu.Unlock()
	}()
	return p.call(ctx, addr, f)
}

// openReplica asks the node at addr to open an empty replica of shard.
func (p *peers) openReplica(ctx context.Context, addr string, shard, shards uint32) error {
	return p.background(ctx, addr, func(ctx context.Context, c *peer) error {
		_, err := c.node.OpenReplica(ctx, connect.NewRequest(&nodev1.OpenReplicaRequest{Shard: shard, Shards: shards}))
		return err
	})
}

// replicaStatus asks the node at addr about its replica of shard.
func (p *peers) replicaStatus(ctx context.Context, addr string, shard uint32) (*nodev1.ReplicaStatusResponse, error) {
	var out *nodev1.ReplicaStatusResponse
	err := p.background(ctx, addr, func(ctx context.Context, c *peer) error {
		resp, err := c.node.ReplicaStatus(ctx, connect.NewRequest(&nodev1.ReplicaStatusRequest{Shard: shard}))
		if err == nil {
			out = resp.Msg
		}
		return err
	})
	return out, err
}

// dropReplica asks the node at addr to delete its replica of shard, which
// the configuration at raft index removedAt no longer lists.
func (p *peers) dropReplica(ctx context.Context, addr string, shard uint32, removedAt uint64) error {
	return p.background(ctx, addr, func(ctx context.Context, c *peer) error {
		_, err := c.node.DropReplica(ctx, connect.NewRequest(&nodev1.DropReplicaRequest{Shard: shard, RemovedAt: removedAt}))
		return err
	})
}
