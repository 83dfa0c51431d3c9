//go:build ignore

// otlpload sends N spans to an OTLP/gRPC receiver from C concurrent senders,
// B spans per ExportTraceServiceRequest, and reports what the receiver
// accepted. It is the load generator of run.sh for Jaeger (built by build.sh).
//
// Each span is about -span-bytes bytes in OTLP protobuf encoding (the size is
// measured and printed). Trace IDs are unique per run (-seed), TRACE spans
// per trace (the first is the root, the rest its children).
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:4317", "OTLP/gRPC receiver host:port")
	total := flag.Int("spans", 300000, "spans to send in all")
	conc := flag.Int("concurrency", 16, "concurrent senders, each with its own gRPC connection")
	batch := flag.Int("batch", 500, "spans per Export request")
	perTrace := flag.Int("trace", 10, "spans per trace")
	spanBytes := flag.Int("span-bytes", 200, "target OTLP-encoded size of one span (pads an attribute)")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "trace id seed (unique ids per run)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of each Export")
	flag.Parse()
	if *total < 1 || *conc < 1 || *batch < 1 || *perTrace < 1 {
		fmt.Fprintln(os.Stderr, "otlpload: -spans, -concurrency, -batch and -trace must be positive")
		os.Exit(2)
	}

	pad := calibrate(*spanBytes, *batch, *perTrace)
	var sent, accepted, rejected, failed atomic.Int64
	var bytesSent atomic.Int64
	var firstErr atomic.Pointer[string]
	var next atomic.Int64 // next span index to hand out, in units of batches
	nBatches := int64((*total + *batch - 1) / *batch)

	conns := make([]*grpc.ClientConn, *conc)
	for i := range conns {
		c, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "otlpload:", err)
			os.Exit(1)
		}
		conns[i] = c
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			client := ptraceotlp.NewGRPCClient(conns[w])
			for {
				b := next.Add(1) - 1
				if b >= nBatches {
					return
				}
				first := int(b) * *batch
				n := min(*batch, *total-first)
				req := ptraceotlp.NewExportRequestFromTraces(build(*seed, first, n, *perTrace, pad))
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				resp, err := client.Export(ctx, req)
				cancel()
				sent.Add(int64(n))
				if err != nil {
					failed.Add(int64(n))
					s := err.Error()
					firstErr.CompareAndSwap(nil, &s)
					continue
				}
				bytesSent.Add(int64(mustSize(req)))
				rej := resp.PartialSuccess().RejectedSpans()
				rejected.Add(rej)
				accepted.Add(int64(n) - rej)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	for _, c := range conns {
		c.Close()
	}
	fmt.Printf("otlpload: spans %d accepted %d rejected %d failed %d elapsed %.3fs spans/s %.0f bytes/span %.0f concurrency %d batch %d\n",
		sent.Load(), accepted.Load(), rejected.Load(), failed.Load(), el.Seconds(),
		float64(accepted.Load())/el.Seconds(), float64(bytesSent.Load())/float64(max(1, accepted.Load())), *conc, *batch)
	if p := firstErr.Load(); p != nil {
		fmt.Fprintln(os.Stderr, "otlpload: first error:", *p)
		os.Exit(1)
	}
}

func mustSize(r ptraceotlp.ExportRequest) int {
	b, err := r.MarshalProto()
	if err != nil {
		return 0
	}
	return len(b)
}

// build makes n spans, global indexes first..first+n-1, in one resource.
func build(seed uint64, first, n, perTrace int, pad string) ptrace.Traces {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "otlpload")
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName("otlpload")
	spans := ss.Spans()
	spans.EnsureCapacity(n)
	now := time.Now()
	for i := first; i < first+n; i++ {
		t, k := i/perTrace, i%perTrace
		sp := spans.AppendEmpty()
		var tid [16]byte
		binary.BigEndian.PutUint64(tid[:8], seed)
		binary.BigEndian.PutUint64(tid[8:], uint64(t)+1)
		sp.SetTraceID(pcommon.TraceID(tid))
		sp.SetSpanID(spanID(t, k))
		if k > 0 {
			sp.SetParentSpanID(spanID(t, 0))
		}
		sp.SetName(fmt.Sprintf("op-%d", k))
		sp.SetKind(ptrace.SpanKindServer)
		st := now.Add(time.Duration(k) * time.Microsecond)
		sp.SetStartTimestamp(pcommon.NewTimestampFromTime(st))
		sp.SetEndTimestamp(pcommon.NewTimestampFromTime(st.Add(123 * time.Microsecond)))
		a := sp.Attributes()
		a.PutStr("http.method", "GET")
		a.PutInt("http.status_code", 200)
		a.PutStr("payload", pad)
	}
	return td
}

func spanID(t, k int) pcommon.SpanID {
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], uint64(t)<<8|uint64(k)+1)
	return pcommon.SpanID(id)
}

// calibrate returns the padding that makes the average span in a request
// close to target bytes (request overhead included).
func calibrate(target, batch, perTrace int) string {
	size := func(pad string) float64 {
		req := ptraceotlp.NewExportRequestFromTraces(build(1, 0, batch, perTrace, pad))
		return float64(mustSize(req)) / float64(batch)
	}
	base := size("")
	if extra := target - int(base+0.5); extra > 0 {
		return strings.Repeat("x", extra)
	}
	return ""
}
