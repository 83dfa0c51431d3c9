// Package rpc serves Scope's public API (scope.v1, Connect/gRPC/gRPC-Web)
// on one HTTP handler together with gRPC health, server reflection,
// Prometheus metrics and the /healthz and /readyz probes.
//
// Queries reach shards through a Resolver (reader.go): on a single node
// every shard is local; the cluster layer extends it with remote readers.
// Internal errors become Connect codes in one place (errors.go).
package rpc

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/elixirscope/scope/node"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/ui"
)

// Server is a node's public API.
type Server struct {
	node    *node.Node
	cluster ClusterInfo // nil on a one-node cluster
	// tailSources reaches other nodes' replicas for Tail (nil: local only).
	tailSources TailSources
	mounts      []mount // extra handlers (the node-to-node API)
	cfg         Config
	logger      *slog.Logger
	planner     *planner
	metrics     *metrics
	started     time.Time

	ingested, refused atomic.Uint64 // events, for NodeStats
	tails             prometheus.Gauge

	// queries and tailLimit bound calls in flight (limits.go).
	queries, tailLimit *limiter

	done      chan struct{} // closed by Close: ends Tail streams
	closeOnce sync.Once
}

// NewServer returns the API server of n. Its metrics are registered on
// n.Metrics().Registry().
func NewServer(n *node.Node, cfg Config) (*Server, error) {
	if n == nil {
		return nil, fmt.Errorf("%w: node: required", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(n.Metrics().Registry())
	if err != nil {
		return nil, err
	}
	s := &Server{node: n, cfg: cfg, logger: cfg.Logger, metrics: m, started: time.Now(),
		tails: m.tails, done: make(chan struct{})}
	s.queries = newLimiter("queries", cfg.MaxQueries, cfg.MaxQueriesPerCaller, "-max-queries", "-max-queries-per-caller",
		reasonQueriesTotal, reasonQueriesPerCaller)
	s.tailLimit = newLimiter("Tail streams", cfg.MaxTails, cfg.MaxTailsPerCaller, "-max-tails", "-max-tails-per-caller",
		reasonTailsTotal, reasonTailsPerCaller)
	s.planner = &planner{res: localResolver{n: n}, layout: n.Layout, cfg: &s.cfg, logger: cfg.Logger,
		hedges: m.hedges, hedgeWins: m.hedgeWins, memoryCuts: m.memoryCuts}
	return s, nil
}

// SetResolver replaces the shard resolver (the cluster layer installs one
// that reaches remote replicas). Call it before serving.
func (s *Server) SetResolver(r Resolver) { s.planner.res = r }

// Close ends live Tail streams so that an http.Server's Shutdown can
// finish. Unary calls in flight complete normally.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.done) }) }

// fail maps err to the Connect error the client sees (errors.go).
func (s *Server) fail(procedure string, err error) error {
	return toConnect(s.logger, procedure, err)
}

// compressMinBytes is the smallest response message the server gzips.
const compressMinBytes = 1024

// Handler returns the one mux serving the three scope.v1 services, gRPC
// health, reflection (v1 and v1alpha), /metrics, /healthz, /readyz and the
// web UI under /ui/.
func (s *Server) Handler() http.Handler {
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(s.cfg.MaxRequestBytes),
		connect.WithInterceptors(s.metrics.interceptor(), limitsInterceptor{s}),
		// Compress (when the client accepts gzip) only answers big enough
		// for it to pay: small ones cost CPU and save nothing.
		connect.WithCompressMinBytes(compressMinBytes),
		// gzip at its fastest level: a large answer (a 10,000-frame call
		// tree is ~9 MB of JSON) is compressed several times faster than at
		// the default level, for output ~15% larger (docs/BENCHMARKS.md,
		// Web UI).
		connect.WithCompression("gzip", newGzipDecompressor, newFastGzipCompressor),
	}
	mux := http.NewServeMux()
	mux.Handle(scopev1connect.NewIngestServiceHandler(ingestService{s}, opts...))
	mux.Handle(scopev1connect.NewQueryServiceHandler(queryService{s}, opts...))
	mux.Handle(scopev1connect.NewClusterServiceHandler(clusterService{s}, opts...))
	mux.Handle(grpchealth.NewHandler(healthChecker{s}))
	reflector := grpcreflect.NewStaticReflector(scopev1connect.IngestServiceName,
		scopev1connect.QueryServiceName, scopev1connect.ClusterServiceName, grpchealth.HealthV1ServiceName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	for _, m := range s.mounts {
		mux.Handle(m.path, m.h)
	}
	// The web UI: static pages that read this API from the browser
	// (ui/, docs/UI.md). The root sends a person who opens the node's
	// address in a browser there.
	mux.Handle(ui.Prefix, ui.Handler())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, ui.Prefix, http.StatusFound)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.node.Metrics().Registry(), promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelError), MaxRequestsInFlight: 4}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
		if err := s.node.DiskCondition(); err != nil {
			// Still ready: reads are served. Ingest says the same in
			// its errors and the IngestService health check.
			_, _ = fmt.Fprintf(w, "writes refused: %v\n", err)
		}
	})
	// Authentication and request bounds apply to every path, mounted
	// handlers included (limits.go, auth.go).
	return s.guard(mux)
}

type mount struct {
	path string
	h    http.Handler
}

// Mount adds a handler (such as the cluster's node-to-node API) to the mux
// Handler builds. Call it before Handler or HTTPServer.
func (s *Server) Mount(path string, h http.Handler) {
	s.mounts = append(s.mounts, mount{path, h})
}

// HTTPServer returns an http.Server for Handler on addr, speaking HTTP/1.1
// and unencrypted HTTP/2 (gRPC clients need HTTP/2; no TLS yet). There is
// no read or write timeout: Tail and IngestStream are long-lived. Headers
// must arrive promptly and idle connections are closed.
func (s *Server) HTTPServer(addr string) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Addr:              addr,
		Handler:           s.Handler(),
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
}

// ready reports why the node cannot serve every local shard: a shard
// without a leader, or a replica that failed.
func (s *Server) ready() error {
	reps := s.node.Replicas()
	if len(reps) == 0 && s.cluster == nil {
		return errors.New("no shard replicas open")
	}
	var errs []error
	if s.cluster != nil {
		if err := s.cluster.ProtocolError(); err != nil {
			return err
		}
		if err := s.cluster.ShardCountError(); err != nil {
			return err
		}
		// Shards hosted elsewhere are served through their leaders.
		for shard := range s.node.Shards() {
			if s.node.Replica(shard) == nil && s.cluster.ShardLeader(shard) == "" {
				errs = append(errs, fmt.Errorf("shard %d: no known leader", shard))
			}
		}
	}
	for _, r := range reps {
		if addr, _ := r.Leader(); addr == "" {
			errs = append(errs, fmt.Errorf("shard %d: no leader", r.Shard()))
		}
		if _, failed := r.Progress(); failed != nil {
			errs = append(errs, fmt.Errorf("shard %d: replica failed: %w", r.Shard(), failed))
		}
	}
	return errors.Join(errs...)
}

// serving reports whether the node can serve every shard (gRPC health).
func (s *Server) serving() bool { return s.ready() == nil }

// healthChecker answers grpc.health.v1 for the whole server ("") and for
// each scope.v1 service.
type healthChecker struct{ s *Server }

func (h healthChecker) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	switch req.Service {
	case "", scopev1connect.IngestServiceName, scopev1connect.QueryServiceName, scopev1connect.ClusterServiceName:
	default:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q", req.Service))
	}
	if req.Service == scopev1connect.IngestServiceName && h.s.node.DiskCondition() != nil {
		// The disk is full: ingest is refused, reads go on.
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	if h.s.serving() {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
}

// nodeStats describes this node for Stats.
func (s *Server) nodeStats() *scopev1.NodeStats {
	ns := &scopev1.NodeStats{Name: s.node.ID(), Version: s.cfg.Version, Ingested: s.ingested.Load(),
		Refused: s.refused.Load(), StartedNs: s.started.UnixNano()}
	for _, r := range s.node.Replicas() {
		ns.Replicas++
		if r.IsLeader() {
			ns.Leaders++
		}
	}
	if m := s.node.Store().Metrics(); m != nil {
		ns.StoreBytes = m.DiskSpaceUsage()
	}
	return ns
}

func newGzipDecompressor() connect.Decompressor { return new(gzip.Reader) }

func newFastGzipCompressor() connect.Compressor {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // a valid level: no error
	return w
}
