"""Issue 8: faults under a steady client load (lib/faultload.py), against real processes. Each test breaks
one thing while a few client threads create, update, delete and read users through the HTTP API, then
asserts what clients saw (statuses, error codes, how long requests took) and compares the primary with
what they were told: no acknowledged write missing, no refused write applied, no read contradicting an
acknowledged write. Faults that kill or stop servers run on a throw-away topology of the test's own
(make_topology); the others use the session topology. Each test prints a "FAULT ..." block with its
counts (tests/RELIABILITY.md quotes them)."""

import contextlib
import copy
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from contextlib import closing

import pytest

from lib.bouncer import bouncer_admin_run, bouncer_queries, replay_resume
from lib.cache import OwnRedis
from lib.consistency import (Client, ReplicaWatch, cache_mismatches, delayed_schedule, replica_apply_delay,
                             run_and_check, seed_of_run, start_server)
from lib.faultload import FaultLoad
from lib.locks import statement_waits_on_lock
from lib.pgapi_fixtures import migrate_env
from lib.pgapi_server import BINARY, REPO_ROOT
from lib.relay import Relay
from lib.topology import pid_alive, wait_until

TOPOLOGY_OFFSET = 30           # base+30..+33 (the session topology is base+0..3; other tests use 10, 20)
RELAY_OFFSET = 35              # the socat relay's port, base+35
PGCTL = "/usr/lib/postgresql/15/bin/pg_ctl"

# Small timeouts so that failures are fast. The most one request can take: queue_timeout (0.5 s), then
# the client-side statement bound (statement_timeout + 1 s = 2 s) twice (a read is retried once after a
# broken connection; a write's commit-LSN read likewise), plus Redis command timeouts.
OVERRIDES = {"database": {"statement_timeout": "1s", "queue_timeout": "500ms", "connect_timeout": "1s",
                          "health_interval": "200ms", "pool_size": 2},
             "redis": {"command_timeout": "200ms", "connect_timeout": "200ms"}}
REQUEST_BOUND_S = 5.0
FAIL_FAST_S = 2.5              # a request that cannot reach the database is answered within this
RECOVERY_S = 5.0               # after a server returns, every request sent this much later succeeds


# -- set-up -----------------------------------------------------------------------------------------

@pytest.fixture
def own_topology(make_topology):
    """A migrated topology of the test's own, free to be killed."""
    topo = make_topology(TOPOLOGY_OFFSET)
    topo.up()
    p = subprocess.run([BINARY, "migrate", "up"], env=migrate_env(topo), cwd=REPO_ROOT, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert p.returncode == 0, f"migrate up failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return topo


def fault_server(server, topo, workers=2, redis_port=None, local_entries=None):
    overrides = copy.deepcopy(OVERRIDES)
    prefix = f"fault{uuid.uuid4().hex[:8]}"
    overrides["redis"]["prefix"] = prefix
    if redis_port:
        overrides["redis"]["port"] = redis_port
    if local_entries is not None:
        overrides["redis"]["local_entries"] = local_entries
    s = server(workers=workers, topology=topo, overrides=overrides).start()
    s.prefix = prefix
    wait_readyz(s, lambda j: j["primary"] and j["replicas_up"] == 1 and j["redis"] == "up", "everything up")
    return s


def wait_readyz(s, predicate, what, timeout=20):
    """Polls /readyz until predicate(body) holds on every worker (each answers for itself)."""
    seen = set()

    def both():
        body = s.get("/readyz").json()
        if predicate(body):
            seen.add(body["worker"])
        else:
            seen.discard(body["worker"])
        return len(seen) == int(s.settings["server"]["workers"])
    s.wait_for(both, timeout, f"/readyz: {what} on every worker")


def pg_ctl(topo, which, action):
    data = topo.vars[f"PGAPI_{which.upper()}_PGDATA"]
    p = subprocess.run(["runuser", "-u", "postgres", "--", PGCTL, action, "-m", "fast", "-w", "-D", data],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, f"pg_ctl {action} {which} exited {p.returncode}: {p.stderr}"


def finish(load, topo, title):
    """Checks the primary against what clients were told (the load stopped), prints the counts."""
    problems, _ = load.verify(topo)
    print("\n" + load.report(title))
    assert not problems, f"expected the primary to match what clients were told, got {len(problems)} problem(s):\n" \
        + "\n".join(problems[:20])


def failures(recs):
    return [o for o in recs if o.failed]


def show(recs, n=8):
    return "\n".join(f"  {o}" for o in recs[:n])


def assert_bounded(load):
    slow = [o for o in load.records() if o.seconds > REQUEST_BOUND_S or o.status is None and "timed out" in o.error]
    assert not slow, f"expected every request answered within {REQUEST_BOUND_S}s, got {len(slow)}:\n{show(slow)}"


def assert_recovered(load, t_back, what):
    """A write succeeds soon after t_back, and every request sent RECOVERY_S after it succeeds."""
    ok = load.wait_for(lambda: load.first_success(t_back), RECOVERY_S + 5, f"a write to succeed after {what}")
    load.mark("first write ok")
    load.wait_for(lambda: time.monotonic() > t_back + RECOVERY_S + 1.0, RECOVERY_S + 5, "the load after recovery")
    late = failures(load.records(t_back + RECOVERY_S))
    assert not late, f"expected every request sent {RECOVERY_S}s after {what} to succeed, got:\n{show(late)}"
    assert ok.t_send - t_back < RECOVERY_S, f"expected a write to succeed within {RECOVERY_S}s of {what}"
    return ok


def pg_outage(load, s, topo, which, seconds, gone):
    """Stops the primary or the replica (pg_ctl -m fast) under the load, waits until /readyz shows it
    gone (`gone(body)`) on every worker and for `seconds` after the stop, then starts it again
    (topology.sh up). Returns the times: stop sent, stopped, restart sent, up."""
    t_stop = load.mark(f"{which} stop")
    pg_ctl(topo, which, "stop")
    t_stopped = load.mark(f"{which} stopped")
    wait_readyz(s, gone, f"the {which} gone")
    load.wait_for(lambda: time.monotonic() > t_stopped + seconds, 10, f"{seconds} s without the {which}")
    t_restart = load.mark(f"{which} starting")
    topo.up()
    return t_stop, t_stopped, t_restart, load.mark(f"{which} up")


def replica_reads(s, topo, n=200):
    """pgapi_ro queries PgBouncer counted during n reads of users that do not exist (404: never cached, so
    each is a query), load stopped, less the most the health checks can have sent; asserts the reads went
    to the replica."""
    time.sleep(0.5)   # the replica replays the load's last writes and the workers sample it
    before = bouncer_queries(topo)
    t0 = time.monotonic()
    for _ in range(n):
        r = s.get(f"/users/{random.randrange(10**12, 10**13)}")
        assert r.status == 404, r
    time.sleep(1.3)   # SHOW STATS totals are published every stats_period (1 s)
    after = bouncer_queries(topo)
    window = time.monotonic() - t0 + 1.0
    health = int(2 * (window / 0.2 + 2))
    ro = after.get("pgapi_ro", 0) - before.get("pgapi_ro", 0)
    assert ro - health >= n * 0.9, \
        f"expected the {n} reads on the replica (pgapi_ro +{ro}, health checks at most {health})"
    return ro


@contextlib.contextmanager
def held_write(load, topo, client, who, uid):
    """A PATCH of user uid sent from `client` (recorded by the load as from `who`), held in PostgreSQL by
    a row lock that a direct connection to the primary (PgBouncer does not see it) takes first. Yields the
    request's thread once the statement waits on the lock; the lock goes when the block ends."""
    with closing(topo._pg(host=topo.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=topo.primary_port, dbname="pgapi",
                          user="postgres")) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
        request = threading.Thread(target=load.update, args=(client, who, uid, "held"))
        request.start()
        wait_until(lambda: statement_waits_on_lock(topo), 10, f"the {who} write waiting on its row lock")
        yield request
        locker.rollback()


# -- the faults -------------------------------------------------------------------------------------

def test_pgbouncer_killed_and_restarted(own_topology, server):
    topo = own_topology
    s = fault_server(server, topo)
    pids = s.worker_pids()
    with FaultLoad(s) as load:
        bouncer = topo.pids()["pgbouncer"]
        t_kill = load.mark("pgbouncer SIGKILL")
        os.kill(bouncer, signal.SIGKILL)
        wait_until(lambda: not pid_alive(bouncer), 5, "pgbouncer gone")
        load.wait_for(lambda: time.monotonic() > t_kill + 2.0, 10, "2 s without PgBouncer")
        t_restart = load.mark("pgbouncer restarting")
        topo.up()
        assert_recovered(load, load.mark("pgbouncer up"), "PgBouncer's return")
    gap = load.records(t_kill + 0.05, t_restart)
    print(f"gap: {load.counts(t_kill + 0.05, t_restart)}")
    wrong = [o for o in gap if not (o.status == 503 or (o.status in (200, 404) and o.cache == "HIT"))]
    assert not wrong, f"expected 503 (or a cache hit) for every request without PgBouncer, got:\n{show(wrong)}"
    slow = [o for o in gap if o.seconds > FAIL_FAST_S]
    assert not slow, f"expected requests without PgBouncer to fail within {FAIL_FAST_S}s, got:\n{show(slow)}"
    assert len(gap) >= 20, f"expected requests during the outage, got {len(gap)}"
    assert_bounded(load)
    assert s.worker_pids() == pids, f"expected no worker restart: pids {pids} became {s.worker_pids()}"
    finish(load, topo, "pgbouncer SIGKILL + restart")


def test_replica_stopped_and_returning(own_topology, server):
    s = fault_server(server, own_topology)
    with FaultLoad(s) as load:
        t_stop, _, _, t_back = pg_outage(load, s, own_topology, "replica", 2.0,
                                         lambda j: j["replicas_up"] == 0 and j["status"] == "degraded")
        wait_readyz(s, lambda j: j["replicas_up"] == 1, "replica back in rotation")
        load.mark("replica in rotation")
        load.wait_requests(100, time.monotonic(), what="requests after the replica's return")
    bad = failures(load.records())
    assert not bad, f"expected no request to fail while the replica stopped and returned, got {len(bad)}:\n{show(bad)}"
    reads = load.records(t_stop, t_back, ops=("read", "list"))
    assert len(reads) >= 50, f"expected reads while the replica was down, got {len(reads)}"
    assert_bounded(load)
    finish(load, own_topology, "replica stop + start")
    print(f"replica-side queries for 200 uncached reads after its return: {replica_reads(s, own_topology)}")


def test_primary_stopped_and_returning(own_topology, server):
    s = fault_server(server, own_topology)
    with FaultLoad(s) as load:
        _, t_stopped, t_restart, t_back = pg_outage(
            load, s, own_topology, "primary", 2.5,
            lambda j: not j["primary"] and j["status"] == "unavailable" and j["replicas_up"] == 1)
        assert_recovered(load, t_back, "the primary's return")
    outage = load.records(t_stopped, t_restart)
    print(f"outage: {load.counts(t_stopped, t_restart)}")
    assert "GET /readyz 503" in s.log_text(), "expected /readyz to answer 503 while the primary was down"
    writes = [o for o in outage if o.op in ("create", "update", "delete")]
    wrong = [o for o in writes if o.status != 503]
    assert not wrong, f"expected 503 for every write without a primary, got:\n{show(wrong)}"
    assert len(writes) >= 20, f"expected writes during the outage, got {len(writes)}"
    reads = [o for o in outage if o.op in ("read", "list")]
    bad = failures(reads)
    if "commit LSN unknown" in s.log_text():
        # a write committed just before the stop and its commit-LSN read failed: by design, reads of the
        # users table go to the primary until its position is read again, so they fail cleanly meanwhile
        print(f"a commit LSN was unknown: {len(bad)} reads failed cleanly during the outage")
        bad = [o for o in bad if not (o.status == 503 and o.code == "database_unavailable")]
    assert not bad, f"expected reads to keep working from the replica, got {len(bad)} failures:\n{show(bad)}"
    assert len(reads) >= 20, f"expected reads during the outage, got {len(reads)}"
    assert_bounded(load)
    finish(load, own_topology, "primary stop + start")
    print(f"replica-side queries for 200 uncached reads after the primary's return: {replica_reads(s, own_topology)}")


def test_redis_stopped_and_restarted(schema, server, tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    try:
        s = fault_server(server, schema, redis_port=own.port, local_entries=0)  # X-Cache HIT: Redis's answer
        with FaultLoad(s) as load:
            load.wait_for(lambda: any(o.cache == "HIT" for o in load.records()), 10, "cache hits before the fault")
            t_stop = load.mark("redis stop")
            own.stop()
            load.mark("redis stopped")
            load.wait_for(lambda: time.monotonic() > t_stop + 2.0, 10, "2 s without Redis")
            own.start()
            t_back = load.mark("redis up")
            hit = load.wait_for(lambda: [o for o in load.records(t_back) if o.cache == "HIT"], 15,
                                "a cache hit after Redis returned")
            load.mark("first hit")
            load.wait_requests(100, hit[0].t_end, what="requests after the first hit")
        # Redis holds the deployment's fences: without it writes are not acknowledged (refused before they
        # run, or 503 write_outcome_unknown for one caught committing), reads go on from PostgreSQL
        refused = ("redis_unavailable", "write_outcome_unknown")
        bad = [o for o in failures(load.records()) if not (o.op not in ("read", "list") and o.code in refused)]
        assert not bad, f"expected no read to fail and writes refused only as {refused}, got {len(bad)}:\n{show(bad)}"
        late = [o for o in failures(load.records(t_back + RECOVERY_S))]
        assert not late, f"expected every request {RECOVERY_S}s after Redis returned to succeed:\n{show(late)}"
        down = load.records(t_stop + 0.3, t_back)
        assert not [o for o in down if o.cache == "HIT"], "expected no cache hit while Redis was down"
        assert_bounded(load)
        finish(load, schema, "redis stop + start")
        checked, stale = cache_mismatches(s, schema, own.port)
        print(f"cache entries checked against the primary: {checked}")
        assert not stale, "expected every cached entry to equal the primary's row, got:\n" + "\n".join(stale[:20])
    finally:
        own.stop()


def test_worker_killed_mid_request(schema, server):
    """A worker is killed while a PATCH it sent is held in PostgreSQL by a row lock (so it surely dies
    mid-request); the lock is then released and the statement commits with nobody to answer. The master
    respawns the worker, the other worker keeps serving, and Redis never serves the row as it was before
    that commit (the master moves the cache to a new epoch after a worker dies)."""
    s = fault_server(server, schema, local_entries=0)  # X-Cache HIT: Redis's answer
    victim_conn = Client(s.port, timeout=10)
    with FaultLoad(s) as load:
        victim = victim_conn.call("GET", "/healthz")[1]["pid"]
        assert victim in s.worker_pids(), f"expected /healthz to name a worker: {victim} {s.worker_pids()}"
        uid = load.create(victim_conn, "victim", 0).resp["id"]
        load.wait_for(lambda: load.read(victim_conn, "victim", uid).cache == "HIT", 10, "the victim row cached")
        with held_write(load, schema, victim_conn, "victim", uid) as patch:
            t_kill = load.mark(f"SIGKILL worker {victim} (its PATCH held by a row lock)")
            os.kill(victim, signal.SIGKILL)
            pids = s.wait_for(lambda: (lambda p: len(p) == 2 and victim not in p and p)(s.worker_pids()), 10,
                              "the killed worker respawned")
            t_respawn = load.mark("worker respawned")
        patch.join(15)   # the lock is gone: the held UPDATE ran and committed, with nobody to answer
        victim_conn.close()
        load.wait_requests(200, t_respawn, what="requests after the respawn")
    bad = failures(load.records())
    victim_patch = [o for o in load.records(ops=("update",)) if o.thread == "victim"]
    assert victim_patch and victim_patch[0].status is None, f"expected the held PATCH to get no answer: {victim_patch}"
    not_conn = [o for o in bad if o.status is not None]
    assert not not_conn, f"expected only connection errors (no answer) from the killed worker, got:\n{show(not_conn)}"
    assert len(bad) <= load.threads + 1, f"expected at most one broken connection per client, got {len(bad)}"
    late = [o for o in bad if o.t_send > t_respawn]
    assert not late, f"expected no failure after the respawn, got:\n{show(late)}"
    served = [o for o in load.records(t_kill) if not o.failed]
    assert served, f"expected the other worker(s) {[p for p in pids if p != victim]} to keep serving"
    assert_bounded(load)
    finish(load, schema, f"worker SIGKILL mid-request ({len(bad)} requests without an answer)")
    assert f"pid {victim} (generation 1) killed by signal 9" in s.log_text(), s.log_tail()
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM users WHERE id = %s", (uid,))
        version = cur.fetchone()[0]
    print(f"the killed worker's PATCH: {'applied (committed, never answered)' if version == 2 else 'not applied'}")
    r = s.get(f"/users/{uid}")
    assert r.json()["version"] == version, \
        f"expected the row as the primary has it (version {version}), got {r.json()} (X-Cache {r.headers.get('x-cache')})"
    checked, stale = cache_mismatches(s, schema)
    print(f"cache entries checked against the primary: {checked}")
    assert not stale, "expected every cached entry to equal the primary's row, got:\n" + "\n".join(stale[:20])
    s.wait_for(lambda: "cache moved to a new epoch" in s.log_text(), 10, "the cache in a new epoch")


def test_sighup_every_second_for_20s(schema, server):
    s = fault_server(server, schema)
    reloads = 20
    with FaultLoad(s, max_requests=12000) as load:
        t0 = load.mark("first SIGHUP")
        for i in range(reloads):
            s.signal(signal.SIGHUP)
            load.wait_for(lambda: time.monotonic() > t0 + i + 1, 5, f"second {i + 1} of the SIGHUP storm")
        load.mark("last SIGHUP + 1 s")
        s.wait_for(lambda: s.log_text().count("reload complete") >= 1 and len(s.worker_pids()) == 2, 20,
                   "the last generation serving alone")
        load.wait_requests(100, time.monotonic(), what="requests after the storm")
    bad = failures(load.records())
    assert not bad, f"expected zero failed requests under a SIGHUP storm, got {len(bad)}:\n{show(bad)}"
    assert_bounded(load)
    generations = s.log_text().count("reload complete")
    print(f"reloads completed: {generations} of {reloads} SIGHUPs")
    assert generations >= 1
    finish(load, schema, f"SIGHUP x{reloads} ({generations} generations completed)")


def test_history_with_replica_delay_and_random_pauses(server, schema):
    """recovery_min_apply_delay = 1 s and replay paused and resumed at random, together: the history
    checker (lib/consistency.run_and_check) finds no violation and no stale entry in the cache."""
    seed = seed_of_run()
    srv = start_server(server, schema)
    watch = ReplicaWatch(schema, seed, pause=True)
    try:
        with replica_apply_delay(schema, "1s"):
            # replay frozen at random on top of the 1 s delay can cover the quiet phases the replica needs to
            # pass the hot rows' fences: fewer of its reads can be required (each statement may carry 32)
            result, _ = run_and_check(srv, schema, watch, delayed_schedule(seed), seed, min_replica_reads=3)
    finally:
        replay_resume(schema)
    sm = result.summary
    print(f"FAULT replica delay 1s + random pauses: seed={seed} reads={sm['reads']} writes={sm['writes']} "
          f"writes_by_kind={sm['writes_by_kind']} errors={sm['errors']} violations={len(result.violations)}\n"
          f"  replica: {watch.numbers()}")


# -- PgBouncer paused, and a relay between PgBouncer and the primary killed mid-stream ---------------

def bouncer_point_rw_at(topo, port):
    """Rewrites PgBouncer's pgapi_rw entry to port and reloads; waits until its servers use it."""
    ini = os.path.join(os.path.dirname(topo.vars["PGAPI_BOUNCER_PIDFILE"]), "pgbouncer.ini")
    with open(ini) as f:
        text = f.read()
    lines = [f"pgapi_rw = host=127.0.0.1 port={port} dbname=pgapi" if l.startswith("pgapi_rw =") else l
             for l in text.splitlines()]
    with open(ini, "w") as f:
        f.write("\n".join(lines) + "\n")
    with closing(topo.bouncer_admin()) as conn, conn.cursor() as cur:
        cur.execute("RELOAD")
        cur.execute("SHOW DATABASES")
        cols = [d[0] for d in cur.description]
        rows = {r[cols.index("name")]: r for r in cur.fetchall()}
        assert rows["pgapi_rw"][cols.index("port")] == port, f"expected pgapi_rw on port {port}: {rows['pgapi_rw']}"


def bouncer_paused(topo, db):
    """PgBouncer's SHOW DATABASES says db is paused (set as soon as PAUSE arrives, before it completes)."""
    with closing(topo.bouncer_admin()) as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        cols = [d[0] for d in cur.description]
        return any(r[cols.index("name")] == db and r[cols.index("paused")] == 1 for r in cur.fetchall())


def test_pgbouncer_paused_and_relay_killed_mid_stream(own_topology, server, topology_port_base):
    topo = own_topology
    relay = Relay(topology_port_base + RELAY_OFFSET, topo.primary_port)
    relay.start()
    try:
        bouncer_point_rw_at(topo, relay.port)
        s = fault_server(server, topo)
        wait_until(lambda: relay.streams(), 10, "PgBouncer's primary connections through the relay")
        writer = Client(s.port, timeout=10)
        with FaultLoad(s) as load:
            # A write commits just as PgBouncer starts pausing (a direct connection held its row until
            # then), so the commit-LSN read after it is held past the statement bound: the write is
            # acknowledged with its LSN unknown. PAUSE lasts until it is, longer than the bound.
            uid = load.create(writer, "lsn", 0).resp["id"]
            with held_write(load, topo, writer, "lsn", uid) as held:
                t_pause = load.mark("PAUSE pgapi_rw (a write waiting on a row lock)")
                pause = threading.Thread(target=bouncer_admin_run, args=(topo, "PAUSE pgapi_rw"))
                pause.start()
                wait_until(lambda: bouncer_paused(topo, "pgapi_rw"), 5, "PgBouncer pausing pgapi_rw")
            held.join(10)
            pause.join(10)
            bouncer_admin_run(topo, "RESUME pgapi_rw")
            t_resume = load.mark("RESUME")
            assert not held.is_alive() and not pause.is_alive(), "expected the held write and PAUSE to finish"
            assert_recovered(load, t_resume, "RESUME")
            streams = len(relay.streams())
            t_kill = load.mark(f"relay SIGKILL ({streams} streams)")
            relay.kill()
            load.wait_for(lambda: time.monotonic() > t_kill + 2.0, 10, "2 s without the relay")
            relay.start()
            t_back = load.mark("relay restarted")
            assert_recovered(load, t_back, "the relay's return")
        writer.close()
        answered = [o for o in load.records() if o.status is None or o.status not in (200, 201, 204, 404, 503)]
        assert not answered, f"expected every request to succeed or fail cleanly with 503, got:\n{show(answered)}"
        assert_bounded(load)
        print(f"paused: {load.counts(t_pause, t_resume)}")
        print(f"relay killed: {load.counts(t_kill, t_back)}")
        assert streams >= 1, "expected the relay to carry PgBouncer's connections when it was killed"
        lsn_write = [o for o in load.records(ops=("update",)) if o.thread == "lsn"]
        assert lsn_write and lsn_write[0].status == 200, f"expected the held write acknowledged: {lsn_write}"
        assert "commit LSN unknown" in s.log_text(), "expected the held write's commit LSN to be unknown"
        finish(load, topo, "PgBouncer PAUSE/RESUME + relay killed mid-stream")
        # reads of the table it wrote go back to the replica once the primary's position is known again
        print(f"replica-side queries for 200 uncached reads afterwards: {replica_reads(s, topo)}")
    finally:
        relay.kill()
