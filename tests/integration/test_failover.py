"""Issue 9: topologies with two replicas, and failover with the server running. One topology of its own
(the steps change its roles), three servers on it, each following the primary its own way:

  bouncer    writes through PgBouncer's pgapi_rw, reads from pgapi_ro and pgapi_ro2 (round-robin),
             Redis on: `topology.sh promote` re-points PgBouncer; the server notices the new timeline
             and bypasses the cache until a new epoch, with no restart and no reload
  multihost  writes straight to both PostgreSQL ports with target_session_attrs=read-write: libpq finds
             whichever is the primary when it reconnects
  reload     writes straight to the old primary's port: after the promote, the ini is pointed at the new
             one and the server gets a SIGHUP

Tests run in file order and share the topology."""

import http.client
import json
import os
import re
import signal
import threading
import time
from contextlib import closing

import psycopg2
import pytest

from lib.builders import post_user
from lib.faultload import FaultLoad
from lib.metrics import scrape, total, value
from lib.pgapi_fixtures import migrate_env
from lib.pgapi_server import BINARY, PgapiServer, REPO_ROOT, children_of
from lib.topology import port_base, start_topology, stop_topology, wait_until

OFFSET = 90  # this module's topology: base + 90 .. + 94


def admin_sql(topo, role, sql):
    """As postgres on the server that has `role` (PRIMARY, REPLICA, REPLICA2) in topology.env."""
    conn = topo.admin(role)
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else None


def rw_sql(topo, sql, args=()):
    with closing(psycopg2.connect(host="127.0.0.1", port=topo.bouncer_port, dbname="pgapi_rw", user="app",
                                  passfile=os.path.join(topo.dir, "pgpass"), connect_timeout=5)) as c:
        c.autocommit = True
        with c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


@pytest.fixture(scope="module")
def topo():
    if os.geteuid() != 0:
        pytest.skip("the local topology needs root")
    t = start_topology(port_base() + OFFSET)
    try:
        t.run("add-replica")
        t.load_env()
        import subprocess
        p = subprocess.run([BINARY, "migrate", "up"], env=migrate_env(t), cwd=REPO_ROOT, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert p.returncode == 0, p.stderr
        yield t
    finally:
        stop_topology(t)


@pytest.fixture(scope="module")
def servers(topo, tmp_path_factory):
    v = topo.vars
    p_port, r_port = int(v["PGAPI_PRIMARY_PORT"]), int(v["PGAPI_REPLICA_PORT"])
    bouncer = f"host=127.0.0.1 port={topo.bouncer_port} user=app dbname="
    common = {"health_interval": "200ms", "migrations_dir": os.path.join(REPO_ROOT, "migrations")}
    made = {
        "bouncer": {"database": {**common, "primary": bouncer + "pgapi_rw",
                                 "replica": [bouncer + "pgapi_ro", bouncer + "pgapi_ro2"]}},
        "multihost": {"database": {**common, "replica": bouncer + "pgapi_ro",
                                   "primary": f"host=127.0.0.1,127.0.0.1 port={p_port},{r_port} dbname=pgapi "
                                              "user=app target_session_attrs=read-write connect_timeout=2"},
                      "redis": {"enabled": "off"}},
        "reload": {"database": {**common, "replica": bouncer + "pgapi_ro",
                                "primary": f"host=127.0.0.1 port={p_port} dbname=pgapi user=app connect_timeout=2"},
                   "redis": {"enabled": "off"}},
    }
    out = {}
    try:
        for name, overrides in made.items():
            s = PgapiServer(str(tmp_path_factory.mktemp(name)), topology=topo, workers=2, overrides=overrides)
            s.start()
            s.wait_for(lambda: s.get("/readyz").status == 200, 20, f"{name}: /readyz 200")
            out[name] = s
        yield out
    finally:
        problems = []
        for name, s in out.items():
            rc = s.stop(signal.SIGTERM)
            bad = s.bad_log_lines()
            if rc != 0 or bad:
                problems.append(f"{name}: exit {rc}, bad log lines {bad[:5]}\n{s.log_tail(40)}")
        assert not problems, "\n".join(problems)


def test_reads_are_balanced_over_both_replicas(servers):
    s = servers["bouncer"]
    ids = [post_user(s, f"bal{i}").json()["id"] for i in range(5)]
    time.sleep(1.5)  # both replicas replay the inserts; the workers sample their positions
    before = scrape(s)
    for i in range(300):  # distinct pages: each a cache miss, so a statement
        assert s.get(f"/users?limit=5&after_id={ids[0] + 1000 + i}").status == 200
    time.sleep(1.3)
    after = scrape(s)
    got = {b: total(after, "pgapi_pool_queries_total", backend=b) - total(before, "pgapi_pool_queries_total", backend=b)
           for b in ("replica0", "replica1", "primary")}
    assert got["replica0"] + got["replica1"] >= 250, f"list reads should go to the replicas: {got}"
    for b in ("replica0", "replica1"):
        assert got[b] >= 60, f"reads must be spread over both replicas (round-robin), got {got}"


class Writer(threading.Thread):
    """POSTs users through one server until stopped; records what it was told."""

    def __init__(self, s):
        super().__init__(daemon=True)
        self.s, self.stop_flag = s, threading.Event()
        self.acked, self.failed, self.unknown = [], [], 0

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            try:
                r = post_user(self.s, f"w{i}")
            except (OSError, http.client.HTTPException):
                self.unknown += 1
                continue
            if r.status == 201:
                self.acked.append(r.json()["id"])
            else:
                self.failed.append((r.status, r.json().get("error", {}).get("code")))
                time.sleep(0.05)


def test_promote_with_servers_running(topo, servers):
    b, mh, rl = servers["bouncer"], servers["multihost"], servers["reload"]
    old_primary_port = int(topo.vars["PGAPI_PRIMARY_PORT"])
    new_primary_port = int(topo.vars["PGAPI_REPLICA_PORT"])
    before = {name: [post_user(s, f"pre-{name}-{i}").json()["id"] for i in range(5)] for name, s in servers.items()}
    warm = before["bouncer"][0]
    for _ in range(3):
        b.get(f"/users/{warm}")
    pids = {name: s.pid for name, s in servers.items()}
    writer = Writer(b)
    writer.start()
    # beside the flat-out writer, the fault tests' mixed load (creates, updates, deletes, reads, lists)
    # recorded as a history: no read may contradict an acknowledged write across the switch
    load = FaultLoad(b, seed=9)
    load.start().steady()
    t0 = load.mark("promote")
    topo.run("promote")
    promote_s = time.monotonic() - t0
    load.mark("promoted")
    topo.load_env()
    assert int(topo.vars["PGAPI_PRIMARY_PORT"]) == new_primary_port, topo.vars

    # through PgBouncer: writes go on with no reload; PgBouncer held them during the switch
    wait_until(lambda: post_user(b, "after-b").status == 201, 30, "a write through PgBouncer after promote")
    load.wait_requests(100, time.monotonic(), what="requests after the promote")
    load.stop()
    writer.stop_flag.set()
    writer.join(30)
    problems, facts = load.verify(topo)
    print("\n" + load.report("planned switchover (topology.sh promote)"))
    assert not problems, f"expected the new primary to match what clients were told:\n" + "\n".join(problems[:20])
    bad = [o for o in load.records() if o.failed and o.code not in ("database_unavailable", "write_outcome_unknown", "primary_moved")]
    assert not bad, f"unexpected failures across the switch: {[str(o) for o in bad[:8]]}"
    on_new = rw_sql(topo, "SELECT inet_server_port(), pg_is_in_recovery()")[0]
    assert on_new == (new_primary_port, False), f"pgapi_rw should reach the promoted replica: {on_new}"
    acked = [i for ids in before.values() for i in ids] + writer.acked
    rows = {r[0] for r in rw_sql(topo, "SELECT id FROM users WHERE id = ANY(%s)", (acked,))}
    lost = sorted(set(acked) - rows)
    assert not lost, f"acknowledged writes missing on the new primary after a planned switchover: {lost}"
    print(f"promote took {promote_s:.1f}s; writer: {len(writer.acked)} acknowledged, failures {writer.failed[:10]} "
          f"({len(writer.failed)}), {writer.unknown} transport errors")
    assert all(code in ("database_unavailable", "write_outcome_unknown", "primary_moved") for _, code in writer.failed), writer.failed

    # the new timeline was noticed; the cache comes back under a new epoch
    wait_until(lambda: "a new primary" in b.log_text(), 10, "the bouncer server to notice the new primary")
    r = b.request("PATCH", f"/users/{warm}", body={"name": "after-failover"})
    assert r.status == 200, r
    for _ in range(5):
        got = b.get(f"/users/{warm}")
        assert got.status == 200 and got.json()["name"] == "after-failover", got
    wait_until(lambda: b.get(f"/users/{warm}").headers.get("x-cache") == "HIT", 15, "cache hits again after the new epoch")

    # multi-host conninfo: reconnects find the new primary, no reload
    wait_until(lambda: post_user(mh, "after-mh").status == 201, 30, "a write through the multi-host conninfo")
    assert value(scrape(mh), "pgapi_generation") == 1, "the multi-host server needed no reload"

    # direct conninfo of the old primary: writes fail until the ini follows and a SIGHUP applies it
    r = post_user(rl, "before-reload")
    assert r.status == 503, f"the old primary is down: expected 503, got {r}"
    rl.settings["database"]["primary"] = f"host=127.0.0.1 port={new_primary_port} dbname=pgapi user=app connect_timeout=2"
    rl.write_ini()
    rl.signal(signal.SIGHUP)
    wait_until(lambda: post_user(rl, "after-reload").status == 201, 30, "a write after the reload")

    for name, s in servers.items():
        assert s.pid == pids[name] and s.alive(), f"{name}: the master must not restart"
        assert value(scrape(s), "pgapi_worker_restarts_total") == 0, f"{name}: no worker may have died"
    assert old_primary_port != new_primary_port


def test_replica2_follows_the_new_primary_and_reads_stay_balanced(topo, servers):
    b = servers["bouncer"]
    u = post_user(b, "follow").json()
    with closing(psycopg2.connect(host="127.0.0.1", port=topo.bouncer_port, dbname="pgapi_ro2", user="app",
                                  passfile=os.path.join(topo.dir, "pgpass"), connect_timeout=5)) as c:
        c.autocommit = True
        with c.cursor() as cur:
            wait_until(lambda: (cur.execute("SELECT count(*) FROM users WHERE id = %s", (u["id"],)), cur.fetchone()[0])[1] == 1,
                       15, "replica2 to replay a write made on the new primary")
    fams = wait_until(lambda: (lambda f: f if all(value(f, "pgapi_backend_up", worker=w, backend=bk) == 1
                                                  for w in ("0", "1") for bk in ("primary", "replica0", "replica1")) else None)(scrape(b)),
                      20, "every backend back in rotation after the promote")
    assert value(fams, "pgapi_replica_lag_seconds", worker="0", backend="replica1") < 5


def test_rejoin_brings_the_old_primary_back_as_a_replica(topo, servers):
    b = servers["bouncer"]
    topo.run("rejoin")
    topo.load_env()
    assert admin_sql(topo, "REPLICA", "SELECT pg_is_in_recovery()")[0][0] is True
    u = post_user(b, "rejoined").json()
    with closing(psycopg2.connect(host=topo.vars["PGAPI_REPLICA_SOCKET_DIR"], port=int(topo.vars["PGAPI_REPLICA_PORT"]),
                                  dbname="pgapi", user="postgres", connect_timeout=5)) as c:
        c.autocommit = True
        with c.cursor() as cur:
            wait_until(lambda: (cur.execute("SELECT count(*) FROM users WHERE id = %s", (u["id"],)), cur.fetchone()[0])[1] == 1,
                       15, "the rejoined replica to replay a new write")
    assert b.get(f"/users/{u['id']}").status == 200

    # a primary conninfo that now leads to a standby (the rejoined node): found by pg_is_in_recovery()
    rl = servers["reload"]
    good = rl.settings["database"]["primary"]
    rl.settings["database"]["primary"] = (f"host=127.0.0.1 port={int(topo.vars['PGAPI_REPLICA_PORT'])} dbname=pgapi "
                                          "user=app connect_timeout=2")
    rl.write_ini()
    reloads = rl.log_text().count("reload complete")
    rl.signal(signal.SIGHUP)
    wait_until(lambda: "the server is in recovery" in rl.log_text(), 20, "the standby found in the primary's place")
    # the old generation (on the good conninfo) serves until the new one is ready, then is retired
    workers = int(rl.settings["server"]["workers"])
    wait_until(lambda: rl.log_text().count("reload complete") > reloads and len(rl.worker_pids()) == workers, 20,
               "the reload to complete and the old generation to be gone")
    r = post_user(rl, "to-a-standby")
    assert r.status == 503 and r.json()["error"]["code"] in ("primary_moved", "database_unavailable"), r
    assert rl.get("/readyz").status == 503, "not ready without a primary"
    rl.settings["database"]["primary"] = good
    rl.write_ini()
    rl.signal(signal.SIGHUP)
    wait_until(lambda: post_user(rl, "back").status == 201, 30, "writes once the conninfo leads to the primary again")


def walsender_pids(topo):
    rows = admin_sql(topo, "PRIMARY", "SELECT pid FROM pg_stat_replication")
    assert len(rows) == 2, f"expected two walsenders (two replicas), got {rows}"
    return [r[0] for r in rows]


def test_unplanned_failover_never_serves_a_lost_write_from_the_cache(topo, servers):
    """The primary dies with an acknowledged write no replica received (asynchronous replication), which
    the cache already holds. After the promote, the server must notice the new timeline and answer what
    the new primary has, not the cached row of the lost write."""
    b = servers["bouncer"]
    u = post_user(b, "doomed").json()
    time.sleep(1.0)  # every replica has the row
    with open(os.path.join(topo.vars["PGAPI_PRIMARY_PGDATA"], "postmaster.pid")) as f:
        postmaster = int(f.readline())
    frozen = walsender_pids(topo)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # nothing the primary writes from now on leaves it
    try:
        r = b.request("PATCH", f"/users/{u['id']}", body={"name": "lost-in-failover"})
        assert r.status == 200, r
        wait_until(lambda: (lambda g: g.headers.get("x-cache") == "HIT" and g.json()["name"] == "lost-in-failover")(
            b.get(f"/users/{u['id']}")), 10, "the acknowledged write cached")
    finally:
        # the primary dies at once, its stopped walsenders with it: their unsent WAL is gone
        for pid in [postmaster] + children_of(postmaster):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    seen = b.log_text().count("a new primary")
    topo.run("promote")
    topo.load_env()
    wait_until(lambda: b.log_text().count("a new primary") > seen, 15, "the server to notice the second new primary")
    db = rw_sql(topo, "SELECT name FROM users WHERE id = %s", (u["id"],))
    assert db == [("doomed",)], f"the new primary should not have the unreplicated write: {db}"
    for _ in range(10):
        got = b.get(f"/users/{u['id']}")
        assert got.status == 200 and got.json()["name"] == "doomed", \
            f"after the failover the server must answer what the new primary has, got {got} (x-cache {got.headers.get('x-cache')})"
    wait_until(lambda: post_user(b, "after-crash").status == 201, 30, "writes after the unplanned failover")
