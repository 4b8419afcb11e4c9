#!/bin/sh
# Growth curves (BENCH_GROWTH): makes pgapi's users table hold exactly users 1..N (the seed's rows, "User
# <i>", user<i>@example.com, no posts for the ids past the seeded 10,000), as the superuser in one
# statement each way, then ANALYZE and waits until the replica has replayed it all (reads of the new ids
# go there: a lagging replica would answer them 404).
# Usage: bench/grow.sh STATE_DIR N (reads STATE_DIR/topology.env)
set -e
# shellcheck disable=SC1091  # the topology's own file, written by scripts/topology.sh
. "$1/topology.env"
N=$2
case $N in '' | *[!0-9]*) echo "grow.sh: N must be a number, got '$N'" >&2; exit 2 ;; esac
PGBIN=/usr/lib/postgresql/15/bin
psql_on() { # socket-dir port statement...: psql as postgres on that server, database pgapi
    dir=$1 port=$2
    shift 2
    runuser -u postgres -- "$PGBIN/psql" -qXtA -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d pgapi \
        -c 'SET statement_timeout = 0' "$@"
}
psql_on "$PGAPI_PRIMARY_SOCKET_DIR" "$PGAPI_PRIMARY_PORT" -c 'SET session_replication_role = replica' \
    -c "DELETE FROM posts WHERE user_id > $N" -c "DELETE FROM users WHERE id > $N" \
    -c "INSERT INTO users (id, name, email) SELECT g, 'User ' || g, 'user' || g || '@example.com'
        FROM generate_series(1, $N) AS g ON CONFLICT DO NOTHING" \
    -c "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST($N, (SELECT max(id) FROM users)))" \
    -c 'ANALYZE users' >/dev/null
want=$(psql_on "$PGAPI_PRIMARY_SOCKET_DIR" "$PGAPI_PRIMARY_PORT" -c 'SELECT pg_current_wal_lsn()' | tail -1)
i=0
while :; do
    ok=$(psql_on "$PGAPI_REPLICA_SOCKET_DIR" "$PGAPI_REPLICA_PORT" \
        -c "SELECT pg_last_wal_replay_lsn() >= '$want'::pg_lsn" | tail -1)
    [ "$ok" = t ] && break
    i=$((i + 1))
    [ $i -lt 1200 ] || { echo "grow.sh: the replica has not replayed $want after 120 s" >&2; exit 1; }
    sleep 0.1
done
