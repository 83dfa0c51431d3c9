#!/usr/bin/env bash
# Side-by-side ingest comparison: Scope vs Jaeger v2 (Badger) vs etcd.
#
#   ./run.sh                       # ROUNDS=3 N=300000, all systems, interleaved
#   ROUNDS=1 N=20000 ./run.sh      # smoke run
#   ./run.sh etcd                  # one system (or several, in that order)
#
# Systems: scope-committed scope-accepted jaeger-badger jaeger-badger-sync etcd
# Environment: ROUNDS (3), N (300000 items per run), CONC (16 senders),
#   BATCH (500: scope bench -batch and otlpload -batch), SPAN_BYTES (200),
#   ETCD_VAL (256), DRAIN_TIMEOUT (1800 s to wait for items to be stored),
#   POLL (0.05 s), DATA (/tmp/peers-data: removed before each run and at exit),
#   LOGDIR (/work/peers/logs/runs/<time>: every server's and tool's output),
#   OUT (also append the table lines, tab-separated, to this file),
#   VERIFY=1 (after the clock stops, count what a query returns: scope stats;
#   Jaeger /api/traces span count; etcd always counts its keys).
# Uses only the binaries build.sh put in $SCRATCH/bin (/tmp/scope-peers) and the
# configs beside this script.
#
# Per run: fresh data directory; start the server; poll until ready; sample
# the server's utime+stime (/proc/PID/stat); start the clock; run the load;
# wait until every acknowledged item is stored (scope: sum of
# scope_applied_events_total; jaeger: otelcol_exporter_sent_spans_total of
# jaeger_storage_exporter; etcd: a put is acknowledged only once committed
# and applied, and the key count is checked after the clock stops); stop the
# clock and sample the CPU again; stop the server with SIGTERM and wait.
# seconds = load start .. all stored; ack_s = load start .. load tool exit;
# cpu_s = server utime+stime over [start, all stored]; client_s = the load
# tool's own user+system CPU (it shares the 2 cores with the server).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SCRATCH=${SCRATCH:-/tmp/scope-peers} # where build.sh put the binaries
BIN=$SCRATCH/bin
ROUNDS=${ROUNDS:-3}
N=${N:-300000}
CONC=${CONC:-16}
BATCH=${BATCH:-500}
SPAN_BYTES=${SPAN_BYTES:-200}
# Padding that makes a `scope bench` event ~200 B of protobuf on the wire,
# like a span (its "shape:" line says the mean).
SCOPE_PAYLOAD=${SCOPE_PAYLOAD:-104}
ETCD_VAL=${ETCD_VAL:-256}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-1800}
POLL=${POLL:-0.05}
DATA=${DATA:-/tmp/peers-data}
LOGDIR=${LOGDIR:-$SCRATCH/logs/runs/$(date +%Y%m%d-%H%M%S)}
OUT=${OUT:-}
VERIFY=${VERIFY:-0}
ALL="scope-committed scope-accepted jaeger-badger jaeger-badger-sync etcd"
if [ $# -gt 0 ]; then SYSTEMS="$*"; else SYSTEMS=${SYSTEMS:-$ALL}; fi
for s in $SYSTEMS; do
  case " $ALL " in *" $s "*) ;; *) echo "run.sh: unknown system $s (one of: $ALL)" >&2; exit 2 ;; esac
done
for b in scope jaeger otlpload etcd etcd-benchmark; do
  [ -x "$BIN/$b" ] || { echo "run.sh: $BIN/$b missing (see README.md to build it)" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "run.sh: needs curl" >&2; exit 2; }

TCK=$(getconf CLK_TCK)
SERVER_PID=
mkdir -p "$LOGDIR"

log() { echo "# $*" >&2; }
now() { date +%s.%N; }
# utime+stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat;
# cut after the ")" that closes the command name first).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

cleanup() {
  if [ -n "$SERVER_PID" ] && alive "$SERVER_PID"; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do alive "$SERVER_PID" || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until DESC TIMEOUT CMD...: poll CMD every $POLL s until it succeeds.
wait_until() {
  local desc=$1 timeout=$2; shift 2
  local deadline; deadline=$(calc "$(now) + $timeout")
  until "$@"; do
    if [ -n "$SERVER_PID" ] && ! alive "$SERVER_PID"; then
      log "server exited while waiting for $desc"; return 1
    fi
    if awk "BEGIN { exit !($(now) > $deadline) }"; then log "timed out waiting for $desc"; return 1; fi
    sleep "$POLL"
  done
}

# alive PID: running (a child that exited stays a zombie until waited for).
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }
# timed TIMEFILE OUT ERR CMD...: run CMD, its stdout to OUT, stderr to ERR, its
# user+system CPU seconds (bash's time keyword, children included) to TIMEFILE.
timed() {
  local tf=$1 out=$2 err=$3; shift 3
  local TIMEFORMAT='%U %S' rc=0
  { time "$@" >"$out" 2>"$err"; } 2>"$tf" || rc=$?
  return $rc
}
client_cpu() { awk '{ printf "%.6f", $1 + $2 }' "$1" 2>/dev/null || echo 0; }
http_ok() { curl -sf -o /dev/null --max-time 1 "$1"; }
port_free() { ! curl -s -o /dev/null --max-time 1 "http://$1/" 2>/dev/null; }

start_server() { # LOG CMD...
  local logf=$1; shift
  "$@" >"$logf" 2>&1 &
  SERVER_PID=$!
}

stop_server() {
  local t0 dog; t0=$(now)
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  ( sleep 120; kill -KILL "$SERVER_PID" 2>/dev/null && echo "# server $SERVER_PID did not stop in 120 s: SIGKILL" >&2 ) &
  dog=$!
  wait "$SERVER_PID" 2>/dev/null || true
  kill "$dog" 2>/dev/null || true; wait "$dog" 2>/dev/null || true
  log "stopped in $(calc "$(now) - $t0") s"
  SERVER_PID=
}

# Prometheus text: sum of the samples of metric $2 (label filter $3) at URL $1.
prom_sum() {
  curl -sf --max-time 2 "$1" | awk -v m="$2" -v f="$3" '
    $1 ~ "^"m"({|$)" && index($1, f) { s += $NF } END { printf "%.0f", s + 0 }'
}

# ---- Scope ---------------------------------------------------------------
SCOPE_HTTP=127.0.0.1:7070
scope_applied() { prom_sum "http://$SCOPE_HTTP/metrics" scope_applied_events_total ""; }
run_scope() { # DURABILITY RUNLOG
  local dur=$1 rl=$2
  port_free $SCOPE_HTTP || { log "something already answers on $SCOPE_HTTP"; return 1; }
  start_server "$rl.server.log" "$BIN/scope" agent -dev -data-dir "$DATA/scope" -log-level warn
  wait_until "scope /readyz" 60 http_ok "http://$SCOPE_HTTP/readyz" || return 1
  local c0 t0 t1 t2 c1 acc
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(now)
  timed "$rl.load.time" "$rl.load.out" "$rl.load.err" "$BIN/scope" bench -addr $SCOPE_HTTP -events "$N" \
    -concurrency "$CONC" -batch "$BATCH" -durability "$dur" -payload-bytes "$SCOPE_PAYLOAD" -json || log "scope bench failed (see $rl.load.*)"
  t1=$(now)
  acc=$(grep -o '"accepted":[0-9]*' "$rl.load.out" | head -1 | cut -d: -f2); acc=${acc:-0}
  wait_until "scope to apply $acc events" "$DRAIN_TIMEOUT" eval '[ "$(scope_applied)" -ge '"$acc"' ]' || true
  t2=$(now); c1=$(cpu_ticks "$SERVER_PID")
  ITEMS=$(scope_applied); SECS=$(calc "$t2 - $t0"); ACK=$(calc "$t1 - $t0"); CPU=$(calc "($c1 - $c0) / $TCK")
  if [ "$VERIFY" = 1 ]; then
    log "verify: scope stats counts $("$BIN/scope" stats -addr $SCOPE_HTTP -json | grep -o '^{"events":"[0-9]*"' | grep -o '[0-9][0-9]*') events"
  fi
  stop_server
}

# ---- Jaeger v2 + Badger ----------------------------------------------------
JAEGER_METRICS=http://127.0.0.1:8888/metrics
jaeger_sent() { prom_sum $JAEGER_METRICS otelcol_exporter_sent_spans_total 'exporter="jaeger_storage_exporter"'; }
jaeger_failed() { prom_sum $JAEGER_METRICS otelcol_exporter_send_failed_spans_total 'exporter="jaeger_storage_exporter"'; }
jaeger_done() { [ $(( $(jaeger_sent) + $(jaeger_failed) )) -ge "$1" ]; }
run_jaeger() { # CONFIG RUNLOG
  local cfg=$1 rl=$2
  port_free 127.0.0.1:13133 && port_free 127.0.0.1:8888 || { log "jaeger ports busy"; return 1; }
  mkdir -p "$DATA/jaeger"
  JAEGER_BADGER_DIR=$DATA/jaeger start_server "$rl.server.log" "$BIN/jaeger" --config "$cfg"
  wait_until "jaeger health" 60 http_ok http://127.0.0.1:13133/status || return 1
  wait_until "jaeger metrics" 60 http_ok $JAEGER_METRICS || return 1
  local c0 t0 t1 t2 c1 acc
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(now)
  timed "$rl.load.time" "$rl.load.out" "$rl.load.err" "$BIN/otlpload" -endpoint 127.0.0.1:4317 -spans "$N" \
    -concurrency "$CONC" -batch "$BATCH" -span-bytes "$SPAN_BYTES" || log "otlpload failed (see $rl.load.*)"
  t1=$(now)
  acc=$(grep -o 'accepted [0-9]*' "$rl.load.out" | cut -d' ' -f2); acc=${acc:-0}
  wait_until "jaeger to store $acc spans" "$DRAIN_TIMEOUT" jaeger_done "$acc" || true
  t2=$(now); c1=$(cpu_ticks "$SERVER_PID")
  ITEMS=$(jaeger_sent); SECS=$(calc "$t2 - $t0"); ACK=$(calc "$t1 - $t0"); CPU=$(calc "($c1 - $c0) / $TCK")
  local f; f=$(jaeger_failed); [ "$f" = 0 ] || log "jaeger: $f spans failed to store"
  if [ "$VERIFY" = 1 ]; then # otlpload sends 10 spans per trace
    log "verify: jaeger query API returns $(curl -s --max-time 600 "http://127.0.0.1:16686/api/traces?service=otlpload&lookback=1h&limit=$((N / 10 + 100))" \
      | grep -o '"operationName"' | wc -l) spans"
  fi
  stop_server
}

# ---- etcd -----------------------------------------------------------------
ETCD=127.0.0.1:2379
etcd_count() {
  curl -sf --max-time 30 -X POST "http://$ETCD/v3/kv/range" \
    -d '{"key":"AA==","range_end":"AA==","count_only":true}' | grep -o '"count":"[0-9]*"' | grep -o '[0-9]*' || echo 0
}
etcd_healthy() { curl -sf --max-time 1 "http://$ETCD/health" | grep -q '"health":"true"'; }
run_etcd() { # RUNLOG
  local rl=$1
  port_free $ETCD && port_free 127.0.0.1:2380 || { log "etcd ports busy"; return 1; }
  start_server "$rl.server.log" "$BIN/etcd" --name peers --data-dir "$DATA/etcd" \
    --listen-client-urls http://$ETCD --advertise-client-urls http://$ETCD \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster peers=http://127.0.0.1:2380 --log-level warn
  wait_until "etcd health" 60 etcd_healthy || return 1
  local c0 t0 t1 c1
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(now)
  timed "$rl.load.time" "$rl.load.out" "$rl.load.err" "$BIN/etcd-benchmark" --endpoints $ETCD \
    --clients "$CONC" --conns "$CONC" put --total "$N" --key-size 8 --sequential-keys \
    --key-space-size "$N" --val-size "$ETCD_VAL" || log "etcd benchmark failed (see $rl.load.*)"
  t1=$(now); c1=$(cpu_ticks "$SERVER_PID")
  ITEMS=$(etcd_count); SECS=$(calc "$t1 - $t0"); ACK=$SECS; CPU=$(calc "($c1 - $c0) / $TCK")
  stop_server
}

run_one() { # SYSTEM ROUND
  local sys=$1 round=$2 rl="$LOGDIR/$1.r$2" rc=0
  rm -rf "$DATA"; mkdir -p "$DATA"
  ITEMS=0 SECS=0 ACK=0 CPU=0
  rm -f "$rl.load.time"
  log "$sys round $round"
  case $sys in
    scope-committed) run_scope committed "$rl" || rc=$? ;;
    scope-accepted) run_scope accepted "$rl" || rc=$? ;;
    jaeger-badger) run_jaeger "$HERE/jaeger-badger.yaml" "$rl" || rc=$? ;;
    jaeger-badger-sync) run_jaeger "$HERE/jaeger-badger-sync.yaml" "$rl" || rc=$? ;;
    etcd) run_etcd "$rl" || rc=$? ;;
  esac
  if [ -n "$SERVER_PID" ]; then stop_server; fi
  local note=""
  [ "$rc" = 0 ] || note=" FAILED"
  [ "$ITEMS" -ge "$N" ] 2>/dev/null || note="$note INCOMPLETE"
  local rate percpu ccpu
  ccpu=$(client_cpu "$rl.load.time")
  rate=$(awk -v i="$ITEMS" -v s="$SECS" 'BEGIN { printf "%.0f", (s > 0 ? i / s : 0) }')
  percpu=$(awk -v i="$ITEMS" -v c="$CPU" 'BEGIN { printf "%.0f", (c > 0 ? i / c : 0) }')
  printf '%-19s %5s %8s %8.2f %9s %8.2f %10s %7.2f %8.2f%s\n' "$sys" "$round" "$ITEMS" "$SECS" "$rate" "$CPU" "$percpu" "$ACK" "$ccpu" "$note"
  if [ -n "$OUT" ]; then
    printf '%s\t%s\t%s\t%.3f\t%s\t%.2f\t%s\t%.3f\t%.2f\t%s\n' "$sys" "$round" "$ITEMS" "$SECS" "$rate" "$CPU" "$percpu" "$ACK" "$ccpu" "${note# }" >>"$OUT"
  fi
  rm -rf "$DATA"
}

# Context for the log: versions, the disk under $DATA, its O_DSYNC write latency.
mkdir -p "$DATA"
{
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)  cores: $(nproc)  CLK_TCK: $TCK"
  echo "N=$N ROUNDS=$ROUNDS CONC=$CONC BATCH=$BATCH SPAN_BYTES=$SPAN_BYTES ETCD_VAL=$ETCD_VAL systems: $SYSTEMS"
  echo "data dir filesystem: $(df -T "$DATA" | awk 'NR==2 {print $1, $2}')"
  "$BIN/etcd" --version | head -1
  "$BIN/scope" version 2>/dev/null | head -1 || true
  dd if=/dev/zero of="$DATA/dsync-probe" bs=4k count=200 oflag=dsync 2>&1 | tail -1 | sed 's/^/4 KiB O_DSYNC writes x200: /'
  uptime
} >"$LOGDIR/env.txt" 2>&1
if df -T "$DATA" | awk 'NR==2 {exit !($2 == "tmpfs")}'; then
  log "WARNING: $DATA is on tmpfs: fsync costs nothing there, durable figures mean nothing"
fi
log "logs: $LOGDIR"
printf '%-19s %5s %8s %8s %9s %8s %10s %7s %8s\n' system round items seconds items/s cpu_s items/cpu ack_s client_s
for round in $(seq 1 "$ROUNDS"); do
  for sys in $SYSTEMS; do
    run_one "$sys" "$round"
  done
done
