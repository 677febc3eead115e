#!/usr/bin/env bash
# Reproduce loadtest/RESULTS.md on this 2-core machine: the gateway pinned to CPU 0
# (--shards 1), Redis, the publisher and the load client on CPU 1. Each run starts
# its own gateway and redis-server on loopback and ends them by PID.
#
#   bash loadtest/scripts/measure.sh OUTDIR [fanout|broadcast|ramp|ramp2|memory|all]
#   GW_EXTRA="--replay-buffer-bytes 64KiB" bash loadtest/scripts/measure.sh OUTDIR memory   (extra gateway flags)
#   RAMP_EXTRA="--ramp-start-rate 1000 --ramp-factor 1.15" bash loadtest/scripts/measure.sh OUTDIR ramp   (extra ramp flags)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/xcord-results}; WHAT=${2:-all}
mkdir -p "$OUT"
cargo build --release -q -p xcord-gateway -p xcord-loadtest
GW=target/release/xcord-gateway; LT=target/release/xcord-loadtest

run() { # name shards-cpus shards loadtest-args...
  local name=$1 cpus=$2 shards=$3; shift 3
  local rport=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768+)
  taskset -c 1 redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no >"$OUT/$name.redis.log" 2>&1 & local rpid=$!
  sleep 0.5
  taskset -c "$cpus" $GW --shards "$shards" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --jwt-secret bench-secret --admin-token bench-admin --redis redis://127.0.0.1:$rport/ ${GW_EXTRA:-} 2>"$OUT/$name.gateway.log" & local gpid=$!
  local addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'node: listening on [0-9.:]*' "$OUT/$name.gateway.log" | awk '{print $4}' || true)
    [ -n "$addr" ] && break; sleep 0.1
  done
  set +e
  taskset -c 1 $LT --gateway "$addr" --redis redis://127.0.0.1:$rport/ --jwt-secret bench-secret \
    --gateway-pid $gpid --gateway-shards "$shards" --out "$OUT/$name.json" --report "$OUT/$name.html" "$@" \
    >"$OUT/$name.txt" 2>&1
  local rc=$?
  set -e
  kill -9 $gpid $rpid 2>/dev/null || true
  wait $gpid $rpid 2>/dev/null || true
  echo "$name: exit $rc"; grep -E "cpu-s per million|latency \(end|per connection|saturation|PASSED|FAILED" "$OUT/$name.txt" || true
}

case $WHAT in fanout|all) run fanout 0 1 --scenario fanout --duration-s 30 ;; esac
case $WHAT in broadcast|all) run broadcast 0 1 --scenario broadcast ;; esac
case $WHAT in ramp|all) run ramp 0 1 --scenario fanout --ramp ${RAMP_EXTRA:-} ;; esac
case $WHAT in ramp2|all) run ramp2 0,1 2 --scenario fanout --ramp ${RAMP_EXTRA:-} ;; esac
case $WHAT in memory|all)
  run mem2k 0 1 --scenario fanout --connections 2000 --channels 20 --subscriptions-per-connection 2 --rate 10 --duration-s 3
  run mem15k 0 1 --scenario fanout --connections 15000 --channels 150 --subscriptions-per-connection 2 --rate 10 --duration-s 3
  python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
a, b = (json.load(open(f"{o}/{n}.json")) for n in ("mem2k", "mem15k"))
ra, rb = a["gateway"]["rss_bytes_after_connect"], b["gateway"]["rss_bytes_after_connect"]
na, nb = a["connections"]["established"], b["connections"]["established"]
print(f"memory slope 2k->15k: ({rb} - {ra}) / ({nb} - {na}) = {(rb - ra) / (nb - na):.0f} B per idle connection with 2 subscriptions")
PY
  ;;
esac

# Issue 6 validation: predict from a 2k-connection run how many connections fit a
# gateway RSS budget, then measure at that count.
#   BUDGET_MIB=112 bash loadtest/scripts/measure.sh OUTDIR validate
case $WHAT in validate)
  BUDGET_MIB=${BUDGET_MIB:-112}
  export GW_EXTRA="--replay-buffer-bytes 64KiB"
  # paced connects, so the samples see the settled cost (buffers trimmed, allocator purged)
  run val2k 0 1 --scenario fanout --connections 2000 --channels 20 --subscriptions-per-connection 2 --rate 10 --duration-s 3 --connect-rate ${VAL_CONNECT_RATE:-200}
  target/release/xcord-tune capacity --from "$OUT/val2k.json" --host-cores 1 --shards 1 \
    --host-mem "$(python3 -c "print($BUDGET_MIB/1024)")" --mem-reserve 0 --kernel-bytes-per-connection 0 \
    --replay-buffer-bytes 65536 --json > "$OUT/val-capacity.json"
  N=$(python3 -c "import json;print(json.load(open('$OUT/val-capacity.json'))['limits']['connections_by_memory'])")
  echo "predicted connections at ${BUDGET_MIB} MiB RSS: $N"
  run valN 0 1 --scenario fanout --connections "$N" --channels $(( (N + 199) / 200 )) --subscriptions-per-connection 2 --rate 10 --duration-s 3 --source-addrs 2
  python3 - "$OUT" "$BUDGET_MIB" "$N" <<'PY'
import json, sys
o, budget, n = sys.argv[1], float(sys.argv[2]) * 1024 * 1024, int(sys.argv[3])
r = json.load(open(f"{o}/valN.json"))
rss = r["gateway"]["rss_bytes_end"]  # settled, as the prediction's intercept
base = r["gateway"]["rss_bytes_before_connect"]
est = r["connections"]["established"]
print(f"measured at {est} connections: settled RSS {rss/2**20:.1f} MiB vs budget {budget/2**20:.0f} MiB: {100*(rss-budget)/budget:+.1f}%")
# Where the budget is really reached, by this run's own cost per connection.
per = (rss - base) / est
actual = est + (budget - rss) / per
print(f"budget reached at ~{actual:.0f} connections ({per:.0f} B each in this run): prediction {100*(n-actual)/actual:+.1f}%")
PY
  ;;
esac
