#!/bin/bash
# The load tool's own CPU per delivery next to the gateway's (loadtest/RESULTS.md,
# "The load tool itself"): the gateway at --shards 1 on CPU 0, the tool on CPU 1
# with one engine thread, 10,000 connections, 100 x 100 fan-out. Each run starts
# and ends its own Redis and gateway (killed by PID).
#
#   bash loadtest/scripts/tool_cost.sh OUTDIR NAME [TOOL] [RATE] [DURATION] [REDIS_CPU] [extra tool flags…]
#   e.g. bash loadtest/scripts/tool_cost.sh /tmp/tc new20k                                    # 20k deliveries/s
#        bash loadtest/scripts/tool_cost.sh /tmp/tc new150k target/release/xcord-loadtest 1500 15 0
#        bash loadtest/scripts/tool_cost.sh /tmp/tc old20k /path/to/old/xcord-loadtest       # another build
set -u
OUT=$1; NAME=$2; TOOL=${3:-target/release/xcord-loadtest}; RATE=${4:-200}; DUR=${5:-20}; RCPU=${6:-1}
shift $(( $# < 6 ? $# : 6 ))
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
cargo build --release -q -p xcord-gateway -p xcord-loadtest
RP=$((21000 + RANDOM % 5000))
taskset -c "$RCPU" redis-server --port $RP --bind 127.0.0.1 --save "" --appendonly no > "$OUT/$NAME.redis.log" 2>&1 &
REDIS_PID=$!
sleep 0.3
taskset -c 0 target/release/xcord-gateway --shards 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --jwt-secret dev-secret --admin-token dev-admin --redis redis://127.0.0.1:$RP/ 2> "$OUT/$NAME.gw.log" &
GW_PID=$!
for _ in $(seq 100); do grep -q " listening on" "$OUT/$NAME.gw.log" && break; sleep 0.1; done
ADDR=$(grep -v admin "$OUT/$NAME.gw.log" | grep -o "listening on [0-9.:]*" | head -1 | awk '{print $3}')
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/$NAME.txt"
taskset -c 1 "$TOOL" --gateway "$ADDR" --redis redis://127.0.0.1:$RP/ --jwt-secret dev-secret \
  --gateway-pid $GW_PID --gateway-shards 1 --scenario fanout --client-threads 1 \
  --rate "$RATE" --duration-s "$DUR" --out "$OUT/$NAME.json" --progress-interval-s 5 "$@" \
  >> "$OUT/$NAME.txt" 2> "$OUT/$NAME.err"
echo "$NAME: exit $?"
kill $GW_PID $REDIS_PID; wait $GW_PID $REDIS_PID 2>/dev/null
grep -E "^command|deliveries:|cpu-s per million|client:" "$OUT/$NAME.txt"
