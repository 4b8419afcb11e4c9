#!/usr/bin/env bash
# Benchmarks pgapi side by side with the Node.js peer (../shared/peer-express) and nginx, in one run on
# this machine: a throw-away topology, 10,000 users x 5 posts on both sides, wrk -t2 -c64 for 10 s per
# scenario after a warm-up, medians of 3 rounds. bench/bench.py drives wrk and writes bench/RESULTS.md.
# Not a test: nothing here asserts a speed.
# bench/run.sh --serve: set everything up, print the ports and wait (for profiling by hand; Ctrl-C ends).
# Env: BENCH_ROUNDS (3), BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_CONNECTIONS (64),
#      BENCH_PORT_BASE (24000), BENCH_PEER_DIR (../shared/peer-express), BENCH_KEEP=1 keeps the state,
#      BENCH_BASELINE=<git ref>: that commit is built too and run beside this tree, as the targets
#      pgapi_baseline and pgapi_baseline_nocache (a before/after comparison in the same run),
#      BENCH_PEERS=0: no Node.js peer and no nginx (pgapi alone, or against its baseline: a shorter run),
#      BENCH_RESULTS: where the report goes (bench/RESULTS.md; a run with BENCH_PEERS=0 should not
#      overwrite it: bench/BEFORE-AFTER.md, say).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${BENCH_PORT_BASE:-24000}
PEER_SRC=${BENCH_PEER_DIR:-$ROOT/../shared/peer-express}
STATE=$(mktemp -d /tmp/pgapi-bench-XXXXXX)
chmod 755 "$STATE"
export PGAPI_PRIMARY_PORT=$BASE PGAPI_REPLICA_PORT=$((BASE + 1)) PGAPI_BOUNCER_PORT=$((BASE + 2)) \
       PGAPI_REDIS_PORT=$((BASE + 3))
declare -A PORT=([pgapi]=$((BASE + 10)) [pgapi_nocache]=$((BASE + 11)) [peer]=$((BASE + 20))
                 [peer_nocache]=$((BASE + 21)) [peer_cluster]=$((BASE + 22)) [peer_cluster_nocache]=$((BASE + 23))
                 [nginx]=$((BASE + 30)))
BASELINE=${BENCH_BASELINE:-}
PEERS=${BENCH_PEERS:-1}
if [ "$PEERS" = 0 ]; then
    unset 'PORT[peer]' 'PORT[peer_nocache]' 'PORT[peer_cluster]' 'PORT[peer_cluster_nocache]' 'PORT[nginx]'
fi
if [ -n "$BASELINE" ]; then
    PORT[pgapi_baseline]=$((BASE + 13))
    PORT[pgapi_baseline_nocache]=$((BASE + 14))
fi
declare -A PID=()

log() { printf 'bench: %s\n' "$*" >&2; }
cleanup() {
    local t
    for t in "${!PID[@]}"; do kill -TERM "${PID[$t]}" 2>/dev/null || true; done
    for t in "${!PID[@]}"; do wait "${PID[$t]}" 2>/dev/null || true; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "state kept in $STATE"
    else
        scripts/topology.sh down --purge "$STATE" >/dev/null 2>&1 || true
        rm -rf "$STATE"
    fi
    [ -z "${BASELINE_DIR:-}" ] || rm -rf "$BASELINE_DIR"
}
trap cleanup EXIT

scripts/deps.sh --bench
[ "$PEERS" = 0 ] || [ -f "$PEER_SRC/package.json" ] || { log "no Node.js peer at $PEER_SRC"; exit 1; }
make -s all
if [ -n "$BASELINE" ]; then
    BASELINE_DIR=$(mktemp -d /tmp/pgapi-bench-baseline-XXXXXX)
    log "baseline: building $BASELINE in $BASELINE_DIR"
    git archive "$BASELINE" | tar -x -C "$BASELINE_DIR"
    make -s -C "$BASELINE_DIR" all >/dev/null
fi

log "topology in $STATE"
scripts/topology.sh up "$STATE" >/dev/null
# shellcheck disable=SC1091
. "$STATE/topology.env"
# shellcheck disable=SC1091
. "$STATE/secrets.env"
PGBIN=/usr/lib/postgresql/15/bin
export PGAPI_DATABASE_PRIMARY="host=127.0.0.1 port=$PGAPI_BOUNCER_PORT dbname=pgapi_rw user=app"
export PGAPI_DATABASE_REPLICA="host=127.0.0.1 port=$PGAPI_BOUNCER_PORT dbname=pgapi_ro user=app"
# pgapi logs in to Redis as topology.env says: PGAPI_REDIS_USERNAME and PGAPI_REDIS_PASSWORD_FILE
export PGAPI_REDIS_PORT PGAPI_LOG_ACCESS=off
build/pgapi migrate up >/dev/null
build/pgapi seed --users 10000 --posts-per-user 5 >/dev/null

if [ "$PEERS" != 0 ]; then
    log "peer: npm ci, database peer, 10,000 users x 5 posts"
    cp -r "$PEER_SRC" "$STATE/peer"
    (cd "$STATE/peer" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    runuser -u postgres -- "$PGBIN/psql" -qX -h "$PGAPI_PRIMARY_SOCKET_DIR" -p "$PGAPI_PRIMARY_PORT" -d postgres \
        -c "CREATE DATABASE peer OWNER app" >/dev/null
    export DB_HOST=127.0.0.1 DB_PORT=$PGAPI_PRIMARY_PORT DB_USERNAME=app DB_PASSWORD=$APP_PASSWORD DB_DATABASE=peer
    # the peer logs in as Redis's default user (the password in its environment, never on a command line)
    export REDIS_URL=redis://default:$REDIS_ADMIN_PASSWORD@127.0.0.1:$PGAPI_REDIS_PORT/1
    (cd "$STATE/peer" && node src/seed.js 10000 --reset >/dev/null)
    peer_sql() { "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGAPI_PRIMARY_PORT" -U app -d "$1" -c "$2"; }
    peer_sql peer "INSERT INTO posts (title, content, \"userId\") SELECT 'Post ' || u.id || '.' || g,
                   'Content of post ' || u.id || '.' || g || ', written by ' || u.name || '.', u.id
                   FROM users u, generate_series(2, 5) g; ANALYZE users, posts" >/dev/null
fi

start() { # target command...
    local t=$1
    shift
    "$@" >"$STATE/$t.log" 2>&1 &
    PID[$t]=$!
    for _ in $(seq 300); do
        curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && return 0
        kill -0 "${PID[$t]}" 2>/dev/null || break
        sleep 0.1
    done
    log "$t did not start; its log:"
    cat "$STATE/$t.log" >&2
    exit 1
}
start pgapi env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi]}" PGAPI_METRICS_LISTEN="127.0.0.1:$((BASE + 12))" build/pgapi
start pgapi_nocache env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_nocache]}" PGAPI_METRICS_LISTEN=off PGAPI_REDIS_ENABLED=off build/pgapi
if [ -n "$BASELINE" ]; then # its own Redis namespace: neither serves the other's entries
    start pgapi_baseline env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_baseline]}" PGAPI_METRICS_LISTEN=off \
        PGAPI_REDIS_PREFIX=pgapi:baseline "$BASELINE_DIR/build/pgapi"
    start pgapi_baseline_nocache env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_baseline_nocache]}" \
        PGAPI_METRICS_LISTEN=off PGAPI_REDIS_ENABLED=off "$BASELINE_DIR/build/pgapi"
fi
WORKERS=$(pgrep -c -P "${PID[pgapi]}")
if [ "$PEERS" != 0 ]; then
    cd "$STATE/peer"
    start peer env PORT="${PORT[peer]}" node src/index-redis.js
    start peer_nocache env PORT="${PORT[peer_nocache]}" NO_CACHE=1 node src/index-redis.js
    start peer_cluster env PORT="${PORT[peer_cluster]}" CLUSTER="$WORKERS" node src/cluster.js
    start peer_cluster_nocache env PORT="${PORT[peer_cluster_nocache]}" CLUSTER="$WORKERS" NO_CACHE=1 node src/cluster.js
    cd "$ROOT"
    mkdir -p "$STATE/nginx"
    cat >"$STATE/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $STATE/nginx/body;
    proxy_temp_path $STATE/nginx/proxy;
    fastcgi_temp_path $STATE/nginx/fastcgi;
    uwsgi_temp_path $STATE/nginx/uwsgi;
    scgi_temp_path $STATE/nginx/scgi;
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / { return 200 "Hello World!"; }
    }
}
EOF
    start nginx nginx -c "$STATE/nginx/nginx.conf" -e "$STATE/nginx/error.log"
fi

targets=""
for t in "${!PORT[@]}"; do
    targets+="${targets:+,}\"$t\": {\"port\": ${PORT[$t]}, \"pid\": ${PID[$t]}}"
done
ver() { "$@" 2>&1 | head -1; }
cat >"$STATE/bench.json" <<EOF
{"targets": {$targets}, "reset": ["$ROOT/bench/reset.sh", "$STATE"], "workers": $WORKERS,
 "baseline": "${BASELINE:+$BASELINE ($(git rev-parse --short "$BASELINE"))}",
 "facts": {"nproc": $(nproc), "cpu": "$(lscpu | sed -n 's/^Model name: *//p' | head -1)", "kernel": "$(uname -r)",
  "postgres": "$($PGBIN/postgres --version | awk '{print $3}')", "pgbouncer": "$(ver pgbouncer --version | awk '{print $2}')",
  "redis": "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')", "node": "$(node --version)",
  "nginx": "$(ver nginx -v | sed 's/.*nginx\///')", "wrk": "$(ver wrk -v | cut -d' ' -f1-2)"}}
EOF
if [ "${1:-}" = --serve ]; then
    log "serving: $(for t in "${!PORT[@]}"; do printf '%s=%s(pid %s) ' "$t" "${PORT[$t]}" "${PID[$t]}"; done)"
    log "state: $STATE (topology.env, reset.sh); Ctrl-C or SIGTERM to stop"
    trap 'exit 0' INT TERM
    while sleep 1; do :; done
fi
python3 bench/bench.py "$STATE/bench.json"
