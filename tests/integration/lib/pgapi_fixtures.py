"""Fixtures that run the pgapi binary: `server(...)` makes a PgapiServer in the test's temp dir; every
server made is stopped by PID afterwards and its log is checked for sanitizer reports and alerts."""

import os
import signal
import subprocess

import pytest

from .pgapi_server import BINARY, REPO_ROOT, PgapiServer


@pytest.fixture
def server(tmp_path):
    made = []

    def make(workers=2, topology=None, overrides=None, port=None, **kw):
        d = tmp_path / f"srv{len(made)}"
        d.mkdir()
        s = PgapiServer(str(d), topology=topology, workers=workers, overrides=overrides, port=port, **kw)
        made.append(s)
        return s

    yield make
    problems = []
    for s in made:
        if s.alive():
            rc = s.stop(signal.SIGTERM)
            if rc != 0:
                problems.append(f"server exited {rc} on SIGTERM")
        leftovers = [p for p in s.worker_pids()] if s.proc and s.proc.poll() is None else []
        if leftovers:
            problems.append(f"workers left running: {leftovers}")
        bad = s.bad_log_lines()
        if bad:
            problems.append("sanitizer/alert lines in the server log:\n" + "\n".join(bad[:20]) +
                            "\n--- log tail ---\n" + s.log_tail(60))
    assert not problems, "\n".join(problems)


def migrate_env(topology):
    env = dict(os.environ)
    env.update(topology.env)
    env["PGAPI_DATABASE_PRIMARY"] = f"host=127.0.0.1 port={topology.bouncer_port} dbname=pgapi_rw user=app"
    return env


@pytest.fixture(scope="session")
def schema(topology):
    """The session topology with every migration applied (idempotent: `migrate up` skips applied ones)."""
    p = subprocess.run([BINARY, "migrate", "up"], env=migrate_env(topology), cwd=REPO_ROOT,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert p.returncode == 0, f"migrate up failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return topology


def module_server(tmp_path_factory, name, topology, overrides):
    """For a module-scoped fixture (`yield from`): a server with 2 workers, pool of 2 per side, serving and
    /readyz 200; afterwards stopped by SIGTERM, which must exit 0 with no sanitizer or alert line logged."""
    s = PgapiServer(str(tmp_path_factory.mktemp(name)), topology=topology, workers=2, overrides=overrides)
    s.start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 20, "/readyz 200")
    yield s
    rc = s.stop(signal.SIGTERM)
    bad = s.bad_log_lines()
    assert rc == 0 and not bad, f"server exit {rc}; bad log lines: {bad[:10]}\n{s.log_tail(60)}"


@pytest.fixture(scope="module")
def api(schema, tmp_path_factory):
    """One running server on the migrated session topology, cache off, per module."""
    yield from module_server(tmp_path_factory, "api", schema,
                             {"redis": {"enabled": "off"}, "database": {"health_interval": "200ms"}})
