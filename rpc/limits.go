package rpc

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
)

// Bounds on every request (docs/OPERATIONS.md, "Request limits"): the
// request size (checked from Content-Length before the body is read, and
// by Connect while reading it), the events of one ingest request, a
// server-side deadline on every query, and the number of queries and Tail
// streams in flight per caller and in total. Each refusal is counted in
// scope_rpc_refusals_total with its reason.

// Refusal reasons (the reason label of scope_rpc_refusals_total).
const (
	reasonRequestBytes     = "request_bytes"
	reasonEventsPerRequest = "events_per_request"
	reasonQueryDeadline    = "query_deadline"
	reasonQueriesPerCaller = "queries_per_caller"
	reasonQueriesTotal     = "queries_total"
	reasonTailsPerCaller   = "tails_per_caller"
	reasonTailsTotal       = "tails_total"
	reasonQueryMemory      = "query_memory"
)

// overBudget refuses an answer that cannot be paged (a call tree, a trace,
// a message flow) whose events hold more than the query memory budget;
// narrow says how to ask for less.
func (s *Server) overBudget(what string, bytes int, narrow string) error {
	if bytes <= s.cfg.QueryMemory {
		return nil
	}
	s.metrics.refusals.WithLabelValues(reasonQueryMemory).Inc()
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"the %s holds about %d bytes of events, above this node's query memory budget of %d bytes (-query-memory): %s",
		what, bytes, s.cfg.QueryMemory, narrow))
}

// envelopePrefix is the gRPC/Connect streaming frame header before each
// message.
const envelopePrefix = 5

// guard is the HTTP middleware in front of every handler: authentication
// and authorization (auth.go), then the request-size check.
func (s *Server) guard(next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	refuse := func(w http.ResponseWriter, r *http.Request, err *connect.Error) {
		if isRPCPath(r.URL.Path) && ew.IsSupported(r) {
			_ = ew.Write(w, r, err)
			return
		}
		status := http.StatusForbidden
		switch err.Code() {
		case connect.CodeUnauthenticated:
			status = http.StatusUnauthorized
			w.Header().Set("WWW-Authenticate", `Bearer realm="scope"`)
		case connect.CodeResourceExhausted:
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, err.Message(), status)
	}
	limit := int64(s.cfg.MaxRequestBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, reason, err := Caller{}, authRefusal(""), (*connect.Error)(nil)
		if s.cfg.Auth != nil {
			caller, reason, err = s.cfg.Auth.check(r)
		} else {
			caller = Caller{Name: remoteIP(r)}
		}
		if err != nil {
			s.metrics.refusals.WithLabelValues(string(reason)).Inc()
			refuse(w, r, err)
			return
		}
		if r.ContentLength > limit+envelopePrefix && !isNodeAPI(r.URL.Path) {
			s.metrics.refusals.WithLabelValues(reasonRequestBytes).Inc()
			refuse(w, r, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
				"request of %d bytes is larger than the maximum request size %d bytes (scope agent -max-request-bytes)",
				r.ContentLength, limit)))
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller))
		if !isUnaryWrite(r) || isNodeAPI(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		// A unary message of unknown length is cut by Connect
		// (WithReadMaxBytes), before any interceptor sees it: count it
		// here from the bytes the handler read.
		body := &countingBody{ReadCloser: r.Body}
		r.Body = body
		next.ServeHTTP(w, r)
		if body.n.Load() > limit+envelopePrefix {
			s.metrics.refusals.WithLabelValues(reasonRequestBytes).Inc()
		}
	})
}

// isRPCPath reports whether path names a Connect/gRPC procedure.
func isRPCPath(path string) bool {
	return strings.HasPrefix(path, "/scope.") || strings.HasPrefix(path, "/grpc.")
}

// isNodeAPI reports whether path is the node-to-node API, which bounds
// its messages itself (larger: shard reads and notice batches).
func isNodeAPI(path string) bool {
	return strings.HasPrefix(path, "/"+nodev1connect.NodeServiceName+"/")
}

// isUnaryWrite reports whether r is a POST of a unary procedure of ours
// (one message in the body).
func isUnaryWrite(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/scope.") &&
		r.URL.Path != scopev1connect.IngestServiceIngestStreamProcedure
}

type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func remoteIP(r *http.Request) string {
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}

// callerName is the name concurrency limits count a request against: the
// token's name, or the remote address when tokens are off.
func callerName(ctx context.Context, peer connect.Peer) string {
	if c, ok := CallerOf(ctx); ok && c.Name != "" {
		return c.Name
	}
	host := peer.Addr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return host
}

// limiter bounds calls in flight per caller and in total. Its map holds
// only callers with calls in flight, so it never exceeds total entries.
type limiter struct {
	what             string // "queries", "Tail streams"
	total, perCaller int
	totalFlag        string
	perCallerFlag    string
	totalReason      string
	perCallerReason  string

	mu     sync.Mutex
	n      int
	byName map[string]int
}

func newLimiter(what string, total, perCaller int, totalFlag, perCallerFlag, totalReason, perCallerReason string) *limiter {
	return &limiter{what: what, total: total, perCaller: perCaller, totalFlag: totalFlag, perCallerFlag: perCallerFlag,
		totalReason: totalReason, perCallerReason: perCallerReason, byName: make(map[string]int)}
}

// acquire takes a slot for caller; on refusal it returns the metrics
// reason and a RESOURCE_EXHAUSTED error naming the limit.
func (l *limiter) acquire(caller string) (release func(), reason string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.n >= l.total:
		return nil, l.totalReason, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"%d %s in flight on this node: the limit (scope agent %s %d); retry later", l.n, l.what, l.totalFlag, l.total))
	case l.byName[caller] >= l.perCaller:
		return nil, l.perCallerReason, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"caller %q has %d %s in flight: the limit per caller (scope agent %s %d); retry later",
			caller, l.byName[caller], l.what, l.perCallerFlag, l.perCaller))
	}
	l.n++
	l.byName[caller]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.n--
			if l.byName[caller]--; l.byName[caller] <= 0 {
				delete(l.byName, caller)
			}
		})
	}, "", nil
}

// limitsInterceptor applies the query deadline and the concurrency
// limits to QueryService calls.
type limitsInterceptor struct{ s *Server }

func isQuery(procedure string) bool {
	return strings.HasPrefix(procedure, "/"+scopev1connect.QueryServiceName+"/")
}

func (i limitsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !isQuery(req.Spec().Procedure) {
			return next(ctx, req)
		}
		s := i.s
		release, reason, err := s.queries.acquire(callerName(ctx, req.Peer()))
		if err != nil {
			s.metrics.refusals.WithLabelValues(reason).Inc()
			return nil, err
		}
		defer release()
		timeout := s.cfg.QueryTimeout
		ours := true
		if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
			ours = false // the client's own deadline comes first
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		resp, err := next(ctx, req)
		if err != nil && ours && ctx.Err() == context.DeadlineExceeded {
			s.metrics.refusals.WithLabelValues(reasonQueryDeadline).Inc()
			return nil, connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf(
				"the query ran longer than the server's query deadline %v (scope agent -query-timeout): narrow it (time range, filters, limit)",
				timeout))
		}
		return resp, err
	}
}

func (i limitsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i limitsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if conn.Spec().Procedure != scopev1connect.QueryServiceTailProcedure {
			return next(ctx, conn)
		}
		release, reason, err := i.s.tailLimit.acquire(callerName(ctx, conn.Peer()))
		if err != nil {
			i.s.metrics.refusals.WithLabelValues(reason).Inc()
			return err
		}
		defer release()
		return next(ctx, conn)
	}
}
