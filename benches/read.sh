#!/usr/bin/env bash
# Cache-hit throughput of the token read API against redis-benchmark GET on
# the same Redis (the issue's yardstick), on this machine.
#
# Starts a release `pipes serve` on a fresh database with ACCOUNTS seeded
# fresh accounts, warms every account into the caches, then runs
#   wrk -c 50 (rotating over the accounts)   and   redis-benchmark -t get -c 50 -d 300
# one after the other, and prints both throughputs, their ratio, wrk's
# p50/p99 and the RSS of `pipes serve` under load.
#
# Defaults give each side of each comparison one core of a 2-core machine, as
# redis-benchmark and redis-server (one thread each) have: `wrk -t 1` and one
# tokio worker in `pipes serve`. THREADS=2 WORKERS=2 shows the default runtime
# fighting the load generator for the same two cores (docs/benchmarks.md).
#
# Needs: PostgreSQL on 5432, Redis on 6379, `wrk` (apt package) and
# `redis-benchmark`; build first:
#   cargo build --release --bin pipes --example bench_seed --example bare_http
# Knobs: ACCOUNTS (1000), DURATION (15s), CONNECTIONS (50), THREADS (wrk
# threads, 1), WORKERS (tokio worker threads of `pipes serve`, 1; empty: one
# per core), CEILING=1 (also measure examples/bare_http, a bare axum route
# with a fixed body: the HTTP ceiling of this machine), PERF (a file: record a
# perf profile of `pipes serve` during the run).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-1000}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WORKERS=${WORKERS-1}
PORT=${PORT:-18080}
TARGET=${CARGO_TARGET_DIR:-target}/release
for tool in wrk redis-benchmark redis-cli psql; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk redis-tools postgresql-client)" >&2; exit 1; }
done
[ -x "$TARGET/pipes" ] && [ -x "$TARGET/examples/bench_seed" ] || {
  echo "build first: cargo build --release --bin pipes --example bench_seed" >&2
  exit 1
}

run_id=$(date +%s)_$$
db="pipes_bench_$run_id"
export PIPES_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export PIPES_REDIS_URL="redis://127.0.0.1:6379"
export PIPES_REDIS_PREFIX="bench_$run_id"
export PIPES_LISTEN="127.0.0.1:$PORT"
export PIPES_ENCRYPTION_KEYS="bench:$(head -c 32 /dev/urandom | base64)"
export PIPES_LOG_FORMAT=json RUST_LOG=warn
export PIPES_ALLOW_PRIVATE_NETWORK=true  # the fake provider runs on this machine

serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "bench_$run_id:*" | xargs -r redis-cli del >/dev/null || true
}
trap cleanup EXIT

psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
key=$("$TARGET/examples/bench_seed" "$ACCOUNTS" | tail -1)
if [ -n "${WORKERS:-}" ]; then export TOKIO_WORKER_THREADS=$WORKERS; fi
"$TARGET/pipes" serve >/tmp/pipes-bench-serve.log 2>&1 &
unset TOKIO_WORKER_THREADS
serve_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1 && break
  sleep 0.1
done
answer=$(curl -fsS -X POST "http://127.0.0.1:$PORT/data-integrations/bench/token" \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"user_id":"user-0"}')
case "$answer" in *'"active":true'*) ;; *) echo "unexpected answer: $answer" >&2; exit 1 ;; esac
sleep 1 # the invalidation subscription turns the local cache on

export PIPES_KEY=$key ACCOUNTS
# Warm-up: every account read at least once (misses fill Redis and the local cache).
wrk -t "$THREADS" -c "$CONNECTIONS" -d 3s -s benches/read.lua "http://127.0.0.1:$PORT" >/dev/null

rss_max=0
sample_rss() {
  while kill -0 "$serve_pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$rss_max" ] && rss_max=$rss && echo "$rss_max" >"/tmp/pipes-bench-rss.$run_id"
    sleep 0.5
  done
}
sample_rss &
sampler=$!
# PERF=file: sample `pipes serve` (call graphs) during the measured run; read it with
# `perf report -i file --no-children`.
if [ -n "${PERF:-}" ]; then
  perf record -q -F 1999 -g -p "$serve_pid" -o "$PERF" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
fi
wrk_out=$(wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s benches/read.lua "http://127.0.0.1:$PORT")
kill "$sampler" 2>/dev/null || true
rss_kb=$(cat "/tmp/pipes-bench-rss.$run_id" 2>/dev/null || echo 0)
rm -f "/tmp/pipes-bench-rss.$run_id"

ceiling=""
if [ -n "${CEILING:-}" ]; then
  TOKIO_WORKER_THREADS=${WORKERS:-$(nproc)} "$TARGET/examples/bare_http" "127.0.0.1:$((PORT + 1))" &
  bare_pid=$!
  sleep 0.5
  bare_out=$(wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s benches/read.lua "http://127.0.0.1:$((PORT + 1))")
  kill "$bare_pid" 2>/dev/null; wait "$bare_pid" 2>/dev/null || true
  ceiling=$(printf '%s req/s  p50 %s  p99 %s' "$(awk '/Requests\/sec/ {print $2}' <<<"$bare_out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$bare_out")" "$(awk '$1 == "99%" {print $2}' <<<"$bare_out")")
fi

# The yardstick: GETs of a 300-byte value on the same Redis.
redis-cli SET "key:__rand_int__" "$(head -c 300 /dev/zero | tr '\0' x)" >/dev/null
redis_out=$(redis-benchmark -h 127.0.0.1 -p 6379 -t get -c 50 -d 300 -n 1000000 --csv)
redis-cli DEL "key:__rand_int__" >/dev/null

pipes_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$wrk_out")
redis_rps=$(awk -F'"' '/"GET"/ {print $4}' <<<"$redis_out")
p50=$(awk '$1 == "50%" {print $2}' <<<"$wrk_out")
p99=$(awk '$1 == "99%" {print $2}' <<<"$wrk_out")
errors=$(grep -E 'Non-2xx|Socket errors' <<<"$wrk_out" || true)
metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^pipes_(token_reads_total|cache_degraded_total|stale_tokens_served_total)' || true)

echo "$wrk_out"
echo
echo "$redis_out"
echo
echo "$metrics"
echo
printf 'pipes token reads (wrk -t %s -c %s, %s accounts, %s serve workers): %s req/s  p50 %s  p99 %s\n' "$THREADS" "$CONNECTIONS" "$ACCOUNTS" "${WORKERS:-one per core}" "$pipes_rps" "$p50" "$p99"
printf 'redis-benchmark GET (-c 50 -d 300):                  %s req/s\n' "$redis_rps"
printf 'ratio pipes / redis:                                 %s\n' "$(awk -v a="$pipes_rps" -v b="$redis_rps" 'BEGIN {printf "%.2f", a / b}')"
printf 'pipes serve RSS under load (max sampled):            %s MiB\n' "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k / 1024}')"
[ -z "$ceiling" ] || printf 'bare axum route (examples/bare_http, same wrk):     %s\n' "$ceiling"
[ -z "$errors" ] || echo "wrk reported: $errors"
