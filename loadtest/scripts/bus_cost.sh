#!/usr/bin/env bash
# Gateway CPU per event nobody on the node wants, by routing mode: with
# `--routing pattern` every node receives and parses every event of the platform;
# with `--routing roots` it receives none it does not hold. One redis-server and
# one gateway (--shards 1, CPU 0), 200,000 events published with redis-benchmark
# (CPU 1); both are started here and ended by PID.
#
#   bash loadtest/scripts/bus_cost.sh pattern|roots
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-pattern}; N=200000
cargo build --release -q -p xcord-gateway
rport=$((20000 + RANDOM % 1000))
taskset -c 1 redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & rpid=$!
sleep 0.4
taskset -c 0 target/release/xcord-gateway --shards 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --jwt-secret s --redis redis://127.0.0.1:$rport/ --routing "$MODE" 2>/dev/null & gpid=$!
sleep 1
ticks() { awk '{print $14 + $15}' /proc/$gpid/stat; }
t0=$(ticks)
if [ "$MODE" = pattern ]; then CMD="PUBLISH events:live:nobody:chat"; else CMD="SPUBLISH xcord:{live:nobody}"; fi
BODY='{"channel":"live:nobody:chat","type":"server.message.new","payload":{"serverId":"s42","channelId":"c7","message":{"id":"m_0192","author":"u_881","content":"hello there, this is a chat message","ts":1795678000}}}'
taskset -c 1 redis-benchmark -p $rport -n $N -c 4 -P 16 $CMD "$BODY" >/dev/null 2>&1
sleep 0.5
t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "$MODE: gateway CPU $(echo "scale=3; ($t1 - $t0) * 1000000 / $hz / $N" | bc) us per event nobody on the node wants"
kill $gpid $rpid; wait 2>/dev/null || true
