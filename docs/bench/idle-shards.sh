#!/usr/bin/env bash
# Idle cost of shards on one `scope agent -dev` node (docs/bench/shards.md):
# time from start to /readyz 200, then, 5 s later, resident memory (VmRSS)
# and the CPU the idle node used over 10 s.
#   docs/bench/idle-shards.sh ./bin/scope 4096 [extra agent flags...]
set -euo pipefail
BIN=$1 N=$2
shift 2
D=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D"' EXIT
start=$(date +%s.%N)
"$BIN" agent -dev -shards "$N" -data-dir "$D/data" -http 127.0.0.1:7474 -raft 127.0.0.1:7475 -log-level error "$@" &
PID=$!
until curl -sf -o /dev/null http://127.0.0.1:7474/readyz; do
	kill -0 $PID || exit 1
	sleep 0.05
done
ready=$(echo "$(date +%s.%N) - $start" | bc)
sleep 5
ticks() { awk '{print $14 + $15}' /proc/$PID/stat; }
t0=$(ticks)
sleep 10
t1=$(ticks)
rss=$(awk '/VmRSS/ {printf "%d", $2/1024}' /proc/$PID/status)
cpu=$(echo "scale=1; ($t1 - $t0) * 100 / $(getconf CLK_TCK) / 10" | bc)
printf 'shards %s: ready %.1f s, RSS %s MiB, idle CPU %s%% of a core\n' "$N" "$ready" "$rss" "$cpu"
