#!/usr/bin/env bash
# Several pgapi servers on the local topology (scripts/topology.sh), behind one HAProxy that balances
# them round-robin and health-checks each one's /readyz, as a deployment runs them.
#
# Usage: scripts/cluster.sh COMMAND [DIR]
#   up N [DIR]         start N pgapi servers (each with its own ini) and the HAProxy in front of them;
#                      re-running with the same N starts only what is not running
#   down [--purge] [DIR]  stop exactly what this script started (HAProxy first, then the servers,
#                      gracefully); --purge also deletes the cluster's state
#   status [DIR]       one line per server and for HAProxy (exit 3 when one is stopped)
#
# DIR is the topology's state dir: argument, else $PGAPI_STATE_DIR, else <repo>/var. The topology must
# be up. The cluster's state lives in $PGAPI_CLUSTER_DIR (default DIR/cluster); two clusters on one
# topology need two of them (and two port ranges).
# Ports (env at up, then the ones recorded by up, then defaults):
#   PGAPI_CLUSTER_PORT=3000            HAProxy
#   PGAPI_CLUSTER_SERVER_PORT=3001     server i listens on SERVER_PORT+i-1 (3001..300N)
#   PGAPI_CLUSTER_METRICS_PORT=3101    server i's /metrics on METRICS_PORT+i-1 (3101..310N)
# Other env: PGAPI_CLUSTER_BIN (default <repo>/build/pgapi), PGAPI_WAIT_SECS (30).
#
# Each server's ini is what `pgapi --check-config` prints (the embedded defaults, complete) with the
# topology's DSNs and Redis login, as `make run` uses them, plus its own listen and metrics addresses.
# Any PGAPI_<SECTION>_<KEY> in the environment at up goes into every ini too (PGAPI_SERVER_WORKERS=1,
# PGAPI_REDIS_PREFIX=..., ...), except the two listen keys. The servers then run with no PGAPI_*
# variable, so their ini is the whole truth (and a reload, `kill -HUP <pid>`, reads it again).
# Every server shares the topology's Redis with the same [redis] prefix: that is what makes them one
# deployment (docs/operations.md, "Several servers").
#
# Files in the cluster dir:
#   cluster.env    sourceable: PGAPI_CLUSTER_URL (HAProxy), PGAPI_CLUSTER_SERVER_URLS (each server),
#                  PGAPI_CLUSTER_METRICS_URLS, PGAPI_CLUSTER_SIZE and the ports
#   sI/pgapi.ini, sI/pgapi.pid (the master's pid), sI/pgapi.log
#   haproxy.cfg, haproxy.pid, haproxy.log, haproxy.sock (its admin socket: `show stat`)
# No secret is written here or put on a command line: the servers read the Redis password from the
# topology's redis.password (password_file) and the database passwords from its pgpass (PGPASSFILE).
set -euo pipefail

PROG=cluster
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
HOST=127.0.0.1
WAIT_SECS=${PGAPI_WAIT_SECS:-30}
MAX_SERVERS=64
# the ini keys whose PGAPI_ variables describe one server, not the deployment: set per server here
PER_SERVER_KEYS=(PGAPI_SERVER_LISTEN PGAPI_METRICS_LISTEN)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: cluster.sh up N [DIR]          N pgapi servers (ports 3001..) behind HAProxy (port 3000)
       cluster.sh down [--purge] [DIR]
       cluster.sh status [DIR]
DIR is the topology's state dir (default $PGAPI_STATE_DIR, else <repo>/var); the cluster's own state
goes to $PGAPI_CLUSTER_DIR (default DIR/cluster).
EOF
    exit 2
}

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[[ -n $CMD ]] || usage
shift
PURGE=0
DIR_ARG=""
SIZE=""
case $CMD in
    up)
        [[ $# -ge 1 && $# -le 2 ]] || usage
        SIZE=$1
        DIR_ARG=${2:-}
        if ! [[ $SIZE =~ ^[1-9][0-9]*$ ]] || (( SIZE > MAX_SERVERS )); then
            die "up: N must be 1..$MAX_SERVERS, not '$SIZE'"
        fi
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
    status)
        [[ $# -le 1 ]] || usage
        DIR_ARG=${1:-}
        ;;
    *) usage ;;
esac

[[ $(id -u) -eq 0 ]] || die "must run as root (it reads the topology's state, which is root's)"
DIR=${DIR_ARG:-${PGAPI_STATE_DIR:-$REPO_ROOT/var}}
[[ -d $DIR ]] || die "no topology state dir $DIR: run 'scripts/topology.sh up $DIR' first"
DIR=$(cd -- "$DIR" && pwd -P)
CDIR=${PGAPI_CLUSTER_DIR:-$DIR/cluster}
CENV=$CDIR/cluster.env
if [[ $CMD == up ]]; then
    [[ -d $CDIR ]] || mkdir -m 700 -- "$CDIR" || die "cannot create the cluster dir $CDIR"
fi
if [[ -d $CDIR ]]; then CDIR=$(cd -- "$CDIR" && pwd -P); CENV=$CDIR/cluster.env; fi

# ---------------------------------------------------------------- helpers
# The pid files here decide which processes get signals: a cluster dir another user can write to
# could point them anywhere.
check_cluster_dir_trusted() {
    local owner mode
    [[ -d $CDIR ]] || return 0
    [[ ! -L $CDIR ]] || die "refusing cluster dir $CDIR: it is a symbolic link"
    read -r owner mode < <(stat -c '%u %a' -- "$CDIR")
    [[ $owner == 0 ]] || die "refusing cluster dir $CDIR: owned by uid $owner, not root"
    ! (( 8#$mode & 8#022 )) || die "refusing cluster dir $CDIR (mode $mode): writable by group or other"
}

# Close every fd above 2 of the current (sub)shell, so that the servers we start inherit neither our
# lock nor the pipe of whoever called us (a caller reading our output would wait for them to exit).
close_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (( $1 >= 1 && $1 <= 65535 )); }

# 0 when the process exists and is not a zombie.
pid_alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

proc_exe() { readlink "/proc/$1/exe" 2>/dev/null | sed 's/ (deleted)$//'; }

# pid_of FILE EXE: the pid recorded in FILE if that process still runs EXE (a pid reused by another
# program is not ours).
pid_of() {
    local pid=""
    [[ -f $1 ]] || return 1
    IFS= read -r pid <"$1" 2>/dev/null || true
    pid_alive "$pid" || return 1
    [[ $(proc_exe "$pid") == "$(readlink -f -- "$2")" ]] || return 1
    printf '%s\n' "$pid"
}

wait_gone() { # pid seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    ! pid_alive "$1"
}

port_listeners() { ss -Hltnp "sport = :$1" 2>/dev/null || true; }

check_port_free() { # name port
    local l
    l=$(port_listeners "$2")
    [[ -z $l ]] || die "$1: port $2 is already in use by a process this cluster did not start (left alone):
$l
Pick other ports (PGAPI_CLUSTER_PORT, PGAPI_CLUSTER_SERVER_PORT, PGAPI_CLUSTER_METRICS_PORT) or stop it."
}

log_tail() { # file
    [[ -f $1 ]] || return 0
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 15 -- "$1" >&2 || true
    printf -- '---\n' >&2
}

q() { # single-quote for sh
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

recorded() { # KEY -> value from cluster.env, if any (read, never sourced by this script)
    [[ -f $CENV ]] || return 0
    sed -n "s/^export $1='\\(.*\\)'\$/\\1/p" "$CENV" | head -n 1
}

# http_status URL -> the status code of a GET (000 when nothing answered)
http_status() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- settings
load_settings() {
    local p
    LB_PORT=${PGAPI_CLUSTER_PORT:-$(recorded PGAPI_CLUSTER_PORT)}
    SERVER_PORT=${PGAPI_CLUSTER_SERVER_PORT:-$(recorded PGAPI_CLUSTER_SERVER_PORT)}
    METRICS_PORT=${PGAPI_CLUSTER_METRICS_PORT:-$(recorded PGAPI_CLUSTER_METRICS_PORT)}
    LB_PORT=${LB_PORT:-3000} SERVER_PORT=${SERVER_PORT:-3001} METRICS_PORT=${METRICS_PORT:-3101}
    BIN=${PGAPI_CLUSTER_BIN:-$(recorded PGAPI_CLUSTER_BIN)}
    BIN=${BIN:-$REPO_ROOT/build/pgapi}
    RECORDED_SIZE=$(recorded PGAPI_CLUSTER_SIZE)
    for p in "$LB_PORT" "$SERVER_PORT" "$METRICS_PORT"; do is_port "$p" || die "invalid port '$p'"; done
    [[ -z $RECORDED_SIZE || $RECORDED_SIZE =~ ^[0-9]+$ ]] || die "bad PGAPI_CLUSTER_SIZE in $CENV"
    if ! [[ $WAIT_SECS =~ ^[1-9][0-9]*$ ]]; then WAIT_SECS=30; fi
}

server_port() { echo $((SERVER_PORT + $1 - 1)); }
metrics_port() { echo $((METRICS_PORT + $1 - 1)); }
server_dir() { echo "$CDIR/s$1"; }

# The port ranges must not overlap each other or leave the port space.
check_ports() { # n
    local n=$1 last_s=$((SERVER_PORT + $1 - 1)) last_m=$((METRICS_PORT + $1 - 1))
    (( last_s <= 65535 && last_m <= 65535 )) || die "ports past 65535 for $n servers"
    if (( LB_PORT >= SERVER_PORT && LB_PORT <= last_s )) || (( LB_PORT >= METRICS_PORT && LB_PORT <= last_m )) \
            || (( SERVER_PORT <= last_m && METRICS_PORT <= last_s )); then
        die "ports overlap: HAProxy $LB_PORT, servers $SERVER_PORT..$last_s, metrics $METRICS_PORT..$last_m"
    fi
}

# ---------------------------------------------------------------- topology
# topology.sh status checks (as root) that DIR can be trusted before anything sources its
# topology.env, and that every server of the topology runs.
require_topology() {
    local out
    out=$("$REPO_ROOT/scripts/topology.sh" status "$DIR" 2>&1) \
        || die "the topology in $DIR is not (fully) up; 'scripts/topology.sh up $DIR' first:
$out"
    [[ -f $DIR/topology.env ]] || die "no $DIR/topology.env: run 'scripts/topology.sh up $DIR' first"
}

# The caller's PGAPI_<SECTION>_<KEY> settings, taken before topology.env is read (it exports some of
# the same names): they go into every ini.
CALLER_SETTINGS=()
snapshot_caller_settings() {
    local name keep
    while IFS= read -r name; do
        [[ $name =~ ^PGAPI_(SERVER|DATABASE|REDIS|METRICS|LOG)_[A-Z_]+$ ]] || continue
        keep=1
        for k in "${PER_SERVER_KEYS[@]}"; do [[ $name != "$k" ]] || keep=0; done
        if (( keep )); then CALLER_SETTINGS+=("$name=${!name}"); fi
    done < <(compgen -e)
}

# ---------------------------------------------------------------- servers
# write_ini I: the server's ini, as pgapi itself prints its effective configuration.
write_ini() {
    local i=$1 sdir ini
    sdir=$(server_dir "$i")
    ini=$sdir/pgapi.ini
    [[ -d $sdir ]] || mkdir -m 700 -- "$sdir"
    (
        set +u
        # shellcheck disable=SC1091
        . "$DIR/topology.env"
        export PGAPI_DATABASE_PRIMARY=$PGAPI_RW_DSN PGAPI_DATABASE_REPLICA=$PGAPI_RO_DSN \
               PGAPI_DATABASE_MIGRATIONS_DIR=$REPO_ROOT/migrations PGAPI_REDIS_PORT PGAPI_REDIS_USERNAME \
               PGAPI_REDIS_PASSWORD_FILE
        for kv in "${CALLER_SETTINGS[@]}"; do export "${kv?}"; done
        PGAPI_SERVER_LISTEN=$HOST:$(server_port "$i")
        PGAPI_METRICS_LISTEN=$HOST:$(metrics_port "$i")
        export PGAPI_SERVER_LISTEN PGAPI_METRICS_LISTEN
        unset PGAPI_REDIS_PASSWORD
        exec "$BIN" --check-config 2>"$sdir/check-config.err"
    ) >"$ini.tmp" || { cat "$sdir/check-config.err" >&2; die "server $i: pgapi --check-config refused the settings"; }
    # a second replica of the topology reads too (an env variable can hold only one replica line),
    # unless the caller named the replicas
    if grep -q '^export PGAPI_RO2_DSN=' "$DIR/topology.env" && [[ -z ${PGAPI_DATABASE_REPLICA:-} ]]; then
        local ro2
        ro2=$(bash -c 'set +eu; . "$1" >/dev/null 2>&1; printf "%s" "$PGAPI_RO2_DSN"' _ "$DIR/topology.env")
        sed -i "/^replica = /a replica = $ro2" "$ini.tmp"
    fi
    {
        echo "; server $i of the cluster in $CDIR, written by scripts/cluster.sh up from the output of"
        echo "; pgapi --check-config (embedded defaults, the topology's DSNs and Redis, the caller's PGAPI_ settings)"
        cat "$ini.tmp"
    } >"$ini"
    rm -f -- "$ini.tmp" "$sdir/check-config.err"
    chmod 600 "$ini"
}

server_pid() { pid_of "$(server_dir "$1")/pgapi.pid" "$BIN"; }

# start_server I: the master in a session of its own (so a Ctrl-C aimed at the caller does not reach
# it, and its workers share its process group), with no PGAPI_ variable: the ini decides.
start_server() {
    local i=$1 sdir pid
    sdir=$(server_dir "$i")
    if pid=$(server_pid "$i"); then
        log "server $i already runs (pid $pid, port $(server_port "$i"))"
        return 0
    fi
    check_port_free "server $i" "$(server_port "$i")"
    check_port_free "server $i metrics" "$(metrics_port "$i")"
    (
        set +u
        # shellcheck disable=SC1091
        . "$DIR/topology.env"
        pgpass=$PGPASSFILE
        while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(PGAPI_|PG[A-Z]+$)')
        export PGPASSFILE=$pgpass
        cd "$sdir"
        close_fds
        exec setsid "$BIN" --config "$sdir/pgapi.ini" </dev/null >>"$sdir/pgapi.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$sdir/pgapi.pid"
}

# wait_server_ready I: /readyz answers 200 (ready, or degraded: it has a primary).
wait_server_ready() {
    local i=$1 sdir pid code="" t
    sdir=$(server_dir "$i")
    IFS= read -r pid <"$sdir/pgapi.pid"
    for ((t = 0; t < WAIT_SECS * 10; t++)); do
        code=$(http_status "http://$HOST:$(server_port "$i")/readyz")
        [[ $code != 200 ]] || return 0
        # the raw pid: until its exec the process is still this shell, not pgapi
        pid_alive "$pid" || { log_tail "$sdir/pgapi.log"; die "server $i exited during start-up (log: $sdir/pgapi.log)"; }
        sleep 0.1
    done
    log_tail "$sdir/pgapi.log"
    die "server $i: /readyz answered $code, not 200, for ${WAIT_SECS}s (log: $sdir/pgapi.log). 'scripts/cluster.sh down $DIR' stops what was started"
}

# stop_servers I...: TERM to each master (graceful: in-flight requests finish within drain_timeout),
# then wait; a master still there after that gets a second TERM (stop at once), then its process group
# a KILL.
stop_servers() {
    local i pid pids=() ids=() k
    for i in "$@"; do
        pid=$(server_pid "$i") || continue
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid") ids+=("$i")
    done
    for k in "${!pids[@]}"; do
        pid=${pids[$k]} i=${ids[$k]}
        if ! wait_gone "$pid" $((WAIT_SECS)); then
            log "server ${ids[$k]} (pid $pid) still runs ${WAIT_SECS}s after TERM: a second TERM"
            kill -TERM "$pid" 2>/dev/null || true
            if ! wait_gone "$pid" 5; then
                log "server $i (pid $pid): KILL to its process group"
                kill -KILL -- "-$pid" 2>/dev/null || true
                wait_gone "$pid" 5 || log "server $i (pid $pid) would not stop"
            fi
        fi
        pid_alive "$pid" || { rm -f -- "$(server_dir "$i")/pgapi.pid"; log "server $i stopped (pid $pid)"; }
    done
}

# ---------------------------------------------------------------- HAProxy
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)

write_haproxy_cfg() { # n
    local n=$1 i
    {
        echo "# HAProxy in front of the cluster in $CDIR, written by scripts/cluster.sh up"
        echo "global"
        echo "    maxconn 4096"
        echo "    stats socket $CDIR/haproxy.sock mode 600 level admin"
        echo "defaults"
        echo "    mode http"
        echo "    timeout connect 2s"
        # above pgapi's request_timeout: pgapi answers 408/503 itself before HAProxy gives up
        echo "    timeout client 60s"
        echo "    timeout server 60s"
        echo "    timeout http-keep-alive 5s"
        echo "frontend pgapi"
        echo "    bind $HOST:$LB_PORT"
        echo "    default_backend pgapi"
        echo "backend pgapi"
        echo "    balance roundrobin"
        # /readyz is 503 without a primary: HAProxy takes such a server out of rotation
        echo "    option httpchk GET /readyz HTTP/1.1"
        echo "    http-check send hdr Host $HOST"
        echo "    http-check expect status 200"
        echo "    default-server check inter 1s fastinter 500ms fall 2 rise 2"
        for ((i = 1; i <= n; i++)); do
            echo "    server s$i $HOST:$(server_port "$i")"
        done
    } >"$CDIR/haproxy.cfg.tmp"
    "$HAPROXY_BIN" -c -q -f "$CDIR/haproxy.cfg.tmp" || die "haproxy refused the configuration it was given ($CDIR/haproxy.cfg.tmp)"
    mv -f -- "$CDIR/haproxy.cfg.tmp" "$CDIR/haproxy.cfg"
}

haproxy_pid() { pid_of "$CDIR/haproxy.pid" "$HAPROXY_BIN"; }

start_haproxy() {
    local pid
    if pid=$(haproxy_pid); then
        log "haproxy already runs (pid $pid, port $LB_PORT)"
        return 0
    fi
    check_port_free haproxy "$LB_PORT"
    rm -f -- "$CDIR/haproxy.sock"
    (
        cd "$CDIR"
        close_fds
        # -db: in the foreground, logging to stderr, so that its pid is the one we record; nothing of
        # the caller's environment (it needs none)
        exec setsid env -i PATH="$PATH" "$HAPROXY_BIN" -db -f "$CDIR/haproxy.cfg" </dev/null >>"$CDIR/haproxy.log" 2>&1
    ) &
    echo "$!" >"$CDIR/haproxy.pid"
}

# haproxy_states: "sI STATUS" per server, as HAProxy's health checks see them (STATUS may hold a
# space: "UP 1/2" is up, going down or not yet checked).
haproxy_states() {
    [[ -S $CDIR/haproxy.sock ]] || return 0
    echo "show stat" | socat -t 2 - "UNIX-CONNECT:$CDIR/haproxy.sock" 2>/dev/null \
        | awk -F, '$1 == "pgapi" && $2 ~ /^s[0-9]+$/ { print $2, $18 }' || true
}

# wait_haproxy_ready N: every server UP in HAProxy's checks, and HAProxy answering /readyz.
wait_haproxy_ready() {
    local n=$1 t up=0 pid
    IFS= read -r pid <"$CDIR/haproxy.pid"
    for ((t = 0; t < WAIT_SECS * 10; t++)); do
        pid_alive "$pid" || { log_tail "$CDIR/haproxy.log"; die "haproxy exited during start-up (log: $CDIR/haproxy.log)"; }
        # "UP" alone: confirmed by a check ("UP 1/2" is the initial state, before any check)
        up=$(haproxy_states | awk '$2 == "UP" && NF == 2' | wc -l)
        if (( up == n )) && [[ $(http_status "http://$HOST:$LB_PORT/readyz") == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    log_tail "$CDIR/haproxy.log"
    die "haproxy: $up of $n servers UP after ${WAIT_SECS}s: $(haproxy_states | tr '\n' ' ')"
}

stop_haproxy() {
    local pid
    pid=$(haproxy_pid) || return 0
    # SIGUSR1 is HAProxy's soft stop: it stops listening and lets the requests under way finish
    kill -USR1 "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || log "haproxy (pid $pid) would not stop"
    fi
    pid_alive "$pid" || { rm -f -- "$CDIR/haproxy.pid" "$CDIR/haproxy.sock"; log "haproxy stopped (pid $pid)"; }
}

# ---------------------------------------------------------------- state
write_cluster_env() { # n
    local n=$1 i urls="" murls=""
    for ((i = 1; i <= n; i++)); do
        urls+="${urls:+ }http://$HOST:$(server_port "$i")"
        murls+="${murls:+ }http://$HOST:$(metrics_port "$i")/metrics"
    done
    {
        echo "# pgapi cluster in $CDIR on the topology $DIR, written by scripts/cluster.sh"
        echo "export PGAPI_CLUSTER_DIR=$(q "$CDIR")"
        echo "export PGAPI_CLUSTER_SIZE=$(q "$n")"
        echo "export PGAPI_CLUSTER_PORT=$(q "$LB_PORT")"
        echo "export PGAPI_CLUSTER_SERVER_PORT=$(q "$SERVER_PORT")"
        echo "export PGAPI_CLUSTER_METRICS_PORT=$(q "$METRICS_PORT")"
        echo "export PGAPI_CLUSTER_BIN=$(q "$BIN")"
        echo "export PGAPI_CLUSTER_URL=$(q "http://$HOST:$LB_PORT")"
        echo "export PGAPI_CLUSTER_SERVER_URLS=$(q "$urls")"
        echo "export PGAPI_CLUSTER_METRICS_URLS=$(q "$murls")"
    } >"$CENV.tmp"
    chmod 644 "$CENV.tmp"
    mv -f -- "$CENV.tmp" "$CENV"
}

lock_cluster() {
    exec 9>>"$CDIR/.lock"
    flock -w 120 9 || die "another cluster.sh is busy with $CDIR (lock $CDIR/.lock)"
}

# ---------------------------------------------------------------- commands
cmd_up() {
    local n=$SIZE i running=0
    [[ -x $BIN ]] || die "no pgapi binary at $BIN: run 'make' first (or set PGAPI_CLUSTER_BIN)"
    [[ -x $HAPROXY_BIN ]] || die "no haproxy: run scripts/deps.sh (it installs the haproxy package)"
    if [[ -n $RECORDED_SIZE && $RECORDED_SIZE != "$n" ]]; then
        for ((i = 1; i <= RECORDED_SIZE; i++)); do
            if server_pid "$i" >/dev/null; then running=1; fi
        done
        if haproxy_pid >/dev/null; then running=1; fi
        (( ! running )) || die "a cluster of $RECORDED_SIZE servers runs in $CDIR: 'scripts/cluster.sh down $DIR' first"
    fi
    check_ports "$n"
    require_topology
    write_cluster_env "$n"
    for ((i = 1; i <= n; i++)); do
        server_pid "$i" >/dev/null || write_ini "$i"
    done
    log "migrate up (through server 1's ini)"
    (
        set +u
        # shellcheck disable=SC1091
        . "$DIR/topology.env"
        cd "$REPO_ROOT"
        "$BIN" --config "$(server_dir 1)/pgapi.ini" migrate up >/dev/null
    ) || die "pgapi migrate up failed"
    for ((i = 1; i <= n; i++)); do start_server "$i"; done
    for ((i = 1; i <= n; i++)); do wait_server_ready "$i"; done
    write_haproxy_cfg "$n"
    start_haproxy
    wait_haproxy_ready "$n"
    log "up: $n servers on ports $SERVER_PORT..$(server_port "$n") (metrics $METRICS_PORT..$(metrics_port "$n")), haproxy on $HOST:$LB_PORT"
    log "env: . $CENV"
}

cmd_down() {
    local n=${RECORDED_SIZE:-0} i ids=()
    if [[ ! -d $CDIR ]]; then
        log "no cluster dir $CDIR: nothing to stop"
        return 0
    fi
    # servers past the recorded size, from an earlier up, have pid files too
    for i in "$CDIR"/s*/pgapi.pid; do
        [[ -f $i ]] || continue
        i=${i%/pgapi.pid}; i=${i##*/s}
        if [[ $i =~ ^[0-9]+$ ]] && (( i > n )); then n=$i; fi
    done
    stop_haproxy
    for ((i = 1; i <= n; i++)); do ids+=("$i"); done
    (( ${#ids[@]} == 0 )) || stop_servers "${ids[@]}"
    if (( PURGE )); then
        ! haproxy_pid >/dev/null || die "not purging $CDIR: haproxy still runs"
        for i in "${ids[@]}"; do
            ! server_pid "$i" >/dev/null || die "not purging $CDIR: server $i still runs"
        done
        [[ -f $CENV || ! -e $CDIR/haproxy.cfg ]] || die "not purging $CDIR: it does not look like a cluster dir (no cluster.env)"
        log "purging $CDIR"
        rm -rf -- "$CDIR"
    fi
}

cmd_status() {
    local n=${RECORDED_SIZE:-0} i pid rc=0 st
    declare -A lb=()
    [[ -f $CENV ]] || { log "no cluster in $CDIR"; return 3; }
    while read -r i st; do lb[$i]=$st; done < <(haproxy_states)
    for ((i = 1; i <= n; i++)); do
        if pid=$(server_pid "$i"); then
            printf 'server%-3s running pid=%s port=%s metrics=%s readyz=%s haproxy=%s\n' "$i" "$pid" \
                "$(server_port "$i")" "$(metrics_port "$i")" "$(http_status "http://$HOST:$(server_port "$i")/readyz")" \
                "${lb[s$i]:--}"
        else
            printf 'server%-3s stopped port=%s haproxy=%s\n' "$i" "$(server_port "$i")" "${lb[s$i]:--}"
            rc=3
        fi
    done
    if pid=$(haproxy_pid); then
        printf '%-9s running pid=%s port=%s readyz=%s\n' haproxy "$pid" "$LB_PORT" \
            "$(http_status "http://$HOST:$LB_PORT/readyz")"
    else
        printf '%-9s stopped port=%s\n' haproxy "$LB_PORT"
        rc=3
    fi
    return "$rc"
}

snapshot_caller_settings
check_cluster_dir_trusted
load_settings
case $CMD in
    up) lock_cluster; cmd_up ;;
    down) [[ ! -d $CDIR ]] || lock_cluster; cmd_down ;;
    status) cmd_status ;;
esac
