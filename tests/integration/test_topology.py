"""Integration tests for scripts/topology.sh: the local PostgreSQL primary +
replica behind PgBouncer (pgapi_rw / pgapi_ro), and Redis."""

import os
import socket
import uuid

import psycopg2
import pytest

from helpers import HOST, listening_ports, pid_alive, wait_until


def fetch_one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def test_write_through_rw_is_visible_through_ro(topology):
    table = "topology_test_" + uuid.uuid4().hex[:12]
    token = uuid.uuid4().hex
    rw = topology.rw()
    with rw.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, token text NOT NULL)")
        cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (token,))
    try:
        ro = topology.ro()

        def replicated():
            try:
                row = fetch_one(ro, f"SELECT token FROM {table} WHERE id = 1")
            except psycopg2.errors.UndefinedTable:
                return None
            return row

        row = wait_until(replicated, 10, f"row of {table} to show up through pgapi_ro")
        assert row == (token,), f"expected ({token!r},) through pgapi_ro, got {row!r}"
    finally:
        with rw.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")


def test_write_through_ro_fails_read_only(topology):
    ro = topology.ro()
    with pytest.raises(psycopg2.Error) as excinfo:
        with ro.cursor() as cur:
            cur.execute("CREATE TABLE topology_test_must_fail (id int)")
    got = excinfo.value.pgcode
    assert got == "25006", (
        f"expected SQLSTATE 25006 (read_only_sql_transaction) for a write through pgapi_ro, "
        f"got {got!r}: {excinfo.value}")


def test_redis_answers_ping(topology):
    r = topology.redis()
    got = r.ping()
    assert got is True, f"expected PING -> True from redis on port {topology.redis_port}, got {got!r}"
    key = "topology-test-" + uuid.uuid4().hex
    r.set(key, "v", ex=60)
    assert r.get(key) == b"v", f"expected b'v' back from redis GET {key}, got {r.get(key)!r}"
    r.delete(key)


def test_recovery_state_of_primary_and_replica(topology):
    got = fetch_one(topology.replica_admin(), "SELECT pg_is_in_recovery()")[0]
    assert got is True, f"expected pg_is_in_recovery() = true on the replica, got {got!r}"
    got = fetch_one(topology.primary_admin(), "SELECT pg_is_in_recovery()")[0]
    assert got is False, f"expected pg_is_in_recovery() = false on the primary, got {got!r}"
    got = fetch_one(topology.ro(), "SELECT pg_is_in_recovery(), current_user, current_database()")
    assert got == (True, "app", "pgapi"), f"expected (True, 'app', 'pgapi') through pgapi_ro, got {got!r}"
    got = fetch_one(topology.rw(), "SELECT pg_is_in_recovery(), current_user, current_database()")
    assert got == (False, "app", "pgapi"), f"expected (False, 'app', 'pgapi') through pgapi_rw, got {got!r}"
    streaming = fetch_one(topology.primary_admin(),
                          "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0]
    assert streaming == 1, f"expected 1 streaming replica in pg_stat_replication, got {streaming}"


def test_pgbouncer_admin_console(topology):
    # make sure both pools exist
    fetch_one(topology.rw(), "SELECT 1")
    fetch_one(topology.ro(), "SELECT 1")
    admin = topology.bouncer_admin()
    with admin.cursor() as cur:
        cur.execute("SHOW POOLS")
        cols = [d[0] for d in cur.description]
        pools = {(row[cols.index("database")], row[cols.index("user")]) for row in cur.fetchall()}
    for want in (("pgapi_rw", "app"), ("pgapi_ro", "app")):
        assert want in pools, f"expected pool {want} in SHOW POOLS, got {sorted(pools)}"
    with admin.cursor() as cur:
        cur.execute("SHOW STATS")
        cols = [d[0] for d in cur.description]
        dbs = {row[cols.index("database")] for row in cur.fetchall()}
    assert {"pgapi_rw", "pgapi_ro"} <= dbs, f"expected pgapi_rw and pgapi_ro in SHOW STATS, got {sorted(dbs)}"
    for col in ("total_xact_count", "total_query_count"):
        assert col in cols, f"expected column {col} in SHOW STATS, got {cols}"


def test_rerunning_up_is_a_noop(topology):
    before = topology.pids()
    assert all(before.values()), f"expected a pid for every server before re-running up, got {before}"
    proc = topology.up()
    after = topology.pids()
    assert after == before, f"expected the same pids after re-running up (no restart), got {before} -> {after}"
    for name in ("primary", "replica", "pgbouncer", "redis"):
        assert f"{name}: already running" in proc.stderr, (
            f"expected '{name}: already running' in the output of up, got:\n{proc.stderr}")
    got = fetch_one(topology.rw(), "SELECT 1")
    assert got == (1,), f"expected (1,) through pgapi_rw after re-running up, got {got!r}"


def assert_stopped(topo, pids):
    alive = {name: pid for name, pid in pids.items() if pid and pid_alive(pid)}
    assert not alive, f"expected no live process of the stopped topology, got alive: {alive}"
    busy = set(topo.ports) & listening_ports()
    assert not busy, f"expected nothing listening on ports {topo.ports} after down, got listeners on {sorted(busy)}"


def assert_first_still_works(topology):
    got = fetch_one(topology.rw(), "SELECT pg_is_in_recovery()")
    assert got == (False,), f"expected the first topology's pgapi_rw to still answer (False,), got {got!r}"
    got = fetch_one(topology.ro(), "SELECT pg_is_in_recovery()")
    assert got == (True,), f"expected the first topology's pgapi_ro to still answer (True,), got {got!r}"
    assert topology.redis().ping() is True, "expected the first topology's redis to still answer PING"


def test_second_topology_down_stops_everything_it_started(topology, make_topology):
    second = make_topology(10)
    assert second.dir != topology.dir
    second.up()
    pids = second.pids()
    assert all(pids.values()), f"expected a pid file for every server of the second topology, got {pids}"
    assert set(pids.values()).isdisjoint(topology.pids().values()), (
        f"expected distinct processes for the two topologies, got {pids} and {topology.pids()}")
    listening = listening_ports()
    assert set(second.ports) <= listening, (
        f"expected the second topology to listen on {second.ports}, got {sorted(set(second.ports) & listening)}")
    got = fetch_one(second.rw(), "SELECT current_setting('port')::int")
    assert got == (second.primary_port,), f"expected the second pgapi_rw on port {second.primary_port}, got {got!r}"
    assert_first_still_works(topology)

    second.down()
    assert_stopped(second, pids)
    assert_first_still_works(topology)

    # Stale pid files that name a live process which is not ours (this very
    # test process) must be cleaned up, never signalled, and up must work.
    me = str(os.getpid())
    for path in second.pid_files().values():
        with open(path, "w") as f:
            f.write(me + "\n")
    second.up()
    new_pids = second.pids()
    assert os.getpid() not in new_pids.values(), f"expected new server pids, got {new_pids}"
    got = fetch_one(second.ro(), "SELECT pg_is_in_recovery()")
    assert got == (True,), f"expected the restarted second pgapi_ro to answer (True,), got {got!r}"
    second.down(purge=True)
    assert_stopped(second, new_pids)
    assert not os.path.exists(second.dir), f"expected {second.dir} to be gone after down --purge"
    assert_first_still_works(topology)


def test_port_taken_by_a_stranger_is_a_clear_error(topology, make_topology):
    third = make_topology(20)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stranger.bind((HOST, third.bouncer_port))
        stranger.listen(1)
        proc = third.run("up", check=False)
        assert proc.returncode != 0, f"expected up to fail with port {third.bouncer_port} taken, got rc 0"
        assert f"port {third.bouncer_port} is already in use" in proc.stderr, (
            f"expected a clear 'port {third.bouncer_port} is already in use' error, got:\n{proc.stderr}")
        # it failed before starting anything, and left the stranger alone
        busy = {third.primary_port, third.replica_port, third.redis_port} & listening_ports()
        assert not busy, f"expected nothing started on {sorted(busy)} after the failed up"
        assert third.bouncer_port in listening_ports(), "expected the stranger's socket to be left alone"
    finally:
        stranger.close()
    assert_first_still_works(topology)
