#!/usr/bin/env bash
# Run every cargo-fuzz target under fuzz/ for a bounded time.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); the targets default to all of `cargo fuzz list`.
# Installs cargo-fuzz when missing. The stable toolchain is used with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only sanitizer flags). Corpora
# (fuzz/corpus/, seeded here on first use), crash artifacts (fuzz/artifacts/) and
# logs (fuzz/target/fuzz-logs/) are git-ignored. Extra cargo-fuzz flags can be given
# in FUZZ_CARGO_ARGS (e.g. "--debug-assertions"). Exits non-zero when any target
# finds a crash, leak, timeout or fails to build.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

DURATION="${1:-60}"
shift || true
case "$DURATION" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found: installing it" >&2
  cargo install cargo-fuzz --locked || exit 1
fi

if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cargo fuzz list)
fi

seed() { # seed DIR NAME CONTENT: write one seed input when the corpus is new
  printf '%s' "$3" >"$1/seed-$2"
}

seed_corpus() {
  local t="$1" dir="corpus/$1"
  [ -d "$dir" ] && return 0
  mkdir -p "$dir"
  case "$t" in
    decode)
      seed "$dir" hello '{"type":"HELLO","payload":{"token":"t"}}'
      seed "$dir" resume '{"type":"RESUME","payload":{"token":null,"sessionId":"s1","seq":42}}'
      seed "$dir" sub '{"type":"SUBSCRIBE","payload":{"channels":["dm:c1","server:srv_1:*",1,{"a":[]}]}}'
      seed "$dir" unsub '{"type":"UNSUBSCRIBE","payload":{"channels":["live:x"]}}'
      seed "$dir" ping '{"type":"PING"}'
      seed "$dir" typing '{"type":"TYPING_START","payload":{"channelId":"dm:c1"}}'
      seed "$dir" presence '{"type":"SET_PRESENCE","payload":{"status":"idle"}}'
      seed "$dir" refresh '{"type":"REFRESH","payload":{"token":"x.y.z"}}'
      ;;
    hello_verify)
      # mode byte 0: a client message; 1: a raw token; 2: header\nclaims, signed.
      seed "$dir" hello $'\x00{"type":"HELLO","payload":{"token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.sig"}}'
      seed "$dir" raw $'\x01eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.AAAA'
      seed "$dir" signed $'\x02{"alg":"HS256","typ":"JWT"}\n{"sub":"alice","exp":99999999999,"servers":["s1"],"dms":[]}'
      ;;
  esac
}

LOGDIR=target/fuzz-logs
mkdir -p "$LOGDIR"
FAILED=()
for t in "${TARGETS[@]}"; do
  seed_corpus "$t"
  extra=()
  case "$t" in
    decode|event_build|hello_verify) extra+=("-dict=dict/json.dict") ;;
  esac
  echo "=== $t: ${DURATION}s ===" >&2
  # shellcheck disable=SC2086
  RUSTC_BOOTSTRAP=1 cargo fuzz run ${FUZZ_CARGO_ARGS:-} "$t" "corpus/$t" -- \
    -max_total_time="$DURATION" -max_len=4096 -print_final_stats=1 "${extra[@]}" \
    >"$LOGDIR/$t.log" 2>&1
  rc=$?
  # libFuzzer's closing lines: the last status line, run count and final stats.
  grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$LOGDIR/$t.log" | tail -n 1
  grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$LOGDIR/$t.log"
  if [ "$rc" -ne 0 ]; then
    echo "!!! $t FAILED (exit $rc): see fuzz/$LOGDIR/$t.log and fuzz/artifacts/$t/" >&2
    grep -E 'panicked at|SUMMARY|ERROR: libFuzzer|Test unit written to|^error' "$LOGDIR/$t.log" | head -n 8 >&2
    FAILED+=("$t")
  fi
done

if [ "${#FAILED[@]}" -ne 0 ]; then
  echo "fuzzing found problems in: ${FAILED[*]}" >&2
  exit 1
fi
echo "all ${#TARGETS[@]} targets ran ${DURATION}s without a crash" >&2
