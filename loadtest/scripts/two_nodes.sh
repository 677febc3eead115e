#!/usr/bin/env bash
# Two gateway nodes on one Redis, each holding half the roots (SPEC §9): what each
# node's bus receives, per event published. One redis-server, two gateways
# (--shards 1 each, CPU 0, same --routing), and a two-process xcord-loadtest fleet
# (CPU 1): shard 0/2 connects the even connections to node A and publishes,
# shard 1/2 connects the odd ones to node B. In the fanout scenario connection i
# subscribes channel i % 100 (`--channel-kind live`: live:lt{c}:chat, each its own
# root, and no server claims, so a connect's presence stays on its own user's
# root), so node A holds the even channels' roots and node B the odd ones'.
# xcord_events_received_total is read from both nodes when publishing starts and
# when the tool reports its drain done (before it disconnects: the offline
# presence that follows is not counted). Everything started here is ended by PID.
#
#   bash loadtest/scripts/two_nodes.sh roots|pattern [DURATION_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-roots}; D=${2:-10}
cargo build --release -q -p xcord-gateway -p xcord-loadtest
OUT=$(mktemp -d)
rport=$((20000 + RANDOM % 1000))
taskset -c 1 redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & rpid=$!
pids="$rpid"
trap 'kill $pids 2>/dev/null; wait 2>/dev/null || true' EXIT
sleep 0.4
start_node() { # NAME
  taskset -c 0 target/release/xcord-gateway --shards 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --jwt-secret s --redis redis://127.0.0.1:$rport/ --routing "$MODE" 2> "$OUT/$1.log" &
  pids="$pids $!"
  for _ in $(seq 100); do
    grep -q "admin listening on" "$OUT/$1.log" && grep -v admin "$OUT/$1.log" | grep -q "listening on" && break
    sleep 0.1
  done
}
start_node a; start_node b
addr() { grep -v admin "$OUT/$1.log" | grep -o 'listening on [0-9.:]*' | head -1 | awk '{print $3}'; }
admin() { grep -o 'admin listening on [0-9.:]*' "$OUT/$1.log" | head -1 | awk '{print $4}'; }
received() { curl -s "http://$(admin "$1")/metrics" | awk '/^xcord_events_received_total/ {print $2}'; }
L="taskset -c 1 target/release/xcord-loadtest --redis redis://127.0.0.1:$rport/ --jwt-secret s \
   --run-id $RANDOM$RANDOM --scenario fanout --channel-kind live --duration-s $D --routing $MODE --gateway-shards 1"
$L --shard 1/2 --gateway "$(addr b)" --out "$OUT/b.json" > "$OUT/b.txt" 2>&1 & lb=$!
$L --shard 0/2 --gateway "$(addr a)" --out "$OUT/a.json" > "$OUT/a.txt" 2>&1 & la=$!
pids="$pids $la $lb"
for _ in $(seq 600); do grep -qs "publishing" "$OUT/a.txt" && break; sleep 0.1; done
a0=$(received a); b0=$(received b); echo "at publish start: A $a0, B $b0" >&2
for _ in $(seq $((D * 10 + 600))); do grep -qs "by the end of the drain" "$OUT/a.txt" && break; sleep 0.1; done
a1=$(received a); b1=$(received b); echo "after the drain: A $a1, B $b1" >&2
wait $la $lb || true
published=$(python3 -c "import json;print(json.load(open('$OUT/a.json'))['deliveries']['events_published'])")
target/release/xcord-loadtest merge "$OUT/a.json" "$OUT/b.json" --out "$OUT/merged.json" > "$OUT/merge.txt" 2>&1 || true
missing=$(python3 -c "import json;print(json.load(open('$OUT/merged.json'))['deliveries']['missing'])")
echo "$MODE: $published events published over $D s; node A's bus received $((${a1%.*} - ${a0%.*})), node B's $((${b1%.*} - ${b0%.*})); merged deliveries missing: $missing"
echo "results in $OUT"
