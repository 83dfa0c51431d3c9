#!/usr/bin/env bash
# Idle cost of shards on a 3-node `scope dev-cluster` (R = 3, every node
# holds every shard) on one machine (docs/bench/shards.md): time from start
# until all three /readyz answer 200, then, 5 s later, the three agents'
# resident memory (VmRSS, summed) and the CPU they used over 10 s (summed).
#   docs/bench/idle-shards-3.sh ./bin/scope 1024
set -euo pipefail
BIN=$1 N=$2
D=$(mktemp -d)
trap 'kill -INT $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D"' EXIT
start=$(date +%s.%N)
"$BIN" dev-cluster -n 3 -shards "$N" -base-port 17470 -data-dir "$D" -log-level error >/dev/null 2>&1 &
PID=$!
for port in 17470 17480 17490; do
	until curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; do
		kill -0 $PID || exit 1
		sleep 0.1
	done
done
ready=$(echo "$(date +%s.%N) - $start" | bc)
sleep 5
agents=$(pgrep -f "agent -name .* -data-dir $D" | tr '\n' ' ')
ticks() { for p in $agents; do awk '{print $14 + $15}' /proc/$p/stat; done | paste -sd+ | bc; }
t0=$(ticks)
sleep 10
t1=$(ticks)
rss=$(for p in $agents; do awk '/VmRSS/ {print $2}' /proc/$p/status; done | paste -sd+ | bc)
cpu=$(echo "scale=1; ($t1 - $t0) * 100 / $(getconf CLK_TCK) / 10" | bc)
printf 'shards %s on 3 nodes (R=3): ready %.1f s, RSS %d MiB (3 agents), idle CPU %s%% of a core (3 agents)\n' \
	"$N" "$ready" $((rss / 1024)) "$cpu"
