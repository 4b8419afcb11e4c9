#!/usr/bin/env bash
# The high-availability pgapi topology, from Debian's packages, on loopback: a single-node etcd, three
# PostgreSQL 15 nodes run by Patroni, HAProxy in front of them (checking Patroni's REST API), PgBouncer
# in front of HAProxy, and Redis (a master, a replica) watched by three Sentinels. The simple topology
# (scripts/topology.sh) stays the default of `make run`; this one sits next to it.
#
# Usage: scripts/ha.sh COMMAND [DIR]
#   up                start (and on first use create) everything, wait for a Leader, a Sync Standby and a
#                     Replica (with PGAPI_HA_SYNC=off: two Replicas), all streaming, and HAProxy's checks
#                     agreeing; re-running starts only what is not running (a killed Patroni, Redis, ...)
#   down [--purge]    stop exactly what this topology started, by PID; --purge also deletes the state
#   status            `patronictl list`, each process, and each Sentinel's view (exit 3 when one is stopped)
#   haproxy-restart   stop HAProxy and start it again (its server states are saved and loaded across)
#   patronictl [--] ARGS...   patronictl with this topology's configuration (list, switchover, ...)
#
# DIR: argument, else $PGAPI_HA_STATE_DIR, else <repo>/var-ha.
# Ports: PGAPI_HA_PORT_BASE (default 16000; then the one recorded in DIR/ha.env), B below:
#   B+0 etcd client   B+1 etcd peer
#   B+2..4   PostgreSQL node1..node3          B+5..7 Patroni REST API of node1..node3
#   B+8  HAProxy read-write (GET /primary)    B+9  HAProxy read-only, every replica (GET /replica?lag=)
#   B+10..12 HAProxy read-only of node1..node3 alone (GET /replica?lag=, one server each)
#   B+13 PgBouncer: pgapi_rw -> B+8, pgapi_ro -> B+9, pgapi_ro1..3 -> B+10..12 (database pgapi)
#   B+14 Redis "r1" (the first master)        B+15 Redis "r2" (the first replica)
#   B+16..18 Redis Sentinels s1..s3 (master name "pgapi", quorum 2)
# Other env: PGAPI_HA_SYNC=on|off (Patroni's synchronous_mode at bootstrap, default on; `up` applies a
#   change to a running cluster), PGAPI_HA_REPLICA_LAG (bytes, default 16777216: the read-only checks'
#   lag=), PGAPI_WAIT_SECS (default 60), PGAPI_PURGE=1 (same as down --purge).
#
# Timings: Patroni ttl 10 s, loop_wait 1 s, retry_timeout 4 s (loop_wait + 2 * retry_timeout <= ttl:
# a leader lost is replaced after about ttl); HAProxy checks every 500 ms (250 ms while changing state,
# fall 2, rise 2, so a server is taken out within about a second); Sentinel down-after-milliseconds
# 1000, failover-timeout 5000.
#
# pgapi reads every [database] replica line's replay position apart, so each replica line must reach one
# server: DIR/pgapi.ini lists pgapi_ro1..3 (one node each), not the shared pgapi_ro (for other clients).
#
# Files written in DIR (root's, mode 600 unless said):
#   ha.env         (644) sourceable `export PGAPI_HA_...='value'` lines: ports, pid files, paths, DSNs,
#                  PGPASSFILE (no secret)
#   pgapi.ini      a pgapi configuration for this topology: `pgapi --config DIR/pgapi.ini` (the DSNs name
#                  DIR/pgpass, the Redis password is read from DIR/redis.password)
#   secrets.env    the passwords (APP, REPLICATOR, PGBADMIN, POSTGRES, REDIS (pgapi's), REDIS_ADMIN
#                  (Redis's default user), REDIS_REPLICA, REDIS_SENTINEL, PATRONI_REST)
#   redis.password REDIS_PASSWORD alone ([redis] password_file); pgpass: libpq passfile for app/pgbadmin
#   patronictl.yml patronictl's configuration (scope, etcd, the REST API's user)
#   pids/          pid files of etcd, each Patroni and HAProxy (recorded by this script as it starts them)
#   haproxy/       haproxy.cfg, its admin socket haproxy.sock (`show stat`), server-state, haproxy.log
#   redis/         owned by the redis user: r1/ r2/ (redis.conf, pid, log) and s1/ s2/ s3/ (sentinel.conf,
#                  which Sentinel rewrites, pid, log)
#   pgdata.path    where the postgres-owned part lives (DIR/pg, or /var/tmp/pgapi-ha-<hash> when the
#                  postgres user cannot reach DIR): etcd/, node1..3/ (data dirs), run/nodeN (sockets),
#                  patroni/nodeN.yml (mode 600: the superuser and replication passwords), log/ (etcd,
#                  patroni-nodeN, postgresql-nodeN, pgbouncer), pgbouncer/
# No password is ever on a command line. DIR, its parents and its state files must be root's and not
# writable by group or other: ha.env is sourced as root.
set -euo pipefail

PROG=ha
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PORT_HINT="PGAPI_HA_PORT_BASE"
# shellcheck source=scripts/lib/common.sh
. "$REPO_ROOT/scripts/lib/common.sh"
WAIT_SECS=${PGAPI_WAIT_SECS:-60}
MARKER=.pgapi-ha
SECRET_NAMES+=(REDIS_REPLICA_PASSWORD REDIS_SENTINEL_PASSWORD PATRONI_REST_PASSWORD)
NODES=(node1 node2 node3)
REDIS_NODES=(r1 r2)
SENTINELS=(s1 s2 s3)
MASTER_NAME=pgapi
SCOPE=pgapi
REDIS_MAXMEMORY=${PGAPI_REDIS_MAXMEMORY:-512mb}
ETCD_BIN=$(command -v etcd 2>/dev/null || echo /usr/bin/etcd)
PATRONI_BIN=$(command -v patroni 2>/dev/null || echo /usr/bin/patroni)
PATRONICTL_BIN=$(command -v patronictl 2>/dev/null || echo /usr/bin/patronictl)
HAPROXY_BIN=$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)
SENTINEL_BIN=$(command -v redis-sentinel 2>/dev/null || echo /usr/bin/redis-sentinel)

# The usage is the comment at the top of this file: commands, ports, timings and files.
usage() {
    sed -n '2,/^set -euo pipefail/{/^set /d; s/^# \{0,1\}//; p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[[ -n $CMD ]] || usage
shift
PURGE=${PGAPI_PURGE:-0}
DIR_ARG=""
CTL_ARGS=()
case $CMD in
    up|status|haproxy-restart)
        [[ $# -le 1 ]] || usage
        DIR_ARG=${1:-}
        ;;
    down) down_args "$@" ;;
    patronictl)
        if [[ $# -gt 0 && $1 != -* ]]; then DIR_ARG=$1; shift; fi
        if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
        CTL_ARGS=("$@")
        ;;
    -h|--help|help|*) usage ;;
esac
[[ $PURGE == 1 || $PURGE == 0 ]] || PURGE=1
if ! [[ $WAIT_SECS =~ ^[1-9][0-9]*$ ]]; then WAIT_SECS=60; fi

require_root_and_users
DIR=${DIR_ARG:-${PGAPI_HA_STATE_DIR:-$REPO_ROOT/var-ha}}
if [[ $CMD == up ]]; then
    mkdir -p -- "$DIR" || die "cannot create state dir $DIR"
fi
if [[ -d $DIR ]]; then DIR=$(cd -- "$DIR" && pwd -P); else DIR=$(realpath -m -- "$DIR"); fi
[[ $DIR != / ]] || die "refusing to use / as the state dir"
check_dir_trusted ha.env pgapi.ini secrets.env redis.password pgpass pgdata.path patronictl.yml

# ---------------------------------------------------------------- settings and paths
recorded() { # KEY -> value from DIR/ha.env (read, never sourced here)
    [[ -f $DIR/ha.env ]] || return 0
    sed -n "s/^export $1='\\(.*\\)'\$/\\1/p" "$DIR/ha.env" | head -n 1
}

declare -A PG_PORT=() REST_PORT=() RO_PORT=() REDIS_PORT=() SENTINEL_PORT=()
declare -A NODE_DATA=() NODE_SOCK=() NODE_LOG=() PATRONI_YML=() PATRONI_LOG=() PATRONI_PIDF=()

load_settings() {
    local i
    BASE=${PGAPI_HA_PORT_BASE:-$(recorded PGAPI_HA_PORT_BASE)}
    BASE=${BASE:-16000}
    if ! [[ $BASE =~ ^[0-9]+$ ]] || (( BASE < 1 || BASE + 19 > 65535 )); then die "invalid PGAPI_HA_PORT_BASE '$BASE'"; fi
    SYNC=${PGAPI_HA_SYNC:-$(recorded PGAPI_HA_SYNC)}
    SYNC=${SYNC:-on}
    [[ $SYNC == on || $SYNC == off ]] || die "PGAPI_HA_SYNC must be on or off, not '$SYNC'"
    LAG=${PGAPI_HA_REPLICA_LAG:-$(recorded PGAPI_HA_REPLICA_LAG)}
    LAG=${LAG:-16777216}
    [[ $LAG =~ ^[0-9]+$ ]] || die "PGAPI_HA_REPLICA_LAG must be a number of bytes, not '$LAG'"
    ETCD_PORT=$BASE ETCD_PEER_PORT=$((BASE + 1))
    for i in 1 2 3; do
        PG_PORT[node$i]=$((BASE + 1 + i))
        REST_PORT[node$i]=$((BASE + 4 + i))
        RO_PORT[node$i]=$((BASE + 9 + i))
        SENTINEL_PORT[s$i]=$((BASE + 15 + i))
    done
    HAPROXY_RW_PORT=$((BASE + 8)) HAPROXY_RO_PORT=$((BASE + 9))
    BOUNCER_PORT=$((BASE + 13))
    REDIS_PORT[r1]=$((BASE + 14)) REDIS_PORT[r2]=$((BASE + 15))
}

FALLBACK_BASE=/var/tmp/pgapi-ha-$(printf '%s' "$DIR" | sha256sum | cut -c1-8)

choose_pgbase() {
    local longest
    if [[ -f $DIR/pgdata.path ]]; then
        PGBASE=$(head -n1 "$DIR/pgdata.path")
        [[ $PGBASE == "$DIR/pg" || $PGBASE == "$FALLBACK_BASE" ]] || die "unexpected path '$PGBASE' in $DIR/pgdata.path"
        return 0
    fi
    PGBASE=$DIR/pg
    [[ $CMD == up ]] || return 0
    longest="$PGBASE/run/node1/.s.PGSQL.${PG_PORT[node1]}.lock"
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
    local n
    choose_pgbase
    PGLOG_DIR=$PGBASE/log
    PIDS=$DIR/pids
    ETCD_DATA=$PGBASE/etcd
    ETCD_LOG=$PGLOG_DIR/etcd.log
    ETCD_PIDF=$PIDS/etcd.pid
    for n in "${NODES[@]}"; do
        NODE_DATA[$n]=$PGBASE/$n
        NODE_SOCK[$n]=$PGBASE/run/$n
        NODE_LOG[$n]=$PGLOG_DIR/postgresql-$n.log
        PATRONI_YML[$n]=$PGBASE/patroni/$n.yml
        PATRONI_LOG[$n]=$PGLOG_DIR/patroni-$n.log
        PATRONI_PIDF[$n]=$PIDS/patroni-$n.pid
    done
    PATRONICTL_YML=$DIR/patronictl.yml
    HAPROXY_DIR=$DIR/haproxy
    HAPROXY_CFG=$HAPROXY_DIR/haproxy.cfg
    HAPROXY_SOCK=$HAPROXY_DIR/haproxy.sock
    HAPROXY_STATE=$HAPROXY_DIR/server-state
    HAPROXY_LOG=$HAPROXY_DIR/haproxy.log
    HAPROXY_PIDF=$PIDS/haproxy.pid
    BOUNCER_DIR=$PGBASE/pgbouncer
    BOUNCER_INI=$BOUNCER_DIR/pgbouncer.ini
    BOUNCER_AUTH=$BOUNCER_DIR/userlist.txt
    BOUNCER_PID=$BOUNCER_DIR/pgbouncer.pid
    BOUNCER_LOG=$PGLOG_DIR/pgbouncer.log
    # the redis user must reach its dirs: beside the postgres data when DIR is out of reach
    REDIS_BASE=$DIR/redis
    [[ $PGBASE != "$FALLBACK_BASE" ]] || REDIS_BASE=$PGBASE/redis
    REDIS_PWFILE=$DIR/redis.password
    PGPASS=$DIR/pgpass
}

prepare_dirs() {
    local n
    if [[ $PGBASE == "$FALLBACK_BASE" && -e $PGBASE ]]; then
        [[ ! -L $PGBASE ]] || die "$PGBASE is a symlink; refusing to use it"
        [[ $(stat -c %U "$PGBASE") == "$PG_OS_USER" || $(stat -c %U "$PGBASE") == root ]] \
            || die "$PGBASE is owned by $(stat -c %U "$PGBASE"); refusing to use it"
    fi
    install -d -o root -g root -m 0755 "$PIDS"
    install -d -o root -g root -m 0700 "$HAPROXY_DIR"
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0755 "$PGBASE" "$PGLOG_DIR"
    install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0700 "$PGBASE/run" "$PGBASE/patroni" "$ETCD_DATA" "$BOUNCER_DIR"
    for n in "${NODES[@]}"; do install -d -o "$PG_OS_USER" -g "$PG_OS_USER" -m 0700 "${NODE_SOCK[$n]}"; done
    install -d -o "$REDIS_OS_USER" -g "$REDIS_OS_USER" -m 0700 "$REDIS_BASE"
    for n in "${REDIS_NODES[@]}" "${SENTINELS[@]}"; do
        install -d -o "$REDIS_OS_USER" -g "$REDIS_OS_USER" -m 0700 "$REDIS_BASE/$n"
    done
}

lock_state() {
    [[ -d $DIR ]] || return 0
    [[ $CMD == up || -e $DIR/$MARKER ]] || return 0
    exec 9>>"$DIR/.lock"
    flock -w 120 9 || die "another ha.sh is busy with $DIR (lock $DIR/.lock)"
}

claim_dir() {
    local f
    if [[ ! -e $DIR/$MARKER ]]; then
        for f in "$DIR"/* "$DIR"/.[!.]* "$DIR"/..?*; do
            [[ -e $f || -L $f ]] || continue
            [[ ${f##*/} == .lock || ${f##*/} == pgdata.path ]] && continue
            die "$DIR is not empty and is not a pgapi HA state dir (no $MARKER); refusing to use it"
        done
        : >"$DIR/$MARKER"
    fi
    chmod 755 "$DIR"
}

# Starts "$@" in the background as the postgres user, in a session of its own, with a clean environment,
# stdout and stderr to LOG; the pid (the same process all along: setsid, setpriv and env all exec) goes
# to PIDFILE.
spawn_as_pg() { # pidfile log cmd...
    local pidf=$1 logf=$2
    shift 2
    as_pg touch "$logf"
    (
        cd /
        close_fds
        exec setsid setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups \
            env -i HOME="$PG_HOME" PATH=/usr/bin:/bin LC_ALL=C.UTF-8 "$@" </dev/null >>"$logf" 2>&1
    ) &
    echo "$!" >"$pidf"
}

# pid_of FILE EXE [WORD]: the pid in FILE when that process runs EXE (and has WORD in its command line)
pid_of() {
    local pid
    pid=$(read_pid "$1") || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f -- "$2")" ]] || return 1
    [[ -z ${3:-} || " $(proc_cmdline "$pid") " == *" $3 "* ]] || return 1
    printf '%s\n' "$pid"
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- etcd
etcd_pid() { pid_of "$ETCD_PIDF" "$ETCD_BIN" "$ETCD_DATA"; }

start_etcd() {
    local pid i peer=http://$HOST:$ETCD_PEER_PORT client=http://$HOST:$ETCD_PORT
    if pid=$(etcd_pid); then
        log "etcd: already running (pid $pid, port $ETCD_PORT)"
        return 0
    fi
    check_port_free etcd "$ETCD_PORT"
    check_port_free "etcd peer" "$ETCD_PEER_PORT"
    log "etcd: starting on $client"
    spawn_as_pg "$ETCD_PIDF" "$ETCD_LOG" "$ETCD_BIN" --name e1 --data-dir "$ETCD_DATA" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "e1=$peer" --initial-cluster-state new --initial-cluster-token "pgapi-ha-$BASE"
    pid=$(read_pid "$ETCD_PIDF")
    for ((i = 0; i < WAIT_SECS * 10; i++)); do
        # the raw pid: until its exec the process is still this shell, not etcd
        pid_alive "$pid" || break
        [[ $(curl -s -m 2 "$client/health" 2>/dev/null) == *'"health":"true"'* ]] && return 0
        sleep 0.1
    done
    fail_server etcd "$ETCD_LOG" "not healthy on $client"
}

# ---------------------------------------------------------------- Patroni and PostgreSQL
# Patroni is a Python program: its process runs the interpreter of patroni's #! line.
PATRONI_PY=$(readlink -f "$(sed -n '1s/^#! *\([^ ]*\).*/\1/p' "$PATRONI_BIN" 2>/dev/null)" 2>/dev/null || echo /usr/bin/python3)
patroni_pid() { pid_of "${PATRONI_PIDF[$1]}" "$PATRONI_PY" "${PATRONI_YML[$1]}"; }

patroni_yml() { # node
    local n=$1 sync=true
    [[ $SYNC == on ]] || sync=false
    cat <<EOF
# Written by scripts/ha.sh (mode 600: passwords). Patroni runs as $PG_OS_USER.
scope: $SCOPE
namespace: /pgapi-ha/
name: $n
log:
  level: INFO
  format: '%(asctime)s %(levelname)s: %(message)s'
restapi:
  listen: $HOST:${REST_PORT[$n]}
  connect_address: $HOST:${REST_PORT[$n]}
  authentication:
    username: patroni
    password: '$PATRONI_REST_PASSWORD'
etcd3:
  host: $HOST:$ETCD_PORT
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: $sync
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        wal_log_hints: 'on'
        fsync: 'off'
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - auth-local: trust
    - auth-host: scram-sha-256
    - no-sync
postgresql:
  listen: $HOST:${PG_PORT[$n]}
  connect_address: $HOST:${PG_PORT[$n]}
  data_dir: ${NODE_DATA[$n]}
  bin_dir: $PGBIN
  pgpass: $PGBASE/patroni/$n.pgpass
  use_unix_socket: true
  authentication:
    superuser:
      username: postgres
      password: '$POSTGRES_PASSWORD'
    replication:
      username: replicator
      password: '$REPLICATOR_PASSWORD'
  parameters:
    unix_socket_directories: '${NODE_SOCK[$n]}'
    logging_collector: 'on'
    log_directory: '$PGLOG_DIR'
    log_filename: 'postgresql-$n.log'
    log_rotation_age: 0
    log_line_prefix: '%m [%p] %q%u@%d '
  pg_hba:
    - local all all trust
    - local replication all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
  basebackup:
    - checkpoint: fast
    - no-sync
EOF
}

patronictl_yml() {
    cat <<EOF
# Written by scripts/ha.sh: patronictl -c $PATRONICTL_YML list (mode 600: the REST API's password)
scope: $SCOPE
namespace: /pgapi-ha/
etcd3:
  host: $HOST:$ETCD_PORT
restapi:
  authentication:
    username: patroni
    password: '$PATRONI_REST_PASSWORD'
EOF
}

write_patroni_configs() {
    local n
    for n in "${NODES[@]}"; do patroni_yml "$n" | pg_write "${PATRONI_YML[$n]}"; done
    (umask 077 && patronictl_yml >"$PATRONICTL_YML.tmp")
    mv -f -- "$PATRONICTL_YML.tmp" "$PATRONICTL_YML"
}

start_patroni() { # node
    local n=$1 pid
    if pid=$(patroni_pid "$n"); then
        log "patroni $n: already running (pid $pid, REST port ${REST_PORT[$n]})"
        return 0
    fi
    check_port_free "patroni $n REST API" "${REST_PORT[$n]}"
    pg_pid "${NODE_DATA[$n]}" >/dev/null || check_port_free "postgresql $n" "${PG_PORT[$n]}"
    log "patroni $n: starting (PostgreSQL on $HOST:${PG_PORT[$n]}, REST API on $HOST:${REST_PORT[$n]})"
    spawn_as_pg "${PATRONI_PIDF[$n]}" "${PATRONI_LOG[$n]}" "$PATRONI_BIN" "${PATRONI_YML[$n]}"
}

ctl() { timeout -k 5 60 "$PATRONICTL_BIN" -c "$PATRONICTL_YML" "$@" </dev/null; }

# "name role state lag" per member, from one node's REST API (GET /cluster), any node that answers.
members() {
    local n out
    for n in "${NODES[@]}"; do
        out=$(curl -s -m 2 "http://$HOST:${REST_PORT[$n]}/cluster" 2>/dev/null) || continue
        jq -r '.members[] | "\(.name) \(.role) \(.state) \(.lag // "-")"' <<<"$out" 2>/dev/null && return 0
    done
    return 1
}

leader() { members | awk '$2 == "leader" { print $1 }'; }

# The layout up waits for: every node running, one leader, the others replicas (one of them the sync
# standby in synchronous mode), each streaming from the leader.
layout_ok() {
    local m leader_node want_sync=1 streaming
    [[ $SYNC == on ]] || want_sync=0
    m=$(members) || return 1
    [[ $(wc -l <<<"$m") -eq 3 ]] || return 1
    [[ $(awk '$3 == "running"' <<<"$m" | wc -l) -eq 3 ]] || return 1
    [[ $(awk '$2 == "leader"' <<<"$m" | wc -l) -eq 1 ]] || return 1
    [[ $(awk '$2 == "sync_standby"' <<<"$m" | wc -l) -eq $want_sync ]] || return 1
    [[ $(awk '$2 == "replica"' <<<"$m" | wc -l) -eq $((2 - want_sync)) ]] || return 1
    leader_node=$(awk '$2 == "leader" { print $1 }' <<<"$m")
    streaming=$(pg_sql "${PG_PORT[$leader_node]}" "${NODE_SOCK[$leader_node]}" postgres \
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null) || return 1
    [[ $streaming == 2 ]]
}

# The leader as the primary the shared helpers (ensure_roles, PgBouncer's auth file) talk to.
use_leader() {
    local i n=""
    for ((i = 0; i < WAIT_SECS * 5; i++)); do
        n=$(leader 2>/dev/null) || n=""
        if [[ -n $n ]] && [[ $(pg_sql "${PG_PORT[$n]}" "${NODE_SOCK[$n]}" postgres 'SELECT pg_is_in_recovery()' 2>/dev/null) == f ]]; then
            break
        fi
        n=""
        sleep 0.2
    done
    if [[ -z $n ]]; then
        for n in "${NODES[@]}"; do log_tail "${PATRONI_LOG[$n]}"; done
        die "no Patroni leader answering as a primary after ${WAIT_SECS}s (logs: $PGLOG_DIR). 'scripts/ha.sh down $DIR' stops what was started"
    fi
    LEADER=$n PRIMARY_PORT=${PG_PORT[$n]} PRIMARY_SOCK=${NODE_SOCK[$n]} PRIMARY_LOG=${PATRONI_LOG[$n]}
}

wait_layout() {
    local i n
    for ((i = 0; i < WAIT_SECS * 5; i++)); do
        layout_ok && return 0
        sleep 0.2
    done
    for n in "${NODES[@]}"; do log_tail "${PATRONI_LOG[$n]}"; done
    die "the Patroni cluster did not reach its layout (leader, $([[ $SYNC == on ]] && echo 'sync standby, replica' || echo 'two replicas'), all streaming) in ${WAIT_SECS}s: $(members 2>/dev/null | tr '\n' ';')"
}

# A running cluster keeps the synchronous_mode it was bootstrapped with; up applies PGAPI_HA_SYNC.
apply_sync_mode() {
    local want=true got
    [[ $SYNC == on ]] || want=false
    got=$(curl -s -m 2 "http://$HOST:${REST_PORT[$LEADER]}/config" 2>/dev/null | jq -r '.synchronous_mode // false') || got=""
    [[ -n $got && $got != "$want" ]] || return 0
    log "patroni: synchronous_mode $got -> $want"
    ctl edit-config --force -s "synchronous_mode=$want" >/dev/null || die "patronictl edit-config synchronous_mode=$want failed"
}

# Stop one Patroni (it stops its PostgreSQL first), then whatever postmaster of that node outlived it
# (a Patroni killed by a test leaves its postmaster running).
stop_patronis() { # node...
    local n pid pids=() ns=()
    for n in "$@"; do
        pid=$(patroni_pid "$n") || continue
        log "patroni $n: stopping (pid $pid, SIGTERM: it stops PostgreSQL first)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid") ns+=("$n")
    done
    for n in "${!pids[@]}"; do
        if ! wait_gone "${pids[$n]}" "$WAIT_SECS"; then
            log "patroni ${ns[$n]}: still alive after ${WAIT_SECS}s, sending SIGKILL (log: ${PATRONI_LOG[${ns[$n]}]})"
            kill -KILL "${pids[$n]}" 2>/dev/null || true
            wait_gone "${pids[$n]}" 5 || die "patroni ${ns[$n]}: pid ${pids[$n]} does not die"
        fi
        rm -f -- "${PATRONI_PIDF[${ns[$n]}]}"
    done
    for n in "$@"; do stop_postmaster "$n"; done
}

stop_postmaster() { # node
    local n=$1 pid
    pid=$(pg_pid "${NODE_DATA[$n]}") || return 0
    log "postgresql $n: still running without its Patroni (pid $pid): fast shutdown"
    as_pg "$PGBIN/pg_ctl" -D "${NODE_DATA[$n]}" -m fast -w -t 30 -s stop </dev/null >/dev/null 2>&1 || true
    stop_pid "postgresql $n" "$pid"
}

# ---------------------------------------------------------------- HAProxy
haproxy_cfg() {
    local n
    cat <<EOF
# Written by scripts/ha.sh: TCP frontends over the Patroni nodes, health-checked on Patroni's REST API.
global
    maxconn 4000
    stats socket $HAPROXY_SOCK mode 600 level admin
    # haproxy-restart saves the servers' states here first: a restarted HAProxy starts from what it knew
    server-state-file $HAPROXY_STATE
defaults
    mode tcp
    timeout connect 2s
    # longer than PgBouncer's server_idle_timeout (600 s): HAProxy never cuts an idle pooled connection
    timeout client 1h
    timeout server 1h
    timeout check 1s
    load-server-state-from-file global
    option httpchk
    http-check expect status 200
    # a server marked down has its sessions cut at once: no client stays on a demoted primary
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
listen pg_rw
    bind $HOST:$HAPROXY_RW_PORT
    option httpchk GET /primary
EOF
    for n in "${NODES[@]}"; do echo "    server $n $HOST:${PG_PORT[$n]} check port ${REST_PORT[$n]}"; done
    echo "listen pg_ro"
    echo "    bind $HOST:$HAPROXY_RO_PORT"
    echo "    balance roundrobin"
    echo "    option httpchk GET /replica?lag=$LAG"
    for n in "${NODES[@]}"; do echo "    server $n $HOST:${PG_PORT[$n]} check port ${REST_PORT[$n]}"; done
    for n in "${NODES[@]}"; do
        echo "listen pg_ro_$n"
        echo "    bind $HOST:${RO_PORT[$n]}"
        echo "    option httpchk GET /replica?lag=$LAG"
        echo "    server $n $HOST:${PG_PORT[$n]} check port ${REST_PORT[$n]}"
    done
}

write_haproxy_cfg() {
    haproxy_cfg >"$HAPROXY_CFG.tmp"
    "$HAPROXY_BIN" -c -q -f "$HAPROXY_CFG.tmp" || die "haproxy refused the configuration it was given ($HAPROXY_CFG.tmp)"
    mv -f -- "$HAPROXY_CFG.tmp" "$HAPROXY_CFG"
}

haproxy_pid() { pid_of "$HAPROXY_PIDF" "$HAPROXY_BIN" "$HAPROXY_CFG"; }

start_haproxy() {
    local pid
    if pid=$(haproxy_pid); then
        log "haproxy: already running (pid $pid)"
        return 0
    fi
    check_port_free "haproxy rw" "$HAPROXY_RW_PORT"
    check_port_free "haproxy ro" "$HAPROXY_RO_PORT"
    for n in "${NODES[@]}"; do check_port_free "haproxy ro $n" "${RO_PORT[$n]}"; done
    rm -f -- "$HAPROXY_SOCK"
    log "haproxy: starting (rw $HAPROXY_RW_PORT, ro $HAPROXY_RO_PORT, ro of each node ${RO_PORT[node1]}..${RO_PORT[node3]})"
    (
        cd "$HAPROXY_DIR"
        close_fds
        # -db: in the foreground, logging to stderr, so that its pid is the one recorded
        exec setsid env -i PATH=/usr/sbin:/usr/bin:/bin "$HAPROXY_BIN" -db -f "$HAPROXY_CFG" </dev/null >>"$HAPROXY_LOG" 2>&1
    ) &
    echo "$!" >"$HAPROXY_PIDF"
}

stop_haproxy() {
    local pid
    pid=$(haproxy_pid) || { rm -f -- "$HAPROXY_PIDF"; return 0; }
    stop_pid haproxy "$pid"
    rm -f -- "$HAPROXY_PIDF" "$HAPROXY_SOCK"
}

haproxy_admin() { # command
    [[ -S $HAPROXY_SOCK ]] || return 1
    echo "$1" | socat -t 2 - "UNIX-CONNECT:$HAPROXY_SOCK" 2>/dev/null
}

# "proxy server STATUS" per server line, as HAProxy's checks see them ("UP 1/2": not yet confirmed).
haproxy_states() {
    haproxy_admin "show stat" | awk -F, '$1 ~ /^pg_/ && $2 ~ /^node[0-9]$/ { print $1, $2, $18 }'
}

# What HAProxy should say of each server, from Patroni's roles: "proxy server UP|DOWN" lines.
haproxy_expected() {
    local name role
    while read -r name role _; do
        if [[ $role == leader ]]; then
            echo "pg_rw $name UP"; echo "pg_ro $name DOWN"; echo "pg_ro_$name $name DOWN"
        else
            echo "pg_rw $name DOWN"; echo "pg_ro $name UP"; echo "pg_ro_$name $name UP"
        fi
    done < <(members) | sort
}

wait_haproxy_agrees() {
    local i want got=""
    for ((i = 0; i < WAIT_SECS * 5; i++)); do
        haproxy_pid >/dev/null || { log_tail "$HAPROXY_LOG"; die "haproxy exited (log: $HAPROXY_LOG)"; }
        want=$(haproxy_expected 2>/dev/null) || want=""
        got=$(haproxy_states 2>/dev/null | sort) || got=""
        [[ -n $want && $got == "$want" ]] && return 0
        sleep 0.2
    done
    log_tail "$HAPROXY_LOG"
    die "haproxy's checks do not match Patroni's roles after ${WAIT_SECS}s: want '$(tr '\n' ';' <<<"$want")', got '$(tr '\n' ';' <<<"$got")'"
}

cmd_haproxy_restart() {
    require_topology
    haproxy_admin "show servers state" >"$HAPROXY_STATE.tmp" 2>/dev/null && mv -f -- "$HAPROXY_STATE.tmp" "$HAPROXY_STATE"
    rm -f -- "$HAPROXY_STATE.tmp"
    stop_haproxy
    write_haproxy_cfg
    start_haproxy
    wait_haproxy_agrees
    log "haproxy-restart: haproxy runs again (pid $(haproxy_pid))"
}

# ---------------------------------------------------------------- PgBouncer
# "database port" per PgBouncer database: each is one HAProxy frontend.
bouncer_targets() {
    local n i=1
    echo "pgapi_rw $HAPROXY_RW_PORT"
    echo "pgapi_ro $HAPROXY_RO_PORT"
    for n in "${NODES[@]}"; do echo "pgapi_ro$i ${RO_PORT[$n]}"; i=$((i + 1)); done
}

bouncer_ini() {
    local db port
    echo ";; Written by scripts/ha.sh: every database goes through one HAProxy frontend."
    echo "[databases]"
    while read -r db port; do echo "$db = host=$HOST port=$port dbname=pgapi"; done < <(bouncer_targets)
    echo
    bouncer_settings
}

bouncer_apply() {
    local pid
    write_bouncer_config
    (( BOUNCER_CHANGED )) || return 0
    pid=$(bouncer_pid) || return 0
    if bouncer_psql pgbouncer pgbadmin RELOAD >/dev/null 2>&1; then
        log "pgbouncer: configuration changed, reloaded (RELOAD on the admin console)"
    else
        log "pgbouncer: configuration changed, admin console RELOAD failed: sending SIGHUP to pid $pid"
        kill -HUP "$pid"
    fi
}

# Each database answers as app: pgapi_rw from the leader, pgapi_ro and a replica node's pgapi_roN from a
# replica (the leader's own pgapi_roN has no server: nothing to check).
check_bouncer_databases() {
    local db port want r i n
    declare -A roles=()
    while read -r n r _; do roles[$n]=$r; done < <(members)
    while read -r db port; do
        want=t
        case $db in
            pgapi_rw) want=f ;;
            pgapi_ro[0-9]) n=node${db#pgapi_ro}; [[ ${roles[$n]:-} != leader ]] || continue ;;
        esac
        for ((i = 0; i < WAIT_SECS * 2; i++)); do
            r=$(bouncer_psql "$db" app 'SELECT pg_is_in_recovery()' 2>&1) || true
            [[ $r == "$want" ]] && break
            sleep 0.5
        done
        [[ $r == "$want" ]] || fail_server pgbouncer "$BOUNCER_LOG" "$db as app: expected pg_is_in_recovery()=$want, got: $r"
    done < <(bouncer_targets)
}

# ---------------------------------------------------------------- Redis and Sentinel
redis_pid_of() { # r1|r2|s1..s3: pid of our redis-server / redis-sentinel in that dir
    local pid d=$REDIS_BASE/$1 f
    f=$d/redis.pid
    [[ $1 != s* ]] || f=$d/sentinel.pid
    pid=$(read_pid "$f") || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f "$REDIS_BIN")" ]] || return 1
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$d" ]] || return 1
    printf '%s\n' "$pid"
}

# redis-cli as the default (admin) user of a Redis, or with no login for a Sentinel; the password goes
# through the environment, never argv.
redis_cli_on() { # port args...
    local port=$1
    shift
    REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout -k 2 3 "$REDIS_CLI" --no-auth-warning -h "$HOST" -p "$port" "$@" </dev/null
}
sentinel_cli() { # sentinel args...
    local s=$1
    shift
    timeout -k 2 3 "$REDIS_CLI" -h "$HOST" -p "${SENTINEL_PORT[$s]}" "$@" </dev/null
}

# "host:port" of the master a Sentinel names, or fails.
sentinel_master() { # sentinel
    local out
    out=$(sentinel_cli "$1" SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null) || return 1
    [[ $(wc -l <<<"$out") -eq 2 ]] || return 1
    printf '%s:%s\n' "$(sed -n 1p <<<"$out")" "$(sed -n 2p <<<"$out")"
}

# The master's address: what the Sentinels that answer name, else the Redis that says it is a master.
current_redis_master() {
    local s r m
    for s in "${SENTINELS[@]}"; do
        if redis_pid_of "$s" >/dev/null && m=$(sentinel_master "$s"); then echo "$m"; return 0; fi
    done
    for r in "${REDIS_NODES[@]}"; do
        redis_pid_of "$r" >/dev/null || continue
        if redis_cli_on "${REDIS_PORT[$r]}" ROLE 2>/dev/null | head -n1 | grep -qx master; then
            echo "$HOST:${REDIS_PORT[$r]}"; return 0
        fi
    done
    return 1
}

# The users: default (tools, admin), pgapi (the server: no admin or dangerous command but INFO, as in
# scripts/topology.sh), replica (a replica's link to its master) and sentinel (the commands Sentinel needs,
# from Redis's documentation).
redis_conf() { # r1|r2 master-address|""
    local r=$1 master=$2 d=$REDIS_BASE/$1
    cat <<EOF
# Written by scripts/ha.sh (mode 600, owned by $REDIS_OS_USER); Sentinel rewrites it on a failover
port ${REDIS_PORT[$r]}
bind $HOST
protected-mode yes
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
dir $d
save ""
appendonly no
maxmemory $REDIS_MAXMEMORY
maxmemory-policy noeviction
masteruser replica
masterauth $REDIS_REPLICA_PASSWORD
user default on >$REDIS_ADMIN_PASSWORD ~* &* +@all
user pgapi on >$REDIS_PASSWORD ~* &* +@all -@admin -@dangerous +info
user replica on >$REDIS_REPLICA_PASSWORD +psync +replconf +ping
user sentinel on >$REDIS_SENTINEL_PASSWORD allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill
EOF
    if [[ -n $master ]]; then echo "replicaof ${master%:*} ${master##*:}"; fi
}

sentinel_conf() { # s1..s3 master-address
    local s=$1 master=$2 d=$REDIS_BASE/$1
    cat <<EOF
# Written by scripts/ha.sh, owned by $REDIS_OS_USER in a dir only that user enters (the auth-pass): Sentinel rewrites it
port ${SENTINEL_PORT[$s]}
bind $HOST
daemonize yes
pidfile $d/sentinel.pid
logfile $d/sentinel.log
dir $d
sentinel monitor $MASTER_NAME ${master%:*} ${master##*:} 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 5000
sentinel parallel-syncs $MASTER_NAME 1
sentinel auth-user $MASTER_NAME sentinel
sentinel auth-pass $MASTER_NAME $REDIS_SENTINEL_PASSWORD
EOF
}

as_redis_write() { # path: stdin -> file owned by the redis user, mode 600
    # shellcheck disable=SC2016  # $1 is expanded by the inner sh
    (cd / && runuser -u "$REDIS_OS_USER" -- sh -c 'umask 077 && cat >"$1.tmp" && mv -f "$1.tmp" "$1"' sh "$1")
}

# Starts a Redis (a master when no master runs, else a replica of it) or a Sentinel (watching the
# current master) that is not running. A stopped one's state is gone (no persistence): its config is
# written anew from what runs now.
start_redis_node() { # r1|r2
    local r=$1 pid master="" i d=$REDIS_BASE/$1
    if pid=$(redis_pid_of "$r"); then
        log "redis $r: already running (pid $pid, port ${REDIS_PORT[$r]})"
        return 0
    fi
    check_port_free "redis $r" "${REDIS_PORT[$r]}"
    master=$(current_redis_master) || master=""
    [[ $master != "$HOST:${REDIS_PORT[$r]}" ]] || master=""
    redis_conf "$r" "$master" | as_redis_write "$d/redis.conf"
    rm -f -- "$d/redis.pid"
    log "redis $r: starting on $HOST:${REDIS_PORT[$r]} as ${master:+a replica of }${master:-the master}"
    (cd "$d" && close_fds && runuser -u "$REDIS_OS_USER" -- timeout -k 5 30 "$REDIS_BIN" "$d/redis.conf" </dev/null >/dev/null 2>&1) \
        || fail_server "redis $r" "$d/redis.log" "failed to start"
    for ((i = 0; i < WAIT_SECS * 10; i++)); do
        redis_pid_of "$r" >/dev/null && [[ $(redis_cli_on "${REDIS_PORT[$r]}" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    fail_server "redis $r" "$d/redis.log" "not answering PING on $HOST:${REDIS_PORT[$r]}"
}

start_sentinel() { # s1..s3
    local s=$1 pid master myid i d=$REDIS_BASE/$1
    if pid=$(redis_pid_of "$s"); then
        log "sentinel $s: already running (pid $pid, port ${SENTINEL_PORT[$s]})"
        return 0
    fi
    check_port_free "sentinel $s" "${SENTINEL_PORT[$s]}"
    master=$(current_redis_master) || die "sentinel $s: no Redis master runs to watch"
    # a Sentinel restarted keeps its id: the others would count it twice under a new one
    myid=$(sed -n 's/^sentinel myid \([0-9a-f]\{40\}\)$/\1/p' "$d/sentinel.conf" 2>/dev/null | head -n 1) || myid=""
    { sentinel_conf "$s" "$master"; [[ -z $myid ]] || echo "sentinel myid $myid"; } | as_redis_write "$d/sentinel.conf"
    rm -f -- "$d/sentinel.pid"
    log "sentinel $s: starting on $HOST:${SENTINEL_PORT[$s]} (master $master)"
    (cd "$d" && close_fds && runuser -u "$REDIS_OS_USER" -- timeout -k 5 30 "$SENTINEL_BIN" "$d/sentinel.conf" </dev/null >/dev/null 2>&1) \
        || fail_server "sentinel $s" "$d/sentinel.log" "failed to start"
    for ((i = 0; i < WAIT_SECS * 10; i++)); do
        redis_pid_of "$s" >/dev/null && [[ $(sentinel_cli "$s" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    fail_server "sentinel $s" "$d/sentinel.log" "not answering PING on $HOST:${SENTINEL_PORT[$s]}"
}

# Every Sentinel names one master, sees the other Redis as its replica and knows the two other Sentinels;
# the replica's link is up.
redis_tier_ok() {
    local s m="" got
    for s in "${SENTINELS[@]}"; do
        got=$(sentinel_master "$s") || return 1
        [[ -z $m || $got == "$m" ]] || return 1
        m=$got
        got=$(sentinel_cli "$s" SENTINEL master "$MASTER_NAME" 2>/dev/null | paste - - | awk -F'\t' '{ v[$1] = $2 } END { print v["num-slaves"], v["num-other-sentinels"], v["flags"] }')
        [[ $got == "1 2 master" ]] || return 1
    done
    for s in "${REDIS_NODES[@]}"; do
        [[ "$HOST:${REDIS_PORT[$s]}" != "$m" ]] || continue
        redis_cli_on "${REDIS_PORT[$s]}" INFO replication 2>/dev/null | grep -q '^master_link_status:up' || return 1
    done
}

wait_redis_tier() {
    local i s
    for ((i = 0; i < WAIT_SECS * 5; i++)); do
        redis_tier_ok && return 0
        sleep 0.2
    done
    for s in "${SENTINELS[@]}"; do log_tail "$REDIS_BASE/$s/sentinel.log"; done
    die "the Sentinels do not agree on a master with one replica and three Sentinels after ${WAIT_SECS}s"
}

stop_redis_tier() {
    local n pid
    # the Sentinels first: a Redis stopped under their eyes would be failed over
    for n in "${SENTINELS[@]}" r2 r1; do
        if pid=$(redis_pid_of "$n"); then stop_pid "redis $n" "$pid"; fi
    done
}

# ---------------------------------------------------------------- state files
write_pgpass() {
    local db port n
    (umask 077 && {
        while read -r db port; do echo "$HOST:$BOUNCER_PORT:$db:app:$APP_PASSWORD"; done < <(bouncer_targets)
        echo "$HOST:$BOUNCER_PORT:pgbouncer:pgbadmin:$PGBADMIN_PASSWORD"
        for port in "$HAPROXY_RW_PORT" "$HAPROXY_RO_PORT"; do echo "$HOST:$port:*:app:$APP_PASSWORD"; done
        for n in "${NODES[@]}"; do
            echo "$HOST:${RO_PORT[$n]}:*:app:$APP_PASSWORD"
            echo "$HOST:${PG_PORT[$n]}:*:app:$APP_PASSWORD"
        done
    } >"$PGPASS.tmp")
    mv -f -- "$PGPASS.tmp" "$PGPASS"
}

sentinel_list() {
    local s out=""
    for s in "${SENTINELS[@]}"; do out+="${out:+,}$HOST:${SENTINEL_PORT[$s]}"; done
    echo "$out"
}

dsn() { echo "host=$HOST port=$BOUNCER_PORT dbname=$1 user=app passfile=$PGPASS"; }

write_ha_env() {
    local f=$DIR/ha.env n i
    {
        echo "# pgapi HA topology ($DIR), written by scripts/ha.sh; . $f"
        echo "# Ports from PGAPI_HA_PORT_BASE=$BASE: +0 etcd, +1 etcd peer, +2..4 PostgreSQL node1..3, +5..7 their"
        echo "# Patroni REST APIs, +8 HAProxy rw (/primary), +9 HAProxy ro (every replica), +10..12 HAProxy ro of"
        echo "# node1..3 alone, +13 PgBouncer (pgapi_rw, pgapi_ro, pgapi_ro1..3), +14 Redis r1, +15 Redis r2,"
        echo "# +16..18 Sentinels s1..s3 (master name $MASTER_NAME). Logs: PGAPI_HA_*_LOG; pid files: PGAPI_HA_*_PIDFILE."
        echo "export PGAPI_HA_STATE_DIR=$(q "$DIR")"
        echo "export PGAPI_HA_PGDATA_BASE=$(q "$PGBASE")"
        echo "export PGAPI_HA_LOG_DIR=$(q "$PGLOG_DIR")"
        echo "export PGAPI_HA_PORT_BASE=$(q "$BASE")"
        echo "export PGAPI_HA_SYNC=$(q "$SYNC")"
        echo "export PGAPI_HA_REPLICA_LAG=$(q "$LAG")"
        echo "export PGAPI_HA_HOST=$(q "$HOST")"
        echo "export PGAPI_HA_ETCD_PORT=$(q "$ETCD_PORT")"
        echo "export PGAPI_HA_ETCD_PEER_PORT=$(q "$ETCD_PEER_PORT")"
        echo "export PGAPI_HA_ETCD_PIDFILE=$(q "$ETCD_PIDF")"
        echo "export PGAPI_HA_NODES='${NODES[*]}'"
        for n in "${NODES[@]}"; do
            i=${n^^}
            echo "export PGAPI_HA_${i}_PORT=$(q "${PG_PORT[$n]}")"
            echo "export PGAPI_HA_${i}_REST_PORT=$(q "${REST_PORT[$n]}")"
            echo "export PGAPI_HA_${i}_RO_PORT=$(q "${RO_PORT[$n]}")"
            echo "export PGAPI_HA_${i}_PGDATA=$(q "${NODE_DATA[$n]}")"
            echo "export PGAPI_HA_${i}_SOCKET_DIR=$(q "${NODE_SOCK[$n]}")"
            echo "export PGAPI_HA_${i}_PATRONI_PIDFILE=$(q "${PATRONI_PIDF[$n]}")"
            echo "export PGAPI_HA_${i}_PATRONI_CONFIG=$(q "${PATRONI_YML[$n]}")"
            echo "export PGAPI_HA_${i}_PATRONI_LOG=$(q "${PATRONI_LOG[$n]}")"
            echo "export PGAPI_HA_${i}_LOG=$(q "${NODE_LOG[$n]}")"
        done
        echo "export PGAPI_HA_PATRONICTL_CONFIG=$(q "$PATRONICTL_YML")"
        echo "export PGAPI_HA_HAPROXY_RW_PORT=$(q "$HAPROXY_RW_PORT")"
        echo "export PGAPI_HA_HAPROXY_RO_PORT=$(q "$HAPROXY_RO_PORT")"
        echo "export PGAPI_HA_HAPROXY_PIDFILE=$(q "$HAPROXY_PIDF")"
        echo "export PGAPI_HA_HAPROXY_SOCKET=$(q "$HAPROXY_SOCK")"
        echo "export PGAPI_HA_HAPROXY_CONFIG=$(q "$HAPROXY_CFG")"
        echo "export PGAPI_HA_HAPROXY_LOG=$(q "$HAPROXY_LOG")"
        echo "export PGAPI_HA_BOUNCER_PORT=$(q "$BOUNCER_PORT")"
        echo "export PGAPI_HA_BOUNCER_PIDFILE=$(q "$BOUNCER_PID")"
        echo "export PGAPI_HA_BOUNCER_LOG=$(q "$BOUNCER_LOG")"
        for n in "${REDIS_NODES[@]}"; do
            i=${n^^}
            echo "export PGAPI_HA_REDIS_${i}_PORT=$(q "${REDIS_PORT[$n]}")"
            echo "export PGAPI_HA_REDIS_${i}_PIDFILE=$(q "$REDIS_BASE/$n/redis.pid")"
            echo "export PGAPI_HA_REDIS_${i}_LOG=$(q "$REDIS_BASE/$n/redis.log")"
        done
        for n in "${SENTINELS[@]}"; do
            i=${n^^}
            echo "export PGAPI_HA_SENTINEL_${i#S}_PORT=$(q "${SENTINEL_PORT[$n]}")"
            echo "export PGAPI_HA_SENTINEL_${i#S}_PIDFILE=$(q "$REDIS_BASE/$n/sentinel.pid")"
            echo "export PGAPI_HA_SENTINEL_${i#S}_LOG=$(q "$REDIS_BASE/$n/sentinel.log")"
        done
        echo "export PGAPI_HA_SENTINELS=$(q "$(sentinel_list)")"
        echo "export PGAPI_HA_REDIS_MASTER_NAME=$(q "$MASTER_NAME")"
        echo "export PGAPI_HA_REDIS_USERNAME='pgapi'"
        echo "export PGAPI_HA_REDIS_PASSWORD_FILE=$(q "$REDIS_PWFILE")"
        echo "export PGAPI_HA_RW_DSN=$(q "$(dsn pgapi_rw)")"
        echo "export PGAPI_HA_RO_DSN=$(q "$(dsn pgapi_ro)")"
        i=1
        for n in "${NODES[@]}"; do echo "export PGAPI_HA_RO${i}_DSN=$(q "$(dsn "pgapi_ro$i")")"; i=$((i + 1)); done
        echo "export PGAPI_HA_PGAPI_INI=$(q "$DIR/pgapi.ini")"
        echo "export PGPASSFILE=$(q "$PGPASS")"
    } >"$f.tmp"
    chmod 644 "$f.tmp"
    mv -f -- "$f.tmp" "$f"
}

# pgapi's configuration for this topology: the embedded defaults but the database and Redis keys.
write_pgapi_ini() {
    local f=$DIR/pgapi.ini i
    {
        echo "; pgapi against the HA topology in $DIR, written by scripts/ha.sh: ./build/pgapi --config $f"
        echo "; every other key has its default (pgapi --help). One replica line per Patroni node: pgapi samples"
        echo "; each line's replay position apart, so a line must reach exactly one server."
        echo "[database]"
        echo "primary = $(dsn pgapi_rw)"
        for i in 1 2 3; do echo "replica = $(dsn "pgapi_ro$i")"; done
        echo "migrations_dir = $REPO_ROOT/migrations"
        echo
        echo "[redis]"
        echo "sentinels = $(sentinel_list)"
        echo "master_name = $MASTER_NAME"
        echo "username = pgapi"
        echo "password_file = $REDIS_PWFILE"
    } >"$f.tmp"
    chmod 600 "$f.tmp"
    mv -f -- "$f.tmp" "$f"
}

# ---------------------------------------------------------------- commands
require_topology() {
    [[ -e $DIR/$MARKER ]] || die "no HA topology in $DIR (no $MARKER): run 'scripts/ha.sh up $DIR' first"
}

check_binaries() {
    local b
    for b in "$PGBIN/initdb" "$ETCD_BIN" "$PATRONI_BIN" "$PATRONICTL_BIN" "$HAPROXY_BIN" "$PGBOUNCER_BIN" "$REDIS_BIN" "$SENTINEL_BIN"; do
        [[ -x $b ]] || die "$b not found: run scripts/deps.sh"
    done
    command -v jq >/dev/null || die "jq not found: run scripts/deps.sh"
}

cmd_up() {
    local n t0=$SECONDS
    check_binaries
    load_secrets
    prepare_dirs
    write_patroni_configs
    write_pgpass
    write_ha_env
    write_pgapi_ini
    log "state dir $DIR (postgres data under $PGBASE), ports $BASE..$((BASE + 18))"

    start_etcd
    for n in "${NODES[@]}"; do start_patroni "$n"; done
    # Redis comes up while Patroni bootstraps
    start_redis_node r1
    start_redis_node r2
    for n in "${SENTINELS[@]}"; do start_sentinel "$n"; done

    use_leader
    ensure_roles
    apply_sync_mode
    wait_layout
    write_haproxy_cfg
    start_haproxy
    start_bouncer
    wait_haproxy_agrees
    check_bouncer_databases
    wait_redis_tier
    log "up in $((SECONDS - t0))s: leader $LEADER; $(members | awk '$2 != "leader" { printf "%s %s, ", $1, $2 }')redis master $(current_redis_master)"
    log "env: . $DIR/ha.env; pgapi: ./build/pgapi --config $DIR/pgapi.ini"
}

cmd_down() {
    local n pid leader_node="" replicas=()
    if [[ ! -d $DIR ]]; then
        log "no state dir $DIR: nothing to stop"
        return 0
    fi
    stop_haproxy
    stop_bouncer
    stop_redis_tier
    # the replicas before the leader: none of them is left to take over while it stops
    leader_node=$(leader 2>/dev/null) || leader_node=""
    for n in "${NODES[@]}"; do [[ $n == "$leader_node" ]] || replicas+=("$n"); done
    stop_patronis "${replicas[@]}"
    [[ -z $leader_node ]] || stop_patronis "$leader_node"
    if pid=$(etcd_pid); then stop_pid etcd "$pid"; fi
    rm -f -- "$ETCD_PIDF"
    if (( PURGE )); then
        [[ -e $DIR/$MARKER ]] || die "not purging $DIR: it has no $MARKER marker, so it does not look like an HA state dir"
        for n in "${NODES[@]}"; do
            if patroni_pid "$n" >/dev/null || pg_pid "${NODE_DATA[$n]}" >/dev/null; then die "not purging $DIR: node $n still runs"; fi
        done
        if etcd_pid >/dev/null || haproxy_pid >/dev/null || bouncer_pid >/dev/null; then die "not purging $DIR: a server still runs"; fi
        for n in "${REDIS_NODES[@]}" "${SENTINELS[@]}"; do
            ! redis_pid_of "$n" >/dev/null || die "not purging $DIR: redis $n still runs"
        done
        if [[ $PGBASE == "$FALLBACK_BASE" && -d $PGBASE && ! -L $PGBASE ]]; then
            log "purging $PGBASE"
            rm -rf -- "$PGBASE"
        fi
        log "purging $DIR"
        rm -rf -- "$DIR"
    fi
}

cmd_status() {
    local n pid rc=0 m s r role
    require_topology
    load_secrets
    if etcd_pid >/dev/null; then
        ctl list 2>&1 || rc=3
    else
        echo "etcd stopped: no patronictl list"; rc=3
    fi
    status_line() { # name pid-or-empty detail
        if [[ -n $2 ]]; then printf '%-16s running pid=%s %s\n' "$1" "$2" "$3"; else printf '%-16s stopped %s\n' "$1" "$3"; rc=3; fi
    }
    status_line etcd "$(etcd_pid || true)" "port=$ETCD_PORT"
    for n in "${NODES[@]}"; do
        status_line "patroni $n" "$(patroni_pid "$n" || true)" "rest=${REST_PORT[$n]}"
        status_line "postgresql $n" "$(pg_pid "${NODE_DATA[$n]}" || true)" "port=${PG_PORT[$n]}"
    done
    status_line haproxy "$(haproxy_pid || true)" "rw=$HAPROXY_RW_PORT ro=$HAPROXY_RO_PORT ro1..3=${RO_PORT[node1]}..${RO_PORT[node3]}"
    haproxy_states 2>/dev/null | awk '{ printf "  haproxy %-10s %-6s %s\n", $1, $2, $3 }' || true
    status_line pgbouncer "$(bouncer_pid || true)" "port=$BOUNCER_PORT"
    for r in "${REDIS_NODES[@]}"; do
        role=$(redis_cli_on "${REDIS_PORT[$r]}" ROLE 2>/dev/null | head -n1) || role=""
        status_line "redis $r" "$(redis_pid_of "$r" || true)" "port=${REDIS_PORT[$r]} role=${role:-?}"
    done
    for s in "${SENTINELS[@]}"; do
        m=$(sentinel_master "$s" 2>/dev/null) || m="?"
        r=$(sentinel_cli "$s" SENTINEL replicas "$MASTER_NAME" 2>/dev/null | paste - - | awk -F'\t' '$1 == "name" { printf "%s%s", sep, $2; sep = "," }') || r=""
        status_line "sentinel $s" "$(redis_pid_of "$s" || true)" "port=${SENTINEL_PORT[$s]} master=$m replicas=${r:--}"
    done
    return "$rc"
}

cmd_patronictl() {
    [[ -f $PATRONICTL_YML ]] || die "no $PATRONICTL_YML: run 'scripts/ha.sh up $DIR' first"
    exec "$PATRONICTL_BIN" -c "$PATRONICTL_YML" "${CTL_ARGS[@]}"
}

load_settings
setup_paths
case $CMD in
    up) lock_state; claim_dir; cmd_up ;;
    down) lock_state; cmd_down ;;
    status) cmd_status ;;
    haproxy-restart) lock_state; cmd_haproxy_restart ;;
    patronictl) cmd_patronictl ;;
esac
