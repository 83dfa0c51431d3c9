#!/usr/bin/env bash
# Online resharding under load (docs/bench/scale.md, "Resharding"): a 3-node
# dev-cluster of 16 shards, loaded by `scope bench` at a fixed rate, is
# resharded to 64 shards (two doublings) while the load runs; with JOIN=1 a
# fourth node joins at the same time. Prints the reshard's duration, the
# bench's per-5 s timeline and summary, and the correlator's counters.
#
#   make build && bash docs/bench/reshard.sh            # no join
#   JOIN=1 bash docs/bench/reshard.sh                   # with a fourth node
#   NORESHARD=1 bash docs/bench/reshard.sh              # the same load, no reshard (baseline)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=./bin/scope
DIR=$(mktemp -d /tmp/scope-reshard.XXXX)
RATE=${RATE:-4000}
DURATION=${DURATION:-40s}
trap 'pkill -f "$DIR" || true; sleep 1; rm -rf "$DIR"' EXIT
$BIN dev-cluster -n 3 -data-dir "$DIR" -base-port 27070 >"$DIR/cluster.log" 2>&1 &
for p in 27070 27080 27090; do
	until curl -sf "127.0.0.1:$p/readyz" >/dev/null; do sleep 0.2; done
done
$BIN bench -addr 127.0.0.1:27070 -duration "$DURATION" -events 100000000 -rate "$RATE" >"$DIR/bench.out" 2>&1 &
bench=$!
sleep 8
if [ "${JOIN:-0}" = 1 ]; then
	$BIN agent -name node4 -data-dir "$DIR/node4" -http 127.0.0.1:27100 -raft 127.0.0.1:27101 \
		-gossip 127.0.0.1:27102 -gossip-profile local -join 127.0.0.1:27072 >"$DIR/node4.log" 2>&1 &
fi
if [ "${NORESHARD:-0}" != 1 ]; then
	start=$(date +%s.%N)
	$BIN reshard -addr 127.0.0.1:27080 -shards 64
	echo "reshard took $(echo "$(date +%s.%N) - $start" | bc) s (bench started 8 s before)"
fi
wait $bench || true
grep -v '^shape' "$DIR/bench.out"
sleep 2
for p in 27070 27080 27090; do
	curl -s "127.0.0.1:$p/metrics" | grep -E '^scope_correlator_total\{what="(orphan|rerouted|notice_forwarded|record_forwarded)"|^scope_store_(duplicates|frames_lost|edges_dropped)_total' | sed "s/^/:$p /"
done
$BIN stats -addr 127.0.0.1:27070 | head -1
