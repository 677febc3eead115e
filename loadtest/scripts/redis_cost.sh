#!/usr/bin/env bash
# Redis CPU per published event with K pattern subscribers — what K gateway nodes in
# `--routing pattern` cost the Redis they share: each event is sent to every node.
# The inputs of the fleet model in tuning/README.md ("Fleet model").
#
#   bash loadtest/scripts/redis_cost.sh K
set -euo pipefail
K=${1:-10}; N=100000
rport=$((21000 + RANDOM % 900))
taskset -c 1 redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & rpid=$!
sleep 0.4
pids=""
for _ in $(seq "$K"); do
  taskset -c 0 redis-cli -p $rport psubscribe 'events:*' >/dev/null 2>&1 & pids="$pids $!"
done
sleep 1
ticks() { awk '{print $14 + $15}' /proc/$rpid/stat; }
t0=$(ticks)
BODY='{"type":"server.message.new","payload":{"serverId":"s42","channelId":"c7","message":{"id":"m_0192","author":"u_881","content":"hello there, this is a chat message","ts":1795678000}}}'
taskset -c 0 redis-benchmark -p $rport -n $N -c 4 -P 16 PUBLISH events:server:s42:channel:c7 "$BODY" >/dev/null 2>&1
t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "K=$K: Redis CPU $(echo "scale=3; ($t1 - $t0) * 1000000 / $hz / $N" | bc) us per publish"
kill $pids $rpid; wait 2>/dev/null || true
