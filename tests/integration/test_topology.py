"""Integration tests for scripts/topology.sh: the local PostgreSQL primary +
replica behind PgBouncer (pgapi_rw / pgapi_ro), and Redis; a second replica
(add-replica, pgapi_ro2), a switchover (promote) and the old primary's rebuild
(rejoin)."""

import os
import socket
import threading
import time
import uuid
from contextlib import closing

import psycopg2
import pytest

from lib.topology import HOST, listening_ports, pid_alive, read_pid, wait_until


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


# ---------------------------------------------------------------- add-replica, promote, rejoin
# Each test below brings up its own topology (make_topology: ports base+30.. in steps of 10, the
# second replica on +4), so they can change roles without disturbing the shared one.

def fetch_all(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def streaming_names(topo):
    """application_name of every streaming replica of the current primary, sorted."""
    with closing(topo.admin("PRIMARY")) as conn:
        return sorted(r[0] for r in fetch_all(
            conn, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"))


def wait_streaming(topo, want):
    return wait_until(lambda: streaming_names(topo) == want, 20,
                      f"pg_stat_replication on the primary (port {topo.vars['PGAPI_PRIMARY_PORT']}) "
                      f"to list exactly {want} as streaming")


def bouncer_database_ports(topo):
    with closing(topo.bouncer_admin()) as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        cols = [d[0] for d in cur.description]
        return {r[cols.index("name")]: r[cols.index("port")] for r in cur.fetchall()
                if r[cols.index("name")].startswith("pgapi_")}


def server_of(conn_factory):
    """(pg_is_in_recovery(), port) of the server a fresh PgBouncer connection reaches."""
    with closing(conn_factory()) as conn:
        return fetch_one(conn, "SELECT pg_is_in_recovery(), current_setting('port')::int")


def make_table(topo, rows):
    table = "topology_test_" + uuid.uuid4().hex[:12]
    with closing(topo.rw()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, token text NOT NULL)")
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(i, f"row-{i}") for i in range(1, rows + 1)])
    return table


def insert_row(topo, table, row_id):
    with closing(topo.rw()) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (row_id, f"row-{row_id}"))


def wait_row(conn_factory, table, row_id, what):
    def seen():
        with closing(conn_factory()) as conn:
            try:
                return fetch_one(conn, f"SELECT token FROM {table} WHERE id = %s", (row_id,))
            except psycopg2.errors.UndefinedTable:
                return None
    got = wait_until(seen, 20, f"row {row_id} of {table} to show up through {what}")
    assert got == (f"row-{row_id}",), f"expected ('row-{row_id}',) through {what}, got {got!r}"


def up_with_replica2(topo):
    topo.up()
    proc = topo.run("add-replica")
    topo.load_env()
    return proc


def assert_not_running(topo, data_dir, port, what):
    pid = read_pid(os.path.join(data_dir, "postmaster.pid"))
    assert pid is None or not pid_alive(pid), f"expected {what} ({data_dir}) not running, got live pid {pid}"
    assert port not in listening_ports(), f"expected nothing listening on {what}'s port {port}, got a listener"


def test_add_replica_streams_and_serves_pgapi_ro2(make_topology):
    topo = make_topology(30)
    up_with_replica2(topo)
    wait_streaming(topo, ["pgapi_replica", "pgapi_replica2"])
    v = topo.vars
    want = {"PGAPI_REPLICA2_PORT": str(topo.replica2_port),
            "PGAPI_REPLICA2_PGDATA": os.path.join(v["PGAPI_PGDATA_BASE"], "replica2"),
            "PGAPI_RO2_DSN": f"host={HOST} port={topo.bouncer_port} dbname=pgapi_ro2 user=app"}
    got = {k: v.get(k) for k in want}
    assert got == want, f"expected in topology.env {want}, got {got}"
    with open(os.path.join(topo.dir, "pgpass")) as f:
        pgpass = f.read()
    for line in (f"{HOST}:{topo.replica2_port}:*:app:", f"{HOST}:{topo.bouncer_port}:pgapi_ro2:app:"):
        assert line in pgpass, f"expected a pgpass line starting {line!r}, got:\n{pgpass}"
    ports = bouncer_database_ports(topo)
    want_ports = {"pgapi_rw": topo.primary_port, "pgapi_ro": topo.replica_port, "pgapi_ro2": topo.replica2_port}
    assert ports == want_ports, f"expected PgBouncer databases {want_ports}, got {ports}"
    got = server_of(topo.ro2)
    assert got == (True, topo.replica2_port), f"expected pgapi_ro2 to reach a replica on {topo.replica2_port}, got {got}"

    table = make_table(topo, 3)
    insert_row(topo, table, 4)
    wait_row(topo.ro2, table, 4, "pgapi_ro2")
    wait_row(topo.ro, table, 4, "pgapi_ro")

    status = topo.run("status").stdout
    assert any(line.startswith("replica2") and " running " in line and f"port={topo.replica2_port}" in line
               for line in status.splitlines()), f"expected a running replica2 line in status, got:\n{status}"

    # a second add-replica changes nothing: same processes, no PgBouncer reload
    before = topo.pids()
    proc = topo.run("add-replica")
    after = topo.pids()
    assert after == before, f"expected the same pids after a second add-replica, got {before} -> {after}"
    for want_line in ("replica2: already part of the topology", "replica2: already running"):
        assert want_line in proc.stderr, f"expected {want_line!r} in the second add-replica's output, got:\n{proc.stderr}"
    assert "reloaded" not in proc.stderr, f"expected no PgBouncer reload on a second add-replica, got:\n{proc.stderr}"
    wait_streaming(topo, ["pgapi_replica", "pgapi_replica2"])


def test_replica2_survives_down_up_and_goes_with_purge(make_topology):
    topo = make_topology(40)
    up_with_replica2(topo)
    table = make_table(topo, 1)
    pids = topo.pids()
    topo.down()
    assert_not_running(topo, topo.vars["PGAPI_REPLICA2_PGDATA"], topo.replica2_port, "replica2")
    busy = set(topo.ports) & listening_ports()
    assert not busy, f"expected nothing listening on {topo.ports} after down, got {sorted(busy)}"

    proc = topo.up()
    assert "replica2: starting" in proc.stderr, f"expected up to start replica2 again, got:\n{proc.stderr}"
    new_pids = topo.pids()
    assert new_pids["replica2"] and new_pids["replica2"] != pids["replica2"] and pid_alive(new_pids["replica2"]), (
        f"expected a new live replica2 after down/up, got {pids} -> {new_pids}")
    wait_streaming(topo, ["pgapi_replica", "pgapi_replica2"])
    insert_row(topo, table, 2)
    wait_row(topo.ro2, table, 2, "pgapi_ro2 after down/up")

    topo.down(purge=True)
    assert_stopped(topo, new_pids)
    assert topo.replica2_port not in listening_ports(), f"expected replica2's port {topo.replica2_port} free after purge"
    assert not os.path.exists(topo.dir), f"expected {topo.dir} to be gone after down --purge"


class Writer(threading.Thread):
    """Writes rows back to back (5 ms apart) on ONE PgBouncer connection to pgapi_rw opened before the
    promote, retrying a failed statement on the same connection; records what it saw."""

    def __init__(self, topo, table, first_id):
        super().__init__(daemon=True)
        self.conn = topo.rw()
        self.table, self.next_id = table, first_id
        self.stop = threading.Event()
        self.errors, self.latencies, self.ids = [], [], []

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                with self.conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} VALUES (%s, 'w')", (self.next_id,))
                self.ids.append(self.next_id)
                self.next_id += 1
                self.latencies.append(time.monotonic() - t)
            except psycopg2.Error as exc:
                self.errors.append(f"{time.monotonic() - t:.2f}s {type(exc).__name__}: {str(exc).strip()}")
                if self.conn.closed:
                    return
            time.sleep(0.005)

    def report(self):
        return (f"{len(self.ids)} writes, {len(self.errors)} errors {self.errors[:5]}, "
                f"slowest {max(self.latencies, default=0):.2f}s, conn closed={bool(self.conn.closed)}")


def retry_statement(conn, sql, attempts=10):
    """Run sql on conn, retrying a failed statement; returns (row, failures)."""
    failures = []
    for _ in range(attempts):
        try:
            return fetch_one(conn, sql), failures
        except psycopg2.Error as exc:
            failures.append(f"{type(exc).__name__}: {str(exc).strip()}")
            if conn.closed:
                break
            time.sleep(0.5)
    raise AssertionError(f"expected {sql!r} to succeed within {attempts} attempts on a connection opened "
                         f"before promote, got only failures: {failures}")


def test_promote_switches_over_with_replica2_and_rejoin(make_topology):
    topo = make_topology(50)
    up_with_replica2(topo)
    old = dict(topo.vars)
    table = make_table(topo, 500)
    idle = topo.rw()                  # opened before promote, idle across it
    fetch_one(idle, "SELECT 1")
    writer = Writer(topo, table, 1000)  # busy across it
    writer.start()
    time.sleep(0.3)
    started = time.monotonic()
    proc = topo.run("promote")
    took = time.monotonic() - started
    time.sleep(0.5)
    writer.stop.set()
    writer.join(10)
    print(f"promote took {took:.2f}s; busy client on pgapi_rw: {writer.report()}")
    assert "replayed past it: no transaction is lost" in proc.stderr, (
        f"expected promote to confirm the replica replayed the old primary's shutdown checkpoint, got:\n{proc.stderr}")
    topo.load_env()
    v = topo.vars

    # topology.env: the old replica is the primary, replica2 the read side, the old primary former
    want = {"PGAPI_PRIMARY_PORT": old["PGAPI_REPLICA_PORT"], "PGAPI_PRIMARY_PGDATA": old["PGAPI_REPLICA_PGDATA"],
            "PGAPI_PRIMARY_SOCKET_DIR": old["PGAPI_REPLICA_SOCKET_DIR"],
            "PGAPI_REPLICA_PORT": old["PGAPI_REPLICA2_PORT"], "PGAPI_REPLICA2_PORT": old["PGAPI_REPLICA2_PORT"],
            "PGAPI_FORMER_PRIMARY_PORT": old["PGAPI_PRIMARY_PORT"],
            "PGAPI_FORMER_PRIMARY_PGDATA": old["PGAPI_PRIMARY_PGDATA"]}
    got = {k: v.get(k) for k in want}
    assert got == want, f"expected topology.env after promote to have {want}, got {got}"
    assert_not_running(topo, old["PGAPI_PRIMARY_PGDATA"], topo.primary_port, "the old primary")

    got = server_of(topo.rw)
    assert got == (False, topo.replica_port), f"expected pgapi_rw to reach a primary on {topo.replica_port}, got {got}"
    got = server_of(topo.ro2)
    assert got == (True, topo.replica2_port), f"expected pgapi_ro2 to stay on replica2 {topo.replica2_port}, got {got}"
    ports = bouncer_database_ports(topo)
    want_ports = {"pgapi_rw": topo.replica_port, "pgapi_ro": topo.replica2_port, "pgapi_ro2": topo.replica2_port}
    assert ports == want_ports, f"expected PgBouncer databases {want_ports} after promote, got {ports}"

    # nothing written before the promote is missing on the new primary
    with closing(topo.rw()) as conn:
        got = fetch_one(conn, f"SELECT count(*), max(id) FROM {table} WHERE id <= 500")
        assert got == (500, 500), f"expected the 500 rows written before promote on the new primary, got {got}"
        got = sorted(r[0] for r in fetch_all(conn, f"SELECT id FROM {table} WHERE id >= 1000"))
    assert set(writer.ids) <= set(got), (
        f"expected every write acknowledged to the busy client on the new primary, missing {sorted(set(writer.ids) - set(got))[:10]}")

    # connections opened before the promote keep working once PgBouncer has reconnected
    row, failures = retry_statement(idle, "SELECT pg_is_in_recovery(), current_setting('port')::int")
    print(f"idle client on pgapi_rw after promote: {row}, failed attempts first: {failures}")
    assert row == (False, topo.replica_port), f"expected the idle pre-promote connection to reach the new primary, got {row}"
    # promote PAUSEs pgapi_rw before stopping the old primary: the busy client's statements wait
    # (about half a second here) instead of failing (without the PAUSE, the statement in flight
    # fails and PgBouncer drops that client connection)
    assert not writer.conn.closed and not writer.errors, (
        f"expected the busy pre-promote connection to stay open without errors, got: {writer.report()}")
    row, failures = retry_statement(writer.conn, f"SELECT count(*) FROM {table}")
    print(f"busy client after promote: {row}, failed attempts first: {failures}")

    # writes after the promote succeed and reach replica2, which follows the new primary
    insert_row(topo, table, 501)
    wait_streaming(topo, ["pgapi_replica2"])
    wait_row(topo.ro2, table, 501, "pgapi_ro2 (replica2 following the new primary)")
    wait_row(topo.ro, table, 501, "pgapi_ro")

    # up after promote starts no second primary, also after a full down
    topo.up()
    assert_not_running(topo, old["PGAPI_PRIMARY_PGDATA"], topo.primary_port, "the old primary after up")
    topo.down()
    proc = topo.up()
    assert_not_running(topo, old["PGAPI_PRIMARY_PGDATA"], topo.primary_port, "the old primary after down/up")
    assert "former primary (data dir primary" in proc.stderr, f"expected up to say the former primary stays stopped, got:\n{proc.stderr}"
    got = server_of(topo.rw)
    assert got == (False, topo.replica_port), f"expected pgapi_rw on the new primary {topo.replica_port} after down/up, got {got}"
    status = topo.run("status", check=False).stdout
    lines = {line.split()[0]: line for line in status.splitlines()}
    assert "stopped" in lines.get("former", "") and f"port={topo.replica_port}" in lines.get("primary", ""), (
        f"expected status to list the primary on {topo.replica_port} and a stopped former, got:\n{status}")

    # rejoin: the old primary streams from the new one, and pgapi_ro reads from it again
    topo.run("rejoin")
    topo.load_env()
    wait_streaming(topo, ["pgapi_primary", "pgapi_replica2"])
    got = server_of(topo.ro)
    assert got == (True, topo.primary_port), f"expected pgapi_ro on the rejoined old primary {topo.primary_port}, got {got}"
    wait_row(topo.ro, table, 501, "pgapi_ro (the rejoined old primary)")
    got = {k: topo.vars.get(k) for k in ("PGAPI_REPLICA_PORT", "PGAPI_FORMER_PRIMARY_PORT")}
    assert got == {"PGAPI_REPLICA_PORT": str(topo.primary_port), "PGAPI_FORMER_PRIMARY_PORT": None}, (
        f"expected topology.env to name the rejoined node as the replica and no former primary, got {got}")


def test_promote_without_second_replica(make_topology):
    topo = make_topology(60)
    topo.up()
    table = make_table(topo, 100)
    held = topo.rw()
    fetch_one(held, "SELECT 1")
    topo.run("promote")
    topo.load_env()

    # pgapi_ro has no replica left: it reads from the new primary
    got = {k: topo.vars.get(k) for k in ("PGAPI_PRIMARY_PORT", "PGAPI_REPLICA_PORT", "PGAPI_FORMER_PRIMARY_PORT")}
    want = {"PGAPI_PRIMARY_PORT": str(topo.replica_port), "PGAPI_REPLICA_PORT": str(topo.replica_port),
            "PGAPI_FORMER_PRIMARY_PORT": str(topo.primary_port)}
    assert got == want, f"expected topology.env {want} after promote, got {got}"
    for factory, name in ((topo.rw, "pgapi_rw"), (topo.ro, "pgapi_ro")):
        got = server_of(factory)
        assert got == (False, topo.replica_port), f"expected {name} on the new primary {topo.replica_port}, got {got}"
    row, failures = retry_statement(held, f"SELECT count(*) FROM {table}")
    print(f"pre-promote connection after promote: {row}, failed attempts first: {failures}")
    assert row == (100,), f"expected the 100 rows through the pre-promote connection, got {row}"
    insert_row(topo, table, 101)

    # a second promote has no replica to promote, and changes nothing
    proc = topo.run("promote", check=False)
    assert proc.returncode != 0 and "no replica to promote" in proc.stderr, (
        f"expected a second promote to fail with 'no replica to promote', got rc {proc.returncode}:\n{proc.stderr}")
    got = server_of(topo.rw)
    assert got == (False, topo.replica_port), f"expected pgapi_rw still on {topo.replica_port}, got {got}"

    topo.down()
    topo.up()
    assert_not_running(topo, topo.vars["PGAPI_FORMER_PRIMARY_PGDATA"], topo.primary_port, "the old primary after down/up")

    topo.run("rejoin")
    topo.load_env()
    wait_streaming(topo, ["pgapi_primary"])
    got = server_of(topo.ro)
    assert got == (True, topo.primary_port), f"expected pgapi_ro on the rejoined old primary {topo.primary_port}, got {got}"
    wait_row(topo.ro, table, 101, "pgapi_ro (the rejoined old primary)")


def test_promote_after_the_primary_crashed(make_topology):
    topo = make_topology(70)
    topo.up()
    table = make_table(topo, 10)
    wait_row(topo.ro, table, 10, "pgapi_ro")
    pid = topo.pids()["primary"]
    os.kill(pid, 9)
    wait_until(lambda: not pid_alive(pid), 10, f"the killed primary (pid {pid}) to die")
    proc = topo.run("promote")
    assert "did not shut down cleanly" in proc.stderr, (
        f"expected promote to warn that the crashed primary's WAL cannot be checked, got:\n{proc.stderr}")
    topo.load_env()
    got = server_of(topo.rw)
    assert got == (False, topo.replica_port), f"expected pgapi_rw on the promoted replica {topo.replica_port}, got {got}"
    insert_row(topo, table, 11)
    # the crashed primary's postmaster children may linger a moment; up must not start it
    topo.up()
    assert_not_running(topo, topo.vars["PGAPI_FORMER_PRIMARY_PGDATA"], topo.primary_port, "the crashed old primary after up")


# ------------------------------------------------------------------ secrets and local privilege

def secret_values(topo):
    return {k: v for k, v in topo.secrets.items() if k.endswith("PASSWORD") and len(v) >= 16}


def traced_run(topo, trace_path, *args):
    """topology.sh under strace: every execve of the script and of everything it starts, with its argv
    in full, whether the process lived a millisecond or stays running. The servers it starts outlive
    it, so strace is stopped (it detaches from them) once the script itself has exited."""
    import re
    import signal
    import subprocess
    from lib.topology import TOPOLOGY_SH
    # -I1: strace stops on SIGTERM (with -o and a command it would ignore it), detaching from the servers
    cmd = ["strace", "-I1", "-f", "-q", "--seccomp-bpf", "-e", "trace=execve", "-s", "65536", "-o", str(trace_path),
           TOPOLOGY_SH, *args, topo.dir]
    tracer = subprocess.Popen(cmd, env=topo.script_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)

    def script_exit():
        with open(trace_path) as f:
            text = f.read()
        # strace pads a pid to 5 columns: "2137  execve(...", "12345 execve(..."
        first = re.match(r"(\d+)\s", text)
        done = first and re.search(rf"^{first.group(1)}\s+\+\+\+ exited with (\d+) \+\+\+$", text, re.M)
        return (int(done.group(1)), text) if done else None

    try:
        try:
            rc, text = wait_until(lambda: os.path.exists(trace_path) and script_exit(), 300, f"{' '.join(cmd)} to exit")
        except AssertionError as exc:
            with open(trace_path) as f:
                tail = f.read()[-4000:]
            raise AssertionError(f"{exc}\nlast lines of the trace:\n{tail}") from None
    finally:
        tracer.send_signal(signal.SIGTERM)
        try:
            _, err = tracer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            raise
    assert rc == 0, f"{' '.join(cmd)}: the script exited {rc}:\n{err}\n{text[-3000:]}"
    return text


def test_no_password_in_any_command_line(make_topology, tmp_path):
    """/proc/*/cmdline is world-readable: no process that topology.sh runs may carry a password in its
    argv. Traced: an `up` of a running topology whose Redis was stopped, which checks each role's
    password with psql (the leak this guards against: `env PGPASSWORD=... psql`), asks PgBouncer and
    Redis (redis-cli) and starts redis-server as the redis user. (initdb and pg_basebackup, which take
    their passwords from files, are left out of the trace: under a loaded machine they made it slow.)"""
    topo = make_topology(10)
    topo.up()
    redis_pid = topo.pids()["redis"]
    os.kill(redis_pid, 15)
    wait_until(lambda: not pid_alive(redis_pid), 20, f"redis (pid {redis_pid}) gone")
    trace = traced_run(topo, tmp_path / "up.trace", "up")
    secrets = secret_values(topo)
    assert len(secrets) == 6, f"expected 6 passwords in secrets.env, got {sorted(secrets)}"
    execs = [line for line in trace.splitlines() if "execve(" in line]
    for wanted in ("/psql", "redis-cli", "redis-server"):
        assert any(wanted in line for line in execs), f"expected the trace to show {wanted} being run"
    leaks = [f"{name} in: {line[:300]}" for line in execs for name, pw in secrets.items() if pw in line]
    assert not leaks, "passwords in a command line:\n" + "\n".join(leaks[:10])


def test_redis_refuses_clients_without_the_password(topology):
    import redis as redis_lib
    anonymous = redis_lib.Redis(host=HOST, port=topology.redis_port, password=None, socket_timeout=5)
    with pytest.raises(redis_lib.AuthenticationError):
        anonymous.set("planted", "a fake cache HIT")
    anonymous.close()
    wrong = redis_lib.Redis(host=HOST, port=topology.redis_port, username="pgapi", password="0" * 32, socket_timeout=5)
    with pytest.raises(redis_lib.RedisError, match="WRONGPASS"):
        wrong.ping()
    wrong.close()
    # pgapi's own user reads and writes keys, but has no admin or dangerous command
    app = topology.redis(username="pgapi", password=topology.secrets["REDIS_PASSWORD"])
    assert app.ping() is True
    for command in (("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("KEYS", "*"), ("ACL", "LIST")):
        with pytest.raises(redis_lib.exceptions.NoPermissionError):
            app.execute_command(*command)


def test_redis_runs_as_redis_with_a_memory_limit_that_never_evicts(topology):
    pid = topology.pids()["redis"]
    uid = os.stat(f"/proc/{pid}").st_uid
    import pwd
    assert pwd.getpwuid(uid).pw_name == "redis", f"expected redis-server (pid {pid}) to run as redis, got uid {uid}"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    leaks = [k for k, v in secret_values(topology).items() if v.encode() in cmdline]
    assert not leaks, f"redis-server's command line holds {leaks}: {cmdline!r}"
    conf = os.path.join(topology.dir, "redis", "redis.conf")
    st = os.stat(conf)
    assert (pwd.getpwuid(st.st_uid).pw_name, st.st_mode & 0o777) == ("redis", 0o600), \
        f"expected {conf} owned by redis, mode 600, got uid {st.st_uid} mode {oct(st.st_mode & 0o777)}"
    r = topology.redis()
    maxmemory = int(r.config_get("maxmemory")["maxmemory"])
    policy = r.config_get("maxmemory-policy")["maxmemory-policy"]
    assert maxmemory > 0 and policy == "noeviction", f"expected a maxmemory with noeviction, got {maxmemory} {policy}"


def state_dir_with(tmp_path, name, env_text, dir_owner=0, env_owner=0, env_mode=0o644):
    d = tmp_path / name
    d.mkdir()
    os.chmod(d, 0o755)
    (d / ".pgapi-topology").write_text("")
    env = d / "topology.env"
    env.write_text(env_text)
    os.chmod(env, env_mode)
    os.chown(env, env_owner, env_owner)
    os.chown(d, dir_owner, dir_owner)
    return d


@pytest.mark.parametrize("case", ["dir of another user", "topology.env of another user",
                                  "topology.env writable by group", "dir writable by other"])
def test_state_dir_not_root_only_is_refused(tmp_path, case):
    """topology.sh sources DIR/topology.env as root: a state dir (or its files) that another user owns or
    can write is refused before anything in it is read."""
    import subprocess
    from lib.topology import TOPOLOGY_SH
    nobody = 65534
    marker = tmp_path / "sourced"
    text = f"touch {marker}\nexport PGAPI_BOUNCER_PORT=1\n"
    kw = {"dir of another user": dict(dir_owner=nobody), "topology.env of another user": dict(env_owner=nobody),
          "topology.env writable by group": dict(env_mode=0o664), "dir writable by other": {}}[case]
    d = state_dir_with(tmp_path, "state", text, **kw)
    if case == "dir writable by other":
        os.chmod(d, 0o757)
    p = subprocess.run([TOPOLOGY_SH, "status", str(d)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "refusing state dir" in p.stderr, \
        f"expected exit 1 and 'refusing state dir', got {p.returncode}:\n{p.stderr}"
    assert not marker.exists(), "topology.env was sourced"
