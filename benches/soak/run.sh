#!/usr/bin/env bash
# Soak with faults (release build), against the local PostgreSQL, Redis and RabbitMQ.
#
#   * a helper process (`examples/soak`) holds the third party: the demo OAuth provider with
#     access-token lifetimes spread over TTL_MIN..TTL_MAX seconds, and ACCOUNTS connected
#     accounts seeded with real grants there; it also drives the token reads (RATE/s over
#     random accounts for DURATION s, open loop) and checks every answer at the provider;
#   * 1 `pipes scheduler`, 2 `pipes worker`, 1 `pipes serve`, separate processes, whose
#     PostgreSQL and RabbitMQ traffic goes through two TCP proxies the script can cut;
#   * every 10 s: /metrics of every role, `pipes status --json`, CPU and RSS of each role;
#   * faults, one after another, no hand on the keyboard:
#       kill -9 a worker, restart it WORKER_DOWN s later;
#       cut the broker connections for FAULT_SECONDS;
#       stop Redis (`redis-cli shutdown nosave`) for FAULT_SECONDS, restart it with
#         REDIS_START (restored on any exit);
#       make PostgreSQL unreachable (proxy cut) for FAULT_SECONDS;
#   * after the load, DRAIN s more for late refreshes, then an audit of every account at the
#     provider; then `report.py` writes OUT/report.md and the queue-depth plot.
#
# Usage: benches/soak/run.sh          (knobs below, as environment variables)
# Needs: psql, redis-cli, curl, python3; builds the release binaries unless SOAK_SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

ACCOUNTS=${ACCOUNTS:-100000}
RATE=${RATE:-1000}
DURATION=${DURATION:-900}
DRAIN=${DRAIN:-120}
TTL_MIN=${TTL_MIN:-120}
TTL_MAX=${TTL_MAX:-600}
FAULT_SECONDS=${FAULT_SECONDS:-20}
WORKER_DOWN=${WORKER_DOWN:-10}
# Fault start times (seconds into the load); by default spread over the run like 120, 270,
# 420, 570 of 900.
FAULT_WORKER_AT=${FAULT_WORKER_AT:-$((DURATION * 120 / 900))}
FAULT_BROKER_AT=${FAULT_BROKER_AT:-$((DURATION * 270 / 900))}
FAULT_REDIS_AT=${FAULT_REDIS_AT:-$((DURATION * 420 / 900))}
FAULT_PG_AT=${FAULT_PG_AT:-$((DURATION * 570 / 900))}
PORT_BASE=${PORT_BASE:-27000}
REDIS_START=${REDIS_START:-'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'}
PLOT=${PLOT:-docs/soak-queue.svg}
TARGET="${CARGO_TARGET_DIR:-target}/release"

run_id="$(date +%s)_$$"
OUT=${OUT:-/tmp/pipes-soak-$run_id}
mkdir -p "$OUT/logs" "$OUT/metrics"
ADMIN_URL=${SOAK_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB="pipes_soak_$run_id"
DIRECT_DB="${ADMIN_URL%/*}/$DB"
DIRECT_AMQP=${SOAK_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PG_PROXY=127.0.0.1:$((PORT_BASE + 432))
AMQP_PROXY=127.0.0.1:$((PORT_BASE + 672))
SERVE=127.0.0.1:$((PORT_BASE + 80))

export PIPES_DATABASE_URL="postgres://postgres@$PG_PROXY/$DB"
export PIPES_AMQP_URL="amqp://guest:guest@$AMQP_PROXY/%2f"
export PIPES_REDIS_URL=${PIPES_REDIS_URL:-redis://127.0.0.1:6379}
export PIPES_QUEUE_PREFIX="soak_$run_id"
export PIPES_REDIS_PREFIX="soak_$run_id"
export PIPES_LISTEN="$SERVE"
export PIPES_ENCRYPTION_KEYS="soak:$(head -c 32 /dev/urandom | base64)"
export PIPES_LOG_FORMAT=text
export PIPES_ALLOW_PRIVATE_NETWORK=true  # the fake provider runs on this machine
export RUST_LOG=${RUST_LOG:-warn}

if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
    flock /tmp/cargo.lock cargo build --release --bin pipes --example soak >&2
fi
PIPES="$TARGET/pipes"
HELPER="$TARGET/examples/soak"

now() { date +%s.%N; }
log() { echo "[$(date +%T)] $*" >&2; }
# Starts Redis with no descriptor of ours beyond stdio: a daemon that inherited, say, the
# build lock of a caller running this script under `flock` would hold it forever.
start_redis() {
    (
        for fd in /proc/self/fd/*; do
            n=${fd##*/}
            if [ "$n" -gt 2 ] 2>/dev/null; then eval "exec $n>&-"; fi
        done
        eval "$REDIS_START"
    ) </dev/null >/dev/null 2>&1
}
declare -A PID
redis_stopped=""
cleanup() {
    set +e
    if [ -n "$redis_stopped" ] || ! redis-cli ping >/dev/null 2>&1; then
        log "restoring Redis"
        start_redis
    fi
    [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
    # Roles first, while their proxies still forward, so in-flight jobs settle (cut off,
    # a role still exits, within PIPES_SHUTDOWN_TIMEOUT); whatever is left after 15 s is
    # killed.
    for role in serve scheduler worker1 worker2 helper pg_proxy amqp_proxy; do
        [ -n "${PID[$role]:-}" ] && kill "${PID[$role]}" 2>/dev/null
        [ "$role" = helper ] && sleep 1
    done
    for _ in $(seq 1 30); do
        alive=""
        for role in "${!PID[@]}"; do kill -0 "${PID[$role]}" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.5
    done
    for role in "${!PID[@]}"; do kill -9 "${PID[$role]}" 2>/dev/null; done
    wait 2>/dev/null
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    redis-cli --scan --pattern "soak_$run_id*" | xargs -r redis-cli del >/dev/null 2>&1
    if command -v rabbitmqctl >/dev/null; then
        rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep "^soak_$run_id" |
            while read -r q; do rabbitmqctl delete_queue "$q" </dev/null >/dev/null 2>&1; done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "run $run_id -> $OUT (load average $(cut -d' ' -f1-3 /proc/loadavg))"
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
PIPES_DATABASE_URL=$DIRECT_DB "$PIPES" migrate >/dev/null

"$HELPER" proxy "$PG_PROXY" 127.0.0.1:5432 2>"$OUT/logs/pg-proxy.log" &
PID[pg_proxy]=$!
"$HELPER" proxy "$AMQP_PROXY" 127.0.0.1:5672 2>"$OUT/logs/amqp-proxy.log" &
PID[amqp_proxy]=$!

log "seeding $ACCOUNTS accounts at the provider"
SOAK_DATABASE_URL=$DIRECT_DB SOAK_ACCOUNTS=$ACCOUNTS SOAK_RATE=$RATE SOAK_DURATION=$DURATION \
SOAK_TTL_MIN=$TTL_MIN SOAK_TTL_MAX=$TTL_MAX SOAK_SERVE_URL="http://$SERVE" \
    "$HELPER" provider "$OUT" 2>"$OUT/logs/helper.log" &
PID[helper]=$!
echo "helper ${PID[helper]} $(now)" >>"$OUT/pids"
while [ ! -f "$OUT/ready" ]; do
    kill -0 "${PID[helper]}" 2>/dev/null || { log "helper died"; tail "$OUT/logs/helper.log" >&2; exit 1; }
    sleep 0.5
done

start_role() { # name command metrics-port
    local name=$1 cmd=$2 port=$3
    PIPES_METRICS_LISTEN="127.0.0.1:$port" "$PIPES" "$cmd" >>"$OUT/logs/$name.log" 2>&1 &
    PID[$name]=$!
    echo "$name ${PID[$name]} $(now)" >>"$OUT/pids"
}
start_role scheduler scheduler $((PORT_BASE + 91))
start_role worker1 worker $((PORT_BASE + 92))
start_role worker2 worker $((PORT_BASE + 93))
start_role serve serve $((PORT_BASE + 94))
declare -A METRICS=([scheduler]=$((PORT_BASE + 91)) [worker1]=$((PORT_BASE + 92)) [worker2]=$((PORT_BASE + 93)))
for _ in $(seq 1 100); do curl -fsS "http://$SERVE/health/live" >/dev/null 2>&1 && break; sleep 0.2; done

# One sample: metrics of every role, status, CPU ticks and RSS of every role, load average.
sample() {
    local t dir
    t=$(now)
    dir="$OUT/metrics/$t"
    mkdir -p "$dir"
    curl -fsS -m 5 "http://$SERVE/metrics" 2>/dev/null | grep '^pipes_' >"$dir/serve.prom" || true
    for role in "${!METRICS[@]}"; do
        curl -fsS -m 5 "http://127.0.0.1:${METRICS[$role]}/metrics" 2>/dev/null | grep '^pipes_' >"$dir/$role.prom" || true
    done
    PIPES_DATABASE_URL=$DIRECT_DB PIPES_AMQP_URL=$DIRECT_AMQP timeout 8 "$PIPES" status --json >"$dir/status.json" 2>/dev/null || true
    for role in scheduler worker1 worker2 serve helper; do
        local pid
        # The latest pid of each role (a restarted worker has a new one).
        pid=$(awk -v r="$role" '$1 == r {p = $2} END {print p}' "$OUT/pids")
        if [ -r "/proc/$pid/stat" ]; then
            local ticks rss
            ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
            echo "$t $role $pid $ticks $rss" >>"$OUT/proc.txt"
        fi
    done
    echo "$t $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
}
sampler_loop() { while true; do sample; sleep 10; done; }

fault() { # name start end
    echo "{\"name\": \"$1\", \"start\": $2, \"end\": $3}" >>"$OUT/faults.jsonl"
}
at() { # wait until $1 seconds into the load
    local target
    target=$(awk -v s="$T0" -v o="$1" 'BEGIN {printf "%.3f", s + o}')
    while awk -v n="$(now)" -v t="$target" 'BEGIN {exit !(n + 0 < t + 0)}'; do sleep 0.2; done
}

T0=$(now)
touch "$OUT/start"
echo "$T0" >"$OUT/t0"
sampler_loop &
SAMPLER=$!
log "load started: $RATE reads/s for ${DURATION}s"

at "$FAULT_WORKER_AT"
log "fault: kill -9 worker1"
s=$(now)
kill -9 "${PID[worker1]}"
sleep "$WORKER_DOWN"
start_role worker1 worker $((PORT_BASE + 92))
fault worker_kill "$s" "$(now)"

at "$FAULT_BROKER_AT"
log "fault: broker connections cut for ${FAULT_SECONDS}s"
s=$(now)
kill -USR1 "${PID[amqp_proxy]}"
sleep "$FAULT_SECONDS"
kill -USR2 "${PID[amqp_proxy]}"
fault broker_cut "$s" "$(now)"

at "$FAULT_REDIS_AT"
log "fault: Redis stopped for ${FAULT_SECONDS}s"
s=$(now)
redis_stopped=1
redis-cli shutdown nosave >/dev/null 2>&1 || true
sleep "$FAULT_SECONDS"
start_redis
for _ in $(seq 1 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_stopped=""
fault redis_stop "$s" "$(now)"

at "$FAULT_PG_AT"
log "fault: PostgreSQL unreachable for ${FAULT_SECONDS}s"
s=$(now)
kill -USR1 "${PID[pg_proxy]}"
sleep "$FAULT_SECONDS"
kill -USR2 "${PID[pg_proxy]}"
fault pg_cut "$s" "$(now)"

while [ ! -f "$OUT/reads_summary.json" ]; do
    kill -0 "${PID[helper]}" 2>/dev/null || { log "helper died"; tail "$OUT/logs/helper.log" >&2; exit 1; }
    sleep 1
done
log "load done; draining ${DRAIN}s"
sleep "$DRAIN"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
sample
touch "$OUT/stop"
while [ ! -f "$OUT/final.json" ]; do
    kill -0 "${PID[helper]}" 2>/dev/null || { log "helper died"; tail "$OUT/logs/helper.log" >&2; exit 1; }
    sleep 1
done
log "audit done"
python3 benches/soak/report.py "$OUT" "$PLOT" | tee "$OUT/report.md"
