#!/usr/bin/env bash
# Benchmarks pgapi side by side with the Node.js peers (../shared/peer-express, and ../shared/peer-fastify
# in cluster mode with pgapi's worker count), nginx and pgbench through PgBouncer (the database's own
# ceiling: SELECT by id and INSERT, 64 clients), in one run on this machine: a throw-away topology,
# 10,000 users x 5 posts on every side, wrk -t2 -c64 for 10 s per scenario after a warm-up, medians of 3
# rounds. bench/bench.py drives wrk and pgbench and writes bench/RESULTS.md.
# Not a test: nothing here asserts a speed.
# bench/run.sh --serve: set everything up, print the ports and wait (for profiling by hand; Ctrl-C ends).
# Env: BENCH_ROUNDS (3), BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_CONNECTIONS (64),
#      BENCH_PORT_BASE (24000), BENCH_PEER_DIR (../shared/peer-express), BENCH_FASTIFY_DIR
#      (../shared/peer-fastify; BENCH_FASTIFY=0 leaves that peer out), BENCH_PGBENCH=0 leaves the pgbench
#      lines out, BENCH_KEEP=1 keeps the state,
#      BENCH_BASELINE=<git ref>: that commit is built too and run beside this tree, as the targets
#      pgapi_baseline and pgapi_baseline_nocache (a before/after comparison in the same run),
#      BENCH_PEERS=0: no Node.js peer and no nginx (pgapi alone, or against its baseline: a shorter run),
#      BENCH_RESULTS: where the report goes (bench/RESULTS.md; a run with BENCH_PEERS=0 should not
#      overwrite it: bench/BEFORE-AFTER.md, say),
#      BENCH_ONLY=user_cached_auth,...: only these scenarios of bench.py (a quick look; not for RESULTS.md),
#      BENCH_SCALEOUT: 1 (default) adds the scale-out scenarios, 0 leaves them out, "only" runs them
#      alone (no peers, no single-server scenarios) and replaces just their section of the report.
#      BENCH_GROWTH: 0 (default) none, 1 adds the growth curves after the rounds, "only" runs them alone
#      (no peers, no single-server scenarios, no scale-out; `make bench-growth`) and replaces just their
#      section of the report.
#      They are opt-in because they take about as long again as the default run (seeding up to 1M users,
#      filling the cache, 8,192-connection runs). BENCH_GROWTH_SIZES (10000,100000,1000000) users,
#      BENCH_GROWTH_CONNS (64,1024,8192) wrk connections, BENCH_GROWTH_IDLE (4000) idle keep-alive
#      connections opened for the memory per connection, BENCH_GROWTH_ZIPF (1.1) the Zipf exponent.
# Growth (bench.py, growth section): cached (Redis on) and uncached (Redis off) GET /users/:id with ids
# drawn uniformly and Zipf over 10k, 100k and 1M users (bench/grow.sh adds the users between sizes);
# cached reads at 64, 1,024 and 8,192 keep-alive connections against servers of 1 and 2 workers, with
# each worker's RSS; and the RSS a worker gains per idle keep-alive connection. Their servers run with
# max_connections and keepalive_timeout raised (PGAPI_SERVER_*), and this script raises ulimit -n.
# Scale-out (scripts/cluster.sh): BENCH_SCALEOUT_SERVERS (3) servers of BENCH_SCALEOUT_WORKERS (1)
# workers each behind HAProxy, against one server with servers x workers workers, reached directly
# and through an HAProxy of its own; each with its own Redis prefix. A build with [redis]
# deployment_fences (a test-only switch) also runs the cluster with it off; BENCH_BASELINE's commit
# runs as a cluster too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${BENCH_PORT_BASE:-24000}
PEER_SRC=${BENCH_PEER_DIR:-$ROOT/../shared/peer-express}
FASTIFY_SRC=${BENCH_FASTIFY_DIR:-$ROOT/../shared/peer-fastify}
STATE=$(mktemp -d /tmp/pgapi-bench-XXXXXX)
chmod 755 "$STATE"
export PGAPI_PRIMARY_PORT=$BASE PGAPI_REPLICA_PORT=$((BASE + 1)) PGAPI_BOUNCER_PORT=$((BASE + 2)) \
       PGAPI_REDIS_PORT=$((BASE + 3))
declare -A PORT=([pgapi]=$((BASE + 10)) [pgapi_nocache]=$((BASE + 11)) [pgapi_auth]=$((BASE + 15)) [peer]=$((BASE + 20))
                 [peer_nocache]=$((BASE + 21)) [peer_cluster]=$((BASE + 22)) [peer_cluster_nocache]=$((BASE + 23))
                 [fastify]=$((BASE + 24)) [fastify_nocache]=$((BASE + 25)) [nginx]=$((BASE + 30)))
BASELINE=${BENCH_BASELINE:-}
PEERS=${BENCH_PEERS:-1}
SCALEOUT=${BENCH_SCALEOUT:-1}
SO_SERVERS=${BENCH_SCALEOUT_SERVERS:-3}
SO_WORKERS=${BENCH_SCALEOUT_WORKERS:-1}
FASTIFY=${BENCH_FASTIFY:-1}
PGBENCH=${BENCH_PGBENCH:-1}
GROWTH=${BENCH_GROWTH:-0}
case $SCALEOUT in 0|1) ;; only) PEERS=0 ;; *) echo "bench: BENCH_SCALEOUT is 0, 1 or only" >&2; exit 2 ;; esac
case $GROWTH in 0|1) ;; only) PEERS=0 SCALEOUT=0 PGBENCH=0 ;; *) echo "bench: BENCH_GROWTH is 0, 1 or only" >&2; exit 2 ;; esac
if [ "$PEERS" = 0 ]; then
    unset 'PORT[peer]' 'PORT[peer_nocache]' 'PORT[peer_cluster]' 'PORT[peer_cluster_nocache]' 'PORT[nginx]'
    FASTIFY=0
fi
[ "$FASTIFY" != 0 ] || unset 'PORT[fastify]' 'PORT[fastify_nocache]'
if [ -n "$BASELINE" ]; then
    PORT[pgapi_baseline]=$((BASE + 13))
    PORT[pgapi_baseline_nocache]=$((BASE + 14))
fi
if [ "$SCALEOUT" = only ] || [ "$GROWTH" = only ]; then # the single-server scenarios' targets are not started
    unset 'PORT[pgapi]' 'PORT[pgapi_nocache]' 'PORT[pgapi_auth]' 'PORT[pgapi_baseline]' 'PORT[pgapi_baseline_nocache]'
fi
declare -A PID=()
CLUSTERS=()

log() { printf 'bench: %s\n' "$*" >&2; }
cleanup() {
    local t c
    for t in "${!PID[@]}"; do kill -TERM "${PID[$t]}" 2>/dev/null || true; done
    for t in "${!PID[@]}"; do wait "${PID[$t]}" 2>/dev/null || true; done
    for c in "${CLUSTERS[@]}"; do
        PGAPI_CLUSTER_DIR=$c scripts/cluster.sh down "$STATE" >/dev/null 2>&1 || true
    done
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
[ "$FASTIFY" = 0 ] || [ -f "$FASTIFY_SRC/package.json" ] || { log "no Fastify peer at $FASTIFY_SRC"; exit 1; }
make -s all
if [ -n "$BASELINE" ]; then
    BASELINE_DIR=$(mktemp -d /tmp/pgapi-bench-baseline-XXXXXX)
    log "baseline: building $BASELINE in $BASELINE_DIR"
    git archive "$BASELINE" | tar -x -C "$BASELINE_DIR"
    make -s -C "$BASELINE_DIR" all >/dev/null
fi

# 1M users' rows cached take about 300 MB of Redis beside the rest: room for them (noeviction otherwise
# refuses the fills, and the cached reads would go to the database)
[ "$GROWTH" = 0 ] || export PGAPI_REDIS_MAXMEMORY=${PGAPI_REDIS_MAXMEMORY:-2gb}
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
if [ "$FASTIFY" != 0 ]; then
    # the same tables and rows as the Express peer's, in a database of its own (a copy of it), so that
    # neither peer's writes touch the other's rows; reads go to the replica, as its README describes
    log "fastify peer: npm ci, database peer_fastify (a copy of peer's)"
    cp -r "$FASTIFY_SRC" "$STATE/fastify"
    chmod -R u+w "$STATE/fastify"
    (cd "$STATE/fastify" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    runuser -u postgres -- "$PGBIN/psql" -qX -h "$PGAPI_PRIMARY_SOCKET_DIR" -p "$PGAPI_PRIMARY_PORT" -d postgres \
        -c "CREATE DATABASE peer_fastify OWNER app TEMPLATE peer" >/dev/null
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
WORKERS=0
if [ -n "${PORT[pgapi]:-}" ]; then # not with BENCH_SCALEOUT=only or BENCH_GROWTH=only
    start pgapi env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi]}" PGAPI_METRICS_LISTEN="127.0.0.1:$((BASE + 12))" \
        build/pgapi
    start pgapi_nocache env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_nocache]}" PGAPI_METRICS_LISTEN=off \
        PGAPI_REDIS_ENABLED=off build/pgapi
    # the same server with [auth] mode = required: bench.py signs one HS256 token with this secret (a file:
    # the secret is never on a command line) and sends it with every request of user_cached_auth
    head -c 48 /dev/urandom | base64 -w0 >"$STATE/jwt.secret"
    chmod 600 "$STATE/jwt.secret"
    start pgapi_auth env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_auth]}" PGAPI_METRICS_LISTEN=off \
        PGAPI_AUTH_MODE=required PGAPI_AUTH_HS256_SECRET_FILE="$STATE/jwt.secret" build/pgapi
    WORKERS=$(pgrep -c -P "${PID[pgapi]}")
fi
if [ "$GROWTH" != 0 ]; then
    # growth curves: servers of 1 and 2 workers (Redis on, each its own prefix) and 2 workers with Redis
    # off, each taking 8,192 connections and more (max_connections is per worker), keeping idle ones
    # open for the run (keepalive_timeout), with a listen backlog as deep as the kernel allows
    ulimit -n "$(ulimit -Hn)"
    [ "$(ulimit -n)" -ge 20000 ] || log "growth: ulimit -n is $(ulimit -n): 8,192 connections may fail"
    PORT[growth_w1]=$((BASE + 140)) PORT[growth_w2]=$((BASE + 141)) PORT[growth_w2_nocache]=$((BASE + 142))
    GROWTH_ENV=(PGAPI_SERVER_MAX_CONNECTIONS=20000 PGAPI_SERVER_KEEPALIVE_TIMEOUT=10m
                PGAPI_SERVER_BACKLOG="$(cat /proc/sys/net/core/somaxconn)")
    start growth_w1 env "${GROWTH_ENV[@]}" PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[growth_w1]}" PGAPI_SERVER_WORKERS=1 \
        PGAPI_METRICS_LISTEN="127.0.0.1:$((BASE + 145))" PGAPI_REDIS_PREFIX=pgapi:growth1 build/pgapi
    start growth_w2 env "${GROWTH_ENV[@]}" PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[growth_w2]}" PGAPI_SERVER_WORKERS=2 \
        PGAPI_METRICS_LISTEN="127.0.0.1:$((BASE + 146))" PGAPI_REDIS_PREFIX=pgapi:growth2 build/pgapi
    start growth_w2_nocache env "${GROWTH_ENV[@]}" PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[growth_w2_nocache]}" \
        PGAPI_SERVER_WORKERS=2 PGAPI_METRICS_LISTEN="127.0.0.1:$((BASE + 147))" PGAPI_REDIS_ENABLED=off build/pgapi
fi
if [ -n "${PORT[pgapi_baseline]:-}" ]; then # its own Redis namespace: neither serves the other's entries
    start pgapi_baseline env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_baseline]}" PGAPI_METRICS_LISTEN=off \
        PGAPI_REDIS_PREFIX=pgapi:baseline "$BASELINE_DIR/build/pgapi"
    start pgapi_baseline_nocache env PGAPI_SERVER_LISTEN="127.0.0.1:${PORT[pgapi_baseline_nocache]}" \
        PGAPI_METRICS_LISTEN=off PGAPI_REDIS_ENABLED=off "$BASELINE_DIR/build/pgapi"
fi
if [ "$PEERS" != 0 ]; then
    cd "$STATE/peer"
    start peer env PORT="${PORT[peer]}" node src/index-redis.js
    start peer_nocache env PORT="${PORT[peer_nocache]}" NO_CACHE=1 node src/index-redis.js
    start peer_cluster env PORT="${PORT[peer_cluster]}" CLUSTER="$WORKERS" node src/cluster.js
    start peer_cluster_nocache env PORT="${PORT[peer_cluster_nocache]}" CLUSTER="$WORKERS" NO_CACHE=1 node src/cluster.js
    if [ "$FASTIFY" != 0 ]; then # cluster mode with pgapi's worker count; its own Redis database number
        cd "$STATE/fastify"
        export DB_DATABASE=peer_fastify DB_REPLICA_HOST=127.0.0.1 DB_REPLICA_PORT=$PGAPI_REPLICA_PORT
        export REDIS_URL=redis://default:$REDIS_ADMIN_PASSWORD@127.0.0.1:$PGAPI_REDIS_PORT/2
        start fastify env PORT="${PORT[fastify]}" CLUSTER="$WORKERS" node src/server.js
        start fastify_nocache env PORT="${PORT[fastify_nocache]}" CLUSTER="$WORKERS" NO_CACHE=1 node src/server.js
    fi
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

# Scale-out: clusters of pgapi servers behind HAProxy (scripts/cluster.sh), each in a dir and a port
# range of its own (BASE + offset: HAProxy, then the servers from offset + 1, their metrics from
# offset + 10), each with its own Redis prefix so that none serves another's entries.
SO_ROLES=""
so_up() { # name offset servers workers binary [PGAPI_X=value...]
    local name=$1 off=$2 n=$3 w=$4 bin=$5 dir=$STATE/so-$1
    shift 5
    CLUSTERS+=("$dir")
    env "$@" PGAPI_CLUSTER_DIR="$dir" PGAPI_CLUSTER_BIN="$bin" PGAPI_CLUSTER_PORT=$((BASE + off)) \
        PGAPI_CLUSTER_SERVER_PORT=$((BASE + off + 1)) PGAPI_CLUSTER_METRICS_PORT=$((BASE + off + 10)) \
        PGAPI_SERVER_WORKERS="$w" scripts/cluster.sh up "$n" "$STATE" >/dev/null 2>"$STATE/so-$name.log" \
        || { log "scale-out: cluster $name did not start:"; cat "$STATE/so-$name.log" >&2; exit 1; }
}
so_role() { # role port offset servers: a target of the scale-out scenarios and its servers' metrics
    local metrics="" i
    for ((i = 0; i < $4; i++)); do metrics+="${metrics:+, }$((BASE + $3 + 10 + i))"; done
    SO_ROLES+="${SO_ROLES:+, }\"$1\": {\"port\": $2, \"metrics\": [$metrics]}"
}
so_cluster() { # role offset binary [PGAPI_X=value...]: SO_SERVERS servers behind HAProxy
    local role=$1 off=$2 bin=$3
    shift 3
    so_up "$role" "$off" "$SO_SERVERS" "$SO_WORKERS" "$bin" "$@"
    so_role "$role" $((BASE + off)) "$off" "$SO_SERVERS"
}
so_single() { # role offset [PGAPI_X=value...]: one server of SO_SERVERS x SO_WORKERS workers, reached
              # directly (role) and through an HAProxy of its own (role_lb)
    local role=$1 off=$2
    shift 2
    so_up "$role" "$off" 1 $((SO_SERVERS * SO_WORKERS)) "$ROOT/build/pgapi" "$@"
    so_role "$role" $((BASE + off + 1)) "$off" 1
    so_role "${role}_lb" $((BASE + off)) "$off" 1
}
if [ "$SCALEOUT" != 0 ]; then
    if [ "$SO_SERVERS" -lt 1 ] || [ "$SO_SERVERS" -gt 9 ]; then log "BENCH_SCALEOUT_SERVERS is 1..9"; exit 2; fi
    log "scale-out: $SO_SERVERS servers x $SO_WORKERS workers behind HAProxy, one server of $((SO_SERVERS * SO_WORKERS)) workers"
    # Redis stays on for every role (a deployment needs it): the uncached scenario reads pages of
    # 1.7 KB, over max_value_bytes, so that each read misses it; the single rows of the others (under
    # 300 bytes) are cached as on the defaults.
    export PGAPI_REDIS_MAX_VALUE_BYTES=1024
    so_cluster cluster 40 "$ROOT/build/pgapi" PGAPI_REDIS_PREFIX=pgapi:so-cluster
    so_single single 60 PGAPI_REDIS_PREFIX=pgapi:so-single
    # the same server with the rate limiter on (limits no run reaches), where this build has it
    if build/pgapi --check-config 2>/dev/null | grep -q '^\[ratelimit\]'; then
        so_up single_ratelimit 120 1 $((SO_SERVERS * SO_WORKERS)) "$ROOT/build/pgapi" \
            PGAPI_REDIS_PREFIX=pgapi:so-ratelimit PGAPI_RATELIMIT_ENABLED=on PGAPI_RATELIMIT_READ_RATE=1000000 \
            PGAPI_RATELIMIT_READ_BURST=1000000 PGAPI_RATELIMIT_WRITE_RATE=1000000 PGAPI_RATELIMIT_WRITE_BURST=1000000
        so_role single_ratelimit $((BASE + 121)) 120 1
    fi
    # the deployment-wide fences switched off (a test-only setting), where this build has the switch
    if build/pgapi --check-config 2>/dev/null | grep -q '^deployment_fences'; then
        so_cluster cluster_nofences 80 "$ROOT/build/pgapi" PGAPI_REDIS_PREFIX=pgapi:so-nofences \
            PGAPI_REDIS_DEPLOYMENT_FENCES=off
    fi
    if [ -n "$BASELINE" ]; then
        so_cluster cluster_baseline 100 "$BASELINE_DIR/build/pgapi" PGAPI_REDIS_PREFIX=pgapi:so-baseline
    fi
    unset PGAPI_REDIS_MAX_VALUE_BYTES
fi

targets=""
for t in "${!PORT[@]}"; do
    targets+="${targets:+,}\"$t\": {\"port\": ${PORT[$t]}, \"pid\": ${PID[$t]}}"
done
ver() { "$@" 2>&1 | head -1; }
cat >"$STATE/bench.json" <<EOF
{"targets": {$targets}, "reset": ["$ROOT/bench/reset.sh", "$STATE"], "workers": $WORKERS,
 "auth_secret_file": "$STATE/jwt.secret",
 "pgbench": $([ "$PGBENCH" = 0 ] && echo null || echo "{\"bin\": \"$PGBIN/pgbench\", \"port\": $PGAPI_BOUNCER_PORT, \"passfile\": \"$PGPASSFILE\"}"),
 "growth": {"mode": "$GROWTH", "grow": ["$ROOT/bench/grow.sh", "$STATE"],
  "metrics": {"growth_w1": $((BASE + 145)), "growth_w2": $((BASE + 146)), "growth_w2_nocache": $((BASE + 147))}},
 "scaleout": {"mode": "$SCALEOUT", "servers": $SO_SERVERS, "workers": $SO_WORKERS, "roles": {$SO_ROLES},
  "redis_port": $PGAPI_REDIS_PORT, "secrets": "$STATE/secrets.env",
  "haproxy": "$(haproxy -v 2>/dev/null | head -1 | awk '{print $3}')"},
 "baseline": "${BASELINE:+$BASELINE ($(git rev-parse --short "$BASELINE"))}",
 "commit": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/RESULTS.md' || echo ' + changes')",
 "facts": {"nproc": $(nproc), "cpu": "$(lscpu | sed -n 's/^Model name: *//p' | head -1)", "kernel": "$(uname -r)",
  "postgres": "$($PGBIN/postgres --version | awk '{print $3}')", "pgbouncer": "$(ver pgbouncer --version | awk '{print $2}')",
  "redis": "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')", "node": "$(node --version)",
  "nginx": "$(ver nginx -v | sed 's/.*nginx\///')", "wrk": "$(ver wrk -v | cut -d' ' -f1-2)"}}
EOF
if [ "${1:-}" = --serve ]; then
    log "serving: $(for t in "${!PORT[@]}"; do printf '%s=%s(pid %s) ' "$t" "${PORT[$t]}" "${PID[$t]}"; done)"
    [ -z "$SO_ROLES" ] || log "scale-out: {$SO_ROLES} (clusters in $STATE/so-*)"
    log "state: $STATE (topology.env, reset.sh); Ctrl-C or SIGTERM to stop"
    trap 'exit 0' INT TERM
    while sleep 1; do :; done
fi
python3 bench/bench.py "$STATE/bench.json"
