#!/usr/bin/env bash
# Local pgapi topology: PostgreSQL 15 primary + streaming replica, PgBouncer
# in front of both (databases pgapi_rw / pgapi_ro), and Redis. Everything
# binds 127.0.0.1 and lives under a state directory.
#
# Usage: scripts/topology.sh up|down [--purge]|status|psql-primary|psql-replica [DIR] [psql args...]
#
# DIR: argument, else $PGAPI_STATE_DIR, else <repo>/var.
# Ports (env, then the ones recorded in $DIR/topology.env, then defaults):
#   PGAPI_PRIMARY_PORT=15432 PGAPI_REPLICA_PORT=15433 (below the ephemeral range 32768-60999)
#   PGAPI_BOUNCER_PORT=64320 PGAPI_REDIS_PORT=63790
# Other env: PGAPI_PURGE=1 (same as down --purge), PGAPI_WAIT_SECS (default 30).
#
# Files written in DIR:
#   topology.env  sourceable `export KEY='value'` lines (ports, paths, PGPASSFILE)
#   pgpass        libpq passfile for user app (and pgbadmin on the admin console)
#   secrets.env   APP_PASSWORD, REPLICATOR_PASSWORD, PGBADMIN_PASSWORD, POSTGRES_PASSWORD
#   pgdata.path   where the postgres-owned part lives (DIR/pg, or /var/tmp/pgapi-<hash>
#                 when the postgres user cannot reach DIR)
#   redis/        redis pid, log and working dir
# Under the pgdata path: primary/ replica/ (data dirs), run/primary run/replica
# (unix sockets), log/*.log, pgbouncer/ (ini, auth file, pid file).
set -euo pipefail

PROG=topology
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PGBIN=${PGAPI_PGBIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=postgres
HOST=127.0.0.1
WAIT_SECS=${PGAPI_WAIT_SECS:-30}
MARKER=.pgapi-topology
REPLICA_APPNAME=pgapi_replica
PASSWORDS_CHANGED=0

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: topology.sh up [DIR]
       topology.sh down [--purge] [DIR]
       topology.sh status [DIR]
       topology.sh psql-primary|psql-replica [DIR] [--] [psql args...]
DIR defaults to $PGAPI_STATE_DIR, else <repo>/var.
EOF
    exit 2
}

# Libpq environment from the caller must not leak into our own client calls.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSERVICEFILE PGOPTIONS PGAPPNAME PGSSLMODE PGTARGETSESSIONATTRS PGDATA \
      PGREQUIRESSL PGCHANNELBINDING PGREQUIREAUTH 2>/dev/null || true
export PGCONNECT_TIMEOUT=5

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[[ -n $CMD ]] || usage
shift
PURGE=${PGAPI_PURGE:-0}
DIR_ARG=""
PSQL_ARGS=()
case $CMD in
    up|status)
        [[ $# -le 1 ]] || usage
        DIR_ARG=${1:-}
        ;;
    down)
        while [[ $# -gt 0 ]]; do
            case $1 in
                --purge) PURGE=1 ;;
                -*) usage ;;
                *) [[ -z $DIR_ARG ]] || usage; DIR_ARG=$1 ;;
            esac
            shift
        done
        ;;
    psql-primary|psql-replica)
        if [[ $# -gt 0 && $1 != -* ]]; then DIR_ARG=$1; shift; fi
        if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
        PSQL_ARGS=("$@")
        ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
[[ $PURGE == 1 || $PURGE == 0 ]] || PURGE=1

[[ $(id -u) -eq 0 ]] || die "must run as root (PostgreSQL and PgBouncer are run as the '$PG_OS_USER' user via runuser)"
id -u "$PG_OS_USER" >/dev/null 2>&1 || die "system user '$PG_OS_USER' is missing: run scripts/deps.sh"
PG_HOME=$(getent passwd "$PG_OS_USER" | cut -d: -f6)
[[ -n $PG_HOME ]] || PG_HOME=/

DIR=${DIR_ARG:-${PGAPI_STATE_DIR:-$REPO_ROOT/var}}
if [[ $CMD == up ]]; then
    mkdir -p -- "$DIR" || die "cannot create state dir $DIR"
fi
if [[ -d $DIR ]]; then
    DIR=$(cd -- "$DIR" && pwd -P)
else
    DIR=$(realpath -m -- "$DIR")
fi
[[ $DIR != / ]] || die "refusing to use / as the state dir"

# ---------------------------------------------------------------- helpers
# Close every fd above 2 of the current (sub)shell, so that daemons we start
# inherit neither our lock nor any pipe of whoever called us.
close_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}

# Run a command as the postgres OS user, from /, with a sane environment.
as_pg() {
    (cd / && close_fds && runuser -u "$PG_OS_USER" -- env HOME="$PG_HOME" LC_ALL=C.UTF-8 \
        PGCONNECT_TIMEOUT="$PGCONNECT_TIMEOUT" "$@")
}

# Write stdin to a file as the postgres user (mode 600).
# shellcheck disable=SC2016  # $1 is expanded by the inner sh
pg_write() { as_pg sh -c 'umask 077 && cat >"$1"' sh "$1"; }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (( $1 >= 1 && $1 <= 65535 )); }

# 0 when the process exists and is not a zombie (PID 1 here does not reap).
pid_alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

read_pid() { # file -> first line if numeric
    local f=$1 pid=""
    [[ -f $f ]] || return 1
    IFS= read -r pid <"$f" 2>/dev/null || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$pid"
}

proc_exe() { readlink "/proc/$1/exe" 2>/dev/null | sed 's/ (deleted)$//'; }
proc_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null; }

# wait_gone PID SECONDS: 0 once the pid is gone (or a zombie)
wait_gone() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

# Lines of `ss` for listeners on a TCP port (any address); empty if free.
port_listeners() { ss -Hltnp "sport = :$1" 2>/dev/null || true; }

check_port_free() { # name port
    local l
    l=$(port_listeners "$2")
    if [[ -n $l ]]; then
        die "$1: port $2 is already in use by a process this topology did not start (left alone):
$l
Pick other ports (PGAPI_PRIMARY_PORT, PGAPI_REPLICA_PORT, PGAPI_BOUNCER_PORT, PGAPI_REDIS_PORT) or stop it."
    fi
}

log_tail() { # file
    if [[ -f $1 ]]; then
        printf -- '--- last lines of %s ---\n' "$1" >&2
        tail -n 15 -- "$1" >&2 || true
        printf -- '---\n' >&2
    fi
}

fail_server() { # name logfile message
    log_tail "$2"
    die "$1: $3 (log: $2). Run 'scripts/topology.sh down $DIR' to stop what was started."
}

rand_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

recorded() { # KEY -> value from DIR/topology.env, if any
    [[ -f $DIR/topology.env ]] || return 0
    bash -c 'set +eu; . "$1" >/dev/null 2>&1; printf "%s" "${!2:-}"' _ "$DIR/topology.env" "$1" 2>/dev/null || true
}

q() { # single-quote for sh
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# ---------------------------------------------------------------- settings
PRIMARY_PORT=${PGAPI_PRIMARY_PORT:-$(recorded PGAPI_PRIMARY_PORT)}
REPLICA_PORT=${PGAPI_REPLICA_PORT:-$(recorded PGAPI_REPLICA_PORT)}
BOUNCER_PORT=${PGAPI_BOUNCER_PORT:-$(recorded PGAPI_BOUNCER_PORT)}
REDIS_PORT=${PGAPI_REDIS_PORT:-$(recorded PGAPI_REDIS_PORT)}
PRIMARY_PORT=${PRIMARY_PORT:-15432}
REPLICA_PORT=${REPLICA_PORT:-15433}
BOUNCER_PORT=${BOUNCER_PORT:-64320}
REDIS_PORT=${REDIS_PORT:-63790}
for p in "$PRIMARY_PORT" "$REPLICA_PORT" "$BOUNCER_PORT" "$REDIS_PORT"; do
    is_port "$p" || die "invalid port '$p'"
done
if [[ $(printf '%s\n' "$PRIMARY_PORT" "$REPLICA_PORT" "$BOUNCER_PORT" "$REDIS_PORT" | sort -u | wc -l) -ne 4 ]]; then
    die "ports must be distinct (primary=$PRIMARY_PORT replica=$REPLICA_PORT bouncer=$BOUNCER_PORT redis=$REDIS_PORT)"
fi
if ! [[ $WAIT_SECS =~ ^[1-9][0-9]*$ ]]; then WAIT_SECS=30; fi

FALLBACK_BASE=/var/tmp/pgapi-$(printf '%s' "$DIR" | sha256sum | cut -c1-8)

choose_pgbase() {
    if [[ -f $DIR/pgdata.path ]]; then
        PGBASE=$(head -n1 "$DIR/pgdata.path")
        [[ $PGBASE == "$DIR/pg" || $PGBASE == "$FALLBACK_BASE" ]] \
            || die "unexpected path '$PGBASE' in $DIR/pgdata.path"
        return 0
    fi
    if [[ $CMD != up ]]; then
        PGBASE=$DIR/pg
        return 0
    fi
    PGBASE=$DIR/pg
    local longest="$PGBASE/run/replica/.s.PGSQL.$REPLICA_PORT.lock"
    if ! as_pg test -x "$DIR" 2>/dev/null; then
        log "user $PG_OS_USER cannot reach $DIR; PostgreSQL data goes to $FALLBACK_BASE"
        PGBASE=$FALLBACK_BASE
    elif (( ${#longest} > 100 )); then
        log "$DIR is too deep for unix socket paths; PostgreSQL data goes to $FALLBACK_BASE"
        PGBASE=$FALLBACK_BASE
    fi
    printf '%s\n' "$PGBASE" >"$DIR/pgdata.path"
}

setup_paths() {
    choose_pgbase
    PRIMARY_DATA=$PGBASE/primary
    REPLICA_DATA=$PGBASE/replica
    PRIMARY_SOCK=$PGBASE/run/primary
    REPLICA_SOCK=$PGBASE/run/replica
    PGLOG_DIR=$PGBASE/log
    PRIMARY_LOG=$PGLOG_DIR/primary.log
    REPLICA_LOG=$PGLOG_DIR/replica.log
    BOUNCER_DIR=$PGBASE/pgbouncer
    BOUNCER_INI=$BOUNCER_DIR/pgbouncer.ini
    BOUNCER_AUTH=$BOUNCER_DIR/userlist.txt
    BOUNCER_PID=$BOUNCER_DIR/pgbouncer.pid
    BOUNCER_LOG=$PGLOG_DIR/pgbouncer.log
    REDIS_DIR=$DIR/redis
    REDIS_PID=$REDIS_DIR/redis.pid
    REDIS_LOG=$REDIS_DIR/redis.log
    PGPASS=$DIR/pgpass
}

PGBOUNCER_BIN=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
REDIS_BIN=$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)
REDIS_CLI=$(command -v redis-cli 2>/dev/null || echo /usr/bin/redis-cli)

# ---------------------------------------------------------------- process identity
# Each *_pid function prints the pid of our running server, or fails.
pg_pid() { # datadir
    local data=$1 pid exe
    pid=$(read_pid "$data/postmaster.pid") || return 1
    pid_alive "$pid" || return 1
    exe=$(proc_exe "$pid")
    [[ $exe == "$PGBIN/postgres" || $exe == "$(readlink -f "$PGBIN/postgres")" ]] || return 1
    [[ " $(proc_cmdline "$pid") " == *" $data "* ]] || return 1
    printf '%s\n' "$pid"
}

bouncer_pid() {
    local pid
    pid=$(read_pid "$BOUNCER_PID") || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f "$PGBOUNCER_BIN")" ]] || return 1
    [[ " $(proc_cmdline "$pid") " == *" $BOUNCER_INI "* ]] || return 1
    printf '%s\n' "$pid"
}

redis_pid() {
    local pid
    pid=$(read_pid "$REDIS_PID") || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f "$REDIS_BIN")" ]] || return 1
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$REDIS_DIR" ]] || return 1
    printf '%s\n' "$pid"
}

# ---------------------------------------------------------------- state files
lock_state() {
    [[ -d $DIR ]] || return 0
    [[ $CMD == up || -e $DIR/$MARKER ]] || return 0
    exec 9>>"$DIR/.lock"
    flock -w 120 9 || die "another topology.sh is busy with $DIR (lock $DIR/.lock)"
}

claim_dir() {
    if [[ ! -e $DIR/$MARKER ]]; then
        local f
        for f in "$DIR"/* "$DIR"/.[!.]* "$DIR"/..?*; do
            [[ -e $f || -L $f ]] || continue
            [[ ${f##*/} == .lock || ${f##*/} == pgdata.path ]] && continue
            die "$DIR is not empty and is not a pgapi topology state dir (no $MARKER); refusing to use it"
        done
        : >"$DIR/$MARKER"
    fi
    chmod 755 "$DIR"
}

load_secrets() {
    local f=$DIR/secrets.env k v changed=0
    APP_PASSWORD="" REPLICATOR_PASSWORD="" PGBADMIN_PASSWORD="" POSTGRES_PASSWORD=""
    if [[ -f $f ]]; then
        while IFS='=' read -r k v; do
            [[ $v =~ ^[0-9a-f]{16,}$ ]] || continue
            case $k in
                APP_PASSWORD) APP_PASSWORD=$v ;;
                REPLICATOR_PASSWORD) REPLICATOR_PASSWORD=$v ;;
                PGBADMIN_PASSWORD) PGBADMIN_PASSWORD=$v ;;
                POSTGRES_PASSWORD) POSTGRES_PASSWORD=$v ;;
            esac
        done <"$f"
    fi
    [[ -n $APP_PASSWORD ]] || { APP_PASSWORD=$(rand_hex); changed=1; }
    [[ -n $REPLICATOR_PASSWORD ]] || { REPLICATOR_PASSWORD=$(rand_hex); changed=1; }
    [[ -n $PGBADMIN_PASSWORD ]] || { PGBADMIN_PASSWORD=$(rand_hex); changed=1; }
    [[ -n $POSTGRES_PASSWORD ]] || { POSTGRES_PASSWORD=$(rand_hex); changed=1; }
    if (( changed )); then
        (umask 077 && cat >"$f.tmp" <<EOF
APP_PASSWORD=$APP_PASSWORD
REPLICATOR_PASSWORD=$REPLICATOR_PASSWORD
PGBADMIN_PASSWORD=$PGBADMIN_PASSWORD
POSTGRES_PASSWORD=$POSTGRES_PASSWORD
EOF
        )
        mv -f "$f.tmp" "$f"
    fi
    chown root:root "$f"
    chmod 600 "$f"
}

write_pgpass() {
    (umask 077 && cat >"$PGPASS.tmp" <<EOF
$HOST:$BOUNCER_PORT:pgapi_rw:app:$APP_PASSWORD
$HOST:$BOUNCER_PORT:pgapi_ro:app:$APP_PASSWORD
$HOST:$BOUNCER_PORT:pgbouncer:pgbadmin:$PGBADMIN_PASSWORD
$HOST:$PRIMARY_PORT:*:app:$APP_PASSWORD
$HOST:$REPLICA_PORT:*:app:$APP_PASSWORD
EOF
    )
    chown root:root "$PGPASS.tmp"
    chmod 600 "$PGPASS.tmp"
    mv -f "$PGPASS.tmp" "$PGPASS"
}

write_topology_env() {
    local f=$DIR/topology.env
    {
        echo "# pgapi local topology ($DIR), written by scripts/topology.sh up"
        echo "export PGAPI_STATE_DIR=$(q "$DIR")"
        echo "export PGAPI_PGDATA_BASE=$(q "$PGBASE")"
        echo "export PGAPI_PRIMARY_PGDATA=$(q "$PRIMARY_DATA")"
        echo "export PGAPI_REPLICA_PGDATA=$(q "$REPLICA_DATA")"
        echo "export PGAPI_SOCKET_DIR=$(q "$PRIMARY_SOCK")"
        echo "export PGAPI_PRIMARY_SOCKET_DIR=$(q "$PRIMARY_SOCK")"
        echo "export PGAPI_REPLICA_SOCKET_DIR=$(q "$REPLICA_SOCK")"
        echo "export PGAPI_LOG_DIR=$(q "$PGLOG_DIR")"
        echo "export PGAPI_BOUNCER_PIDFILE=$(q "$BOUNCER_PID")"
        echo "export PGAPI_REDIS_PIDFILE=$(q "$REDIS_PID")"
        echo "export PGAPI_HOST=$(q "$HOST")"
        echo "export PGAPI_PRIMARY_PORT=$(q "$PRIMARY_PORT")"
        echo "export PGAPI_REPLICA_PORT=$(q "$REPLICA_PORT")"
        echo "export PGAPI_BOUNCER_PORT=$(q "$BOUNCER_PORT")"
        echo "export PGAPI_REDIS_PORT=$(q "$REDIS_PORT")"
        echo "export PGAPI_DB_NAME='pgapi'"
        echo "export PGAPI_DB_USER='app'"
        echo "export PGAPI_DB_RW='pgapi_rw'"
        echo "export PGAPI_DB_RO='pgapi_ro'"
        echo "export PGAPI_RW_DSN=$(q "host=$HOST port=$BOUNCER_PORT dbname=pgapi_rw user=app")"
        echo "export PGAPI_RO_DSN=$(q "host=$HOST port=$BOUNCER_PORT dbname=pgapi_ro user=app")"
        echo "export PGAPI_REDIS_URL=$(q "redis://$HOST:$REDIS_PORT/0")"
        echo "export PGPASSFILE=$(q "$PGPASS")"
    } >"$f.tmp"
    chmod 644 "$f.tmp"
    mv -f "$f.tmp" "$f"
}

prepare_dirs() {
    if [[ $PGBASE == "$FALLBACK_BASE" && -e $PGBASE ]]; then
        [[ ! -L $PGBASE ]] || die "$PGBASE is a symlink; refusing to use it"
        local owner
        owner=$(stat -c %U "$PGBASE")
        [[ $owner == "$PG_OS_USER" || $owner == root ]] || die "$PGBASE is owned by $owner; refusing to use it"
    fi
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0755 "$PGBASE" "$PGLOG_DIR"
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0700 "$PGBASE/run" "$PRIMARY_SOCK" "$REPLICA_SOCK" "$BOUNCER_DIR"
    install -d -o root -g root -m 0700 "$REDIS_DIR"
}

# ---------------------------------------------------------------- PostgreSQL
# psql as the postgres superuser over a unix socket. Usage: pg_sql PORT SOCKDIR DB SQL|-
pg_sql() {
    local port=$1 sock=$2 db=$3 sql=$4
    if [[ $sql == - ]]; then
        as_pg timeout -k 5 60 "$PGBIN/psql" -X -w -q -At -v ON_ERROR_STOP=1 \
            -h "$sock" -p "$port" -U postgres -d "$db" -f -
    else
        as_pg timeout -k 5 60 "$PGBIN/psql" -X -w -q -At -v ON_ERROR_STOP=1 \
            -h "$sock" -p "$port" -U postgres -d "$db" -c "$sql" </dev/null
    fi
}

pg_conf() { # role port sockdir -> pgapi.conf content on stdout
    local role=$1 port=$2 sock=$3
    cat <<EOF
# Written by scripts/topology.sh (regenerated on 'up' while stopped).
cluster_name = 'pgapi-$role'
listen_addresses = '$HOST'
port = $port
unix_socket_directories = '$sock'
max_connections = 200
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
hot_standby = on
fsync = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if [[ $role == replica ]]; then
        echo "primary_conninfo = 'host=$HOST port=$PRIMARY_PORT user=replicator password=$REPLICATOR_PASSWORD application_name=$REPLICA_APPNAME connect_timeout=5'"
    fi
}

pg_hba() {
    cat <<'EOF'
# Written by scripts/topology.sh
# TYPE  DATABASE     USER        ADDRESS        METHOD
local   all          all                        trust
local   replication  all                        trust
host    all          all         127.0.0.1/32   scram-sha-256
host    replication  replicator  127.0.0.1/32   scram-sha-256
EOF
}

configure_cluster() { # role datadir port sockdir
    local role=$1 data=$2 port=$3 sock=$4
    pg_conf "$role" "$port" "$sock" | pg_write "$data/pgapi.conf"
    pg_hba | pg_write "$data/pg_hba.conf"
    if ! grep -qx "include = 'pgapi.conf'" "$data/postgresql.conf"; then
        # shellcheck disable=SC2016  # $1 is expanded by the inner sh
        printf "\ninclude = 'pgapi.conf'\n" | as_pg sh -c 'cat >>"$1"' sh "$data/postgresql.conf"
    fi
    # pg_basebackup -R puts primary_conninfo in postgresql.auto.conf, which would
    # override pgapi.conf: keep it in pgapi.conf only.
    if [[ -f $data/postgresql.auto.conf ]] && grep -q '^primary_conninfo' "$data/postgresql.auto.conf"; then
        as_pg sed -i '/^primary_conninfo/d' "$data/postgresql.auto.conf"
    fi
}

init_primary() {
    local tmp=$PRIMARY_DATA.init pwfile=$PGBASE/.initdb.pw initlog=$PGLOG_DIR/initdb.log
    log "primary: initdb in $PRIMARY_DATA"
    rm -rf -- "$tmp"
    printf '%s\n' "$POSTGRES_PASSWORD" | pg_write "$pwfile"
    if ! as_pg timeout -k 5 120 "$PGBIN/initdb" -D "$tmp" -N -A scram-sha-256 --auth-local=trust \
            -U postgres --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 </dev/null >"$initlog" 2>&1; then
        rm -f -- "$pwfile"
        fail_server primary "$initlog" "initdb failed"
    fi
    rm -f -- "$pwfile"
    configure_cluster primary "$tmp" "$PRIMARY_PORT" "$PRIMARY_SOCK"
    mv -- "$tmp" "$PRIMARY_DATA"
}

init_replica() {
    local tmp=$REPLICA_DATA.init bblog=$PGLOG_DIR/basebackup.log
    log "replica: pg_basebackup from primary into $REPLICA_DATA"
    rm -rf -- "$tmp"
    if ! as_pg timeout -k 5 300 "$PGBIN/pg_basebackup" -h "$PRIMARY_SOCK" -p "$PRIMARY_PORT" -U postgres \
            -D "$tmp" -R -X stream -w -c fast -N </dev/null >"$bblog" 2>&1; then
        rm -rf -- "$tmp"
        fail_server replica "$bblog" "pg_basebackup from the primary failed"
    fi
    [[ -f $tmp/standby.signal ]] || as_pg touch "$tmp/standby.signal"
    configure_cluster replica "$tmp" "$REPLICA_PORT" "$REPLICA_SOCK"
    mv -- "$tmp" "$REPLICA_DATA"
}

wait_pg_ready() { # name port sock logfile
    local name=$1 port=$2 sock=$3 logf=$4 i
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        if "$PGBIN/pg_isready" -q -U postgres -d postgres -h "$HOST" -p "$port" -t 2 </dev/null \
                && "$PGBIN/pg_isready" -q -U postgres -d postgres -h "$sock" -p "$port" -t 2 </dev/null; then
            return 0
        fi
        sleep 0.25
    done
    fail_server "$name" "$logf" "not accepting connections on $HOST:$port after ${WAIT_SECS}s"
}

start_pg() { # name datadir port sock logfile
    local name=$1 data=$2 port=$3 sock=$4 logf=$5 pid stale
    if pid=$(pg_pid "$data"); then
        if ! "$PGBIN/pg_isready" -q -U postgres -d postgres -h "$HOST" -p "$port" -t 3 </dev/null; then
            die "$name: already running (pid $pid) but not answering on $HOST:$port; if the port changed, run 'down' first (log: $logf)"
        fi
        log "$name: already running (pid $pid, port $port)"
        if (( PASSWORDS_CHANGED )); then
            log "$name: passwords changed, rewriting config and reloading"
            configure_cluster "$name" "$data" "$port" "$sock"
            as_pg "$PGBIN/pg_ctl" -D "$data" -s reload </dev/null >/dev/null 2>&1 \
                || fail_server "$name" "$logf" "pg_ctl reload failed"
        fi
        return 0
    fi
    if stale=$(read_pid "$data/postmaster.pid" 2>/dev/null); then
        log "$name: removing stale postmaster.pid (pid $stale is not this server)"
        rm -f -- "$data/postmaster.pid"
    elif [[ -e $data/postmaster.pid ]]; then
        log "$name: removing unreadable postmaster.pid"
        rm -f -- "$data/postmaster.pid"
    fi
    check_port_free "$name" "$port"
    # refresh config (ports/passwords may have changed since the last run)
    configure_cluster "$name" "$data" "$port" "$sock"
    as_pg touch "$logf"
    log "$name: starting on $HOST:$port"
    if ! as_pg "$PGBIN/pg_ctl" -D "$data" -l "$logf" -w -t "$WAIT_SECS" -s start </dev/null >/dev/null 2>>"$logf.ctl"; then
        cat -- "$logf.ctl" >&2 2>/dev/null || true
        fail_server "$name" "$logf" "failed to start"
    fi
    rm -f -- "$logf.ctl"
    wait_pg_ready "$name" "$port" "$sock" "$logf"
}

# Check a role's password over TCP with scram (as the clients will).
role_login_ok() { # role password
    env PGPASSWORD="$2" timeout -k 5 20 "$PGBIN/psql" -X -w -q -At -h "$HOST" -p "$PRIMARY_PORT" \
        -U "$1" -d postgres -c 'SELECT 1' </dev/null >/dev/null 2>&1
}

ensure_roles() {
    local role pw attrs exists
    for role in app replicator pgbadmin; do
        case $role in
            app) pw=$APP_PASSWORD attrs="LOGIN" ;;
            replicator) pw=$REPLICATOR_PASSWORD attrs="LOGIN REPLICATION" ;;
            pgbadmin) pw=$PGBADMIN_PASSWORD attrs="LOGIN" ;;
        esac
        exists=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
            "SELECT count(*) FROM pg_roles WHERE rolname = '$role'") \
            || fail_server primary "$PRIMARY_LOG" "cannot query pg_roles"
        if [[ $exists == 0 ]]; then
            log "primary: creating role $role"
            printf "CREATE ROLE %s %s PASSWORD '%s';\n" "$role" "$attrs" "$pw" \
                | pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres - >/dev/null \
                || fail_server primary "$PRIMARY_LOG" "cannot create role $role"
        elif ! role_login_ok "$role" "$pw"; then
            log "primary: resetting password of role $role to the one in $DIR/secrets.env"
            PASSWORDS_CHANGED=1
            printf "ALTER ROLE %s %s PASSWORD '%s';\n" "$role" "$attrs" "$pw" \
                | pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres - >/dev/null \
                || fail_server primary "$PRIMARY_LOG" "cannot alter role $role"
        fi
    done
    exists=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
        "SELECT count(*) FROM pg_database WHERE datname = 'pgapi'") \
        || fail_server primary "$PRIMARY_LOG" "cannot query pg_database"
    if [[ $exists == 0 ]]; then
        log "primary: creating database pgapi owned by app"
        pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres "CREATE DATABASE pgapi OWNER app" >/dev/null \
            || fail_server primary "$PRIMARY_LOG" "cannot create database pgapi"
    fi
    # Server-side statement limit for the app: PgBouncer ignores a client's startup 'options', so the
    # role carries it (the server's own client-side bound is statement_timeout + 1 s).
    pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres "ALTER ROLE app SET statement_timeout = '5s'" >/dev/null \
        || fail_server primary "$PRIMARY_LOG" "cannot set the app role's statement_timeout"
    role_login_ok app "$APP_PASSWORD" \
        || fail_server primary "$PRIMARY_LOG" "role app cannot log in over TCP with its password"
}

wait_streaming() {
    local i n=0
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        n=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$REPLICA_APPNAME' AND state = 'streaming'" 2>/dev/null) || n=0
        [[ $n -ge 1 ]] && return 0
        sleep 0.25
    done
    log_tail "$PRIMARY_LOG"
    fail_server replica "$REPLICA_LOG" "not streaming from the primary after ${WAIT_SECS}s (pg_stat_replication on the primary has no streaming '$REPLICA_APPNAME')"
}

stop_pg() { # name datadir logfile
    local name=$1 data=$2 logf=$3 pid
    if ! pid=$(pg_pid "$data"); then
        if [[ -f $data/postmaster.pid ]]; then
            log "$name: not running (removing stale postmaster.pid)"
            rm -f -- "$data/postmaster.pid"
        else
            log "$name: not running"
        fi
        return 0
    fi
    log "$name: stopping (pid $pid)"
    if ! as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -w -t "$WAIT_SECS" -s stop </dev/null >/dev/null 2>&1; then
        log "$name: fast shutdown timed out, trying immediate (log: $logf)"
        as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t 10 -s stop </dev/null >/dev/null 2>&1 || true
    fi
    if ! wait_gone "$pid" 10; then
        log "$name: pid $pid still alive, sending SIGKILL (log: $logf)"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "$name: pid $pid does not die (log: $logf)"
        rm -f -- "$data/postmaster.pid"
    fi
}

# ---------------------------------------------------------------- PgBouncer
write_bouncer_config() {
    local auth
    auth=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
        "SELECT '\"' || replace(rolname, '\"', '\"\"') || '\" \"' || replace(rolpassword, '\"', '\"\"') || '\"' FROM pg_authid WHERE rolname IN ('app', 'pgbadmin') AND rolpassword IS NOT NULL ORDER BY rolname") \
        || fail_server primary "$PRIMARY_LOG" "cannot read pg_authid for the PgBouncer auth_file"
    [[ $(grep -c 'SCRAM-SHA-256' <<<"$auth") -eq 2 ]] \
        || die "pgbouncer: expected SCRAM secrets for app and pgbadmin in pg_authid, got: $(cut -c1-20 <<<"$auth" | tr '\n' ' ')"
    printf '%s\n' "$auth" | pg_write "$BOUNCER_AUTH"
    pg_write "$BOUNCER_INI" <<EOF
;; Written by scripts/topology.sh (regenerated on 'up' while stopped).
[databases]
pgapi_rw = host=$HOST port=$PRIMARY_PORT dbname=pgapi
pgapi_ro = host=$HOST port=$REPLICA_PORT dbname=pgapi

[pgbouncer]
listen_addr = $HOST
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BOUNCER_AUTH
admin_users = pgbadmin
stats_users = pgbadmin
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
server_reset_query =
; SHOW STATS totals refresh every second (tests and ops read them)
stats_period = 1
; after a failed server login, retry within a second (a restarted server is usable at once)
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options,statement_timeout
pidfile = $BOUNCER_PID
logfile = $BOUNCER_LOG
syslog = 0
EOF
}

start_bouncer() {
    local pid stale i startlog=$PGLOG_DIR/pgbouncer.start.log
    if pid=$(bouncer_pid); then
        log "pgbouncer: already running (pid $pid, port $BOUNCER_PORT)"
        if (( PASSWORDS_CHANGED )); then
            log "pgbouncer: passwords changed, rewriting auth_file and reloading (SIGHUP)"
            write_bouncer_config
            kill -HUP "$pid"
        fi
        return 0
    fi
    if stale=$(read_pid "$BOUNCER_PID" 2>/dev/null) || [[ -e $BOUNCER_PID ]]; then
        log "pgbouncer: removing stale pid file (pid ${stale:-?} is not our pgbouncer)"
        rm -f -- "$BOUNCER_PID"
    fi
    check_port_free pgbouncer "$BOUNCER_PORT"
    write_bouncer_config
    as_pg touch "$BOUNCER_LOG"
    log "pgbouncer: starting on $HOST:$BOUNCER_PORT"
    # runuser's PAM session resets the soft fd limit to 1024; max_client_conn=1000
    # needs more, so raise the soft limit to the hard one.
    # shellcheck disable=SC2016  # expanded by the inner sh
    if ! as_pg sh -c 'ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec "$@"' sh \
            timeout -k 5 30 "$PGBOUNCER_BIN" -d -q "$BOUNCER_INI" </dev/null >/dev/null 2>"$startlog"; then
        cat -- "$startlog" >&2 || true
        fail_server pgbouncer "$BOUNCER_LOG" "failed to start"
    fi
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        if pid=$(bouncer_pid) && [[ -n $(port_listeners "$BOUNCER_PORT") ]]; then
            break
        fi
        pid=""
        sleep 0.25
    done
    [[ -n $pid ]] || fail_server pgbouncer "$BOUNCER_LOG" "no pid file / not listening on $HOST:$BOUNCER_PORT after ${WAIT_SECS}s"
    [[ -s $startlog ]] || rm -f -- "$startlog"
}

bouncer_psql() { # db user sql
    env PGPASSFILE="$PGPASS" timeout -k 5 20 "$PGBIN/psql" -X -w -q -At -h "$HOST" -p "$BOUNCER_PORT" \
        -U "$2" -d "$1" -c "$3" </dev/null
}

stop_bouncer() {
    local pid
    if ! pid=$(bouncer_pid); then
        if [[ -e $BOUNCER_PID ]]; then
            log "pgbouncer: not running (removing stale pid file)"
            rm -f -- "$BOUNCER_PID"
        else
            log "pgbouncer: not running"
        fi
        return 0
    fi
    log "pgbouncer: stopping (pid $pid, SIGINT)"
    kill -INT "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
        log "pgbouncer: still alive after SIGINT, sending SIGTERM (log: $BOUNCER_LOG)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 5; then
            log "pgbouncer: sending SIGKILL to pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || die "pgbouncer: pid $pid does not die"
        fi
    fi
    rm -f -- "$BOUNCER_PID"
}

# ---------------------------------------------------------------- Redis
redis_ping() {
    [[ $(timeout -k 2 3 "$REDIS_CLI" -h "$HOST" -p "$REDIS_PORT" ping </dev/null 2>/dev/null) == PONG ]]
}

start_redis() {
    local pid i
    if pid=$(redis_pid); then
        redis_ping || die "redis: running (pid $pid) but not answering PING on $HOST:$REDIS_PORT; if the port changed, run 'down' first (log: $REDIS_LOG)"
        log "redis: already running (pid $pid, port $REDIS_PORT)"
        return 0
    fi
    if [[ -e $REDIS_PID ]]; then
        log "redis: removing stale pid file"
        rm -f -- "$REDIS_PID"
    fi
    check_port_free redis "$REDIS_PORT"
    log "redis: starting on $HOST:$REDIS_PORT"
    if ! (cd "$REDIS_DIR" && close_fds && timeout -k 5 30 "$REDIS_BIN" --port "$REDIS_PORT" --bind "$HOST" --save "" \
            --appendonly no --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
            --dir "$REDIS_DIR" </dev/null >/dev/null 2>"$REDIS_DIR/redis.start.log"); then
        cat -- "$REDIS_DIR/redis.start.log" >&2 || true
        fail_server redis "$REDIS_LOG" "failed to start"
    fi
    [[ -s $REDIS_DIR/redis.start.log ]] || rm -f -- "$REDIS_DIR/redis.start.log"
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        if pid=$(redis_pid) && redis_ping; then
            return 0
        fi
        sleep 0.25
    done
    fail_server redis "$REDIS_LOG" "not answering PING on $HOST:$REDIS_PORT after ${WAIT_SECS}s"
}

stop_redis() {
    local pid
    if ! pid=$(redis_pid); then
        if [[ -e $REDIS_PID ]]; then
            log "redis: not running (removing stale pid file)"
            rm -f -- "$REDIS_PID"
        else
            log "redis: not running"
        fi
        return 0
    fi
    log "redis: stopping (pid $pid, SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
        log "redis: still alive after SIGTERM, sending SIGKILL (log: $REDIS_LOG)"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "redis: pid $pid does not die"
    fi
    rm -f -- "$REDIS_PID"
}

# ---------------------------------------------------------------- commands
cmd_up() {
    [[ -x $PGBIN/initdb ]] || die "PostgreSQL 15 not found in $PGBIN: run scripts/deps.sh"
    [[ -x $PGBOUNCER_BIN ]] || die "pgbouncer not found: run scripts/deps.sh"
    [[ -x $REDIS_BIN ]] || die "redis-server not found: run scripts/deps.sh"
    load_secrets
    prepare_dirs
    write_topology_env
    write_pgpass
    log "state dir $DIR (postgres data under $PGBASE)"

    # fail fast, before starting anything, if a port we need is taken by a stranger
    pg_pid "$PRIMARY_DATA" >/dev/null || check_port_free primary "$PRIMARY_PORT"
    pg_pid "$REPLICA_DATA" >/dev/null || check_port_free replica "$REPLICA_PORT"
    bouncer_pid >/dev/null || check_port_free pgbouncer "$BOUNCER_PORT"
    redis_pid >/dev/null || check_port_free redis "$REDIS_PORT"

    [[ -f $PRIMARY_DATA/PG_VERSION ]] || init_primary
    start_pg primary "$PRIMARY_DATA" "$PRIMARY_PORT" "$PRIMARY_SOCK" "$PRIMARY_LOG"
    ensure_roles

    [[ -f $REPLICA_DATA/PG_VERSION ]] || init_replica
    start_pg replica "$REPLICA_DATA" "$REPLICA_PORT" "$REPLICA_SOCK" "$REPLICA_LOG"
    wait_streaming

    start_bouncer
    start_redis

    # end-to-end checks through PgBouncer
    [[ $(bouncer_psql pgbouncer pgbadmin 'SHOW VERSION' 2>&1 | head -n1) == *PgBouncer* ]] \
        || fail_server pgbouncer "$BOUNCER_LOG" "admin console (pgbadmin@pgbouncer) does not answer SHOW VERSION"
    # A PgBouncer that saw a server down keeps refusing logins for server_login_retry: poll a while.
    local r i db want
    for db in pgapi_rw:f pgapi_ro:t; do
        want=${db#*:} db=${db%:*}
        for ((i = 0; i < WAIT_SECS * 2; i++)); do
            r=$(bouncer_psql "$db" app 'SELECT pg_is_in_recovery()' 2>&1) || true
            [[ $r == "$want" ]] && break
            sleep 0.5
        done
        [[ $r == "$want" ]] || fail_server pgbouncer "$BOUNCER_LOG" "$db as app: expected pg_is_in_recovery()=$want, got: $r"
    done
    log "up: primary :$PRIMARY_PORT, replica :$REPLICA_PORT, pgbouncer :$BOUNCER_PORT (pgapi_rw, pgapi_ro), redis :$REDIS_PORT"
    log "env: . $DIR/topology.env"
}

cmd_down() {
    if [[ ! -d $DIR ]]; then
        log "no state dir $DIR: nothing to stop"
        if (( PURGE )) && [[ -d $FALLBACK_BASE && ! -L $FALLBACK_BASE ]]; then
            log "purging $FALLBACK_BASE"
            rm -rf -- "$FALLBACK_BASE"
        fi
        return 0
    fi
    stop_bouncer
    stop_pg replica "$REPLICA_DATA" "$REPLICA_LOG"
    stop_pg primary "$PRIMARY_DATA" "$PRIMARY_LOG"
    stop_redis
    if (( PURGE )); then
        if [[ ! -e $DIR/$MARKER ]]; then
            die "not purging $DIR: it has no $MARKER marker, so it does not look like a topology state dir"
        fi
        if pg_pid "$PRIMARY_DATA" >/dev/null || pg_pid "$REPLICA_DATA" >/dev/null \
                || bouncer_pid >/dev/null || redis_pid >/dev/null; then
            die "not purging $DIR: a server is still running"
        fi
        if [[ $PGBASE == "$FALLBACK_BASE" && -d $PGBASE && ! -L $PGBASE ]]; then
            log "purging $PGBASE"
            rm -rf -- "$PGBASE"
        fi
        log "purging $DIR"
        rm -rf -- "$DIR"
    fi
}

cmd_status() {
    local pid rc=0 info
    if pid=$(pg_pid "$PRIMARY_DATA"); then
        info=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
            "SELECT 'in_recovery=' || pg_is_in_recovery() || ' wal_lsn=' || pg_current_wal_lsn() || ' replicas_streaming=' || (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')" 2>/dev/null) \
            || info="(not answering)"
        printf '%-9s running pid=%s port=%s %s\n' primary "$pid" "$PRIMARY_PORT" "$info"
    else
        printf '%-9s stopped port=%s\n' primary "$PRIMARY_PORT"; rc=3
    fi
    if pid=$(pg_pid "$REPLICA_DATA"); then
        info=$(pg_sql "$REPLICA_PORT" "$REPLICA_SOCK" postgres \
            "SELECT 'in_recovery=' || pg_is_in_recovery() || ' replay_lsn=' || coalesce(pg_last_wal_replay_lsn()::text, 'none')" 2>/dev/null) \
            || info="(not answering)"
        printf '%-9s running pid=%s port=%s %s\n' replica "$pid" "$REPLICA_PORT" "$info"
    else
        printf '%-9s stopped port=%s\n' replica "$REPLICA_PORT"; rc=3
    fi
    if pid=$(bouncer_pid); then
        printf '%-9s running pid=%s port=%s\n' pgbouncer "$pid" "$BOUNCER_PORT"
    else
        printf '%-9s stopped port=%s\n' pgbouncer "$BOUNCER_PORT"; rc=3
    fi
    if pid=$(redis_pid); then
        printf '%-9s running pid=%s port=%s\n' redis "$pid" "$REDIS_PORT"
    else
        printf '%-9s stopped port=%s\n' redis "$REDIS_PORT"; rc=3
    fi
    return "$rc"
}

cmd_psql() { # rw|ro
    [[ -f $PGPASS ]] || die "no $PGPASS: run 'scripts/topology.sh up $DIR' first"
    export PGPASSFILE=$PGPASS
    exec "$PGBIN/psql" -h "$HOST" -p "$BOUNCER_PORT" -U app -d "pgapi_$1" "${PSQL_ARGS[@]}"
}

case $CMD in
    up) lock_state; claim_dir; setup_paths; cmd_up ;;
    down) lock_state; setup_paths; cmd_down ;;
    status) setup_paths; cmd_status ;;
    psql-primary) setup_paths; cmd_psql rw ;;
    psql-replica) setup_paths; cmd_psql ro ;;
esac
