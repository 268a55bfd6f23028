#!/usr/bin/env bash
# Refresh pipeline benchmark (release build), against the local PostgreSQL, Redis and
# RabbitMQ:
#   1. raw broker rate: persistent, confirmed publish + manual-ack consume, quorum queue;
#   2. end to end: ACCOUNTS due accounts at an in-process demo provider, refreshed by a
#      `pipes scheduler` and a `pipes worker` process (scheduler -> RabbitMQ -> worker ->
#      provider -> PostgreSQL -> Redis); the worker's peak RSS;
#   3. scheduler claim/tick time: 1,000,000 stored / 10,000 due vs 100,000 / 10,000.
# Usage: benches/refresh.sh [ACCOUNTS]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."

# Hold the shared build lock for the whole run: no build or test of anyone else's
# competes for the two cores while we measure.
if [ -z "${BENCH_LOCKED:-}" ]; then
    exec env BENCH_LOCKED=1 flock /tmp/cargo.lock "$0" "$@"
fi

ACCOUNTS="${1:-100000}"
TARGET="${CARGO_TARGET_DIR:-target}"
DB="pipes_bench_$$"
ADMIN_URL="${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export PIPES_DATABASE_URL="${ADMIN_URL%/*}/$DB"
export PIPES_ENCRYPTION_KEYS="${PIPES_ENCRYPTION_KEYS:-bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=}"
export PIPES_QUEUE_PREFIX="bench_$$"
export PIPES_REDIS_PREFIX="bench_$$"
export PIPES_SCHEDULER_CRON="* * * * * *"
export PIPES_WORKER_CONCURRENCY="${PIPES_WORKER_CONCURRENCY:-64}"
export PIPES_LOG_FORMAT=text
export RUST_LOG="${RUST_LOG:-warn}"

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    cargo build --release --bin pipes --example refresh_bench >&2
fi
PIPES="$TARGET/release/pipes"
HELPER="$TARGET/release/examples/refresh_bench"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "bench_$$:*" | xargs -r -n 1000 redis-cli del >/dev/null 2>&1 || true
    "$HELPER" drop-queues >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
"$PIPES" migrate >/dev/null

echo "== raw broker rate" >&2
BROKER_OUT=$("$HELPER" broker "$ACCOUNTS")
echo "$BROKER_OUT"

echo "== end to end, $ACCOUNTS accounts" >&2
PIPES_METRICS_LISTEN=127.0.0.1:0 "$PIPES" worker 2>/tmp/bench-worker.log &
WORKER=$!
PIDS+=("$WORKER")
PIPES_METRICS_LISTEN=127.0.0.1:0 "$PIPES" scheduler 2>/tmp/bench-scheduler.log &
PIDS+=("$!")
E2E_OUT=$("$HELPER" e2e "$ACCOUNTS")
echo "$E2E_OUT"
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$WORKER/status")
RSS_NOW_KB=$(awk '/VmRSS/ {print $2}' "/proc/$WORKER/status")
echo "worker_peak_rss_mib=$((RSS_KB / 1024))"
echo "worker_rss_mib=$((RSS_NOW_KB / 1024))"
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

BROKER_RATE=$(sed -n 's/^broker_rate=//p' <<<"$BROKER_OUT")
E2E_RATE=$(sed -n 's/^e2e_rate=//p' <<<"$E2E_OUT")
echo "ratio=$(awk -v e="$E2E_RATE" -v b="$BROKER_RATE" 'BEGIN { printf "%.2f", e / b }')"

echo "== scheduler tick" >&2
"$HELPER" tick 1000000 10000
"$HELPER" tick 100000 10000
