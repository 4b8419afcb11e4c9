"""Drive scripts/topology.sh and talk to the servers of one local topology (PostgreSQL primary +
replica, PgBouncer, Redis): bring one up on a port base and take it down (conftest.py's fixtures and
tests with topologies of their own), wait for a condition, find processes and ports. Nothing here needs
pytest fixtures."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2
import redis as redis_lib

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # tests/integration/lib/..
TOPOLOGY_SH = os.path.join(REPO_ROOT, "scripts", "topology.sh")
HOST = "127.0.0.1"
UP_TIMEOUT = 240
DOWN_TIMEOUT = 180


class TopologyError(Exception):
    pass


# Every Redis of the tests requires a password, like the topology's (scripts/topology.sh: ACL users
# "default", for tools, and "pgapi", for the server). Clients made anywhere in the tests with
# redis_lib.Redis(port=...) log in as "default" with the password of the Redis on that port, so that
# no test has to know it; a test that wants a client without credentials passes password=None.
REDIS_ADMIN_PASSWORDS = {}   # port -> password of that Redis's default user
REDIS_PGAPI_PASSWORDS = []   # the "pgapi" user's password of every topology loaded: own Redis servers accept each
OWN_REDIS_ADMIN_PASSWORD = uuid.uuid4().hex  # the default user's password of the tests' own Redis servers


class AuthenticatedRedis(redis_lib.Redis):
    def __init__(self, *args, **kw):
        if not args and "password" not in kw and "username" not in kw:
            kw["password"] = REDIS_ADMIN_PASSWORDS.get(int(kw.get("port", 6379)))
        super().__init__(*args, **kw)


redis_lib.Redis = AuthenticatedRedis


def read_secrets(state_dir):
    """KEY=value lines of a topology's secrets.env (root only)."""
    out = {}
    with open(os.path.join(state_dir, "secrets.env")) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                out[key] = value
    return out


def own_redis_conf(directory, port):
    """A redis.conf for a test's own redis-server on `port`, with the users of the topology's Redis: its
    "pgapi" user accepts the password of every topology loaded (a pgapi server configured for one logs
    in to it alike). Mode 600: the passwords never go on a command line. Returns its path."""
    assert REDIS_PGAPI_PASSWORDS, "an own Redis server needs a topology up (the password pgapi servers use)"
    path = os.path.join(str(directory), f"redis-{port}.conf")
    pgapi = " ".join(f">{pw}" for pw in REDIS_PGAPI_PASSWORDS)
    text = (f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {directory}\n"
            f"user default on >{OWN_REDIS_ADMIN_PASSWORD} ~* &* +@all\n"
            f"user pgapi on {pgapi} ~* &* +@all -@admin -@dangerous +info\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    REDIS_ADMIN_PASSWORDS[port] = OWN_REDIS_ADMIN_PASSWORD
    return path


def wait_until(predicate, timeout, what, interval=0.1):
    """Poll predicate() until it returns a truthy value; return that value.
    Raise AssertionError naming `what` and the last value/exception otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last result: {last!r}")
        time.sleep(interval)


def pid_alive(pid):
    """True when the process exists and is not a zombie (PID 1 on these
    machines does not reap orphans, so dead daemons linger as zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def listening_ports():
    """Set of TCP ports with a listener, from `ss -ltn`."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL, timeout=30).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            try:
                ports.add(int(fields[3].rsplit(":", 1)[1]))
            except ValueError:
                pass
    return ports


def read_pid(path):
    try:
        with open(path) as f:
            first = f.readline().strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


def parse_env_file(path):
    """Parse the `export KEY='value'` lines of topology.env."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = shlex.split(line)
            if parts and parts[0] == "export":
                parts = parts[1:]
            for part in parts:
                key, sep, value = part.partition("=")
                if sep:
                    env[key] = value
    return env


class Topology:
    """One topology: a state dir and four ports, plus the port a second replica gets
    (`topology.sh add-replica`)."""

    def __init__(self, state_dir, primary_port, replica_port, bouncer_port, redis_port, replica2_port):
        self.dir = state_dir
        self.primary_port = primary_port
        self.replica_port = replica_port
        self.bouncer_port = bouncer_port
        self.redis_port = redis_port
        self.replica2_port = replica2_port
        self.vars = {}
        self.secrets = {}
        self._conns = []
        self._redis = []

    @classmethod
    def in_temp_dir(cls, port_base):
        d = tempfile.mkdtemp(prefix="pgapi-test-", dir="/tmp")
        os.chmod(d, 0o755)
        return cls(d, port_base, port_base + 1, port_base + 2, port_base + 3, port_base + 4)

    @property
    def ports(self):
        return [self.primary_port, self.replica_port, self.bouncer_port, self.redis_port]

    @property
    def script_env(self):
        env = dict(os.environ)
        env.update({
            "PGAPI_PRIMARY_PORT": str(self.primary_port),
            "PGAPI_REPLICA_PORT": str(self.replica_port),
            "PGAPI_BOUNCER_PORT": str(self.bouncer_port),
            "PGAPI_REDIS_PORT": str(self.redis_port),
            "PGAPI_REPLICA2_PORT": str(self.replica2_port),
        })
        env.pop("PGAPI_STATE_DIR", None)
        env.pop("PGAPI_PURGE", None)
        return env

    @property
    def env(self):
        """Environment for subprocesses that talk to this topology (PGPASSFILE etc.)."""
        env = dict(os.environ)
        env.update(self.vars)
        env["PGPASSFILE"] = os.path.join(self.dir, "pgpass")
        return env

    # ------------------------------------------------------------ script
    def run(self, *args, check=True, timeout=UP_TIMEOUT):
        cmd = [TOPOLOGY_SH, *args, self.dir]
        try:
            proc = subprocess.run(cmd, env=self.script_env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TopologyError(f"{' '.join(cmd)} did not finish within {timeout}s; "
                                f"stderr so far:\n{exc.stderr}") from exc
        if check and proc.returncode != 0:
            raise TopologyError(f"{' '.join(cmd)} exited {proc.returncode}, expected 0\n"
                                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def up(self):
        proc = self.run("up")
        self.load_env()
        return proc

    def load_env(self):
        self.vars = parse_env_file(os.path.join(self.dir, "topology.env"))
        self.secrets = read_secrets(self.dir)
        REDIS_ADMIN_PASSWORDS[self.redis_port] = self.secrets["REDIS_ADMIN_PASSWORD"]
        if self.secrets["REDIS_PASSWORD"] not in REDIS_PGAPI_PASSWORDS:
            REDIS_PGAPI_PASSWORDS.append(self.secrets["REDIS_PASSWORD"])
        return self.vars

    def down(self, purge=False, check=True):
        self.close_clients()
        args = ["down", "--purge"] if purge else ["down"]
        if purge and not os.path.isdir(self.dir):
            return None
        return self.run(*args, check=check, timeout=DOWN_TIMEOUT)

    # ------------------------------------------------------------ processes
    def pid_files(self):
        """Pid file of each server, by its role in topology.env (after a promote without a second
        replica, "replica" is the primary: pgapi_ro reads from it)."""
        v = self.vars
        files = {
            "primary": os.path.join(v["PGAPI_PRIMARY_PGDATA"], "postmaster.pid"),
            "replica": os.path.join(v["PGAPI_REPLICA_PGDATA"], "postmaster.pid"),
            "pgbouncer": v["PGAPI_BOUNCER_PIDFILE"],
            "redis": v["PGAPI_REDIS_PIDFILE"],
        }
        if "PGAPI_REPLICA2_PGDATA" in v:
            files["replica2"] = os.path.join(v["PGAPI_REPLICA2_PGDATA"], "postmaster.pid")
        return files

    def pids(self):
        return {name: read_pid(path) for name, path in self.pid_files().items()}

    # ------------------------------------------------------------ clients
    def _pg(self, **kw):
        kw.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(**kw)
        conn.autocommit = True
        self._conns.append(conn)
        return conn

    def _bouncer(self, dbname, user="app"):
        return self._pg(host=HOST, port=self.bouncer_port, dbname=dbname, user=user,
                        passfile=os.path.join(self.dir, "pgpass"))

    def rw(self):
        return self._bouncer("pgapi_rw")

    def ro(self):
        return self._bouncer("pgapi_ro")

    def ro2(self):
        return self._bouncer("pgapi_ro2")

    def bouncer_admin(self):
        return self._bouncer("pgbouncer", user="pgbadmin")

    def admin(self, role):
        """postgres superuser on the server that has `role` (PRIMARY, REPLICA, REPLICA2,
        FORMER_PRIMARY) in topology.env, over its unix socket."""
        return self._pg(host=self.vars[f"PGAPI_{role}_SOCKET_DIR"], port=int(self.vars[f"PGAPI_{role}_PORT"]),
                        dbname="postgres", user="postgres")

    def primary_admin(self):
        return self.admin("PRIMARY")

    def replica_admin(self):
        return self.admin("REPLICA")

    def redis(self, **kw):
        """A client of the topology's Redis, as its default (admin) user unless kw says otherwise."""
        kw.setdefault("password", self.secrets.get("REDIS_ADMIN_PASSWORD"))
        client = redis_lib.Redis(host=HOST, port=self.redis_port, socket_timeout=5,
                                 socket_connect_timeout=5, **kw)
        self._redis.append(client)
        return client

    def close_clients(self):
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._conns.clear()
        for client in self._redis:
            try:
                client.close()
            except Exception:
                pass
        self._redis.clear()

    def log_tails(self, lines=20):
        """Last lines of every log, for failure messages."""
        out = []
        paths = []
        log_dir = self.vars.get("PGAPI_LOG_DIR")
        if log_dir and os.path.isdir(log_dir):
            paths += [os.path.join(log_dir, n) for n in sorted(os.listdir(log_dir))]
        paths.append(os.path.join(self.dir, "redis", "redis.log"))
        for p in paths:
            try:
                with open(p, errors="replace") as f:
                    tail = f.readlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {p} ---\n" + "".join(tail))
        return "\n".join(out)


def remove_dir(path):
    shutil.rmtree(path, ignore_errors=True)


def port_base():
    """PGAPI_TEST_PORT_BASE: the session topology's first port (see conftest.py)."""
    return int(os.environ.get("PGAPI_TEST_PORT_BASE", "27000"))


def start_topology(base):
    topo = Topology.in_temp_dir(base)
    try:
        topo.up()
    except BaseException:
        try:
            topo.load_env()
        except OSError:
            pass
        tails = topo.log_tails()
        proc = topo.down(purge=True, check=False)
        if proc is not None and proc.returncode == 0 and os.path.isdir(topo.dir):
            remove_dir(topo.dir)
        if tails:
            sys.stderr.write(tails + "\n")
        raise
    return topo


def stop_topology(topo):
    topo.down(purge=True)
    # the script refuses to purge a dir it never claimed (up failed early);
    # it is our own mkdtemp dir, and nothing of it is running any more
    if os.path.isdir(topo.dir):
        remove_dir(topo.dir)
