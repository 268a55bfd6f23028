#!/usr/bin/env bash
# Relayed GETs against the same GETs sent straight to the provider, on this machine.
#
# Runs examples/relay_bench (the fake provider, whose `GET /api/me` answers a small
# JSON body, and the seed: ACCOUNTS connected accounts of an integration `relayed`),
# a release `pipes serve`, then
#   wrk GET /relay/relayed/me through Pipes (rotating over the accounts)   and
#   wrk GET /api/me straight at the fake provider (one account's token)
# with the same threads and connections, one after the other, and prints both
# throughputs, their ratio, each run's p50/p99 and the RSS of `pipes serve` under load.
#
# Needs: PostgreSQL on 5432, Redis on 6379, `wrk` (apt package); build first:
#   cargo build --release --bin pipes --example relay_bench
# Knobs: ACCOUNTS (100), DURATION (15s), CONNECTIONS (50), THREADS (wrk threads, 1),
# WORKERS (tokio worker threads of `pipes serve`, 1; empty: one per core), PERF (a file:
# record a perf profile of `pipes serve` during the relayed run).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-100}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WORKERS=${WORKERS-1}
PORT=${PORT:-18090}
DEMO_PORT=$((PORT + 1))
TARGET=${CARGO_TARGET_DIR:-target}/release
for tool in wrk redis-cli psql curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk redis-tools postgresql-client curl)" >&2; exit 1; }
done
[ -x "$TARGET/pipes" ] && [ -x "$TARGET/examples/relay_bench" ] || {
  echo "build first: cargo build --release --bin pipes --example relay_bench" >&2
  exit 1
}

run_id=$(date +%s)_$$
db="pipes_relay_bench_$run_id"
export PIPES_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export PIPES_REDIS_URL="redis://127.0.0.1:6379"
export PIPES_REDIS_PREFIX="relaybench_$run_id"
export PIPES_LISTEN="127.0.0.1:$PORT"
export PIPES_ENCRYPTION_KEYS="bench:$(head -c 32 /dev/urandom | base64)"
export PIPES_LOG_FORMAT=json RUST_LOG=warn
export PIPES_ALLOW_PRIVATE_NETWORK=true  # the fake provider runs on this machine
export PIPES_RATE_LIMITS=off

serve_pid="" demo_pid=""
cleanup() {
  for pid in $serve_pid $demo_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "relaybench_$run_id:*" | xargs -r redis-cli del >/dev/null || true
  rm -f "/tmp/pipes-relay-bench.$run_id" "/tmp/pipes-relay-rss.$run_id"
}
trap cleanup EXIT

psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
"$TARGET/examples/relay_bench" "127.0.0.1:$DEMO_PORT" "$ACCOUNTS" >"/tmp/pipes-relay-bench.$run_id" 2>/dev/null &
demo_pid=$!
for _ in $(seq 1 300); do [ -s "/tmp/pipes-relay-bench.$run_id" ] && break; sleep 0.1; done
read -r key token <"/tmp/pipes-relay-bench.$run_id"
if [ -n "${WORKERS:-}" ]; then export TOKIO_WORKER_THREADS=$WORKERS; fi
"$TARGET/pipes" serve >/tmp/pipes-relay-bench-serve.log 2>&1 &
unset TOKIO_WORKER_THREADS
serve_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1 && break
  sleep 0.1
done
answer=$(curl -fsS "http://127.0.0.1:$PORT/relay/relayed/me" -H "Authorization: Bearer $key" -H 'Pipes-User-Id: user-0')
case "$answer" in *'"user-0"'*) ;; *) echo "unexpected answer: $answer" >&2; exit 1 ;; esac
sleep 1 # the invalidation subscription turns the local cache on

export PIPES_KEY=$key TOKEN=$token ACCOUNTS
# Warm-up: every account's token in the caches, the provider connections open.
MODE=relay wrk -t "$THREADS" -c "$CONNECTIONS" -d 3s -s benches/relay.lua "http://127.0.0.1:$PORT" >/dev/null

rss_max=0
sample_rss() {
  while kill -0 "$serve_pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$rss_max" ] && rss_max=$rss && echo "$rss_max" >"/tmp/pipes-relay-rss.$run_id"
    sleep 0.5
  done
}
sample_rss &
sampler=$!
# PERF=file: sample `pipes serve` (call graphs) during the relayed run; read it with
# `perf report -i file --no-children`.
if [ -n "${PERF:-}" ]; then
  perf record -q -F 1999 -g -p "$serve_pid" -o "$PERF" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
fi
relay_out=$(MODE=relay wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s benches/relay.lua "http://127.0.0.1:$PORT")
kill "$sampler" 2>/dev/null || true
rss_kb=$(cat "/tmp/pipes-relay-rss.$run_id" 2>/dev/null || echo 0)
direct_out=$(MODE=direct wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s benches/relay.lua "http://127.0.0.1:$DEMO_PORT")

field() { awk -v k="$2" '$1 == k {print $2}' <<<"$1"; }
relay_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$relay_out")
direct_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$direct_out")
errors=$(grep -E 'Non-2xx|Socket errors' <<<"$relay_out$direct_out" || true)
metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^pipes_relay_requests_total' || true)

echo "$relay_out"
echo
echo "$direct_out"
echo
echo "$metrics"
echo
printf 'relayed GET (wrk -t %s -c %s, %s accounts, %s serve workers): %s req/s  p50 %s  p99 %s\n' "$THREADS" "$CONNECTIONS" "$ACCOUNTS" "${WORKERS:-one per core}" "$relay_rps" "$(field "$relay_out" 50%)" "$(field "$relay_out" 99%)"
printf 'direct GET at the fake provider (same wrk):              %s req/s  p50 %s  p99 %s\n' "$direct_rps" "$(field "$direct_out" 50%)" "$(field "$direct_out" 99%)"
printf 'ratio relayed / direct:                                  %s\n' "$(awk -v a="$relay_rps" -v b="$direct_rps" 'BEGIN {printf "%.2f", a / b}')"
printf 'pipes serve RSS under load (max sampled):                %s MiB\n' "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k / 1024}')"
[ -z "$errors" ] || echo "wrk reported: $errors"
