"""scripts/cluster.sh on the session topology: N servers behind one HAProxy that balances them and
follows their /readyz; `status` tells what runs; `down` stops exactly what `up` started; no secret in
a file it writes or on a command line of what it starts.

Ports: the topology's base + 80 (HAProxy), + 81.. (servers), + 85.. (their metrics)."""

import http.client
import json
import os
import signal
import stat
import subprocess
import uuid

import pytest

from lib.pgapi_server import BAD_LOG_MARKERS, children_of
from lib.topology import HOST, REPO_ROOT, listening_ports, parse_env_file, pid_alive, read_pid, wait_until

CLUSTER_SH = os.path.join(REPO_ROOT, "scripts", "cluster.sh")
OFFSET = 80
SERVERS = 2


class Cluster:
    """One cluster.sh cluster in a dir of its own, driven by the script itself."""

    def __init__(self, topology, directory):
        base = topology.primary_port + OFFSET
        self.topology = topology
        self.dir = str(directory)
        self.lb_port, self.server_port, self.metrics_port = base, base + 1, base + 5
        self.env = dict(topology.script_env, PGAPI_CLUSTER_DIR=self.dir, PGAPI_CLUSTER_PORT=str(self.lb_port),
                        PGAPI_CLUSTER_SERVER_PORT=str(self.server_port),
                        PGAPI_CLUSTER_METRICS_PORT=str(self.metrics_port),
                        PGAPI_CLUSTER_BIN=os.path.join(REPO_ROOT, "build", "asan", "pgapi"),
                        PGAPI_SERVER_WORKERS="1")

    def run(self, *args, check=True):
        proc = subprocess.run([CLUSTER_SH, *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=180)
        if check:
            assert proc.returncode == 0, (f"cluster.sh {' '.join(args)} exited {proc.returncode}, expected 0\n"
                                          f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def up(self, n=SERVERS):
        return self.run("up", str(n), self.topology.dir)

    def down(self, check=True):
        return self.run("down", self.topology.dir, check=check)

    def status(self):
        return self.run("status", self.topology.dir, check=False)

    def server_pid(self, i):
        return read_pid(os.path.join(self.dir, f"s{i}", "pgapi.pid"))

    def haproxy_pid(self):
        return read_pid(os.path.join(self.dir, "haproxy.pid"))

    def pids(self):
        """Every process up started: each master, its workers, HAProxy."""
        out = []
        for i in range(1, SERVERS + 1):
            pid = self.server_pid(i)
            if pid:
                out += [pid] + children_of(pid)
        if self.haproxy_pid():
            out.append(self.haproxy_pid())
        return out

    def logs(self):
        out = {}
        for i in range(1, SERVERS + 1):
            path = os.path.join(self.dir, f"s{i}", "pgapi.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    out[f"s{i}"] = f.read()
        return out


@pytest.fixture
def cluster(topology, tmp_path):
    os.chmod(tmp_path, 0o700)
    c = Cluster(topology, tmp_path / "cluster")
    yield c
    c.down(check=False)
    for name, text in c.logs().items():
        bad = [line for line in text.splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
        assert not bad, f"server {name}'s log has {bad[:5]}"


def get(port, path, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_up_balances_the_servers_and_down_stops_what_it_started(cluster, topology):
    cluster.up()
    env = parse_env_file(os.path.join(cluster.dir, "cluster.env"))
    assert env["PGAPI_CLUSTER_URL"] == f"http://{HOST}:{cluster.lb_port}", env
    assert env["PGAPI_CLUSTER_SERVER_URLS"].split() == [f"http://{HOST}:{cluster.server_port + i}"
                                                        for i in range(SERVERS)], env

    status = cluster.status()
    assert status.returncode == 0, f"status exited {status.returncode}, expected 0:\n{status.stdout}"
    assert status.stdout.count("haproxy=UP") == SERVERS, status.stdout

    # a write through HAProxy, then read on every server directly: one deployment, one database
    code, body = get(cluster.lb_port, "/users", "POST",
                     f'{{"name":"cluster","email":"c{uuid.uuid4().hex[:12]}@example.com"}}')
    assert code == 201, (code, body)
    user = json.loads(body)
    for i in range(SERVERS):
        code, seen = get(cluster.server_port + i, f"/users/{user['id']}")
        assert code == 200 and json.loads(seen)["email"] == user["email"], (i + 1, code, seen)

    # round-robin: each server's access log shows some of the requests sent to HAProxy
    tag = uuid.uuid4().hex[:8]
    for n in range(20):
        assert get(cluster.lb_port, "/", headers={"X-Request-Id": f"{tag}-{n}"})[0] == 200
    served = {name: text.count(f"rid={tag}-") for name, text in cluster.logs().items()}
    assert all(served.values()) and sum(served.values()) == 20, f"requests per server: {served}"

    pids = cluster.pids()
    assert len(pids) == 2 * SERVERS + 1, f"masters, workers and HAProxy: {pids}"
    ports = [cluster.lb_port] + [cluster.server_port + i for i in range(SERVERS)] + \
            [cluster.metrics_port + i for i in range(SERVERS)]
    cluster.down()
    still = [p for p in pids if pid_alive(p)]
    assert not still, f"processes left running after down: {still}"
    assert not set(ports) & listening_ports(), f"ports still listening after down: {set(ports) & listening_ports()}"
    assert cluster.status().returncode == 3


def test_no_secret_in_its_files_or_command_lines(cluster, topology):
    """The servers read the Redis password from the topology's file and the database passwords from
    its pgpass: none of them is in an ini, the cluster's env file, or any started process's argv."""
    cluster.up()
    secrets = [v for k, v in topology.secrets.items() if k.endswith("PASSWORD") and v]
    assert secrets, "no secrets read from the topology"
    for root, _, files in os.walk(cluster.dir):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            with open(path, errors="replace") as f:
                text = f.read()
            assert not [s for s in secrets if s in text], f"a password in {path}"
    for i in range(1, SERVERS + 1):
        mode = stat.S_IMODE(os.stat(os.path.join(cluster.dir, f"s{i}", "pgapi.ini")).st_mode)
        assert mode == 0o600, f"s{i}/pgapi.ini has mode {mode:o}, expected 600"
    for pid in cluster.pids():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace")
        assert not [s for s in secrets if s in argv], f"a password in the argv of pid {pid}"
        with open(f"/proc/{pid}/environ", "rb") as f:
            names = [kv.split(b"=", 1)[0].decode() for kv in f.read().split(b"\0") if kv]
        assert not [n for n in names if n.startswith("PGAPI_")], f"pid {pid} runs with {names}: the ini decides"


def test_a_stopped_server_leaves_rotation(cluster):
    """HAProxy follows the servers: one stopped is taken out (its checks fail), every request through
    HAProxy still gets its answer from the other, and status says what stopped (exit 3)."""
    cluster.up()
    pid = cluster.server_pid(2)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 30, "server 2 to stop")
    wait_until(lambda: "haproxy=DOWN" in cluster.status().stdout, 15, "haproxy to take server 2 out")
    answers = [get(cluster.lb_port, "/")[0] for _ in range(30)]
    assert answers == [200] * 30, f"answers through HAProxy with server 2 stopped: {answers}"
    status = cluster.status()
    assert status.returncode == 3 and "server2   stopped" in status.stdout, status.stdout
