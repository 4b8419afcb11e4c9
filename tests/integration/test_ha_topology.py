"""scripts/ha.sh, the HA topology, on its own: `up` gives a Leader, a Sync Standby and a Replica under
Patroni; each HAProxy frontend (and the PgBouncer database in front of it) reaches the node it should; the
Sentinels agree on the Redis master; `status` shows both views; pgapi migrates and serves through
DIR/pgapi.ini; no password is on a command line; `down` leaves no process and no listening port.

Ports: port_base() + 100 .. + 118 (lib/ha.py's OFFSET list). The tests run in file order: the last one
takes the topology down."""

import collections
import os
import signal
import subprocess
import tempfile
import threading
import time

import psycopg2
import pytest

from lib.ha import NODES, REDIS_NODES, SENTINELS, ha_module, ports_listening
from lib.pgapi_server import BINARY, REPO_ROOT, PgapiServer
from lib.topology import HOST, pid_alive

OFFSET = 100


@pytest.fixture(scope="module")
def ha():
    if os.geteuid() != 0:
        pytest.skip("the HA topology needs root (Patroni and PostgreSQL run as postgres)")
    yield from ha_module(OFFSET)


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def test_up_gives_a_leader_a_sync_standby_and_a_replica(ha):
    print(f"ha.sh up took {ha.up_seconds:.1f}s")
    members = ha.patronictl_list()
    got = sorted((m["Role"], m["State"]) for m in members)
    want = [("Leader", "running"), ("Replica", "running"), ("Sync Standby", "running")]
    assert got == want, f"expected {want} in patronictl list, got {members}"
    assert ha.layout_ok(), f"expected both replicas streaming from the leader, got {ha.members()}"
    leader = ha.leader()
    assert one(ha.superuser(leader), "SHOW synchronous_standby_names")[0] == ha.sync_standby(), (
        f"expected the leader {leader} to name the sync standby {ha.sync_standby()} in synchronous_standby_names")


def node_behind(conn):
    """(port of the server a connection reached, in recovery)."""
    return one(conn, "SELECT inet_server_port(), pg_is_in_recovery()")


def test_each_frontend_reaches_the_nodes_it_should(ha):
    leader = ha.leader()
    replicas = [n for n in NODES if n != leader]
    got = node_behind(ha.haproxy(ha.haproxy_rw_port))
    assert got == (ha.pg_port(leader), False), f"expected the rw frontend on the leader {leader}, got {got}"
    got = node_behind(ha.bouncer("pgapi_rw"))
    assert got == (ha.pg_port(leader), False), f"expected pgapi_rw on the leader {leader}, got {got}"
    for i, node in enumerate(NODES, 1):
        if node == leader:
            # no server behind the leader's own read-only frontend: HAProxy closes the connection
            with pytest.raises(psycopg2.OperationalError):
                ha.haproxy(ha.ro_port(node))
            continue
        got = node_behind(ha.haproxy(ha.ro_port(node)))
        assert got == (ha.pg_port(node), True), f"expected {node}'s read-only frontend on {node} alone, got {got}"
        got = node_behind(ha.bouncer(f"pgapi_ro{i}"))
        assert got == (ha.pg_port(node), True), f"expected pgapi_ro{i} on {node}, got {got}"
    shared = {node_behind(ha.haproxy(ha.haproxy_ro_port)) for _ in range(4)}
    want = {(ha.pg_port(n), True) for n in replicas}
    assert shared == want, f"expected the shared read-only frontend to balance over {replicas}, got {shared}"
    with pytest.raises(psycopg2.Error) as exc:
        one(ha.bouncer("pgapi_ro"), "CREATE TABLE ha_must_fail (id int)")
    assert exc.value.pgcode == "25006", f"expected SQLSTATE 25006 for a write through pgapi_ro, got {exc.value.pgcode}"


def test_the_sentinels_agree_on_the_master(ha):
    masters = ha.sentinel_masters()
    want = f"{HOST}:{ha.redis_port('r1')}"
    assert masters == {s: want for s in SENTINELS}, f"expected every Sentinel to name r1 ({want}), got {masters}"
    assert ha.redis("r1").info("replication")["role"] == "master"
    info = ha.redis("r2").info("replication")
    assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", ha.redis_port("r1"), "up"), (
        f"expected r2 to replicate r1 with its link up, got {info}")
    for s in SENTINELS:
        state = ha.sentinel(s).execute_command("SENTINEL", "master", "pgapi")
        fields = dict(zip(state[::2], state[1::2]))
        got = (fields[b"num-slaves"], fields[b"num-other-sentinels"], fields[b"quorum"])
        assert got == (b"1", b"2", b"2"), f"expected {s} to see 1 replica, 2 other Sentinels, quorum 2, got {got}"


def test_status_shows_patroni_and_the_sentinels(ha):
    proc = ha.status()
    assert proc.returncode == 0, f"expected status to exit 0 with everything running, got {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    for want in ("Leader", "Sync Standby", "Replica", f"master={HOST}:{ha.redis_port('r1')}"):
        assert want in proc.stdout, f"expected {want!r} in the output of status, got:\n{proc.stdout}"
    assert proc.stdout.count("running pid=") == 1 + 3 * 2 + 2 + len(REDIS_NODES) + len(SENTINELS), proc.stdout


def test_pgapi_migrates_and_serves_through_its_ini(ha, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGAPI_")}
    ini = ha.env["PGAPI_HA_PGAPI_INI"]
    for args in (["--check-config"], ["migrate", "up"], ["migrate", "status"]):
        p = subprocess.run([BINARY, "--config", ini, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert p.returncode == 0, f"pgapi {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    assert " 0 pending" in p.stdout, f"expected no pending migration, got:\n{p.stdout}"
    server = PgapiServer(str(tmp_path), workers=1, overrides=ha.pgapi_overrides())
    server.start()
    try:
        def ready():
            r = server.get("/readyz")
            body = r.json() if r.status == 200 else {}
            return body.get("redis") == "up" and body.get("replicas_up") == 2 and body
        # one replica line is the leader's own read-only frontend, with no server behind it: 2 of 3 are up
        body = server.wait_for(ready, 20, "/readyz 200 with Redis and 2 replicas up")
        assert body.get("redis_master") == f"{HOST}:{ha.redis_port('r1')}", f"expected redis_master r1, got {body}"
        r = server.request("POST", "/users", body={"name": "ha", "email": "ha@example.io"})
        assert r.status == 201, f"expected 201 for a POST through the HA topology, got {r}"
    finally:
        rc = server.stop(signal.SIGTERM)
    assert rc == 0 and not server.bad_log_lines(), f"server exit {rc}:\n{server.log_tail(40)}"


def write_passfile(ha):
    """A libpq passfile for the app role on every node (mode 600): the DSNs name it, no password in them.
    A short path: inih reads at most 198 characters of a line."""
    fd, path = tempfile.mkstemp(prefix="pgpass-", dir="/tmp")
    with os.fdopen(fd, "w") as f:
        f.write(f"{HOST}:*:pgapi:app:{ha.secrets['APP_PASSWORD']}\n")
    return path


def test_pgapi_with_a_multi_host_conninfo_follows_a_switchover(ha, tmp_path):
    """The other way to deploy (docs/operations.md): no PgBouncer or HAProxy, the primary as a libpq
    multi-host conninfo with target_session_attrs=read-write and one replica line per node. A switchover
    under a sequential writer: once a write is acknowledged no read shows an older version, and pgapi
    finds the new primary by itself."""
    passfile = write_passfile(ha)
    hosts = ",".join(HOST for _ in NODES)
    ports = ",".join(str(ha.pg_port(n)) for n in NODES)
    base = f"dbname=pgapi user=app passfile={passfile} connect_timeout=2"
    overrides = ha.pgapi_overrides()
    overrides["database"] = {
        "primary": f"host={hosts} port={ports} {base} target_session_attrs=read-write",
        "replica": [f"host={HOST} port={ha.pg_port(n)} {base}" for n in NODES],
        "health_interval": "200ms",
    }
    server = PgapiServer(str(tmp_path), workers=2, overrides=overrides)
    server.start()
    try:
        server.wait_for(lambda: server.get("/readyz").json().get("redis") == "up", 20, "Redis up")
        r = server.request("POST", "/users", body={"name": "multi", "email": "multi@example.io"})
        assert r.status == 201, r
        path = f"/users/{r.json()['id']}"
        old_leader = ha.leader()
        switched = []
        switch = threading.Thread(target=lambda: switched.append(ha.switchover()))
        switch.start()
        acked, stale, writes_refused, t_end = 0, [], 0, time.monotonic() + 60
        codes, first_refused, last_refused, after = collections.Counter(), None, None, None
        while time.monotonic() < t_end:
            w = server.request("PATCH", path, body={"name": f"n{acked}"})
            if w.status == 200:
                acked = max(acked, w.json()["version"])
            else:
                writes_refused += 1
                assert w.status == 503, f"a write during the switchover: {w.status} {w.text}"
                codes[w.json()["error"]["code"]] += 1
                last_refused = time.monotonic()
                first_refused = first_refused or last_refused
            g = server.get(path)
            if g.status == 200 and g.json()["version"] < acked:
                stale.append((acked, g.json()["version"], g.headers.get("x-cache")))
            if switched and w.status == 200:
                after = after + 1 if after is not None else 0
                if after == 20:  # acknowledged on the new leader
                    break
        switch.join(60)
        ha.wait_layout()  # the old leader back as a replica, for the tests after this one
        assert switched and switched[0] != old_leader, f"expected a switchover away from {old_leader}"
        assert after == 20, "expected writes acknowledged on the new leader"
        assert not stale, f"reads older than an acknowledged write: {stale[:5]}"
        # a write may also wait in the queue (queue_timeout) until libpq finds the new primary: no 503 at all
        window = f"{last_refused - first_refused:.1f}s" if writes_refused else "no time"
        print(f"multi-host conninfo: {acked} versions acknowledged; writes answered 503 for {window} across "
              f"the switchover: {dict(codes)}")
    finally:
        rc = server.stop(signal.SIGTERM)
        os.unlink(passfile)
    assert rc == 0 and not server.bad_log_lines(), f"server exit {rc}:\n{server.log_tail(40)}"
    assert "new timeline" in server.log_text(), "expected the new primary's timeline noticed in the log"


def test_no_password_on_a_command_line(ha):
    secrets = {k: v for k, v in ha.secrets.items() if len(v) >= 16}
    assert len(secrets) == 9, f"expected 9 passwords in secrets.env, got {sorted(secrets)}"
    leaks = []
    for name, pid in ha.all_pids().items():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace")
        leaks += [f"{key} on the command line of {name}" for key, pw in secrets.items() if pw in argv]
    assert not leaks, "\n".join(leaks)


def test_down_leaves_no_process_and_no_port(ha):
    pids = ha.all_pids()
    assert len(pids) == 1 + 3 * 2 + 2 + len(REDIS_NODES) + len(SENTINELS), f"expected every process up, got {pids}"
    ha.down()
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not alive, f"expected no process of the topology after down, got {alive}"
    busy = ports_listening(ha.ports)
    assert not busy, f"expected no listening port of the topology after down, got {busy}"
