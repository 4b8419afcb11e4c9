#!/bin/sh
# Between bench rounds: drop the rows a round added (ids past the seeded 10,000, or past USERS) from
# pgapi's and the peers' databases, then empty Redis. As the superuser with triggers off: the peer's posts."userId" has
# no index, so a cascade would scan posts once per deleted user.
# Usage: bench/reset.sh STATE_DIR [USERS] (reads STATE_DIR/topology.env and secrets.env)
set -e
# shellcheck disable=SC1091  # the topology's own file, written by scripts/topology.sh
. "$1/topology.env"
N=${2:-10000}
case $N in *[!0-9]*) echo "reset.sh: USERS must be a number, got '$N'" >&2; exit 2 ;; esac
PGBIN=/usr/lib/postgresql/15/bin
sql() { # db statement...
    db=$1
    shift
    runuser -u postgres -- "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -h "$PGAPI_PRIMARY_SOCKET_DIR" \
        -p "$PGAPI_PRIMARY_PORT" -d "$db" -c 'SET statement_timeout = 0' -c 'SET session_replication_role = replica' \
        -c "$1" -c "$2" >/dev/null
}
sql pgapi "DELETE FROM posts WHERE user_id > $N" "DELETE FROM users WHERE id > $N"
for db in peer peer_fastify; do # none with BENCH_PEERS=0 or BENCH_FASTIFY=0
    if runuser -u postgres -- "$PGBIN/psql" -qXtA -h "$PGAPI_PRIMARY_SOCKET_DIR" -p "$PGAPI_PRIMARY_PORT" \
        -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        sql "$db" 'DELETE FROM posts WHERE "userId" > 10000' 'DELETE FROM users WHERE id > 10000'
    fi
done
# as Redis's default user; the password goes by the environment, never on redis-cli's command line
REDISCLI_AUTH=$(sed -n 's/^REDIS_ADMIN_PASSWORD=//p' "$1/secrets.env") redis-cli --no-auth-warning -p "$PGAPI_REDIS_PORT" flushall >/dev/null
