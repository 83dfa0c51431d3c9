#!/usr/bin/env bash
# Leadership balancing from a bootstrap on real nodes (docs/DECISIONS.md D40):
# a 3-node dev-cluster of SHARDS shards; every 5 s, the leadership transfers
# the balancer made so far (scope_cluster_leader_transfers_total, summed over
# the nodes) and how many shards each node leads.
#
#   make build && bash docs/bench/balance-real.sh            # ./bin/scope, 256 shards
#   BIN=/tmp/scope-old SHARDS=256 bash docs/bench/balance-real.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-./bin/scope}
SHARDS=${SHARDS:-256}
PORT=${PORT:-28070}
SAMPLES=${SAMPLES:-12}
DIR=$(mktemp -d /tmp/scope-balance.XXXX)
trap 'pkill -f "$DIR" || true; sleep 1; rm -rf "$DIR"' EXIT
$BIN dev-cluster -n 3 -shards "$SHARDS" -data-dir "$DIR" -base-port "$PORT" >"$DIR/cluster.log" 2>&1 &
for p in $PORT $((PORT + 10)) $((PORT + 20)); do
	until curl -sf "127.0.0.1:$p/readyz" >/dev/null; do sleep 0.2; done
done
start=$(date +%s)
for _ in $(seq 1 "$SAMPLES"); do
	sleep 5
	transfers=0
	for p in $PORT $((PORT + 10)) $((PORT + 20)); do
		v=$(curl -s "127.0.0.1:$p/metrics" | awk '/^scope_cluster_leader_transfers_total/ {print $2}')
		transfers=$((transfers + ${v%.*}))
	done
	led=$($BIN shards -addr "127.0.0.1:$PORT" | awk 'NR > 1 && $2 ~ /^node/ {print $2}' | sort | uniq -c | awk '{printf " %s=%s", $2, $1}')
	echo "t=$(($(date +%s) - start))s transfers=$transfers led:$led"
done
