#!/usr/bin/env bash
# Benchmarks pgapi with wrk on a throw-away topology: 10,000 users x 5 posts, default worker count,
# 2 threads / 64 connections, 10 s per scenario after a warm-up. Prints a table and writes it to
# bench/RESULTS.md. Not a test: nothing here asserts a speed.
# Env: BENCH_DURATION (10s), BENCH_CONNECTIONS (64), BENCH_PORT_BASE (24000), BENCH_KEEP=1 keeps the state.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${BENCH_DURATION:-10s}
CONN=${BENCH_CONNECTIONS:-64}
BASE=${BENCH_PORT_BASE:-24000}
APP_PORT=$((BASE + 10))
NOCACHE_PORT=$((BASE + 11))
STATE=$(mktemp -d /tmp/pgapi-bench-XXXXXX)
chmod 755 "$STATE"
export PGAPI_PRIMARY_PORT=$BASE PGAPI_REPLICA_PORT=$((BASE + 1)) PGAPI_BOUNCER_PORT=$((BASE + 2)) \
       PGAPI_REDIS_PORT=$((BASE + 3))
SERVER_PID=''
NOCACHE_PID=''
cleanup() {
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ -n "$NOCACHE_PID" ] && kill -TERM "$NOCACHE_PID" 2>/dev/null && wait "$NOCACHE_PID" 2>/dev/null
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "state kept in $STATE" >&2
    else
        scripts/topology.sh down --purge "$STATE" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is missing: run scripts/deps.sh" >&2; exit 1; }
make -s all
scripts/topology.sh up "$STATE" >/dev/null
# shellcheck disable=SC1091
. "$STATE/topology.env"
export PGAPI_DATABASE_PRIMARY="host=127.0.0.1 port=$PGAPI_BOUNCER_PORT dbname=pgapi_rw user=app"
export PGAPI_DATABASE_REPLICA="host=127.0.0.1 port=$PGAPI_BOUNCER_PORT dbname=pgapi_ro user=app"
export PGAPI_REDIS_PORT PGAPI_SERVER_LISTEN=127.0.0.1:$APP_PORT PGAPI_LOG_ACCESS=off
build/pgapi migrate up >/dev/null
build/pgapi seed --users 10000 --posts-per-user 5 >/dev/null
build/pgapi >"$STATE/pgapi.log" 2>&1 &
SERVER_PID=$!
# the same server with the cache off: every read reaches the replica through PgBouncer
PGAPI_SERVER_LISTEN=127.0.0.1:$NOCACHE_PORT PGAPI_REDIS_ENABLED=off build/pgapi >"$STATE/pgapi-nocache.log" 2>&1 &
NOCACHE_PID=$!
for port in "$APP_PORT" "$NOCACHE_PORT"; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done

LUA=$STATE/lua
mkdir -p "$LUA"
cat >"$LUA/user_random.lua" <<'LUA'
math.randomseed(os.time())
request = function() return wrk.format("GET", "/users/" .. math.random(1, 10000)) end
LUA
cat >"$LUA/create_user.lua" <<'LUA'
-- each wrk thread has its own Lua state: setup() hands each a distinct id so emails never collide
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) n = 0; tag = tostring(os.time()) .. "t" .. tostring(tid) end
request = function()
  n = n + 1
  local body = '{"name":"bench","email":"b' .. tag .. '-' .. n .. '@example.com"}'
  return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
end
LUA
cat >"$LUA/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
               + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.2f %.2f %.2f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, errors))
end
LUA

# wrk loads one script: concatenate the scenario's request function with the report hook
run_wrk() { # name path [script] [port]
    local script=$LUA/run.lua port=${4:-$APP_PORT}
    cat "$LUA/report.lua" >"$script"
    [ -n "${3:-}" ] && cat "$LUA/$3" >>"$script"
    wrk -t2 -c"$CONN" -d2s -s "$script" "http://127.0.0.1:$port$2" >/dev/null 2>&1 # warm-up
    wrk -t2 -c"$CONN" -d"$DUR" --latency -s "$script" "http://127.0.0.1:$port$2" 2>&1 | sed -n 's/^RESULT //p'
}

rows=()
bench() { # label path [script] [port]
    local r
    r=$(run_wrk "$1" "$2" "${3:-}" "${4:-}")
    rows+=("$(printf '| %s | %s |' "$1" "$(echo "$r" | awk '{printf "%s | %s | %s | %s | %s", $1, $2, $3, $4, $5}')")")
    local rps p50 p90 p99 errs
    read -r rps p50 p90 p99 errs <<<"$r"
    printf '%-36s req/s %-9s p50 %-6s p90 %-6s p99 %-6s errors %s\n' "$1" "$rps" "$p50" "$p90" "$p99" "$errs"
}
bench "GET / (hello)" /
bench "GET /users/:id random (cached)" / user_random.lua
bench "GET /users/:id random (cache off)" / user_random.lua "$NOCACHE_PORT"
bench "GET /users?limit=50 (cached)" "/users?limit=50"
bench "GET /users?limit=50 (cache off)" "/users?limit=50" "" "$NOCACHE_PORT"
bench "POST /users (primary)" / create_user.lua

rss=$(ps -o rss= --ppid "$SERVER_PID" | awk '{printf "%s%.1f", sep, $1/1024; sep=", "}')
master_rss=$(ps -o rss= -p "$SERVER_PID" | awk '{printf "%d", $1/1024}')
{
    echo "# Benchmark results"
    echo
    echo "$(date -u +%Y-%m-%d) on $(nproc) cores; $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2);"
    echo "PostgreSQL $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}'), PgBouncer $(pgbouncer --version | head -1 | awk '{print $2}'),"
    echo "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2); wrk -t2 -c$CONN -d$DUR after a 2 s warm-up; server, database,"
    echo "PgBouncer and wrk share the same machine. Access log off. Latencies in ms."
    echo
    echo "| scenario | req/s | p50 | p90 | p99 | errors |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "RSS after the run: master ${master_rss} MB, workers ${rss} MB."
    echo
    echo "Cached: single rows and list pages (leases + fences; X-Cache HIT after the first read). POST /users"
    echo "is one INSERT plus the commit-LSN read on the primary through PgBouncer, then the Redis invalidation."
    echo "Comparison with the Node.js peer and nginx, and the 90/10 mix: not measured yet (issue 7)."
} >bench/RESULTS.md
echo "RSS MB: master $master_rss, workers $rss"
echo "written: bench/RESULTS.md"
