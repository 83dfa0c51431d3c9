#!/usr/bin/env bash
# Builds every binary run.sh uses into $SCRATCH/bin (default /tmp/scope-peers),
# from source through the Go module proxy, in modules made in $SCRATCH: the
# peers are never vendored into Scope's repository. Each peer is its own Go module with the
# peer as a `tool` dependency; where go.mod/go.sum already exist they pin the
# versions, otherwise they are made with `go mod init` + `go get -tool`.
# Takes about 10-12 minutes on 2 cores (Jaeger alone ~7). Go 1.26.8.
#
#   ./build.sh                  # all
#   ./build.sh scope etcd       # some: scope jaeger etcd otlpload telemetrygen
#   SCOPE_REPO=/path ./build.sh scope   # Scope from another checkout (default: this one)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${SCRATCH:-/tmp/scope-peers}
BIN=$PEERS/bin
SCOPE_REPO=${SCOPE_REPO:-$(git -C "$HERE" rev-parse --show-toplevel)}
JAEGER_VERSION=v1.75.0
ETCD_VERSION=v3.6.8
TELEMETRYGEN_VERSION=v0.161.0
mkdir -p "$BIN"
what=${*:-scope jaeger etcd otlpload}

# module DIR TOOL@VERSION...: a module in DIR with these tools.
module() {
  local dir=$1; shift
  mkdir -p "$dir"
  if [ ! -f "$dir/go.mod" ]; then
    (cd "$dir" && go mod init "peers/$(basename "$dir")" && for t in "$@"; do go get -tool "$t"; done)
  fi
}

for w in $what; do
  case $w in
  scope)
    rm -rf "$PEERS/scope-src"
    git clone -q "$SCOPE_REPO" "$PEERS/scope-src"
    (cd "$PEERS/scope-src" && go build -o "$BIN/scope" ./cmd/scope)
    echo "scope $(git -C "$PEERS/scope-src" rev-parse HEAD)" ;;
  jaeger)
    module "$PEERS/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION
    (cd "$PEERS/jaeger" && go build -o "$BIN/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
    echo "jaeger $JAEGER_VERSION" ;;
  etcd)
    # The etcd server's main package is the root of go.etcd.io/etcd/server/v3;
    # tools/benchmark lives in the repository's root module go.etcd.io/etcd/v3
    # (go.etcd.io/etcd/tools/v3 is not served by the proxy).
    module "$PEERS/etcd" go.etcd.io/etcd/server/v3@$ETCD_VERSION go.etcd.io/etcd/v3/tools/benchmark@$ETCD_VERSION
    (cd "$PEERS/etcd" && go build -o "$BIN/etcd" go.etcd.io/etcd/server/v3 &&
      go build -o "$BIN/etcd-benchmark" go.etcd.io/etcd/v3/tools/benchmark)
    echo "etcd $ETCD_VERSION" ;;
  otlpload)
    # Our own ~150-line OTLP/gRPC sender (otlpload.go here), on Jaeger's pdata.
    mkdir -p "$PEERS/otlpload"
    sed 's/^\/\/go:build ignore$//' "$HERE/otlpload.go" > "$PEERS/otlpload/main.go"
    if [ ! -f "$PEERS/otlpload/go.mod" ]; then
      (cd "$PEERS/otlpload" && go mod init peers/otlpload &&
        go get go.opentelemetry.io/collector/pdata@v1.45.0 google.golang.org/grpc@v1.76.0 && go mod tidy)
    fi
    (cd "$PEERS/otlpload" && go build -o "$BIN/otlpload" .)
    echo "otlpload (pdata v1.45.0, grpc v1.76.0)" ;;
  telemetrygen)
    # Built for reference only: run.sh does not use it (see README: it drops spans).
    module "$PEERS/telemetrygen" github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@$TELEMETRYGEN_VERSION
    (cd "$PEERS/telemetrygen" && go build -o "$BIN/telemetrygen" github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen)
    echo "telemetrygen $TELEMETRYGEN_VERSION" ;;
  *) echo "build.sh: unknown $w" >&2; exit 2 ;;
  esac
done
