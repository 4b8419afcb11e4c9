#!/usr/bin/env bash
# Local pgapi topology: PostgreSQL 15 primary + streaming replicas, PgBouncer
# in front of them (databases pgapi_rw / pgapi_ro / pgapi_ro2), and Redis.
# Everything binds 127.0.0.1 and lives under a state directory.
#
# Usage: scripts/topology.sh COMMAND [DIR]
#   up                start (and on first use create) everything; re-running is a no-op
#   down [--purge]    stop exactly what this topology started; --purge also deletes the state
#   status            one line per server (exit 3 when one is stopped)
#   add-replica       a second streaming replica "replica2" from the current primary, on
#                     PGAPI_REPLICA2_PORT (default 15434), read through PgBouncer's pgapi_ro2;
#                     re-running is a no-op; up/down/status/--purge include it from then on
#   promote           fail over to the replica pgapi_ro reads from: stop the old primary (fast
#                     shutdown: it sends all its WAL first; the replica must have replayed its
#                     shutdown checkpoint), promote the replica, make the other replicas follow it,
#                     re-point PgBouncer (PAUSE pgapi_rw, RELOAD, RESUME: clients keep their
#                     connections). The old primary stays stopped ("former"): up never starts it
#   rejoin            rebuild the former primary as a replica of the current one (fresh
#                     pg_basebackup into its data dir, same port); pgapi_ro then reads from it
#   promote and rejoin are a development convenience for this topology, not the production path:
#   production fails over with Patroni (docs/operations.md, "High availability"; scripts/ha.sh)
#   psql-primary|psql-replica|psql-replica2 [DIR] [--] [psql args...]
#                     psql as app through PgBouncer (pgapi_rw, pgapi_ro, pgapi_ro2)
#
# DIR: argument, else $PGAPI_STATE_DIR, else <repo>/var.
# Ports (env, then the ones recorded in $DIR, then defaults):
#   PGAPI_PRIMARY_PORT=15432 PGAPI_REPLICA_PORT=15433 PGAPI_REPLICA2_PORT=15434
#   (below the ephemeral range 32768-60999) PGAPI_BOUNCER_PORT=64320 PGAPI_REDIS_PORT=63790
#   A port belongs to a data dir: once a promote has moved the roles, PGAPI_PRIMARY_PORT and
#   PGAPI_REPLICA_PORT no longer name the data dirs they were given for and are ignored
#   (topology.env, which describes the current roles, can still be sourced).
# pgapi reads through several replicas with repeated `replica = <conninfo>` lines in its ini's
# [database] section: here $PGAPI_RO_DSN and $PGAPI_RO2_DSN (both PgBouncer databases).
# Other env: PGAPI_PURGE=1 (same as down --purge), PGAPI_WAIT_SECS (default 30).
#
# Files written in DIR:
#   topology.env  sourceable `export KEY='value'` lines (ports, paths, DSNs, PGPASSFILE) of the
#                 CURRENT roles: PGAPI_PRIMARY_* is whichever data dir is primary now
#   roles         which data dir plays which role (primary, the one pgapi_ro reads, a former
#                 primary awaiting rejoin) and the port of each data dir
#   pgpass        libpq passfile for user app (and pgbadmin on the admin console)
#   secrets.env   APP_PASSWORD, REPLICATOR_PASSWORD, PGBADMIN_PASSWORD, POSTGRES_PASSWORD,
#                 REDIS_PASSWORD (ACL user pgapi), REDIS_ADMIN_PASSWORD (Redis's default user)
#   redis.password  REDIS_PASSWORD alone: pgapi's [redis] password_file (PGAPI_REDIS_PASSWORD_FILE)
#   pgdata.path   where the postgres-owned part lives (DIR/pg, or /var/tmp/pgapi-<hash>
#                 when the postgres user cannot reach DIR)
#   redis/        Redis's working dir, owned by the redis user: redis.conf (mode 600: its ACL users and
#                 passwords, never in argv), pid, log and unix socket redis.sock (under the pgdata
#                 path instead when DIR is out of the system users' reach)
# Every secret stays out of argv (/proc/*/cmdline is world-readable): passwords go through files,
# stdin or the environment (/proc/*/environ is readable by the process owner only).
# DIR, its parents and the files above must be owned by root and not writable by group or other:
# topology.env is sourced as root. Redis runs as the redis user, requires a password (ACL users
# "default" for tools and "pgapi" for the server, without admin or dangerous commands), and has a
# maxmemory ($PGAPI_REDIS_MAXMEMORY, default 512mb) with the noeviction policy: evicting a fence or
# a lease could let a stale value be cached, so a full Redis refuses writes and pgapi falls back to
# PostgreSQL instead.
# Under the pgdata path: data dirs primary/ replica/ replica2/ (named after the role each had
# when it was created), run/<data dir> (unix sockets), log/*.log, pgbouncer/ (ini, auth file,
# pid file). Each replica streams with application_name pgapi_<data dir>.
set -euo pipefail

PROG=topology
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PORT_HINT="PGAPI_PRIMARY_PORT, PGAPI_REPLICA_PORT, PGAPI_REPLICA2_PORT, PGAPI_BOUNCER_PORT, PGAPI_REDIS_PORT"
# shellcheck source=scripts/lib/common.sh
. "$REPO_ROOT/scripts/lib/common.sh"
MARKER=.pgapi-topology
BOUNCER_PAUSED=""

# The data dirs a topology can have, with the env variable and default of each one's port.
NODE_NAMES=(primary replica replica2)
declare -A SLOT_VAR=([primary]=PGAPI_PRIMARY_PORT [replica]=PGAPI_REPLICA_PORT [replica2]=PGAPI_REPLICA2_PORT)
declare -A SLOT_DEFAULT=([primary]=15432 [replica]=15433 [replica2]=15434)

REDIS_MAXMEMORY=${PGAPI_REDIS_MAXMEMORY:-512mb}

usage() {
    cat >&2 <<'EOF'
usage: topology.sh up [DIR]
       topology.sh down [--purge] [DIR]
       topology.sh status [DIR]
       topology.sh add-replica [DIR]   second replica "replica2" (PGAPI_REPLICA2_PORT), PgBouncer db pgapi_ro2
       topology.sh promote [DIR]       fail over to the replica behind pgapi_ro; the old primary stays stopped
       topology.sh rejoin [DIR]        rebuild the old primary as a replica of the new one
       topology.sh psql-primary|psql-replica|psql-replica2 [DIR] [--] [psql args...]
DIR defaults to $PGAPI_STATE_DIR, else <repo>/var.
promote and rejoin are a development convenience, not the production path: production fails over
with Patroni (docs/operations.md, "High availability"; scripts/ha.sh runs it locally).
EOF
    exit 2
}

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[[ -n $CMD ]] || usage
shift
PURGE=${PGAPI_PURGE:-0}
DIR_ARG=""
PSQL_ARGS=()
case $CMD in
    up|status|add-replica|promote|rejoin)
        [[ $# -le 1 ]] || usage
        DIR_ARG=${1:-}
        ;;
    down) down_args "$@" ;;
    psql-primary|psql-replica|psql-replica2)
        if [[ $# -gt 0 && $1 != -* ]]; then DIR_ARG=$1; shift; fi
        if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
        PSQL_ARGS=("$@")
        ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
[[ $PURGE == 1 || $PURGE == 0 ]] || PURGE=1

require_root_and_users

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
ROLES_FILE=$DIR/roles

check_dir_trusted topology.env roles secrets.env redis.password pgpass pgdata.path

# ---------------------------------------------------------------- helpers (the shared ones: scripts/lib/common.sh)
recorded() { # KEY -> value from DIR/topology.env, if any
    [[ -f $DIR/topology.env ]] || return 0
    bash -c 'set +eu; . "$1" >/dev/null 2>&1; printf "%s" "${!2:-}"' _ "$DIR/topology.env" "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------- roles and settings
# Roles live in $ROLES_FILE (KEY=value lines, never sourced):
#   primary=  the data dir that is primary now          ro=  the one PgBouncer's pgapi_ro reads
#   former=   an old primary that must stay stopped until 'rejoin' rebuilds it (or empty)
#   nodes=    the data dirs this topology has           port_<data dir>=  its port
# Without the file (a new or an older state dir) the data dirs have the roles they are named after.
NODES=(primary replica)
PRIMARY_NODE=primary
RO_NODE=replica
FORMER_NODE=""
declare -A NODE_PORT=()

is_node_name() { [[ " ${NODE_NAMES[*]} " == *" $1 "* ]]; }
has_node() { [[ " ${NODES[*]} " == *" $1 "* ]]; }

load_roles() {
    local k v n
    [[ -f $ROLES_FILE ]] || return 0
    while IFS='=' read -r k v; do
        case $k in
            primary) PRIMARY_NODE=$v ;;
            ro) RO_NODE=$v ;;
            former) FORMER_NODE=$v ;;
            nodes) read -ra NODES <<<"$v" ;;
            port_*)
                if is_node_name "${k#port_}" && is_port "$v"; then NODE_PORT[${k#port_}]=$v; fi
                ;;
        esac
    done <"$ROLES_FILE"
    for n in "${NODES[@]}"; do
        is_node_name "$n" || die "unknown data dir '$n' in $ROLES_FILE"
    done
    if ! has_node "$PRIMARY_NODE" || ! has_node "$RO_NODE" || [[ $FORMER_NODE == "$PRIMARY_NODE" || $FORMER_NODE == "$RO_NODE" ]] \
            || { [[ -n $FORMER_NODE ]] && ! has_node "$FORMER_NODE"; }; then
        die "inconsistent roles in $ROLES_FILE (primary=$PRIMARY_NODE ro=$RO_NODE former=$FORMER_NODE nodes=${NODES[*]})"
    fi
}

# True while every data dir still has the role it is named after (no promote moved them).
roles_as_created() { [[ $PRIMARY_NODE == primary && -z $FORMER_NODE ]]; }

# The port of a data dir: its env variable, then the recorded one, then the default. After a promote
# PGAPI_PRIMARY_PORT means another data dir than 'primary', so recorded ports win over the env then.
resolve_port() { # node
    local node=$1 var=${SLOT_VAR[$1]} env rec
    env=${!var:-}
    rec=${NODE_PORT[$node]:-}
    if [[ -z $rec && ! -f $ROLES_FILE ]]; then
        rec=$(recorded "$var")
    fi
    if [[ -n $env && $env != "$rec" ]]; then
        if [[ -z $rec ]] || roles_as_created; then
            rec=$env
        else
            log "ignoring $var=$env: since a promote, ports stay with their data dirs (data dir '$node' keeps port $rec)"
        fi
    fi
    NODE_PORT[$node]=${rec:-${SLOT_DEFAULT[$node]}}
}

# Role of a data dir: primary, former, replica2 (the data dir of that name as a replica) or replica.
node_role() {
    if [[ $1 == "$PRIMARY_NODE" ]]; then echo primary
    elif [[ $1 == "$FORMER_NODE" ]]; then echo former
    elif [[ $1 == replica2 ]]; then echo replica2
    else echo replica
    fi
}

# How a data dir is named in messages: its role, and the data dir when the two differ.
node_label() {
    local role
    role=$(node_role "$1")
    if [[ $role == "$1" ]]; then echo "$1"; else echo "$role (data dir $1)"; fi
}

load_settings() {
    local n p ports=()
    load_roles
    for n in "${NODE_NAMES[@]}"; do resolve_port "$n"; done
    BOUNCER_PORT=${PGAPI_BOUNCER_PORT:-$(recorded PGAPI_BOUNCER_PORT)}
    REDIS_PORT=${PGAPI_REDIS_PORT:-$(recorded PGAPI_REDIS_PORT)}
    BOUNCER_PORT=${BOUNCER_PORT:-64320}
    REDIS_PORT=${REDIS_PORT:-63790}
    for n in "${NODES[@]}"; do ports+=("${NODE_PORT[$n]}"); done
    if [[ $CMD == add-replica ]] && ! has_node replica2; then ports+=("${NODE_PORT[replica2]}"); fi
    ports+=("$BOUNCER_PORT" "$REDIS_PORT")
    for p in "${ports[@]}"; do
        is_port "$p" || die "invalid port '$p'"
    done
    if [[ $(printf '%s\n' "${ports[@]}" | sort -u | wc -l) -ne ${#ports[@]} ]]; then
        die "ports must be distinct (primary=${NODE_PORT[primary]} replica=${NODE_PORT[replica]} replica2=${NODE_PORT[replica2]} bouncer=$BOUNCER_PORT redis=$REDIS_PORT)"
    fi
    if ! [[ $WAIT_SECS =~ ^[1-9][0-9]*$ ]]; then WAIT_SECS=30; fi
}

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
    local longest="$PGBASE/run/replica2/.s.PGSQL.${NODE_PORT[replica2]}.lock"
    if ! as_pg test -x "$DIR" 2>/dev/null; then
        log "user $PG_OS_USER cannot reach $DIR; PostgreSQL data goes to $FALLBACK_BASE"
        PGBASE=$FALLBACK_BASE
    elif (( ${#longest} > 100 )); then
        log "$DIR is too deep for unix socket paths; PostgreSQL data goes to $FALLBACK_BASE"
        PGBASE=$FALLBACK_BASE
    fi
    printf '%s\n' "$PGBASE" >"$DIR/pgdata.path"
}

declare -A NODE_DATA=() NODE_SOCK=() NODE_LOG=()

setup_paths() {
    local n
    choose_pgbase
    PGLOG_DIR=$PGBASE/log
    for n in "${NODE_NAMES[@]}"; do
        NODE_DATA[$n]=$PGBASE/$n
        NODE_SOCK[$n]=$PGBASE/run/$n
        NODE_LOG[$n]=$PGLOG_DIR/$n.log
    done
    set_roles
    BOUNCER_DIR=$PGBASE/pgbouncer
    BOUNCER_INI=$BOUNCER_DIR/pgbouncer.ini
    BOUNCER_AUTH=$BOUNCER_DIR/userlist.txt
    BOUNCER_PID=$BOUNCER_DIR/pgbouncer.pid
    BOUNCER_LOG=$PGLOG_DIR/pgbouncer.log
    # the redis user must reach its dir: beside the postgres data when DIR is out of reach
    REDIS_DIR=$DIR/redis
    [[ $PGBASE != "$FALLBACK_BASE" ]] || REDIS_DIR=$PGBASE/redis
    REDIS_PID=$REDIS_DIR/redis.pid
    REDIS_LOG=$REDIS_DIR/redis.log
    REDIS_CONF=$REDIS_DIR/redis.conf
    REDIS_SOCK=$REDIS_DIR/redis.sock
    REDIS_PWFILE=$DIR/redis.password
    PGPASS=$DIR/pgpass
}

# The PRIMARY_* shorthands, and REPLICAS (the data dirs that stream from the primary),
# from the roles; again after every role change.
set_roles() {
    local n
    PRIMARY_PORT=${NODE_PORT[$PRIMARY_NODE]}
    PRIMARY_DATA=${NODE_DATA[$PRIMARY_NODE]}
    PRIMARY_SOCK=${NODE_SOCK[$PRIMARY_NODE]}
    PRIMARY_LOG=${NODE_LOG[$PRIMARY_NODE]}
    REPLICAS=()
    for n in "${NODES[@]}"; do
        [[ $n == "$PRIMARY_NODE" || $n == "$FORMER_NODE" ]] || REPLICAS+=("$n")
    done
}

# ---------------------------------------------------------------- process identity
# Each *_pid function prints the pid of our running server, or fails (pg_pid and bouncer_pid: common.sh).
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

write_pgpass() {
    local db node n
    (umask 077 && {
        while read -r db node; do
            echo "$HOST:$BOUNCER_PORT:$db:app:$APP_PASSWORD"
        done < <(bouncer_targets)
        echo "$HOST:$BOUNCER_PORT:pgbouncer:pgbadmin:$PGBADMIN_PASSWORD"
        for n in "${NODES[@]}"; do
            echo "$HOST:${NODE_PORT[$n]}:*:app:$APP_PASSWORD"
        done
    } >"$PGPASS.tmp")
    chown root:root "$PGPASS.tmp"
    chmod 600 "$PGPASS.tmp"
    mv -f "$PGPASS.tmp" "$PGPASS"
}

# export lines for one role: PGAPI_<PREFIX>_PORT/_PGDATA/_SOCKET_DIR of a data dir
env_node() { # prefix node
    echo "export PGAPI_$1_PORT=$(q "${NODE_PORT[$2]}")"
    echo "export PGAPI_$1_PGDATA=$(q "${NODE_DATA[$2]}")"
    echo "export PGAPI_$1_SOCKET_DIR=$(q "${NODE_SOCK[$2]}")"
}

write_topology_env() {
    local f=$DIR/topology.env
    {
        echo "# pgapi local topology ($DIR), written by scripts/topology.sh; describes the current roles"
        echo "# (primary: data dir $PRIMARY_NODE; pgapi_ro reads data dir $RO_NODE${FORMER_NODE:+; former primary: data dir $FORMER_NODE, stopped})"
        echo "export PGAPI_STATE_DIR=$(q "$DIR")"
        echo "export PGAPI_PGDATA_BASE=$(q "$PGBASE")"
        echo "export PGAPI_SOCKET_DIR=$(q "$PRIMARY_SOCK")"
        env_node PRIMARY "$PRIMARY_NODE"
        env_node REPLICA "$RO_NODE"
        if has_node replica2; then env_node REPLICA2 replica2; fi
        if [[ -n $FORMER_NODE ]]; then env_node FORMER_PRIMARY "$FORMER_NODE"; fi
        echo "export PGAPI_LOG_DIR=$(q "$PGLOG_DIR")"
        echo "export PGAPI_BOUNCER_PIDFILE=$(q "$BOUNCER_PID")"
        echo "export PGAPI_REDIS_PIDFILE=$(q "$REDIS_PID")"
        echo "export PGAPI_HOST=$(q "$HOST")"
        echo "export PGAPI_BOUNCER_PORT=$(q "$BOUNCER_PORT")"
        echo "export PGAPI_REDIS_PORT=$(q "$REDIS_PORT")"
        echo "export PGAPI_DB_NAME='pgapi'"
        echo "export PGAPI_DB_USER='app'"
        echo "export PGAPI_DB_RW='pgapi_rw'"
        echo "export PGAPI_DB_RO='pgapi_ro'"
        echo "export PGAPI_RW_DSN=$(q "host=$HOST port=$BOUNCER_PORT dbname=pgapi_rw user=app")"
        echo "export PGAPI_RO_DSN=$(q "host=$HOST port=$BOUNCER_PORT dbname=pgapi_ro user=app")"
        if has_node replica2; then
            echo "export PGAPI_DB_RO2='pgapi_ro2'"
            echo "export PGAPI_RO2_DSN=$(q "host=$HOST port=$BOUNCER_PORT dbname=pgapi_ro2 user=app")"
        fi
        echo "export PGAPI_REDIS_URL=$(q "redis://$HOST:$REDIS_PORT/0")"
        echo "export PGAPI_REDIS_UNIX_SOCKET=$(q "$REDIS_SOCK")"
        # pgapi's [redis] username and password_file (the password itself is in neither file)
        echo "export PGAPI_REDIS_USERNAME='pgapi'"
        echo "export PGAPI_REDIS_PASSWORD_FILE=$(q "$REDIS_PWFILE")"
        echo "export PGPASSFILE=$(q "$PGPASS")"
    } >"$f.tmp"
    chmod 644 "$f.tmp"
    mv -f "$f.tmp" "$f"
}

write_roles() {
    local n
    {
        echo "# Written by scripts/topology.sh: the role of each data dir under $PGBASE (promote and rejoin change them)"
        echo "primary=$PRIMARY_NODE"
        echo "ro=$RO_NODE"
        echo "former=$FORMER_NODE"
        echo "nodes=${NODES[*]}"
        for n in "${NODES[@]}"; do echo "port_$n=${NODE_PORT[$n]}"; done
    } >"$ROLES_FILE.tmp"
    chmod 644 "$ROLES_FILE.tmp"
    mv -f "$ROLES_FILE.tmp" "$ROLES_FILE"
}

# Every file that follows from the roles, after a change of them (or on up).
save_state() {
    set_roles
    write_roles
    write_topology_env
    write_pgpass
}

prepare_dirs() { # [extra data dir names whose socket dir is needed]
    local n socks=()
    if [[ $PGBASE == "$FALLBACK_BASE" && -e $PGBASE ]]; then
        [[ ! -L $PGBASE ]] || die "$PGBASE is a symlink; refusing to use it"
        local owner
        owner=$(stat -c %U "$PGBASE")
        [[ $owner == "$PG_OS_USER" || $owner == root ]] || die "$PGBASE is owned by $owner; refusing to use it"
    fi
    for n in "${NODES[@]}" "$@"; do socks+=("${NODE_SOCK[$n]}"); done
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0755 "$PGBASE" "$PGLOG_DIR"
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0700 "$PGBASE/run" "${socks[@]}" "$BOUNCER_DIR"
    install -d -o "$REDIS_OS_USER" -g "$REDIS_OS_USER" -m 0700 "$REDIS_DIR"
}

# ---------------------------------------------------------------- PostgreSQL
# (pg_sql, pg_pid, ensure_roles: scripts/lib/common.sh)
node_sql() { # node SQL: pg_sql on that data dir's server, database postgres
    pg_sql "${NODE_PORT[$1]}" "${NODE_SOCK[$1]}" postgres "$2"
}

pg_conf() { # node -> pgapi.conf content on stdout (a replica streams from the current primary)
    local node=$1
    cat <<EOF
# Written by scripts/topology.sh (rewritten on start, promote and rejoin).
cluster_name = 'pgapi-$node'
listen_addresses = '$HOST'
port = ${NODE_PORT[$node]}
unix_socket_directories = '${NODE_SOCK[$node]}'
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
    if [[ $node != "$PRIMARY_NODE" ]]; then
        echo "primary_conninfo = 'host=$HOST port=$PRIMARY_PORT user=replicator password=$REPLICATOR_PASSWORD application_name=pgapi_$node connect_timeout=5'"
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

configure_cluster() { # node datadir
    local node=$1 data=$2
    pg_conf "$node" | pg_write "$data/pgapi.conf"
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

# Rewrite a data dir's pgapi.conf and, when it runs, make it re-read it (PG15 reloads
# primary_conninfo: the walreceiver reconnects, and recovery_target_timeline=latest follows a
# new primary's timeline).
reconfigure_pg() { # node
    local node=$1
    configure_cluster "$node" "${NODE_DATA[$node]}"
    if pg_pid "${NODE_DATA[$node]}" >/dev/null; then
        as_pg "$PGBIN/pg_ctl" -D "${NODE_DATA[$node]}" -s reload </dev/null >/dev/null 2>&1 \
            || fail_server "$(node_label "$node")" "${NODE_LOG[$node]}" "pg_ctl reload failed"
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
    configure_cluster "$PRIMARY_NODE" "$tmp"
    mv -- "$tmp" "$PRIMARY_DATA"
}

# A replica data dir from a base backup of the current primary. The backup goes to a temporary
# dir first: an existing data dir (a former primary being rejoined) is replaced only once the
# fresh copy is complete.
init_replica() { # node
    local node=$1 data=${NODE_DATA[$1]} tmp=${NODE_DATA[$1]}.init bblog=$PGLOG_DIR/basebackup-$1.log label
    label=$(node_label "$node")
    log "$label: pg_basebackup from the primary (port $PRIMARY_PORT) into $data"
    rm -rf -- "$tmp"
    if ! as_pg timeout -k 5 300 "$PGBIN/pg_basebackup" -h "$PRIMARY_SOCK" -p "$PRIMARY_PORT" -U postgres \
            -D "$tmp" -R -X stream -w -c fast -N </dev/null >"$bblog" 2>&1; then
        rm -rf -- "$tmp"
        fail_server "$label" "$bblog" "pg_basebackup from the primary failed"
    fi
    [[ -f $tmp/standby.signal ]] || as_pg touch "$tmp/standby.signal"
    configure_cluster "$node" "$tmp"
    if [[ -e $data ]]; then
        log "$label: replacing the old data dir $data"
        rm -rf -- "$data"
    fi
    mv -- "$tmp" "$data"
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

# A data dir with standby.signal starts as a replica, one without it as a primary: refuse to start
# one whose kind does not match its recorded role (above all, never a second primary). A running
# server is asked pg_is_in_recovery() instead.
check_node_kind() { # node
    local node=$1 data=${NODE_DATA[$1]} want=t got
    [[ $node != "$PRIMARY_NODE" ]] || want=f
    if pg_pid "$data" >/dev/null; then
        got=$(node_sql "$node" 'SELECT pg_is_in_recovery()' 2>/dev/null) || return 0
        [[ $got == "$want" ]] \
            || die "$(node_label "$node") runs with pg_is_in_recovery()=$got, but $ROLES_FILE says it is a $(node_role "$node") (primary: data dir $PRIMARY_NODE); was it promoted or started by hand? Fix that before running topology.sh again"
        return 0
    fi
    [[ -f $data/PG_VERSION ]] || return 0
    if [[ $want == f && -e $data/standby.signal ]]; then
        die "$(node_label "$node"): $data has a standby.signal, so it would start read-only; $ROLES_FILE says it is the primary"
    elif [[ $want == t && ! -e $data/standby.signal ]]; then
        die "$(node_label "$node"): $data has no standby.signal, so it would start as a second primary; refusing (was it promoted by hand? $ROLES_FILE says the primary is data dir $PRIMARY_NODE)"
    fi
}

start_pg() { # node
    local node=$1 data=${NODE_DATA[$1]} port=${NODE_PORT[$1]} sock=${NODE_SOCK[$1]} logf=${NODE_LOG[$1]} name pid stale
    name=$(node_label "$node")
    if pid=$(pg_pid "$data"); then
        if ! "$PGBIN/pg_isready" -q -U postgres -d postgres -h "$HOST" -p "$port" -t 3 </dev/null; then
            die "$name: already running (pid $pid) but not answering on $HOST:$port; if the port changed, run 'down' first (log: $logf)"
        fi
        log "$name: already running (pid $pid, port $port)"
        if (( PASSWORDS_CHANGED )); then
            log "$name: passwords changed, rewriting config and reloading"
            reconfigure_pg "$node"
        fi
        return 0
    fi
    check_node_kind "$node"
    if stale=$(read_pid "$data/postmaster.pid" 2>/dev/null); then
        log "$name: removing stale postmaster.pid (pid $stale is not this server)"
        rm -f -- "$data/postmaster.pid"
    elif [[ -e $data/postmaster.pid ]]; then
        log "$name: removing unreadable postmaster.pid"
        rm -f -- "$data/postmaster.pid"
    fi
    check_port_free "$name" "$port"
    # refresh config (ports/passwords/the primary may have changed since the last run)
    configure_cluster "$node" "$data"
    as_pg touch "$logf"
    log "$name: starting on $HOST:$port"
    if ! as_pg "$PGBIN/pg_ctl" -D "$data" -l "$logf" -w -t "$WAIT_SECS" -s start </dev/null >/dev/null 2>>"$logf.ctl"; then
        cat -- "$logf.ctl" >&2 2>/dev/null || true
        fail_server "$name" "$logf" "failed to start"
    fi
    rm -f -- "$logf.ctl"
    wait_pg_ready "$name" "$port" "$sock" "$logf"
}

wait_streaming() { # node: until the primary lists it as a streaming replica
    local node=$1 i n=0
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        n=$(node_sql "$PRIMARY_NODE" \
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgapi_$node' AND state = 'streaming'" 2>/dev/null) || n=0
        [[ $n -ge 1 ]] && return 0
        sleep 0.25
    done
    log_tail "$PRIMARY_LOG"
    fail_server "$(node_label "$node")" "${NODE_LOG[$node]}" "not streaming from the primary (port $PRIMARY_PORT) after ${WAIT_SECS}s (pg_stat_replication on the primary has no streaming 'pgapi_$node')"
}

stop_pg() { # node
    local node=$1 data=${NODE_DATA[$1]} logf=${NODE_LOG[$1]} name pid
    name=$(node_label "$node")
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

# After a clean (fast) shutdown the last WAL record of the old primary is its shutdown checkpoint
# (pg_controldata: "Latest checkpoint location"), and its walsenders sent everything up to it
# before they exited. The replica has all the old primary's transactions once it has replayed past
# that record. An old primary that crashed cannot be checked: whatever it had not sent is lost.
verify_caught_up() { # old-primary-node replica-node was-running(0|1)
    local old=$1 new=$2 ctl state ckpt got="" i
    ctl=$(as_pg "$PGBIN/pg_controldata" -D "${NODE_DATA[$old]}" 2>/dev/null) || ctl=""
    state=$(sed -n 's/^Database cluster state: *//p' <<<"$ctl")
    ckpt=$(sed -n 's/^Latest checkpoint location: *//p' <<<"$ctl")
    if [[ $state != "shut down" || ! $ckpt =~ ^[0-9A-F]+/[0-9A-F]+$ ]]; then
        (( ! $3 )) || die "promote: the old primary was stopped but not cleanly (pg_controldata: state '${state:-unknown}'), so nothing proves that $(node_label "$new") has all its WAL; not promoting. It is still the primary: 'scripts/topology.sh up $DIR' starts it again"
        log "promote: WARNING: the old primary did not shut down cleanly (pg_controldata: state '${state:-unknown}'), so nothing proves that $(node_label "$new") has all its WAL: what it had not sent is lost"
        return 0
    fi
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        got=$(node_sql "$new" "SELECT coalesce(pg_last_wal_receive_lsn()::text, 'none') || ' ' || coalesce(pg_last_wal_replay_lsn()::text, 'none') || ' ' || coalesce(pg_last_wal_replay_lsn() > '$ckpt'::pg_lsn, false)" 2>/dev/null) || got=""
        if [[ $got == *" true" ]]; then
            read -r got _ <<<"$got"
            log "promote: the old primary's shutdown checkpoint is at $ckpt; $(node_label "$new") received WAL up to $got and replayed past it: no transaction is lost"
            return 0
        fi
        sleep 0.25
    done
    die "promote: $(node_label "$new") has not replayed the old primary's shutdown checkpoint $ckpt after ${WAIT_SECS}s (receive/replay LSN: ${got:-?}); not promoting it. The old primary is stopped and still the primary: 'scripts/topology.sh up $DIR' starts it again"
}

wait_not_in_recovery() { # node
    local node=$1 i r=""
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        r=$(node_sql "$node" 'SELECT pg_is_in_recovery()' 2>/dev/null) || r=""
        [[ $r == f ]] && return 0
        sleep 0.25
    done
    fail_server "$(node_label "$node")" "${NODE_LOG[$node]}" "still in recovery ${WAIT_SECS}s after pg_ctl promote (pg_is_in_recovery(): ${r:-no answer})"
}

# ---------------------------------------------------------------- PgBouncer
# "database data-dir" lines: which server each PgBouncer database points at.
bouncer_targets() {
    echo "pgapi_rw $PRIMARY_NODE"
    echo "pgapi_ro $RO_NODE"
    if has_node replica2; then echo "pgapi_ro2 replica2"; fi
}

bouncer_ini() {
    local db node
    echo ";; Written by scripts/topology.sh (up, add-replica, promote and rejoin rewrite it and reload PgBouncer)."
    echo "[databases]"
    while read -r db node; do
        echo "$db = host=$HOST port=${NODE_PORT[$node]} dbname=pgapi"
    done < <(bouncer_targets)
    echo
    bouncer_settings
}

# Rewrite PgBouncer's files and, when they changed and it runs, reload it: RELOAD on the admin
# console (SIGHUP when the console does not answer, e.g. pgbadmin's password just changed). A
# database whose server changed gets new server connections; its clients keep theirs.
bouncer_apply() {
    local pid i want got
    write_bouncer_config
    (( BOUNCER_CHANGED )) || return 0
    pid=$(bouncer_pid) || return 0
    if bouncer_psql pgbouncer pgbadmin RELOAD >/dev/null 2>&1; then
        log "pgbouncer: configuration changed, reloaded (RELOAD on the admin console)"
    else
        log "pgbouncer: configuration changed, admin console RELOAD failed: sending SIGHUP to pid $pid"
        kill -HUP "$pid"
    fi
    want=$(bouncer_targets | while read -r db node; do echo "$db|${NODE_PORT[$node]}"; done | sort)
    for ((i = 0; i < WAIT_SECS * 4; i++)); do
        got=$(bouncer_psql pgbouncer pgbadmin 'SHOW DATABASES' 2>/dev/null | awk -F'|' '$1 ~ /^pgapi_/ {print $1 "|" $3}' | sort) || got=""
        [[ $got == "$want" ]] && return 0
        sleep 0.25
    done
    fail_server pgbouncer "$BOUNCER_LOG" "after the reload SHOW DATABASES lists '$(tr '\n' ' ' <<<"$got")', expected '$(tr '\n' ' ' <<<"$want")'"
}

# PAUSE a database for a switchover: PgBouncer waits for running transactions to end, closes its
# server connections and holds new queries of its clients (they wait instead of failing) until
# RESUME. bouncer_resume runs on exit too, so a failed switchover never leaves clients hanging.
bouncer_pause() { # db
    bouncer_pid >/dev/null || return 0
    BOUNCER_PAUSED=$1
    if bouncer_psql pgbouncer pgbadmin "PAUSE $1" >/dev/null 2>&1; then
        log "pgbouncer: $1 paused (its clients' queries wait for the new primary)"
    else
        log "pgbouncer: PAUSE $1 failed or did not finish within 20s (a long transaction?); going on: its clients may get errors"
    fi
}

bouncer_resume() {
    [[ -n $BOUNCER_PAUSED ]] || return 0
    if bouncer_psql pgbouncer pgbadmin "RESUME $BOUNCER_PAUSED" >/dev/null 2>&1; then
        log "pgbouncer: $BOUNCER_PAUSED resumed"
    else
        log "pgbouncer: RESUME $BOUNCER_PAUSED failed (log: $BOUNCER_LOG)"
    fi
    BOUNCER_PAUSED=""
}

# End-to-end: each PgBouncer database answers as app, from a primary (pgapi_rw) or a replica.
# A PgBouncer that saw a server down keeps refusing logins for server_login_retry: poll a while.
check_bouncer_databases() {
    local db node want r i
    [[ $(bouncer_psql pgbouncer pgbadmin 'SHOW VERSION' 2>&1 | head -n1) == *PgBouncer* ]] \
        || fail_server pgbouncer "$BOUNCER_LOG" "admin console (pgbadmin@pgbouncer) does not answer SHOW VERSION"
    while read -r db node; do
        want=t
        [[ $node != "$PRIMARY_NODE" ]] || want=f
        for ((i = 0; i < WAIT_SECS * 2; i++)); do
            r=$(bouncer_psql "$db" app 'SELECT pg_is_in_recovery()' 2>&1) || true
            [[ $r == "$want" ]] && break
            sleep 0.5
        done
        [[ $r == "$want" ]] || fail_server pgbouncer "$BOUNCER_LOG" "$db as app: expected pg_is_in_recovery()=$want, got: $r"
    done < <(bouncer_targets)
}

# ---------------------------------------------------------------- Redis
# redis-cli as the default (admin) user; the password goes through the environment, never argv.
redis_cli() {
    REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout -k 2 3 "$REDIS_CLI" --no-auth-warning -h "$HOST" -p "$REDIS_PORT" "$@" </dev/null
}

redis_ping() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }

# The whole configuration in a file only the redis user reads: the passwords are never in argv.
# The "pgapi" user has no admin or dangerous command (CONFIG, FLUSHALL, KEYS, DEBUG, ACL, ...) but INFO,
# read-only: pgapi compares the store's run_id with the one its deployment verified (a restarted or
# failed-over Redis lost fences: docs/consistency.md, "Several servers").
# noeviction: never evict a fence or a lease (a full Redis refuses writes: pgapi then reads PostgreSQL).
redis_conf() {
    cat <<EOF
# Written by scripts/topology.sh (mode 600, owned by $REDIS_OS_USER)
port $REDIS_PORT
bind $HOST
protected-mode yes
unixsocket $REDIS_SOCK
unixsocketperm 700
daemonize yes
pidfile $REDIS_PID
logfile $REDIS_LOG
dir $REDIS_DIR
save ""
appendonly no
maxmemory $REDIS_MAXMEMORY
maxmemory-policy noeviction
user default on >$REDIS_ADMIN_PASSWORD ~* &* +@all
user pgapi on >$REDIS_PASSWORD ~* &* +@all -@admin -@dangerous +info
EOF
}

# Writes redis.conf as the redis user; 0 when it changed (a running Redis must be restarted to use it).
write_redis_conf() {
    local want
    want=$(redis_conf)
    if [[ -f $REDIS_CONF && $(stat -c %U "$REDIS_CONF") == "$REDIS_OS_USER" && $(cat -- "$REDIS_CONF") == "$want" ]]; then
        return 1
    fi
    # shellcheck disable=SC2016  # $1 is expanded by the inner sh
    printf '%s\n' "$want" | (cd / && runuser -u "$REDIS_OS_USER" -- sh -c 'umask 077 && cat >"$1.tmp" && mv -f "$1.tmp" "$1"' sh "$REDIS_CONF")
}

start_redis() {
    local pid i conf_changed=0 owner
    if write_redis_conf; then conf_changed=1; fi
    if pid=$(redis_pid); then
        owner=$(stat -c %U "/proc/$pid")
        if [[ $owner != "$REDIS_OS_USER" ]] || (( conf_changed )); then
            log "redis: running (pid $pid, user $owner) without the current redis.conf (user $REDIS_OS_USER, passwords, maxmemory): restarting it"
            stop_redis
        else
            redis_ping || die "redis: running (pid $pid) but not answering PING on $HOST:$REDIS_PORT; if the port changed, run 'down' first (log: $REDIS_LOG)"
            log "redis: already running (pid $pid, port $REDIS_PORT)"
            return 0
        fi
    fi
    if [[ -e $REDIS_PID ]]; then
        log "redis: removing stale pid file"
        rm -f -- "$REDIS_PID"
    fi
    check_port_free redis "$REDIS_PORT"
    if [[ -e $REDIS_LOG && $(stat -c %U "$REDIS_LOG") != "$REDIS_OS_USER" ]]; then
        log "redis: $REDIS_LOG is from a Redis that ran as $(stat -c %U "$REDIS_LOG") (an older topology.sh): removing it"
        rm -f -- "$REDIS_LOG"
    fi
    (cd / && runuser -u "$REDIS_OS_USER" -- test -r "$REDIS_CONF") \
        || die "redis: user $REDIS_OS_USER cannot read $REDIS_CONF (is a parent of $REDIS_DIR out of its reach?)"
    log "redis: starting on $HOST:$REDIS_PORT and $REDIS_SOCK as user $REDIS_OS_USER (maxmemory $REDIS_MAXMEMORY, noeviction)"
    if ! (cd "$REDIS_DIR" && close_fds && runuser -u "$REDIS_OS_USER" -- timeout -k 5 30 "$REDIS_BIN" "$REDIS_CONF" \
            </dev/null >/dev/null 2>"$REDIS_DIR/redis.start.log"); then
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
require_topology() {
    [[ -e $DIR/$MARKER ]] || die "no topology in $DIR (no $MARKER): run 'scripts/topology.sh up $DIR' first"
}

require_running() { # what: the primary (and PgBouncer) must run for add-replica, promote, rejoin
    pg_pid "$PRIMARY_DATA" >/dev/null \
        || die "$1: the primary (data dir $PRIMARY_NODE, port $PRIMARY_PORT) is not running: run 'scripts/topology.sh up $DIR' first"
    bouncer_pid >/dev/null || die "$1: pgbouncer is not running: run 'scripts/topology.sh up $DIR' first"
}

# The former primary must stay stopped: running next to the current primary it would take writes
# that nobody reads (split brain).
check_former() {
    local pid
    [[ -n $FORMER_NODE ]] || return 0
    if pid=$(pg_pid "${NODE_DATA[$FORMER_NODE]}"); then
        die "the former primary (data dir $FORMER_NODE, port ${NODE_PORT[$FORMER_NODE]}) is running (pid $pid) although data dir $PRIMARY_NODE is the primary now; stop it ('scripts/topology.sh down $DIR' stops everything) and rebuild it with 'rejoin'"
    fi
    log "former primary (data dir $FORMER_NODE, port ${NODE_PORT[$FORMER_NODE]}) stays stopped: 'scripts/topology.sh rejoin $DIR' rebuilds it as a replica"
}

# One line for the servers: primary :port (data dir), replicas, PgBouncer databases.
summary() {
    local n s="primary :$PRIMARY_PORT (data dir $PRIMARY_NODE)"
    for n in "${REPLICAS[@]}"; do s+=", $(node_role "$n") :${NODE_PORT[$n]} (data dir $n)"; done
    s+=", pgbouncer :$BOUNCER_PORT ($(bouncer_targets | while read -r db n; do printf '%s->%s ' "$db" "$n"; done | sed 's/ $//'))"
    printf '%s\n' "$s"
}

cmd_up() {
    local n
    [[ -x $PGBIN/initdb ]] || die "PostgreSQL 15 not found in $PGBIN: run scripts/deps.sh"
    [[ -x $PGBOUNCER_BIN ]] || die "pgbouncer not found: run scripts/deps.sh"
    [[ -x $REDIS_BIN ]] || die "redis-server not found: run scripts/deps.sh"
    load_secrets
    prepare_dirs
    save_state
    log "state dir $DIR (postgres data under $PGBASE)"

    # fail fast, before starting anything, if a port we need is taken by a stranger, a data dir
    # is of the wrong kind for its role, or the former primary runs
    for n in "$PRIMARY_NODE" "${REPLICAS[@]}"; do
        pg_pid "${NODE_DATA[$n]}" >/dev/null || check_port_free "$(node_label "$n")" "${NODE_PORT[$n]}"
        check_node_kind "$n"
    done
    bouncer_pid >/dev/null || check_port_free pgbouncer "$BOUNCER_PORT"
    redis_pid >/dev/null || check_port_free redis "$REDIS_PORT"
    check_former

    if [[ ! -f $PRIMARY_DATA/PG_VERSION ]]; then
        roles_as_created || die "the primary's data dir $PRIMARY_DATA has no cluster; refusing to create an empty primary in place of a promoted one"
        init_primary
    fi
    start_pg "$PRIMARY_NODE"
    ensure_roles

    for n in "${REPLICAS[@]}"; do
        [[ -f ${NODE_DATA[$n]}/PG_VERSION ]] || init_replica "$n"
        start_pg "$n"
    done
    for n in "${REPLICAS[@]}"; do wait_streaming "$n"; done

    start_bouncer
    start_redis
    check_bouncer_databases
    log "up: $(summary), redis :$REDIS_PORT"
    log "env: . $DIR/topology.env"
}

cmd_down() {
    local n
    if [[ ! -d $DIR ]]; then
        log "no state dir $DIR: nothing to stop"
        if (( PURGE )) && [[ -d $FALLBACK_BASE && ! -L $FALLBACK_BASE ]]; then
            log "purging $FALLBACK_BASE"
            rm -rf -- "$FALLBACK_BASE"
        fi
        return 0
    fi
    stop_bouncer
    # the replicas (and a former primary someone started) before the primary
    for n in "${NODES[@]}"; do
        [[ $n == "$PRIMARY_NODE" ]] || stop_pg "$n"
    done
    stop_pg "$PRIMARY_NODE"
    stop_redis
    if (( PURGE )); then
        if [[ ! -e $DIR/$MARKER ]]; then
            die "not purging $DIR: it has no $MARKER marker, so it does not look like a topology state dir"
        fi
        for n in "${NODES[@]}"; do
            ! pg_pid "${NODE_DATA[$n]}" >/dev/null || die "not purging $DIR: $(node_label "$n") is still running"
        done
        if bouncer_pid >/dev/null || redis_pid >/dev/null; then
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
    local n pid rc=0 info role db node dbs
    # the primary, its replicas, then a former primary
    for n in "$PRIMARY_NODE" "${REPLICAS[@]}" ${FORMER_NODE:+"$FORMER_NODE"}; do
        role=$(node_role "$n")
        dbs=$(bouncer_targets | while read -r db node; do [[ $node != "$n" ]] || printf '%s,' "$db"; done)
        dbs=${dbs%,}
        if pid=$(pg_pid "${NODE_DATA[$n]}"); then
            info=$(node_sql "$n" \
                "SELECT 'in_recovery=' || pg_is_in_recovery() || CASE WHEN pg_is_in_recovery() THEN ' replay_lsn=' || coalesce(pg_last_wal_replay_lsn()::text, 'none') ELSE ' wal_lsn=' || pg_current_wal_lsn() || ' replicas_streaming=' || (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming') END" 2>/dev/null) \
                || info="(not answering)"
            printf '%-9s running pid=%s port=%s data=%s pgbouncer=%s %s\n' "$role" "$pid" "${NODE_PORT[$n]}" "$n" "${dbs:--}" "$info"
            [[ $role != former ]] || rc=3
        else
            printf '%-9s stopped port=%s data=%s pgbouncer=%s\n' "$role" "${NODE_PORT[$n]}" "$n" "${dbs:--}"
            [[ $role == former ]] || rc=3
        fi
    done
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

cmd_add_replica() {
    local node=replica2 sock
    require_running add-replica
    load_secrets
    if has_node "$node"; then
        log "$(node_label "$node"): already part of the topology (data dir ${NODE_DATA[$node]}, port ${NODE_PORT[$node]})"
    else
        sock=${NODE_SOCK[$node]}/.s.PGSQL.${NODE_PORT[$node]}
        (( ${#sock} <= 107 )) || die "add-replica: the unix socket path $sock is too long (over 107 bytes); use a shorter state dir"
        [[ ! -e ${NODE_DATA[$node]} ]] \
            || die "add-replica: ${NODE_DATA[$node]} exists but $ROLES_FILE does not list it (a failed add-replica?); remove it and run add-replica again"
        check_port_free "$node" "${NODE_PORT[$node]}"
        prepare_dirs "$node"
        init_replica "$node"
        NODES+=("$node")
        # pgapi_ro reads from a replica when there is one
        [[ $RO_NODE != "$PRIMARY_NODE" ]] || RO_NODE=$node
        save_state
    fi
    start_pg "$node"
    [[ $node == "$PRIMARY_NODE" ]] || wait_streaming "$node"
    bouncer_apply
    check_bouncer_databases
    log "add-replica: $(summary)"
}

cmd_promote() {
    local old=$PRIMARY_NODE new=$RO_NODE was_running=0 n
    [[ $new != "$old" ]] \
        || die "promote: no replica to promote: pgapi_ro reads from the primary itself (data dir $old); add one with 'add-replica' or 'rejoin' first"
    pg_pid "${NODE_DATA[$new]}" >/dev/null \
        || die "promote: $(node_label "$new") is not running: start it with 'scripts/topology.sh up $DIR' first"
    [[ $(node_sql "$new" 'SELECT pg_is_in_recovery()' 2>/dev/null) == t ]] \
        || die "promote: $(node_label "$new") does not answer as a replica (pg_is_in_recovery() is not true); not promoting it"
    load_secrets
    trap bouncer_resume EXIT
    bouncer_pause pgapi_rw
    if pg_pid "$PRIMARY_DATA" >/dev/null; then
        was_running=1
        log "promote: stopping the old primary (fast shutdown: its walsenders send all its WAL to the replicas first)"
        stop_pg "$old"
        ! pg_pid "$PRIMARY_DATA" >/dev/null || die "promote: the old primary still runs; not promoting (that would make two primaries)"
    else
        log "promote: the old primary (data dir $old, port $PRIMARY_PORT) is not running"
    fi
    verify_caught_up "$old" "$new" "$was_running"

    log "promote: promoting $(node_label "$new") on port ${NODE_PORT[$new]}"
    as_pg "$PGBIN/pg_ctl" -D "${NODE_DATA[$new]}" -w -t "$WAIT_SECS" -s promote </dev/null >/dev/null 2>&1 \
        || fail_server "$(node_label "$new")" "${NODE_LOG[$new]}" "pg_ctl promote failed; the old primary is stopped: look at the log before starting anything"
    wait_not_in_recovery "$new"

    # The roles change now: from here on up/down/status know the new primary, and up never
    # starts the old one. pgapi_ro reads from a remaining replica, else from the new primary.
    FORMER_NODE=$old PRIMARY_NODE=$new RO_NODE=$new
    for n in "${NODES[@]}"; do
        if [[ $n != "$new" && $n != "$old" ]]; then RO_NODE=$n; break; fi
    done
    save_state
    log "promote: data dir $new is the primary now; roles recorded in $ROLES_FILE"

    # the new primary's config loses primary_conninfo; the other replicas follow it
    for n in "$new" "${REPLICAS[@]}"; do reconfigure_pg "$n"; done
    for n in "${REPLICAS[@]}"; do
        if pg_pid "${NODE_DATA[$n]}" >/dev/null; then
            wait_streaming "$n"
            log "promote: $(node_label "$n") streams from the new primary"
        fi
    done
    bouncer_apply
    bouncer_resume
    trap - EXIT
    if bouncer_pid >/dev/null; then check_bouncer_databases; fi
    log "promote: $(summary)"
    log "promote: the old primary (data dir $old, port ${NODE_PORT[$old]}) stays stopped; 'scripts/topology.sh rejoin $DIR' rebuilds it as a replica"
}

cmd_rejoin() {
    local node=$FORMER_NODE
    [[ -n $node ]] || die "rejoin: no former primary to rejoin ($ROLES_FILE records none; the primary is data dir $PRIMARY_NODE)"
    require_running rejoin
    load_secrets
    if pg_pid "${NODE_DATA[$node]}" >/dev/null; then
        log "rejoin: the former primary is running although data dir $PRIMARY_NODE is the primary: stopping it"
        stop_pg "$node"
    fi
    prepare_dirs
    init_replica "$node"
    FORMER_NODE="" RO_NODE=$node
    save_state
    start_pg "$node"
    wait_streaming "$node"
    bouncer_apply
    check_bouncer_databases
    log "rejoin: data dir $node (port ${NODE_PORT[$node]}) streams from the primary (data dir $PRIMARY_NODE); pgapi_ro reads from it"
    log "rejoin: $(summary)"
}

cmd_psql() { # rw|ro|ro2
    [[ -f $PGPASS ]] || die "no $PGPASS: run 'scripts/topology.sh up $DIR' first"
    [[ $1 != ro2 ]] || has_node replica2 || die "no replica2 in $DIR: run 'scripts/topology.sh add-replica $DIR' first"
    export PGPASSFILE=$PGPASS
    exec "$PGBIN/psql" -h "$HOST" -p "$BOUNCER_PORT" -U app -d "pgapi_$1" "${PSQL_ARGS[@]}"
}

case $CMD in
    up) lock_state; claim_dir; load_settings; setup_paths; cmd_up ;;
    down) lock_state; load_settings; setup_paths; cmd_down ;;
    status) load_settings; setup_paths; cmd_status ;;
    add-replica) require_topology; lock_state; load_settings; setup_paths; cmd_add_replica ;;
    promote) require_topology; lock_state; load_settings; setup_paths; cmd_promote ;;
    rejoin) require_topology; lock_state; load_settings; setup_paths; cmd_rejoin ;;
    psql-primary) load_settings; setup_paths; cmd_psql rw ;;
    psql-replica) load_settings; setup_paths; cmd_psql ro ;;
    psql-replica2) load_settings; setup_paths; cmd_psql ro2 ;;
esac
