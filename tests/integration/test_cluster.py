"""Issue 16: the read-your-writes guarantee across a deployment of three pgapi servers on their default
settings (ports apart) sharing one topology and one Redis with one prefix, behind a real HAProxy
(round-robin, GET /readyz health checks) and also addressed directly (lib/cluster.py).

Most tests are one history run (lib/history.py): writers on server a, readers on b, c and through
HAProxy, by id and as keyset pages, while WAL replay on the replica is paused at random; the chaos tests
break one thing mid-run (Redis frozen, restarted empty, flushed, failed over to a replica that missed the
last writes; a worker killed; b cut off from Redis by killing the relay it reaches Redis through) and
mend it. After every run: no read contradicted an acknowledged write, the primary holds exactly what
clients were told, every server answers every key as the primary does, the cache serves again, and with
replay running at least 30% of the uncached reads on b and c are served by the replica. Two more tests
make deterministic what a run can only meet by chance (a new worker's copies against a write on another
server; a killed worker's write that commits after its death). The negative control runs the same load
with the deployment-wide mechanism off and must find violations. Tests share one deployment (module
fixture) and run in file order; the negative control, which restarts the servers, comes last."""

import collections
import contextlib
import http.client
import os
import signal
import threading
import time
from contextlib import closing

import pytest
import redis as redis_lib

from lib.bouncer import replay_pause, replay_resume
from lib.builders import create_user
from lib.cache import OwnRedis
from lib.cluster import FAULT_AT_S, SETTLE_S, Cluster, Run, connection_per_worker, wait_every_worker
from lib.consistency import Client, wait_replica_caught_up
from lib.history import check
from lib.locks import statement_waits_on_lock
from lib.topology import REDIS_ADMIN_PASSWORDS, wait_until


@pytest.fixture(scope="module")
def cluster(schema, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), schema)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def deployment(cluster):
    """The deployment with nothing broken: a failed test before may have left a fault in place."""
    cluster.heal()
    cluster.wait_healthy()
    return cluster


def test_reads_on_other_servers_see_every_acknowledged_write(deployment):
    before = deployment.haproxy.requests_by_server()
    Run(deployment, "no fault").execute().verify()
    after = deployment.haproxy.requests_by_server()
    spread = {name: after[name] - before[name] for name in after}
    assert min(spread.values()) >= sum(spread.values()) / 4, \
        f"expected HAProxy to spread its requests round-robin over a, b and c, got {spread}"


def test_redis_frozen(deployment):
    held = {}

    def freeze(run):
        run.at(FAULT_AT_S)
        held["from"] = run.mark("Redis SIGSTOP")
        deployment.redis.signal(signal.SIGSTOP)
        run.hold(held["from"], "the freeze")
        held["to"] = run.mark("Redis SIGCONT")
        deployment.redis.signal(signal.SIGCONT)

    run = Run(deployment, "Redis frozen").execute(freeze)
    run.verify()
    # a read that cannot learn the deployment's fences goes to the primary, never to a local copy: no
    # HIT once the freeze has lasted a command timeout (200 ms) and some margin
    during = [r for r in run.reads_since(held["from"] + 0.5) if r.t_end < held["to"]]
    hits = [r for r in during if r.source.startswith("HIT")]
    print(f"reads while Redis was frozen: {len(during)}, X-Cache HIT among them: {len(hits)}")
    assert during and not hits, \
        f"expected reads while Redis was frozen, none of them a cache HIT; got {len(hits)} HITs of {len(during)}"


def test_redis_restarted_empty(deployment):
    ids = {}

    def restart(run):
        ids["before"] = deployment.redis_client().info("server")["run_id"]
        run.at(FAULT_AT_S)
        t = run.mark("Redis stopped")
        deployment.redis.stop()
        run.hold(t, "Redis down")
        deployment.redis.start()
        run.mark("Redis started empty")
        ids["after"] = deployment.redis_client().info("server")["run_id"]

    Run(deployment, "Redis restarted empty").execute(restart).verify()
    assert ids["before"] != ids["after"], f"expected a new Redis (another run_id), got {ids}"


def test_redis_flushall(deployment):
    def flush(run):
        run.at(FAULT_AT_S)
        t = run.mark("FLUSHALL")
        assert deployment.redis_client().flushall(), "expected FLUSHALL to succeed"
        run.hold(t, "the reads after FLUSHALL")

    Run(deployment, "FLUSHALL").execute(flush).verify()


def test_worker_killed(deployment):
    """One worker of a (the writer: writes in flight die with it) and one of b, SIGKILLed together."""
    a, b = deployment.servers["a"], deployment.servers["b"]

    def kill(run):
        run.at(FAULT_AT_S)
        victims = {a: a.worker_pids()[0], b: b.worker_pids()[0]}
        t = run.mark(f"SIGKILL worker {victims[a]} of a and {victims[b]} of b")
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        for s, pid in victims.items():
            s.wait_for(lambda: s.workers_replaced([pid], 2), 15, f"server {s.name}: the killed worker respawned")
        run.mark("both respawned")
        run.hold(t, "the respawn")
        # a statement a dead worker left may commit until statement_timeout: a second purge follows then
        # (docs/consistency.md); it raises every fence's floor, which the replica share below must not meet
        for s in victims:
            s.wait_for(lambda: "after statement_timeout" in s.log_text(), 15,
                       f"server {s.name}: the purge after statement_timeout")
        run.mark("late purges recorded")

    Run(deployment, "worker SIGKILLed").execute(kill).verify()


def test_server_cut_off_from_redis(deployment):
    """b reaches Redis through a relay; killing it breaks b's connections and refuses new ones while a and
    c keep Redis. The relay comes back before the run ends."""
    b = deployment.servers["b"]
    cut = {}

    def cut_off(run):
        run.at(FAULT_AT_S)
        t = run.mark("relay SIGKILL")
        cut["streams"] = deployment.relay.kill()
        wait_every_worker(b, lambda j: j["redis"] != "up", "Redis lost")
        run.mark("b's workers see Redis gone")
        # b cannot learn the deployment's fences now: its reads go to the primary, not to a local copy
        cut["x-cache"] = [b.get(f"/users/{uid}").headers.get("x-cache")
                          for uid in run.load.keys.hot_users for _ in range(4)]
        run.hold(t, "b cut off")
        deployment.relay.start()
        run.mark("relay back")

    Run(deployment, "b cut off from Redis").execute(cut_off).verify()
    print(f"relay: {cut['streams']} streams cut; X-Cache of b's direct reads meanwhile: "
          f"{dict(collections.Counter(cut['x-cache']))}")
    assert cut["streams"] >= 1, f"expected b's Redis connections to go through the relay, got {cut}"
    assert "HIT" not in cut["x-cache"], \
        f"expected no cache HIT on b while it could not reach Redis, got {collections.Counter(cut['x-cache'])}"


def test_redis_failed_over_to_a_replica_that_missed_writes(deployment, tmp_path):
    """A replica of the Redis stops replicating (REPLICAOF NO ONE) while writes go on; once 20 more were
    acknowledged, the Redis is killed and the replica takes its port. It holds the deployment's marker
    and fences as they were, without the last invalidations: only its run_id tells it apart."""
    replica = OwnRedis(tmp_path)
    replica.start()
    moved = {}
    try:
        r = redis_lib.Redis(port=replica.port)
        r.config_set("masteruser", "default")   # over the connection: the password never on a command line
        r.config_set("masterauth", REDIS_ADMIN_PASSWORDS[deployment.redis.port])
        r.replicaof("127.0.0.1", deployment.redis.port)
        wait_until(lambda: r.info("replication")["master_link_status"] == "up", 10, "the replica in sync")

        def fail_over(run):
            run.at(FAULT_AT_S)
            moved["offset"] = r.info("replication")["master_repl_offset"]
            t = run.mark("replica stops replicating")
            r.replicaof("NO", "ONE")
            missed = wait_until(lambda: (lambda w: w if len(w) >= 20 else None)(run.acked_writes_since(t)), 10,
                                "20 writes acknowledged that the replica missed")
            run.mark(f"{len(missed)} writes acknowledged since")
            moved["run_ids"] = (deployment.redis_client().info("server")["run_id"], r.info("server")["run_id"])
            deployment.fail_over(replica)
            run.hold(run.mark("Redis killed, the replica on its port"), "the failover")

        Run(deployment, "Redis failed over to a replica that missed writes").execute(fail_over).verify()
    finally:
        if deployment.redis is not replica:
            replica.stop()
    print(f"failover: replica in sync up to offset {moved.get('offset')}; "
          f"run_ids (old, new) {moved.get('run_ids')}")


def test_restarted_server_serves_no_copy_older_than_a_write_elsewhere(deployment):
    """Seen in the history runs as a few stale HITs in the first 100 ms of a fresh deployment, made
    deterministic: each new worker of b keeps a local copy of a row (one read each, no local hit yet, so
    b has never read the fence log), a then updates the row; b's next reads, from every worker, must see
    the update."""
    a, b = deployment.servers["a"], deployment.servers["b"]
    uid = create_user(a)["id"]
    deployment.restart("b")
    conns = connection_per_worker(b)
    try:
        before = {slot: c.call("GET", f"/users/{uid}")[1]["version"] for slot, c in conns.items()}
        assert set(before.values()) == {1}, f"expected every worker of b to read version 1, got {before}"
        r = a.request("PATCH", f"/users/{uid}", body={"name": "updated on a"})
        assert r.status == 200 and r.json()["version"] == 2, f"expected the update acknowledged, got {r}"
        after = {}
        for slot, c in conns.items():
            status, body, _, _ = c.call("GET", f"/users/{uid}")
            after[slot] = (status, body.get("version"), c.cache)
    finally:
        for c in conns.values():
            c.close()
    print(f"b's workers after the update on a: {after}")
    stale = {slot: got for slot, got in after.items() if got[:2] != (200, 2)}
    assert not stale, f"expected every worker of b to read version 2 after a acknowledged it, got {after}"


def read_row(conns, uid):
    """{(server, worker): (status, version, X-Cache)} for /users/uid on each connection."""
    out = {}
    for where, c in conns.items():
        status, body, _, _ = c.call("GET", f"/users/{uid}")
        out[where] = (status, body.get("version"), c.cache)
    return out


def test_commit_of_a_killed_worker_reaches_every_server(deployment):
    """A worker of a dies while its PATCH waits on a row lock; the lock goes after the death, and the
    UPDATE commits with nobody left to raise its fences (as a write whose invalidation failed). Every
    worker of every server held the row; the deployment's cache moves to a new epoch after the death and
    settles; replay on the replica is paused when the commit lands, so the replica would hand the old row
    to any read routed there. Every worker of every server must answer the committed version within the
    settle bound."""
    a, topo = deployment.servers["a"], deployment.topology
    uid = create_user(a)["id"]
    conns = {(name, slot): c for name in ("a", "b", "c")
             for slot, c in connection_per_worker(deployment.servers[name]).items()}
    victim = Client(a.port, timeout=30)
    try:
        wait_until(lambda: all(got[2] == "HIT" for got in read_row(conns, uid).values()), 10,
                   "every worker of every server serving the row from the cache")
        pid = victim.call("GET", "/healthz")[1]["pid"]
        epoch_before = cache_epoch(deployment)
        try:
            with row_locked(topo, uid) as held:
                patch = threading.Thread(target=call_quietly,
                                         args=(victim, "PATCH", f"/users/{uid}", {"name": "x"}))
                patch.start()
                wait_until(lambda: statement_waits_on_lock(topo), 10, "the PATCH waiting on its row lock")
                os.kill(pid, signal.SIGKILL)
                a.wait_for(lambda: a.workers_replaced([pid], 2), 15, "the killed worker respawned")
                wait_until(lambda: cache_epoch(deployment) != epoch_before, SETTLE_S,
                           "the cache in a new epoch after a's worker died (it may have committed)")
                wait_epoch_settled(deployment, 1.5)
                wait_replica_caught_up(topo)   # the replica has everything but the commit to come
                replay_pause(topo)
            patch.join(15)
            wait_until(lambda: primary_version(topo, uid) == 2, 10,
                       f"the dead worker's UPDATE committed (its row lock was held {held['s']:.1f}s: past the app "
                       f"role's statement_timeout, 5 s, PostgreSQL cancels it)")
            t_commit = time.monotonic()
            during = read_row(conns, uid)   # what the servers say while the replica lacks the commit
        finally:
            replay_resume(topo)
        wait_replica_caught_up(topo)
        last = {}

        def all_current():
            last.update(read_row(conns, uid))
            return all(got[:2] == (200, 2) for got in last.values())
        try:
            wait_until(all_current, SETTLE_S, "every worker of every server answering version 2")
        except AssertionError:
            raise AssertionError(f"expected every worker of every server to answer the committed version 2 "
                                 f"within {SETTLE_S}s of the dead worker's commit (row lock held "
                                 f"{held['s']:.1f}s), got {last}; while replay was paused: {during}") from None
        print(f"dead worker's commit (row lock held {held['s']:.1f}s): every worker of every server answered it "
              f"{time.monotonic() - t_commit:.2f}s after the commit; while replay was paused: {during}")
    finally:
        victim.close()
        for c in conns.values():
            c.close()


@contextlib.contextmanager
def row_locked(topo, uid):
    """The user's row locked by a direct connection to the primary (PgBouncer does not see it) for the
    block; yields {"s": how long it was held}, filled in when the lock goes."""
    locker = topo._pg(host=topo.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=topo.primary_port, dbname="pgapi",
                      user="postgres")
    held = {"s": 0.0}
    try:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
        t = time.monotonic()
        yield held
        locker.rollback()
        held["s"] = time.monotonic() - t
    finally:
        locker.close()


def cache_epoch(deployment):
    return deployment.redis_client().get(f"{deployment.prefix}:epoch")


def wait_epoch_settled(deployment, seconds):
    """The deployment's cache epoch has not moved for `seconds` (every server has reacted)."""
    moves = [(cache_epoch(deployment), time.monotonic())]

    def settled():
        now = cache_epoch(deployment)
        if now != moves[-1][0]:
            moves.append((now, time.monotonic()))
        return time.monotonic() - moves[-1][1] >= seconds
    wait_until(settled, SETTLE_S, f"the cache epoch to stay unchanged for {seconds}s")


def call_quietly(c, method, path, body):
    """A request whose connection is expected to break (its worker is killed): no answer is fine."""
    try:
        c.call(method, path, body)
    except (OSError, http.client.HTTPException):
        pass


def primary_version(topo, uid):
    with closing(topo.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM users WHERE id = %s", (uid,))
        return cur.fetchone()[0]


def test_negative_control_without_deployment_fences(cluster):
    """The same load with `[redis] deployment_fences = off` on every server: each trusts its own shared
    memory only, as before issue 16, and the check must find the stale reads (this proves it can)."""
    cluster.heal()
    cluster.reconfigure({"deployment_fences": "off"})
    try:
        run = Run(cluster, "negative control (deployment_fences = off)").execute()
        result = check(run.load.h)
        print(run.figures(result))
        by_kind = collections.Counter(v.kind for v in result.violations)
        print(f"negative control: {len(result.violations)} violations by kind {dict(by_kind)}")
        assert result.violations, \
            f"expected the history check to find violations with the deployment-wide fences off, got none\n" \
            f"{result.report(0)}"
    finally:
        cluster.reconfigure({})
