# shellcheck shell=bash disable=SC2034  # the variables here are the sourcing scripts'
# Shell helpers shared by scripts/topology.sh (the simple topology) and scripts/ha.sh (the HA one):
# process identity and stopping by PID, running things as the postgres user, secrets, the pgapi roles and
# database, PgBouncer. Sourced, never run; the sourcing script sets PROG (its name, for messages and
# "scripts/$PROG.sh down"), DIR (its state dir) and PORT_HINT (the env variables that choose its ports).

PGBIN=${PGAPI_PGBIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=postgres
REDIS_OS_USER=redis
HOST=127.0.0.1
WAIT_SECS=${PGAPI_WAIT_SECS:-30}
PASSWORDS_CHANGED=0
BOUNCER_CHANGED=0
# the passwords load_secrets keeps in DIR/secrets.env (a script may add its own)
SECRET_NAMES=(APP_PASSWORD REPLICATOR_PASSWORD PGBADMIN_PASSWORD POSTGRES_PASSWORD REDIS_PASSWORD REDIS_ADMIN_PASSWORD)
PGBOUNCER_BIN=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
REDIS_BIN=$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)
REDIS_CLI=$(command -v redis-cli 2>/dev/null || echo /usr/bin/redis-cli)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Libpq environment from the caller must not leak into our own client calls.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSERVICEFILE PGOPTIONS PGAPPNAME PGSSLMODE PGTARGETSESSIONATTRS PGDATA \
      PGREQUIRESSL PGCHANNELBINDING PGREQUIREAUTH 2>/dev/null || true
export PGCONNECT_TIMEOUT=5

# Root only, with the system users the servers run as; sets PG_HOME.
require_root_and_users() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (PostgreSQL and PgBouncer are run as the '$PG_OS_USER' user via runuser)"
    id -u "$PG_OS_USER" >/dev/null 2>&1 || die "system user '$PG_OS_USER' is missing: run scripts/deps.sh"
    id -u "$REDIS_OS_USER" >/dev/null 2>&1 || die "system user '$REDIS_OS_USER' is missing: run scripts/deps.sh"
    PG_HOME=$(getent passwd "$PG_OS_USER" | cut -d: -f6)
    [[ -n $PG_HOME ]] || PG_HOME=/
}

# check_dir_trusted FILE...: root sources a state dir's env file and trusts its other state files
# (FILE..., names in $DIR): another user who owns DIR (or a parent, or can write to one) could plant
# commands there. Sticky parents such as /tmp are fine.
check_dir_trusted() {
    local d=$DIR f owner mode
    [[ -e $DIR ]] || return 0
    [[ -d $DIR && ! -L $DIR ]] || die "state dir $DIR is not a directory"
    while :; do
        read -r owner mode < <(stat -c '%u %a' -- "$d")
        [[ $owner == 0 ]] || die "refusing state dir $DIR: $d is owned by uid $owner, not root (its env file is sourced as root)"
        if (( 8#$mode & 8#022 )) && { [[ $d == "$DIR" ]] || ! (( 8#$mode & 8#1000 )); }; then
            die "refusing state dir $DIR: $d (mode $mode) is writable by group or other"
        fi
        [[ $d != / ]] || break
        d=$(dirname -- "$d")
    done
    for f in "$@"; do
        [[ -e $DIR/$f || -L $DIR/$f ]] || continue
        [[ -f $DIR/$f && ! -L $DIR/$f ]] || die "refusing state dir $DIR: $DIR/$f is not a regular file"
        read -r owner mode < <(stat -c '%u %a' -- "$DIR/$f")
        [[ $owner == 0 ]] || die "refusing state dir $DIR: $DIR/$f is owned by uid $owner, not root"
        ! (( 8#$mode & 8#022 )) || die "refusing state dir $DIR: $DIR/$f (mode $mode) is writable by group or other"
    done
}

# ---------------------------------------------------------------- processes and files
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
Pick other ports ($PORT_HINT) or stop it."
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
    die "$1: $3 (log: $2). Run 'scripts/$PROG.sh down $DIR' to stop what was started."
}

rand_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
q() { # single-quote for sh
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# stop_pid NAME PID: SIGTERM, then SIGKILL after 10 s; 0 once it is gone.
stop_pid() {
    local name=$1 pid=$2
    pid_alive "$pid" || return 0
    log "$name: stopping (pid $pid, SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 && return 0
    log "$name: still alive after SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "$name: pid $pid does not die"
}

# ---------------------------------------------------------------- secrets
# load_secrets: the passwords named in SECRET_NAMES from DIR/secrets.env (KEY=hex lines, mode 600), each
# missing one generated; sets a shell variable of each name and writes REDIS_PASSWORD alone to
# $REDIS_PWFILE (pgapi's [redis] password_file).
load_secrets() {
    local f=$DIR/secrets.env k v changed=0
    declare -A got=()
    if [[ -f $f ]]; then
        while IFS='=' read -r k v; do
            [[ $v =~ ^[0-9a-f]{16,}$ ]] || continue
            [[ " ${SECRET_NAMES[*]} " != *" $k "* ]] || got[$k]=$v
        done <"$f"
    fi
    for k in "${SECRET_NAMES[@]}"; do
        if [[ -z ${got[$k]:-} ]]; then got[$k]=$(rand_hex); changed=1; fi
        printf -v "$k" '%s' "${got[$k]}"
    done
    if (( changed )); then
        (umask 077 && for k in "${SECRET_NAMES[@]}"; do printf '%s=%s\n' "$k" "${got[$k]}"; done >"$f.tmp")
        mv -f "$f.tmp" "$f"
    fi
    chown root:root "$f"
    chmod 600 "$f"
    (umask 077 && printf '%s\n' "$REDIS_PASSWORD" >"$REDIS_PWFILE.tmp")
    mv -f "$REDIS_PWFILE.tmp" "$REDIS_PWFILE"
}

# ---------------------------------------------------------------- PostgreSQL
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

# Check a role's password over TCP with scram (as the clients will). The password goes through
# psql's environment (readable by root only), never its argv (readable by every local user).
role_login_ok() { # role password
    PGPASSWORD=$2 timeout -k 5 20 "$PGBIN/psql" -X -w -q -At -h "$HOST" -p "$PRIMARY_PORT" \
        -U "$1" -d postgres -c 'SELECT 1' </dev/null >/dev/null 2>&1
}

# The pgapi roles (app, replicator, pgbadmin) and database on the primary ($PRIMARY_PORT over
# $PRIMARY_SOCK, log $PRIMARY_LOG), with the passwords of DIR/secrets.env.
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
    # pgapi's replica check reads pg_stat_wal_receiver's status (is the standby streaming, or only retrying
    # a primary whose history it diverged from?): without pg_read_all_stats it sees only the pid.
    pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres "GRANT pg_read_all_stats TO app" >/dev/null \
        || fail_server primary "$PRIMARY_LOG" "cannot grant pg_read_all_stats to the app role"
    role_login_ok app "$APP_PASSWORD" \
        || fail_server primary "$PRIMARY_LOG" "role app cannot log in over TCP with its password"
}

# ---------------------------------------------------------------- PgBouncer
# The sourcing script sets BOUNCER_DIR/_INI/_AUTH/_PID/_LOG, BOUNCER_PORT, PGLOG_DIR, PGPASS and defines
# bouncer_ini (the whole ini: its [databases], then bouncer_settings) and bouncer_apply (rewrite the
# files and reload a running PgBouncer).
bouncer_pid() {
    local pid
    pid=$(read_pid "$BOUNCER_PID") || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f "$PGBOUNCER_BIN")" ]] || return 1
    [[ " $(proc_cmdline "$pid") " == *" $BOUNCER_INI "* ]] || return 1
    printf '%s\n' "$pid"
}

# The [pgbouncer] section both topologies share.
bouncer_settings() {
    cat <<EOF
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

# Write a PgBouncer file (as postgres) when its content differs; BOUNCER_CHANGED=1 then.
bouncer_put() { # path content
    if [[ ! -f $1 || $(cat -- "$1") != "$2" ]]; then
        printf '%s\n' "$2" | pg_write "$1"
        BOUNCER_CHANGED=1
    fi
}

write_bouncer_config() {
    local auth
    auth=$(pg_sql "$PRIMARY_PORT" "$PRIMARY_SOCK" postgres \
        "SELECT '\"' || replace(rolname, '\"', '\"\"') || '\" \"' || replace(rolpassword, '\"', '\"\"') || '\"' FROM pg_authid WHERE rolname IN ('app', 'pgbadmin') AND rolpassword IS NOT NULL ORDER BY rolname") \
        || fail_server primary "$PRIMARY_LOG" "cannot read pg_authid for the PgBouncer auth_file"
    [[ $(grep -c 'SCRAM-SHA-256' <<<"$auth") -eq 2 ]] \
        || die "pgbouncer: expected SCRAM secrets for app and pgbadmin in pg_authid, got: $(cut -c1-20 <<<"$auth" | tr '\n' ' ')"
    BOUNCER_CHANGED=0
    bouncer_put "$BOUNCER_AUTH" "$auth"
    bouncer_put "$BOUNCER_INI" "$(bouncer_ini)"
}

bouncer_psql() { # db user sql
    env PGPASSFILE="$PGPASS" timeout -k 5 20 "$PGBIN/psql" -X -w -q -At -h "$HOST" -p "$BOUNCER_PORT" \
        -U "$2" -d "$1" -c "$3" </dev/null
}

start_bouncer() {
    local pid stale i startlog=$PGLOG_DIR/pgbouncer.start.log
    if pid=$(bouncer_pid); then
        log "pgbouncer: already running (pid $pid, port $BOUNCER_PORT)"
        bouncer_apply
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

# `down [--purge] [DIR]`'s arguments: sets PURGE and DIR_ARG; anything else is the caller's usage().
down_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --purge) PURGE=1 ;;
            -*) usage ;;
            *) [[ -z $DIR_ARG ]] || usage; DIR_ARG=$1 ;;
        esac
        shift
    done
}
