"""Issue 3: the master/worker server as a real process: workers, respawn, reload (also under load and
in a SIGHUP storm), graceful and fast stop, readiness, log format, --check-config, --version and --help.
Each test starts its own server on a private port. The HTTP side of the same issue is in test_http.py."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from lib.clients import finish_clients, run_clients
from lib.pgapi_server import BINARY, free_port
from lib.topology import own_redis_conf


def test_n_workers_appear_and_serve_hello(server):
    s = server(workers=3).start()
    assert len(s.worker_pids()) == 3, f"expected 3 workers, got {s.worker_pids()}"
    r = s.get("/")
    assert (r.status, r.body) == (200, b"Hello World!"), f"expected 200 Hello World!, got {r}"
    assert s.get("/healthz").json()["status"] == "ok"


def test_worker_killed_is_respawned(server):
    s = server(workers=2).start()
    before = s.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    s.wait_for(lambda: s.workers_replaced([before[0]], 2), 10,
               "a new worker replacing the killed one")
    assert s.get("/").status == 200
    assert "killed by signal 9" in s.log_text(), f"the master should log the kill; log:\n{s.log_tail()}"


@pytest.mark.parametrize("keepalive", [False, True])
def test_reload_under_load_changes_config_and_drops_nothing(server, keepalive):
    s = server(workers=2).start()
    old = set(s.worker_pids())
    stop, results, threads = run_clients(s.port, 4, keepalive)
    time.sleep(0.5)
    s.settings["server"]["workers"] = 3
    s.write_ini()
    s.signal(signal.SIGHUP)
    s.wait_for(lambda: s.workers_replaced(old, 3), 20,
               "3 new-generation workers and the old ones gone")
    time.sleep(0.5)
    n = finish_clients(stop, results, threads)
    assert s.get("/healthz").json()["generation"] == 2
    assert n > 50, f"expected the clients to keep making requests during the reload, got {n}"


def test_reload_with_changed_port(server):
    s = server(workers=1).start()
    new_port = free_port()
    s.settings["server"]["listen"] = f"127.0.0.1:{new_port}"
    s.write_ini()
    s.signal(signal.SIGHUP)
    old_port, s.port = s.port, new_port
    s.wait_for(lambda: s.get("/healthz").json()["generation"] == 2, 20, "generation 2 on the new port")

    # The new generation serves a moment before the master has retired the old one (it closes the old
    # socket then, and each old worker on its QUIT): on a busy machine the old port may still accept.
    def old_port_closed():
        try:
            socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
        except OSError:
            return True
        return False
    s.wait_for(old_port_closed, 10, "the old port closed once the old generation is retired")


def test_reload_with_broken_config_keeps_old(server):
    s = server(workers=2).start()
    pids = s.worker_pids()
    s.write_ini(text="[server]\nlisten = 127.0.0.1:%d\nworkers = lots\n" % s.port)
    s.signal(signal.SIGHUP)
    s.wait_for(lambda: "reload refused" in s.log_text(), 10, "the refusal in the log")
    assert "workers" in s.log_text() and "pgapi.ini:3" in s.log_text(), s.log_tail()
    assert s.worker_pids() == pids, f"workers changed after a bad reload: {pids} -> {s.worker_pids()}"
    assert s.get("/healthz").json()["generation"] == 1


def test_sigterm_lets_an_in_flight_request_finish(server):
    s = server(workers=1).start()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # request begun, not finished
    time.sleep(0.3)
    s.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert s.alive(), "the server exited with a request in flight"
    sock.sendall(b"\r\n")
    data = sock.recv(65536)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200"), f"expected the in-flight request answered 200, got {data[:200]!r}"
    assert b"Connection: close" in data, f"a draining server closes after the response, got {data!r}"
    assert s.proc.wait(15) == 0, f"expected exit 0; log:\n{s.log_tail()}"
    # the listening socket is gone
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_second_signal_forces_fast_exit(server):
    s = server(workers=1, overrides={"server": {"drain_timeout": "60s"}}).start()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    time.sleep(0.2)
    s.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert s.alive()
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    rc = s.proc.wait(10)
    assert time.monotonic() - t0 < 5, "the second signal should stop the server at once"
    assert rc == 0
    sock.close()


def test_check_config_reports_file_and_line(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[server]\nlisten = 127.0.0.1:3000\n\n[database]\npool_sise = 4\n")
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode != 0
    assert f"{ini}:5" in p.stderr and "pool_sise" in p.stderr, f"expected file:line and the key, got {p.stderr!r}"
    ini.write_text("[server]\nworkers = 4\nmax_body_bytes = 2m\n")
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "workers = 4" in p.stdout and "max_body_bytes = 2097152" in p.stdout, p.stdout
    ini.write_text("[server]\nkeepalive_timeout = 5 parsecs\n")
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode != 0 and f"{ini}:2" in p.stderr, p.stderr


def test_check_config_never_prints_a_password(tmp_path):
    """--check-config runs as the unit's ExecStartPre, so its output lands in the journal: every password
    form (URI, quoted with blanks, the Redis password file) must come out masked or not at all."""
    pw = tmp_path / "redis.password"
    pw.write_text("S3cretRedis\n")
    pw.chmod(0o600)
    ini = tmp_path / "secret.ini"
    ini.write_text("[database]\nprimary = postgresql://app:S3cretURI@127.0.0.1:5/pgapi_rw\n"
                   "replica = host=127.0.0.1 password = 'S3cret with spaces' dbname=x\n"
                   "replica = host=127.0.0.1 password=S3cretPlain user=app\n"
                   f"[redis]\nusername = pgapi\npassword_file = {pw}\n")
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    leaked = [s for s in ("S3cret",) if s in out]
    assert not leaked and out.count("password=****") == 3, f"expected 3 masked passwords and no S3cret, got:\n{out}"
    assert "user=app password=**** dbname=pgapi_rw host=127.0.0.1 port=5" in out, out


def test_version_and_help():
    p = subprocess.run([BINARY, "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("pgapi "), p.stdout
    p = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "max_body_bytes" in p.stdout and "PGAPI_DATABASE_PRIMARY" in p.stdout


def test_readyz_reports_database(server, topology):
    s = server(workers=1, topology=topology).start()
    r = s.wait_for(lambda: (lambda r: r if r.json().get("status") == "ready" else None)(s.get("/readyz")), 15,
                   "/readyz ready")
    body = r.json()
    assert r.status == 200 and body["primary"] is True and body["replicas_up"] == 1, body
    assert body["redis"] == "up", body


def test_readyz_without_primary_is_503(server):
    s = server(workers=1).start()  # points at port 1: nothing there
    r = s.get("/readyz")
    assert r.status == 503 and r.json()["status"] == "unavailable", r
    assert s.get("/").status == 200, "the server itself keeps serving"


def test_readyz_follows_redis_down_and_back(server, schema, tmp_path):
    port = free_port()

    def redis_start():
        return subprocess.Popen(["redis-server", own_redis_conf(tmp_path, port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    redis = redis_start()
    try:
        s = server(workers=1, topology=schema,
                   overrides={"redis": {"port": port}, "database": {"health_interval": "200ms"}}).start()
        state = lambda: s.get("/readyz").json()
        s.wait_for(lambda: state()["redis"] == "up", 10, "redis up")
        redis.terminate()
        redis.wait(10)
        s.wait_for(lambda: state()["redis"] != "up", 10, "redis reported down")
        r = s.get("/readyz")
        assert r.status == 200 and r.json()["status"] == "degraded", r
        assert s.get("/users?limit=1").status == 200, "requests keep working without Redis"
        redis = redis_start()
        s.wait_for(lambda: state()["redis"] == "up", 15, "redis back up")
        assert "cache bypassed" in s.log_text() and "connected again" in s.log_text(), s.log_tail()
    finally:
        redis.terminate()
        redis.wait(10)


def test_sighup_storm_under_load_drops_nothing(server):
    s = server(workers=2).start()
    stop, results, threads = run_clients(s.port, 4, False)
    try:
        for _ in range(15):
            s.signal(signal.SIGHUP)
            time.sleep(0.2)
    finally:
        n = finish_clients(stop, results, threads)
    s.wait_for(lambda: len(s.worker_pids()) == 2, 20, "the storm settles to 2 workers")
    assert s.get("/healthz").json()["generation"] == 16
    assert n > 100, n


def test_json_log_format_lines_parse(server):
    s = server(workers=1, overrides={"log": {"format": "json"}}).start()
    s.get("/healthz", headers={"X-Request-Id": 'rid "quoted"\\x'})
    s.wait_for(lambda: '"msg":"access"' in s.log_text(), 5, "a JSON access line")
    lines = [l for l in s.log_text().splitlines() if l.startswith("{")]
    assert lines, s.log_tail()
    parsed = [json.loads(l) for l in lines]  # every line is one JSON object
    access = [p for p in parsed if p.get("msg") == "access"][-1]
    assert access["method"] == "GET" and access["path"] == "/healthz" and access["status"] == 200, access
    assert {"ts", "level", "pid", "role", "worker", "gen", "duration_us"} <= set(access), access
    assert any(p["role"] == "master" for p in parsed), "the master logs in JSON too"
