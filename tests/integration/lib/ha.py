"""Drive scripts/ha.sh, the HA topology (etcd, three Patroni nodes node1..node3, HAProxy, PgBouncer, Redis
r1/r2 under three Sentinels s1..s3), from the HA tests: bring it up once per module in a temp dir and take
it down, ask Patroni and the Sentinels who leads, find and kill their processes, wait for a role layout,
and write pgapi inis from the topology's DIR/pgapi.ini. Nothing here needs pytest fixtures.

Ports: an HA topology takes 19 ports from its base (the layout: scripts/ha.sh's usage). Each module picks
its base as port_base() + OFFSET, from the offsets kept for HA topologies (100..139, 20 each; the simple
topologies of the other tests use 0..99): test_ha_topology.py 100, test_ha.py 120."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg2
import redis as redis_lib

from .pgapi_server import ini_text
from .topology import (HOST, REDIS_ADMIN_PASSWORDS, REDIS_PGAPI_PASSWORDS, REPO_ROOT, TopologyError,
                       listening_ports, parse_env_file, pid_alive, port_base, read_pid, read_secrets,
                       remove_dir, wait_until)

HA_SH = os.path.join(REPO_ROOT, "scripts", "ha.sh")
NODES = ("node1", "node2", "node3")
REDIS_NODES = ("r1", "r2")
SENTINELS = ("s1", "s2", "s3")
MASTER_NAME = "pgapi"
UP_TIMEOUT = 240
PORTS_PER_TOPOLOGY = 19


class HaTopology:
    """One HA topology: its state dir and port base; after up(), `env` holds DIR/ha.env's values."""

    def __init__(self, state_dir, base, sync=True):
        self.dir = state_dir
        self.base = base
        self.sync = sync
        self.env = {}
        self.secrets = {}
        self._conns = []
        self._redis = []

    @classmethod
    def in_temp_dir(cls, base, sync=True):
        """A topology in a fresh temp dir under /tmp (not up yet)."""
        d = tempfile.mkdtemp(prefix="pgapi-ha-", dir="/tmp")
        os.chmod(d, 0o755)
        return cls(os.path.join(d, "ha"), base, sync)

    @property
    def ports(self):
        """Every port the topology listens on."""
        return list(range(self.base, self.base + PORTS_PER_TOPOLOGY))

    # ------------------------------------------------------------ the script
    def run(self, *args, check=True, timeout=UP_TIMEOUT):
        """scripts/ha.sh ARGS... DIR with this topology's ports; the CompletedProcess (asserted rc 0 if check)."""
        env = dict(os.environ, PGAPI_HA_PORT_BASE=str(self.base), PGAPI_HA_SYNC="on" if self.sync else "off")
        env.pop("PGAPI_HA_STATE_DIR", None)
        env.pop("PGAPI_PURGE", None)
        cmd = [HA_SH, args[0], self.dir, *args[1:]]
        try:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TopologyError(f"{' '.join(cmd)} did not finish within {timeout}s; stderr so far:\n{exc.stderr}") from exc
        if check and proc.returncode != 0:
            raise TopologyError(f"{' '.join(cmd)} exited {proc.returncode}, expected 0\n"
                                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def up(self):
        """ha.sh up: starts whatever is not running (also a node or Redis a test killed) and waits for the
        layout; then reloads ha.env and the secrets."""
        proc = self.run("up")
        self.load_env()
        return proc

    def down(self, purge=False, check=True):
        """ha.sh down [--purge]; closes this object's clients first."""
        self.close_clients()
        if purge and not os.path.isdir(self.dir):
            return None
        return self.run("down", *(["--purge"] if purge else []), check=check)

    def status(self):
        """ha.sh status (rc 3 when something is stopped)."""
        return self.run("status", check=False)

    def haproxy_restart(self):
        """ha.sh haproxy-restart: HAProxy stopped and started again, its checks agreeing with Patroni."""
        return self.run("haproxy-restart")

    def load_env(self):
        """DIR/ha.env and DIR/secrets.env; registers the Redis passwords with lib.topology's clients."""
        self.env = parse_env_file(os.path.join(self.dir, "ha.env"))
        self.secrets = read_secrets(self.dir)
        for r in REDIS_NODES:
            REDIS_ADMIN_PASSWORDS[self.redis_port(r)] = self.secrets["REDIS_ADMIN_PASSWORD"]
        if self.secrets["REDIS_PASSWORD"] not in REDIS_PGAPI_PASSWORDS:
            REDIS_PGAPI_PASSWORDS.append(self.secrets["REDIS_PASSWORD"])
        return self.env

    # ------------------------------------------------------------ ports and files
    def pg_port(self, node):
        """PostgreSQL port of node1..node3."""
        return int(self.env[f"PGAPI_HA_{node.upper()}_PORT"])

    def rest_port(self, node):
        """Patroni REST API port of a node."""
        return int(self.env[f"PGAPI_HA_{node.upper()}_REST_PORT"])

    def ro_port(self, node):
        """HAProxy's read-only frontend of that node alone."""
        return int(self.env[f"PGAPI_HA_{node.upper()}_RO_PORT"])

    def redis_port(self, r):
        """Port of Redis r1 or r2."""
        return int(self.env[f"PGAPI_HA_REDIS_{r.upper()}_PORT"])

    def sentinel_port(self, s):
        """Port of Sentinel s1..s3."""
        return int(self.env[f"PGAPI_HA_SENTINEL_{s[1:]}_PORT"])

    @property
    def bouncer_port(self):
        return int(self.env["PGAPI_HA_BOUNCER_PORT"])

    @property
    def haproxy_rw_port(self):
        return int(self.env["PGAPI_HA_HAPROXY_RW_PORT"])

    @property
    def haproxy_ro_port(self):
        return int(self.env["PGAPI_HA_HAPROXY_RO_PORT"])

    @property
    def pgpass(self):
        return self.env["PGPASSFILE"]

    # ------------------------------------------------------------ Patroni
    def members(self):
        """{node: {"role": leader|sync_standby|replica, "state": ..., "timeline": ..., "lag": ...}} from the
        first node whose REST API answers GET /cluster ({} when none does)."""
        for node in NODES:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.rest_port(node)}/cluster", timeout=2) as r:
                    body = json.load(r)
            except (OSError, ValueError):
                continue
            return {m["name"]: m for m in body.get("members", [])}
        return {}

    def leader(self):
        """The leader's node name, or None."""
        return next((n for n, m in self.members().items() if m.get("role") == "leader"), None)

    def sync_standby(self):
        """The sync standby's node name, or None."""
        return next((n for n, m in self.members().items() if m.get("role") == "sync_standby"), None)

    def patronictl(self, *args, check=True, timeout=60):
        """patronictl -c DIR/patronictl.yml ARGS...; the CompletedProcess."""
        proc = subprocess.run(["patronictl", "-c", self.env["PGAPI_HA_PATRONICTL_CONFIG"], *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"patronictl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def patronictl_list(self):
        """`patronictl list -f json`: [{"Member", "Host", "Role" (Leader, Sync Standby, Replica), "State",
        "TL", "Lag in MB"}]."""
        return json.loads(self.patronictl("list", "-f", "json").stdout)

    def switchover(self, candidate=None):
        """patronictl switchover from the leader to `candidate` (default: the sync standby, the only one
        Patroni accepts in synchronous mode; else any replica); returns the candidate once Patroni names
        it leader."""
        leader = self.leader()
        assert leader, f"no leader to switch over from: {self.members()}"
        if candidate is None:
            candidate = self.sync_standby() or next(n for n in NODES if n != leader)
        self.patronictl("switchover", "--leader", leader, "--candidate", candidate, "--force")
        wait_until(lambda: self.leader() == candidate, 30, f"{candidate} leader after the switchover")
        return candidate

    def layout_ok(self):
        """Every node running, one leader, the others replicas (one of them the sync standby in synchronous
        mode), both streaming from the leader."""
        members = self.members()
        roles = sorted(m.get("role") for m in members.values())
        want = ["leader", "replica", "sync_standby"] if self.sync else ["leader", "replica", "replica"]
        if len(members) != 3 or roles != want or any(m.get("state") != "running" for m in members.values()):
            return False
        leader = next(n for n, m in members.items() if m["role"] == "leader")
        return self.superuser_query(leader, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 2

    def wait_layout(self, timeout=60):
        """Waits for layout_ok(); returns the members."""
        wait_until(self.layout_ok, timeout, "leader + sync standby + replica, all running and streaming",
                   interval=0.2)
        return self.members()

    def patroni_pid(self, node):
        """Pid of a node's Patroni (None when its pid file names no live process)."""
        pid = read_pid(self.env[f"PGAPI_HA_{node.upper()}_PATRONI_PIDFILE"])
        return pid if pid and pid_alive(pid) else None

    def postmaster_pid(self, node):
        """Pid of a node's postmaster, from its postmaster.pid (None when not running)."""
        pid = read_pid(os.path.join(self.env[f"PGAPI_HA_{node.upper()}_PGDATA"], "postmaster.pid"))
        return pid if pid and pid_alive(pid) else None

    def kill_node(self, node, patroni=True, postmaster=True):
        """kill -9 of a node's Patroni and/or postmaster (both at once); returns the pids killed."""
        pids = [p for p in ((self.patroni_pid(node) if patroni else None),
                            (self.postmaster_pid(node) if postmaster else None)) if p]
        kill9(*pids)
        return pids

    def haproxy_states(self):
        """{(proxy, node): status} from HAProxy's admin socket ("UP", "DOWN", "UP 1/2" while changing)."""
        out = subprocess.run(["socat", "-t", "2", "-", f"UNIX-CONNECT:{self.env['PGAPI_HA_HAPROXY_SOCKET']}"],
                             input="show stat\n", capture_output=True, text=True, timeout=10).stdout
        states = {}
        for line in out.splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0].startswith("pg_") and f[1] in NODES:
                states[(f[0], f[1])] = f[17]
        return states

    # ------------------------------------------------------------ Redis and Sentinel
    def sentinel_masters(self):
        """{sentinel: "host:port" of the master it names, or None}."""
        out = {}
        for s in SENTINELS:
            client = redis_lib.Redis(host=HOST, port=self.sentinel_port(s), password=None, socket_timeout=2,
                                     socket_connect_timeout=2)
            try:
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
                out[s] = f"{addr[0].decode()}:{addr[1].decode()}" if addr else None
            except redis_lib.RedisError:
                out[s] = None
            finally:
                client.close()
        return out

    def redis_master(self):
        """The master's "host:port" when every Sentinel names the same one, else None."""
        named = set(self.sentinel_masters().values())
        return named.pop() if len(named) == 1 and None not in named else None

    def redis_node_of(self, address):
        """r1 or r2 for a "host:port"."""
        return next(r for r in REDIS_NODES if address == f"{HOST}:{self.redis_port(r)}")

    def redis_pid(self, r):
        """Pid of Redis r1 or r2 (None when not running)."""
        pid = read_pid(self.env[f"PGAPI_HA_REDIS_{r.upper()}_PIDFILE"])
        return pid if pid and pid_alive(pid) else None

    def redis_master_pid(self):
        """Pid of the Redis the Sentinels name master."""
        return self.redis_pid(self.redis_node_of(self.redis_master()))

    def sentinel_pid(self, s):
        """Pid of Sentinel s1..s3 (None when not running)."""
        pid = read_pid(self.env[f"PGAPI_HA_SENTINEL_{s[1:]}_PIDFILE"])
        return pid if pid and pid_alive(pid) else None

    # ------------------------------------------------------------ clients
    def _pg(self, **kw):
        kw.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(**kw)
        conn.autocommit = True
        self._conns.append(conn)
        return conn

    def superuser(self, node):
        """postgres on a node's own server, over its unix socket."""
        return self._pg(host=self.env[f"PGAPI_HA_{node.upper()}_SOCKET_DIR"], port=self.pg_port(node),
                        dbname="postgres", user="postgres")

    def superuser_query(self, node, sql):
        """The first column of the first row of `sql` run as postgres on a node (a connection of its own)."""
        conn = psycopg2.connect(host=self.env[f"PGAPI_HA_{node.upper()}_SOCKET_DIR"], port=self.pg_port(node),
                                dbname="postgres", user="postgres", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()

    def bouncer(self, dbname="pgapi_rw", user="app"):
        """app through PgBouncer: pgapi_rw, pgapi_ro, pgapi_ro1..3 (pgbouncer as pgbadmin: the console)."""
        return self._pg(host=HOST, port=self.bouncer_port, dbname=dbname, user=user, passfile=self.pgpass)

    def haproxy(self, port):
        """app straight through one HAProxy frontend (database pgapi)."""
        return self._pg(host=HOST, port=port, dbname="pgapi", user="app", passfile=self.pgpass)

    def redis(self, r, **kw):
        """Redis r1 or r2 as its default (admin) user unless kw says otherwise."""
        kw.setdefault("password", self.secrets.get("REDIS_ADMIN_PASSWORD"))
        client = redis_lib.Redis(host=HOST, port=self.redis_port(r), socket_timeout=5, socket_connect_timeout=5, **kw)
        self._redis.append(client)
        return client

    def sentinel(self, s):
        """A client of Sentinel s1..s3 (no login)."""
        client = redis_lib.Redis(host=HOST, port=self.sentinel_port(s), password=None, socket_timeout=2,
                                 socket_connect_timeout=2)
        self._redis.append(client)
        return client

    def close_clients(self):
        """Closes every client made here."""
        for c in self._conns + self._redis:
            try:
                c.close()
            except Exception:
                pass
        self._conns.clear()
        self._redis.clear()

    # ------------------------------------------------------------ pgapi
    def pgapi_settings(self):
        """DIR/pgapi.ini as {section: {key: value, or [values] for a repeated key (replica)}}."""
        settings, section = {}, None
        with open(self.env["PGAPI_HA_PGAPI_INI"]) as f:
            for line in f:
                line = line.strip()
                if not line or line[0] in ";#":
                    continue
                if line.startswith("["):
                    section = settings.setdefault(line.strip("[]"), {})
                    continue
                key, _, value = (part.strip() for part in line.partition("="))
                if key in section:
                    prev = section[key]
                    section[key] = (prev if isinstance(prev, list) else [prev]) + [value]
                else:
                    section[key] = value
        return settings

    def write_pgapi_inis(self, directory, ports, extra=None):
        """One ini per (http_port, metrics_port) in `ports`, under directory/sI/pgapi.ini: DIR/pgapi.ini with
        its own listen addresses, plus `extra` ({section: {key: value}}); returns the paths."""
        paths = []
        for i, (port, metrics_port) in enumerate(ports, 1):
            s = self.pgapi_settings()
            s.setdefault("server", {})["listen"] = f"{HOST}:{port}"
            s.setdefault("metrics", {})["listen"] = f"{HOST}:{metrics_port}"
            for section, keys in (extra or {}).items():
                s.setdefault(section, {}).update(keys)
            d = os.path.join(str(directory), f"s{i}")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "pgapi.ini")
            with open(path, "w") as f:
                f.write(ini_text(s))
            paths.append(path)
        return paths

    def pgapi_overrides(self):
        """DIR/pgapi.ini's [database] and [redis] for PgapiServer(topology=None, overrides=...): a test server
        on this topology (host/port of Redis are unused with sentinels)."""
        s = self.pgapi_settings()
        return {"database": s["database"], "redis": dict(s["redis"], enabled="on")}

    # ------------------------------------------------------------ failures
    def log_paths(self):
        """Every log of the topology."""
        e = self.env
        paths = [os.path.join(e["PGAPI_HA_LOG_DIR"], "etcd.log"), e["PGAPI_HA_HAPROXY_LOG"], e["PGAPI_HA_BOUNCER_LOG"]]
        for n in NODES:
            paths += [e[f"PGAPI_HA_{n.upper()}_PATRONI_LOG"], e[f"PGAPI_HA_{n.upper()}_LOG"]]
        paths += [e[f"PGAPI_HA_REDIS_{r.upper()}_LOG"] for r in REDIS_NODES]
        paths += [e[f"PGAPI_HA_SENTINEL_{s[1:]}_LOG"] for s in SENTINELS]
        return paths

    def log_tails(self, lines=20):
        """The last lines of every log, for a failure message."""
        out = []
        for p in self.log_paths() if self.env else []:
            try:
                with open(p, errors="replace") as f:
                    out.append(f"--- {p} ---\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                continue
        return "\n".join(out)

    def all_pids(self):
        """{name: pid} of every process of the topology that runs now."""
        pids = {"etcd": read_pid(self.env["PGAPI_HA_ETCD_PIDFILE"]),
                "haproxy": read_pid(self.env["PGAPI_HA_HAPROXY_PIDFILE"]),
                "pgbouncer": read_pid(self.env["PGAPI_HA_BOUNCER_PIDFILE"])}
        for n in NODES:
            pids[f"patroni {n}"] = self.patroni_pid(n)
            pids[f"postgresql {n}"] = self.postmaster_pid(n)
        for r in REDIS_NODES:
            pids[f"redis {r}"] = self.redis_pid(r)
        for s in SENTINELS:
            pids[f"sentinel {s}"] = self.sentinel_pid(s)
        return {k: v for k, v in pids.items() if v and pid_alive(v)}


def kill9(*pids):
    """SIGKILL to each pid at once (a pid already gone is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(pids, timeout=20):
    """Waits until none of pids is alive."""
    wait_until(lambda: not [p for p in pids if pid_alive(p)], timeout, f"pids {pids} gone")


def start_ha(offset, sync=True):
    """An HA topology up at port_base() + offset in a temp dir; on failure its logs go to stderr and it is
    taken down before the error propagates."""
    ha = HaTopology.in_temp_dir(port_base() + offset, sync)
    t0 = time.monotonic()
    try:
        ha.up()
    except BaseException:
        try:
            ha.load_env()
            sys.stderr.write(ha.log_tails() + "\n")
        except OSError:
            pass
        stop_ha(ha)
        raise
    ha.up_seconds = time.monotonic() - t0
    return ha


def stop_ha(ha):
    """down --purge, then the temp dir's parent is removed (nothing of it runs any more)."""
    try:
        ha.down(purge=True, check=True)
    finally:
        parent = os.path.dirname(ha.dir)
        if parent.startswith("/tmp/pgapi-ha-") and os.path.isdir(parent):
            remove_dir(parent)


def ha_module(offset, sync=True):
    """For a module-scoped fixture (`yield from ha_module(OFFSET)`): the topology up, then down and purged."""
    ha = start_ha(offset, sync)
    try:
        yield ha
    finally:
        stop_ha(ha)


def ports_listening(ports):
    """The ports of `ports` with a listener now."""
    return sorted(set(ports) & listening_ports())
