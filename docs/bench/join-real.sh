#!/usr/bin/env bash
# A join on real nodes (docs/DECISIONS.md D42): a 3-node dev-cluster of
# SHARDS shards holding EVENTS events, then a fourth node joins. Every 2 s:
# the moves in flight on each of the three (scope_cluster_moves_in_flight,
# non-voters catching up in the groups it leads), the replicas the newcomer
# holds, and the promotions so far; it stops once the newcomer's replicas
# (once it holds some) and the moves have been still for three samples.
#
#   make build && bash docs/bench/join-real.sh                 # ./bin/scope, 64 shards
#   BIN=/tmp/scope-old SHARDS=64 bash docs/bench/join-real.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-./bin/scope}
SHARDS=${SHARDS:-64}
EVENTS=${EVENTS:-200000}
PORT=${PORT:-29070}
DIR=$(mktemp -d /tmp/scope-join.XXXX)
trap 'pkill -f "$DIR" || true; sleep 1; rm -rf "$DIR"' EXIT
$BIN dev-cluster -n 3 -shards "$SHARDS" -data-dir "$DIR" -base-port "$PORT" >"$DIR/cluster.log" 2>&1 &
nodes="$PORT $((PORT + 10)) $((PORT + 20))"
for p in $nodes; do
	until curl -sf "127.0.0.1:$p/readyz" >/dev/null; do sleep 0.2; done
done
$BIN bench -addr "127.0.0.1:$PORT" -events "$EVENTS" >"$DIR/bench.out" 2>&1
grep -E '^(events|acknowledged)' "$DIR/bench.out" || tail -3 "$DIR/bench.out"
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {printf "%d", $2}'; }
$BIN agent -name node4 -data-dir "$DIR/node4" -http "127.0.0.1:$((PORT + 30))" -raft "127.0.0.1:$((PORT + 31))" \
	-gossip "127.0.0.1:$((PORT + 32))" -gossip-profile local -shards "$SHARDS" -join "127.0.0.1:$((PORT + 2))" >"$DIR/node4.log" 2>&1 &
start=$(date +%s.%N)
last="" still=0 peak=0
while [ "$still" -lt 3 ]; do
	sleep 2
	moves="" total=0 promoted=0
	for p in $nodes; do
		m=$(metric "$p" scope_cluster_moves_in_flight)
		moves="$moves ${m:-?}"
		total=$((total + ${m:-0}))
		[ "${m:-0}" -gt "$peak" ] && peak=${m:-0}
		promoted=$((promoted + $(metric "$p" scope_cluster_replica_promotions_total)))
	done
	held=$(metric "$((PORT + 30))" scope_cluster_replicas)
	t=$(echo "$(date +%s.%N) - $start" | bc)
	printf 't=%.0fs moves in flight:%s  node4 replicas=%s  promotions=%d\n' "$t" "$moves" "${held:-?}" "$promoted"
	now="$held/$total"
	if [ "$now" = "$last" ] && [ "$total" = 0 ] && [ "${held:-0}" -gt 0 ]; then still=$((still + 1)); else still=0; fi
	last=$now
done
echo "settled: node4 holds $held replicas; at most $peak moves in flight on one node"
