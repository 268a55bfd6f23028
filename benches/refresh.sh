#!/usr/bin/env bash
# Refresh pipeline benchmark (release build), against the local PostgreSQL, Redis and
# RabbitMQ:
#   1. raw broker rate: persistent, confirmed publish + manual-ack consume, quorum queue;
#   2. end to end: ACCOUNTS due accounts at an in-process demo provider, refreshed by a
#      `pipes scheduler` and a `pipes worker` process (scheduler -> RabbitMQ -> worker ->
#      provider -> PostgreSQL -> Redis); the worker's peak RSS;
#   3. scheduler claim/tick time: 1,000,000 stored / 10,000 due vs 100,000 / 10,000.
# Usage: benches/refresh.sh [ACCOUNTS]   (default 100000)
#   STEPS="broker e2e tick" (the default) picks the measurements to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Hold the shared build lock for the whole run: no build or test of anyone else's
# competes for the two cores while we measure.
if [ -z "${BENCH_LOCKED:-}" ]; then
    exec env BENCH_LOCKED=1 flock /tmp/cargo.lock "$0" "$@"
fi

ACCOUNTS="${1:-100000}"
STEPS="${STEPS:-broker e2e tick}"
step() { [[ " $STEPS " == *" $1 "* ]]; }
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
export PIPES_ALLOW_PRIVATE_NETWORK=true  # the fake provider runs on this machine
export RUST_LOG="${RUST_LOG:-warn}"

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    cargo build --release --bin pipes --example refresh_bench >&2
fi
PIPES="$TARGET/release/pipes"
HELPER="$TARGET/release/examples/refresh_bench"

# CPU seconds used so far by each process group of the pipeline, one "name seconds" per line.
cpu_by_process() {
    local hz
    hz=$(getconf CLK_TCK)
    for stat in /proc/[0-9]*/stat; do
        cat "$stat" 2>/dev/null
    done | awk -v hz="$hz" -v worker="${WORKER:-}" -v scheduler="${SCHEDULER:-}" '{
        name = $2; gsub(/[()]/, "", name)
        if ($1 == worker) name = "worker"
        else if ($1 == scheduler) name = "scheduler"
        else if (name == "refresh_bench") name = "provider"
        else if (name ~ /^postgres/) name = "postgres"
        else if (name ~ /^beam/) name = "rabbitmq"
        else if (name ~ /^redis-server/) name = "redis"
        else next
        # utime and stime are fields 14 and 15 once the name holds no space
        cpu[name] += ($14 + $15) / hz
    } END { for (n in cpu) printf "%s %.2f\n", n, cpu[n] }' | sort
}

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The helper connects to the database first: drop the queues before the database.
    "$HELPER" drop-queues >/dev/null 2>&1 || true
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "bench_$$:*" | xargs -r -n 1000 redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
"$PIPES" migrate >/dev/null

BROKER_OUT="" E2E_OUT=""
if step broker; then
echo "== raw broker rate" >&2
BROKER_OUT=$("$HELPER" broker "$ACCOUNTS")
echo "$BROKER_OUT"
fi

if step e2e; then
echo "== end to end, $ACCOUNTS accounts" >&2
# A running deployment's Redis holds the cache-warm marker. This run's prefix is new, so
# without it the scheduler would take Redis for one that lost its data and refill the
# cache from PostgreSQL (src/cache_warm.rs) while the clock runs.
redis-cli SET "$PIPES_REDIS_PREFIX:cache:warm" bench >/dev/null
PIPES_METRICS_LISTEN=127.0.0.1:0 "$PIPES" worker 2>/tmp/bench-worker.log &
WORKER=$!
PIDS+=("$WORKER")
PIPES_METRICS_LISTEN=127.0.0.1:0 "$PIPES" scheduler 2>/tmp/bench-scheduler.log &
SCHEDULER=$!
PIDS+=("$SCHEDULER")
rm -f /tmp/bench-e2e.err
"$HELPER" e2e "$ACCOUNTS" >/tmp/bench-e2e.out 2> >(tee /tmp/bench-e2e.err >&2) &
HELPER_PID=$!
# The clock starts once the accounts are due: so does the CPU count.
until grep -q '^armed' /tmp/bench-e2e.err 2>/dev/null || ! kill -0 "$HELPER_PID" 2>/dev/null; do sleep 0.2; done
CPU_BEFORE=$(cpu_by_process)
wait "$HELPER_PID"
CPU_AFTER=$(cpu_by_process)
E2E_OUT=$(cat /tmp/bench-e2e.out)
echo "$E2E_OUT"
# CPU per refresh by process ("provider" is the helper: the demo provider it runs).
join -a 2 -e 0 -o 0,1.2,2.2 <(echo "$CPU_BEFORE") <(echo "$CPU_AFTER") |
    awk -v n="$ACCOUNTS" '{ printf "cpu_%s_s=%.1f (%.0f us/refresh)\n", $1, $3 - $2, ($3 - $2) * 1e6 / n }'
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$WORKER/status")
RSS_NOW_KB=$(awk '/VmRSS/ {print $2}' "/proc/$WORKER/status")
echo "worker_peak_rss_mib=$((RSS_KB / 1024))"
echo "worker_rss_mib=$((RSS_NOW_KB / 1024))"
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
fi

if step broker && step e2e; then
# The machine's speed drifts by a quarter within minutes: the raw rate is measured again
# right after the run, and the ratio is taken against the mean of the two.
echo "== raw broker rate, again" >&2
BROKER_AFTER=$("$HELPER" broker "$ACCOUNTS" | sed -n 's/^broker_rate=//p')
echo "broker_rate_after=$BROKER_AFTER"
BROKER_RATE=$(sed -n 's/^broker_rate=//p' <<<"$BROKER_OUT")
E2E_RATE=$(sed -n 's/^e2e_rate=//p' <<<"$E2E_OUT")
echo "broker_rate_mean=$(( (BROKER_RATE + BROKER_AFTER) / 2 ))"
echo "ratio=$(awk -v e="$E2E_RATE" -v b="$BROKER_RATE" -v a="$BROKER_AFTER" 'BEGIN { printf "%.2f", 2 * e / (b + a) }')"
fi

if step tick; then
echo "== scheduler tick" >&2
"$HELPER" tick 1000000 10000
"$HELPER" tick 100000 10000
fi
