"""Start and stop the real pgapi binary (the ASan+UBSan build by default) for a test: an ini file in a
temp dir, a private port, logs captured to a file, stopped by PID. Nothing here fakes a server."""

import collections
import http.client
import json
import os
import signal as signals
import socket
import subprocess
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # tests/integration/lib/..
ASAN_BINARY = os.path.join(REPO_ROOT, "build", "asan", "pgapi")
BINARY = os.environ.get("PGAPI_TEST_BINARY", ASAN_BINARY)

# A line like these in a server log fails the test that ran the server.
BAD_LOG_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "[alert]", "Assertion")


# The ports free_port handed out lately: a port is only free until its server binds it, so two picks made
# before either binds (a server's port and its metrics port) must not return the same one. Drawn at random
# from 6,900 ports, they did, about once a suite (a server refusing [metrics] listen = [server] listen).
_handed_out = collections.deque(maxlen=1024)


def free_port():
    """A bindable port below the ephemeral range (32768+), so client sockets never collide with it, and
    none of the last ones handed out."""
    import random
    for _ in range(200):
        port = random.randint(20000, 26899)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                _handed_out.append(port)
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 20000..26899")


def children_of(pid):
    """PIDs whose parent is pid (live, not zombies)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if rest[0] != "Z" and int(rest[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def ini_text(settings):
    """settings: {section: {key: value or [values]}} -> ini text."""
    lines = []
    for section, keys in settings.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            for v in (value if isinstance(value, list) else [value]):
                lines.append(f"{key} = {v}")
        lines.append("")
    return "\n".join(lines)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


class PgapiServer:
    def __init__(self, workdir, topology=None, workers=2, port=None, overrides=None, binary=BINARY, wrapper=None):
        self.workdir = workdir
        self.topology = topology
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.binary = binary
        self.wrapper = list(wrapper or [])  # e.g. valgrind and its options, run in front of the binary
        self.pass_fds = ()  # descriptors the server inherits (socket activation's listening socket)
        self.ini_path = os.path.join(workdir, "pgapi.ini")
        self.log_path = os.path.join(workdir, "pgapi.log")
        self.proc = None
        self.settings = self.default_settings(workers)
        for section, keys in (overrides or {}).items():
            self.settings.setdefault(section, {}).update(keys)
        self.write_ini()

    def default_settings(self, workers):
        s = {
            "server": {"listen": f"127.0.0.1:{self.port}", "workers": workers,
                       "drain_timeout": "10s", "keepalive_timeout": "5s"},
            "database": {"pool_size": 2, "migrations_dir": os.path.join(REPO_ROOT, "migrations")},
            "redis": {"enabled": "off"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "log": {"level": "info"},
        }
        if self.topology is not None:
            t = self.topology
            s["database"]["primary"] = f"host=127.0.0.1 port={t.bouncer_port} dbname=pgapi_rw user=app"
            s["database"]["replica"] = f"host=127.0.0.1 port={t.bouncer_port} dbname=pgapi_ro user=app"
            # as a deployment would: the user in the ini, the password in a file only root reads
            s["redis"].update({"enabled": "on", "host": "127.0.0.1", "port": t.redis_port,
                               "username": t.vars["PGAPI_REDIS_USERNAME"],
                               "password_file": t.vars["PGAPI_REDIS_PASSWORD_FILE"]})
        else:
            s["database"]["primary"] = "host=127.0.0.1 port=1 dbname=none user=none"
            s["database"]["replica"] = "host=127.0.0.1 port=1 dbname=none user=none"
        return s

    def write_ini(self, settings=None, text=None):
        with open(self.ini_path, "w") as f:
            f.write(text if text is not None else ini_text(settings or self.settings))

    def env(self):
        env = dict(os.environ)
        if self.topology is not None:
            env.update(self.topology.env)
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:halt_on_error=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        for k in list(env):
            if k.startswith("PGAPI_") and k not in ("PGAPI_TEST_PORT_BASE",):
                del env[k]
        return env

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, wait_workers=None, timeout=20):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.wrapper + [self.binary, "--config", self.ini_path], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=self.env(), cwd=REPO_ROOT,
                                     pass_fds=self.pass_fds)
        log.close()
        n = wait_workers if wait_workers is not None else int(self.settings["server"]["workers"])
        self.wait_for(lambda: len(self.worker_pids()) == n and self.get("/healthz").status == 200,
                      timeout, f"{n} workers serving /healthz")
        return self

    @property
    def pid(self):
        return self.proc.pid

    def worker_pids(self):
        return children_of(self.proc.pid)

    def workers_replaced(self, gone, n):
        """Whether n workers run and none of `gone` is among them, from one look at /proc. (Two looks,
        one for the count and one for the absence, saw a worker just killed alive in the first and gone
        in the second: true before any new worker, or the master's log of the death.)"""
        pids = self.worker_pids()
        return len(pids) == n and not set(gone) & set(pids)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signals.SIGTERM, timeout=30):
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in self.worker_pids():
                os.kill(pid, signals.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server did not stop within {timeout}s after {sig!r}; log:\n{self.log_tail()}")

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) while waiting for {what}; "
                                     f"log:\n{self.log_tail()}")
            try:
                last = predicate()
                if last:
                    return last
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}; "
                             f"log:\n{self.log_tail()}")

    # -- logs -----------------------------------------------------------------------------------
    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def bad_log_lines(self):
        return [l for l in self.log_text().splitlines() if any(m in l for m in BAD_LOG_MARKERS)]

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def raw(self, data, timeout=5, read_until_close=True):
        """Send raw bytes on a fresh connection; return everything read until close or timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            chunks = []
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
                    if not read_until_close:
                        break
            except socket.timeout:
                pass
            return b"".join(chunks)
