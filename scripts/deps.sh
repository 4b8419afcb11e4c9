#!/usr/bin/env bash
# Install the Debian packages pgapi needs to build, test (valgrind: the leak check
# in tests/integration/test_hostile.py; clang-14 and libclang-rt-14-dev: libFuzzer
# for tests/fuzz; groff-base and man-db: the man page check in test_systemd.py; systemd
# and libseccomp2: systemd-analyze/-sysusers/-tmpfiles and the unit's system call filter there;
# strace: the argv check in tests/integration/test_topology.py; clang-format: the layout check of
# tests/run.sh; haproxy: the load balancer in front of three servers in test_cluster.py; chromium: the
# headless browser of test_cors.py; prometheus: promtool and a real scrape in test_prometheus.py; debhelper, dpkg-dev,
# lintian, fakeroot: make deb and test_deb.py) and run its
# local topologies (patroni, etcd-server, haproxy, redis-sentinel and jq: scripts/ha.sh's) (with
# --bench: also nginx, Node.js, npm and perf for bench/run.sh).
# Idempotent and silent when everything is already installed.
#
# The topology runs Redis as the `redis` system user (its package creates it); this script makes
# sure that user exists even when every package was installed before.
#
# Services are never started by the install: a temporary /usr/sbin/policy-rc.d
# (exit 101) blocks the packages' postinst from starting PostgreSQL's default
# cluster, PgBouncer, Redis, Redis Sentinel or etcd on their standard ports. If one of them was
# started by this install anyway, it is stopped again; anything that was
# already running before is left alone.
set -euo pipefail

PACKAGES=(
    libevent-dev libpq-dev libhiredis-dev libjson-c-dev libinih-dev libhttp-parser-dev
    libcmocka-dev pkg-config gcc make clang-14 libclang-rt-14-dev postgresql pgbouncer redis-server
    python3-pytest python3-psycopg2 python3-redis python3-yaml socat wrk curl procps iproute2 valgrind
    groff-base man-db systemd libseccomp2 strace clang-format haproxy chromium
    patroni etcd-server redis-sentinel jq prometheus debhelper dpkg-dev lintian fakeroot
)

log() { printf 'deps: %s\n' "$*" >&2; }

# The system user Redis runs as in the topology (redis-server's postinst makes it; a half-installed
# or hand-removed one is made again, as the package would: a system user and group, no login).
ensure_redis_user() {
    id -u redis >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "system user 'redis' is missing: run this script as root"
        exit 1
    fi
    log "creating the system user redis"
    getent group redis >/dev/null || groupadd --system redis
    useradd --system --gid redis --home-dir /var/lib/redis --no-create-home --shell /usr/sbin/nologin redis
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
# --bench: what bench/run.sh needs besides, judged by the command (a Node.js from elsewhere will do)
if [[ ${1:-} == --bench ]]; then
    for pair in nginx:nginx node:nodejs npm:npm perf:linux-perf; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
fi
if (( ${#missing[@]} == 0 )); then
    ensure_redis_user
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]}"
    log "run this script as root (or: apt-get install ${missing[*]})"
    exit 1
fi

# What was running before, so that we only ever stop what this install started.
pg_clusters_online() {
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1 " " $2 }' || true
    fi
}
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q . ; }
before_clusters=$(pg_clusters_online)
before_redis=0; listening 6379 && before_redis=1
before_bouncer=0; listening 6432 && before_bouncer=1
before_nginx=0; listening 80 && before_nginx=1
before_sentinel=0; listening 26379 && before_sentinel=1
before_etcd=0; listening 2379 && before_etcd=1

policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if (( created_policy )); then rm -f -- "$policy"; fi
}
trap cleanup EXIT
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from pgapi scripts/deps.sh: do not start services\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

cleanup
created_policy=0

# Stop whatever the install started despite policy-rc.d (never what ran before).
while read -r ver name; do
    [[ -n ${ver:-} ]] || continue
    if ! grep -qx "$ver $name" <<<"$before_clusters"; then
        log "stopping PostgreSQL cluster $ver/$name started by the package install"
        pg_ctlcluster "$ver" "$name" stop -m fast || log "could not stop cluster $ver/$name"
    fi
done < <(pg_clusters_online)

stop_pidfile() { # name pidfile exe
    local pid
    [[ -f $2 ]] || return 0
    pid=$(head -n1 "$2")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$3")" ]] || return 0
    log "stopping $1 (pid $pid) started by the package install"
    kill -TERM "$pid" 2>/dev/null || true
}
if (( ! before_redis )) && listening 6379; then
    stop_pidfile redis-server /run/redis/redis-server.pid /usr/bin/redis-server
fi
if (( ! before_bouncer )) && listening 6432; then
    stop_pidfile pgbouncer /run/postgresql/pgbouncer.pid /usr/sbin/pgbouncer
fi
if (( ! before_nginx )) && listening 80; then
    stop_pidfile nginx /run/nginx.pid /usr/sbin/nginx
fi
if (( ! before_sentinel )) && listening 26379; then
    stop_pidfile redis-sentinel /run/sentinel/redis-sentinel.pid /usr/bin/redis-sentinel
fi
if (( ! before_etcd )) && listening 2379; then
    log "etcd listens on 2379 after the install: stop it if the package started it (no pid file to check)"
fi

still=()
for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || still+=("$pkg")
done
if (( ${#still[@]} )); then
    log "still missing after install: ${still[*]}"
    exit 1
fi
ensure_redis_user
log "installed: ${missing[*]}"
