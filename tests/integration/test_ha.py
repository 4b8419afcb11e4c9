"""Issue 17: pgapi on the HA topology (scripts/ha.sh: Patroni + etcd, HAProxy, PgBouncer, Redis Sentinel;
lib/ha.py), through the failures ops meet: a planned switchover, an unplanned failover (the leader's
Patroni and postmaster SIGKILLed), the postmaster alone SIGKILLed (Patroni restarts it in place), HAProxy
restarted, and a Sentinel failover after the Redis master is SIGKILLed. The old primary coming back as a
replica and getting reads again is checked after the switchover and the failover.

Two pgapi servers (a deployment: one Redis prefix) run on the topology's pgapi.ini, ports apart. Each case
is one history run (lib/history.py, lib/consistency.py's load): writers on a, readers on a and b, the fault
injected mid-run, the load kept up until pgapi acknowledges writes again and a little longer. Afterwards:
no read contradicted an acknowledged write, the primary holds every acknowledged write (synchronous mode)
and no refused create, every server answers every key as the new primary does and serves from the cache
again. Each case prints (and records, for the session summary) its seconds of unavailability (requests
answered 503 or not at all, from the history) and its count of write_outcome_unknown, also as one
machine-readable line `HA-FIGURES {json}`.

The topology is started once for the module; cases run in file order and each leaves a healthy cluster
(leader, sync standby, replica, all streaming; a Redis master with its replica) for the next.
PGAPI_HA_ROUNDS=N repeats the switchover and the failover N times (default 1) for the medians."""

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from contextlib import closing

import pytest
import redis as redis_lib

from lib.builders import create_user
from lib.cluster import assert_history_checkable, cache_back, converge, phantom_creates, wait_every_worker
from lib.consistency import Client, Load, Schedule, final_versions, lsn_int, seed_of_run
from lib.ha import NODES, ha_module, kill9
from lib.history import check, check_final, failed_requests, unavailability
from lib.metrics import scrape, total
from lib.pgapi_server import BINARY, REPO_ROOT, PgapiServer
from lib.topology import HOST, wait_until

OFFSET = 120                      # this module's HA topology: base + 120 .. + 138 (lib/ha.py)

ROUNDS = int(os.environ.get("PGAPI_HA_ROUNDS", "1"))
NAMES = ("a", "b")                # a takes the writes; a and b the reads
WORKERS = 2
MAX_RUN_S = 120.0                 # the load's hard bound; a run stops once the case is over
WARMUP_S = 2.0                    # load before the fault
TAIL_S = 2.5                      # load after pgapi acknowledges writes again
RECOVERED_ACKS = 10               # acknowledged writes sent after the fault that show pgapi recovered
PROBE_READS = 90                  # uncached reads per server for the replicas' shares
MIN_REJOINED_SHARE = 0.10         # of those, at least this share on the old primary once it is in sync
# not vacuous: a run had traffic, and each check had reads it could have failed
MIN_READS = 500
MIN_ACKED_UPDATES = 40
MIN_VERSIONED_AFTER_ACK = 200
MIN_MUST_EXIST = 100


# -- the deployment ------------------------------------------------------------------------------------

class Primary:
    """The HA topology as lib/cluster.py's converge and lib/consistency.py's final_versions take a
    topology: rw() reaches the current primary (PgBouncer's pgapi_rw, HAProxy's read-write frontend)."""

    def __init__(self, ha):
        self.ha = ha

    def rw(self):
        return self.ha.bouncer("pgapi_rw")

    def one(self, sql):
        with closing(self.rw()) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]


class Deployment:
    """Servers a and b on the HA topology, each with the topology's pgapi.ini (its [database] and [redis]:
    the per-node replica lines, the Sentinels) and its own ports; everything else is the embedded default."""

    def __init__(self, workdir, ha):
        self.dir = str(workdir)
        self.ha = ha
        self.topology = Primary(ha)
        self.servers = {}

    def start(self):
        for name in NAMES:
            d = os.path.join(self.dir, f"srv-{name}")
            os.makedirs(d, exist_ok=True)
            s = PgapiServer(d, workers=WORKERS)
            s.name = name
            s.settings = dict(self.ha.pgapi_settings(), server={"listen": f"{HOST}:{s.port}", "workers": WORKERS},
                              metrics={"listen": f"{HOST}:{s.metrics_port}"})
            s.write_ini()
            self.servers[name] = s
            s.start()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout=30):
        """Every worker of every server: the primary up, every replica line up, Redis up."""
        n = len(NODES) - 1
        for s in self.servers.values():
            wait_every_worker(s, lambda j: j["primary"] and j["replicas_up"] == n and j["redis"] == "up",
                              f"server {s.name}: primary, {n} replicas and Redis up", timeout)

    def stop(self):
        problems = []
        for s in self.servers.values():
            rc = s.stop(signal.SIGTERM)
            bad = s.bad_log_lines()
            if rc != 0 or bad:
                problems.append(f"server {s.name}: exit {rc}, bad log lines {bad[:10]}\n{s.log_tail(40)}")
        assert not problems, "\n".join(problems)

    def read_ports(self):
        a, b = self.servers["a"].port, self.servers["b"].port
        return [b, a] * 4

    def port_labels(self):
        return {s.port: name for name, s in self.servers.items()}

    def replica_line(self, node):
        """The backend name (replicaK) of the [database] replica line that reaches `node` (DIR/pgapi.ini
        lists pgapi_ro1..3, node1..node3, in order)."""
        return f"replica{NODES.index(node)}"


def redis_tier_ok(ha):
    """The Sentinels agree on a master, and that master has a replica whose link is up."""
    master = ha.redis_master()
    if master is None:
        return False
    try:
        with closing(ha.redis(ha.redis_node_of(master))) as r:
            info = r.info("replication")
    except redis_lib.RedisError:
        return False
    return info.get("role") == "master" and info.get("connected_slaves", 0) >= 1 and \
        info.get("slave0", {}).get("state") == "online"


def wait_cluster_healthy(ha, timeout=60):
    """Leader + sync standby + replica, all streaming; the Redis master with its replica."""
    ha.wait_layout(timeout)
    wait_until(lambda: redis_tier_ok(ha), timeout, "the Sentinels' master with its replica online")


@pytest.fixture(scope="module")
def ha():
    if os.geteuid() != 0:
        pytest.skip("the HA topology needs root (Patroni and PostgreSQL run as postgres)")
    yield from ha_module(OFFSET)


@pytest.fixture(scope="module")
def migrated(ha):
    env = dict(os.environ, PGAPI_DATABASE_PRIMARY=ha.pgapi_settings()["database"]["primary"])
    p = subprocess.run([BINARY, "migrate", "up"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    assert p.returncode == 0, f"migrate up failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return ha


@pytest.fixture(scope="module")
def deployment(migrated, tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("ha-deployment"), migrated)
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
def healthy(deployment):
    """The deployment with the cluster as every case expects it: a failed case may have left a node or a
    Redis killed, which ha.sh up starts again."""
    ha = deployment.ha
    if not (ha.layout_ok() and redis_tier_ok(ha)):
        ha.up()
    wait_cluster_healthy(ha)
    deployment.wait_healthy()
    return deployment


# -- one run -------------------------------------------------------------------------------------------

def violation_access_lines(dep, violations, limit=10):
    """The servers' access lines of the first violating reads (each read's X-Request-Id is in its note):
    which cache answered it (from=redis|local|fill), on which worker, when."""
    rids = []
    for v in violations:
        note = v.note or ""
        if "(request id " in note:
            rid = note.rsplit("(request id ", 1)[1].rstrip(")")
            if rid not in rids:
                rids.append(rid)
    lines = []
    for s in dep.servers.values():
        text = s.log_text()
        lines += [f"{s.name}: {l}" for rid in rids[:limit] for l in text.splitlines() if f" rid={rid} " in l]
    return "\n".join(lines) or "(no access line found)"


class HaRun:
    """A history run against the deployment with `fault(run)` called in this thread meanwhile; the fault
    returns once the cluster is whole again, and the load runs TAIL_S past pgapi's recovery."""

    def __init__(self, dep, case, round_=1):
        self.dep = dep
        self.case = case
        self.round = round_
        self.seed = seed_of_run()
        schedule = Schedule(random.Random(self.seed), MAX_RUN_S, 0.15, 0.6, (3, 3, 1.5, 2))
        self.load = Load(dep.servers["a"], self.seed, schedule)
        self.load.read_ports = dep.read_ports()
        self.load.port_labels = dep.port_labels()
        self.marks = []
        self.figures = {}
        self.failure = None
        self.elapsed = None

    def mark(self, what):
        t = time.monotonic()
        self.marks.append((what, t))
        return t

    def since_start(self, t):
        return round(t - (self.load.start or self.load.h.t0), 2)

    def timeline(self):
        return ", ".join(f"{what} {self.since_start(t):+.2f}s" for what, t in self.marks) or "no fault"

    def _run_load(self):
        try:
            self.elapsed = self.load.run(MAX_RUN_S)
        except BaseException as exc:   # re-raised in the test's thread
            self.failure = exc

    def execute(self, fault):
        self.load.create_hot_keys()
        runner = threading.Thread(target=self._run_load, name="ha-load")
        runner.start()
        try:
            self.at(WARMUP_S)
            fault(self)
            self.stop_after(TAIL_S)
        finally:
            self.load.stop.set()
            runner.join(MAX_RUN_S + 30)
        if self.failure is not None:
            raise self.failure
        assert not runner.is_alive(), "expected the load to stop"
        assert not self.load.crashes, f"expected the client threads to run cleanly, got: {self.load.crashes[:5]}"
        return self

    # -- helpers for faults ----------------------------------------------------------------------
    def at(self, seconds):
        wait_until(lambda: self.load.start is not None and time.monotonic() - self.load.start >= seconds,
                   MAX_RUN_S, f"the load to have run {seconds}s")

    def acked_writes_since(self, t):
        return [w for w in list(self.load.h.writes) if w.t_send >= t and w.t_ack is not None]

    def last_failure_since(self, t):
        """When the last request sent after t that got a 5xx or no answer ended (t if none did)."""
        return max((end for start, end, _, _ in failed_requests(self.load.h) if start >= t), default=t)

    def recovered(self, t, timeout, what):
        """RECOVERED_ACKS writes sent after the last failed request (of those sent after t) were
        acknowledged: pgapi writes again. Call it once the fault itself is over (a leader elected, a
        process back). Returns when the first of them was sent."""
        def acks():
            w = self.acked_writes_since(self.last_failure_since(t))
            return w if len(w) >= RECOVERED_ACKS else None
        first = min(w.t_send for w in wait_until(acks, timeout, f"{RECOVERED_ACKS} writes acknowledged after "
                                                 f"{what} and the last failed request", interval=0.05))
        self.marks.append(("writes acknowledged again", first))
        self.figures["writes_back_after_s"] = round(first - t, 2)
        return first

    def stop_after(self, seconds):
        """The load goes on `seconds` more (reads after the recovery are the interesting ones)."""
        self.load.stop.wait(seconds)

    # -- after the run ---------------------------------------------------------------------------
    def verify(self):
        """What issue 17 expects of every case; returns the figures (printed and recorded)."""
        load, dep = self.load, self.dep
        load.settle(passes=5)
        out = self.measure()
        result = check(load.h)
        s = result.summary
        keys = {w.key for w in load.h.writes}
        lost = check_final(load.h, final_versions(dep.topology, keys))
        lost += phantom_creates(dep.topology, load.refused_emails)
        self.figures.update({"violations": len(result.violations), "lost": len(lost), "reads": s["reads"],
                             "acked_writes": s["acked_writes"]})
        detail = (f"HA {self.case} round {self.round}: seed={self.seed} {result.report(0)}\n"
                  f"  timeline: {self.timeline()}\n  unavailability: {out}")
        print(detail)
        if result.violations:
            detail += "\n  access lines of the first violating reads:\n" + violation_access_lines(dep, result.violations)
        assert not result.violations, \
            f"expected no read to contradict an acknowledged write, got:\n{result.report(20)}\n{detail}"
        assert not lost, (f"expected the primary to hold exactly what clients were told, got {len(lost)} "
                          f"problem(s):\n" + "\n".join(lost[:20]) + f"\n{detail}")
        assert_history_checkable(result, detail, MIN_READS, MIN_ACKED_UPDATES, MIN_VERSIONED_AFTER_ACK,
                                 MIN_MUST_EXIST)
        looks, settle_s = converge(dep, keys, hot_users=load.keys.hot_users)
        # a row written after the run: the load's hot rows may be fenced "primary only" for the fence TTL
        # (a write whose commit LSN was lost in the fault), which no value can be filled past
        cache_s = cache_back(dep, create_user(dep.servers["a"])["id"])
        self.figures.update({"converged_s": round(settle_s, 2), "cache_back_s": round(cache_s, 2),
                             "primary_only_fences": primary_only_fences(dep)})
        return self.figures

    def measure(self):
        """The case's unavailability, from the history: requests answered 503 or not at all."""
        out = unavailability(self.load.h)
        self.figures.update({
            "case": self.case, "round": self.round, "seed": self.seed,
            "unavailable_s": out["unavailable_s"],
            "write_outcome_unknown": out["by_code"].get("write_outcome_unknown", 0),
            "failed": out["failed"], "failed_by_code": out["by_code"], "windows": out["windows"],
            "no_answer_by_route": dict(collections.Counter(
                route for _, _, route, what in failed_requests(self.load.h) if what == "no answer")),
            "load_s": round(self.elapsed or 0, 1),
            "marks": {what: self.since_start(t) for what, t in self.marks},
        })
        return out

    @contextlib.contextmanager
    def reporting(self, request):
        """The figures gathered in the block are printed and recorded however it ends (a failed case's
        figures are figures too): conftest.py repeats recorded figures in the session summary. (Not
        record_property: it warns with the xunit2 JUnit report tests/run.sh writes.)"""
        try:
            yield self
        except BaseException:
            # what the topology and the servers said last, for the failure's captured output
            print(self.dep.ha.log_tails(15))
            for s in self.dep.servers.values():
                print(f"--- server {s.name} ---\n{s.log_tail(30)}")
            raise
        finally:
            if "unavailable_s" not in self.figures:
                self.measure()
            line = "HA-FIGURES " + json.dumps(self.figures, sort_keys=True)
            print(line)
            request.node.user_properties.append(("figures", line))


def primary_only_fences(dep):
    """Cache fences left at "primary only" (a write whose commit LSN was lost): how many, the longest time
    (s) they still hold reads to the primary and keep values from being filled, and a few by name with
    their TTL (s; -0.0: none)."""
    prefix = dep.ha.pgapi_settings()["redis"].get("prefix", "pgapi:v2")
    with closing(dep.ha.redis(dep.ha.redis_node_of(dep.ha.redis_master()))) as r:
        ttls = {k.decode()[len(prefix) + 1:]: r.pttl(k) for k in r.scan_iter(f"{prefix}:f:*", count=1000)
                if r.get(k) == b"F" * 16}
    return {"count": len(ttls), "max_ttl_s": round(max(ttls.values(), default=0) / 1000, 1),
            "some": {k: round(ttls[k] / 1000, 1) for k in sorted(ttls)[:6]}}


# -- where reads go --------------------------------------------------------------------------------------

def primary_lsn(dep):
    return lsn_int(dep.topology.one("SELECT pg_current_wal_lsn()::text"))


def wait_replica_in_rotation(dep, node, timeout=30):
    """Every worker of every server has `node`'s replica line up and sampled at or past the primary's
    position now (so that a read with any fence may go there)."""
    i = NODES.index(node)
    target = primary_lsn(dep)
    for s in dep.servers.values():
        wait_every_worker(s, lambda j: j["replicas"][i]["up"] and lsn_int(j["replicas"][i]["replay_lsn"]) >= target,
                          f"server {s.name}: {node} (replica line {i}) up and replayed past {target:X}", timeout)


def statements_by_backend(s):
    """{backend: statements it answered for requests} over every worker (health checks apart)."""
    fams = scrape(s)
    names = {labels["backend"] for _, labels, _ in fams["pgapi_pool_queries_total"]["samples"]}
    return {b: total(fams, "pgapi_pool_queries_total", backend=b) for b in names}


def read_shares(dep):
    """PROBE_READS uncached reads on each server (ids no row has, each a cache miss and one statement):
    the statements each backend answered, per server (pgapi_pool_queries_total, published once a second).
    Not list pages or the load's rows: a write whose commit LSN the fault lost fences its rows and lists
    "primary only" in Redis for the fence TTL (6 x max_replica_lag), whatever replica is in sync."""
    time.sleep(1.1)   # the workers publish their pool counters once a second: everything before is in
    before = {name: statements_by_backend(s) for name, s in dep.servers.items()}
    base = 10 ** 12 + random.randrange(10 ** 9)
    for s in dep.servers.values():
        c = Client(s.port)
        try:
            for i in range(PROBE_READS):
                status, body, _, _ = c.call("GET", f"/users/{base + i}")
                assert status == 404, f"expected a 404 for a user no row has, got {status} {body!r:.200}"
        finally:
            c.close()

    def counted():
        out = {}
        for name, s in dep.servers.items():
            now = statements_by_backend(s)
            out[name] = {b: int(now[b] - before[name].get(b, 0)) for b in now}
        return out if all(sum(d.values()) >= PROBE_READS for d in out.values()) else None
    return wait_until(counted, 10, f"{PROBE_READS} statements counted on each server")


def assert_reads_reach(dep, node, run):
    """Once `node` (the old primary, back as a replica) is in sync, each server sends it reads."""
    t = time.monotonic()
    wait_replica_in_rotation(dep, node)
    run.figures["old_primary_in_rotation_s"] = round(time.monotonic() - t, 2)
    shares = read_shares(dep)
    line = dep.replica_line(node)
    run.figures["probe_statements"] = shares
    for name, got in shares.items():
        share = got.get(line, 0) / max(1, sum(got.values()))
        assert share >= MIN_REJOINED_SHARE, \
            (f"expected server {name} to send at least {MIN_REJOINED_SHARE:.0%} of {PROBE_READS} uncached reads "
             f"to the old primary {node} ({line}) once it is in sync, got {share:.0%}: {got}")


# -- the cases -------------------------------------------------------------------------------------------

def timeline(primary):
    return int(primary.one("SELECT timeline_id FROM pg_control_checkpoint()"))


def purge_gen(primary):
    """The purge record's generation (migration 0005): each recorded purge adds one."""
    return int(primary.one("SELECT gen FROM pgapi_cache_purge"))


def test_postmaster_killed_patroni_restarts_it(healthy, request):
    """kill -9 of the leader's postmaster alone: Patroni restarts PostgreSQL in place (crash recovery, then
    a promotion: a new timeline) and stays leader; pgapi follows, and the new timeline makes it record a
    cache purge."""
    ha, primary = healthy.ha, healthy.topology
    leader = ha.leader()
    before = {"timeline": timeline(primary), "purge": purge_gen(primary)}

    def kill(run):
        pids = ha.kill_node(leader, patroni=False)
        t = run.mark(f"SIGKILL postmaster {pids} of {leader}")
        wait_until(lambda: ha.postmaster_pid(leader) not in (None, *pids), 60, f"{leader}'s postmaster restarted")
        run.mark("postmaster restarted")
        run.recovered(t, 60, "the postmaster's death")
        ha.wait_layout(60)
        run.mark("cluster healthy")

    run = HaRun(healthy, "postmaster_killed")
    with run.reporting(request):
        run.execute(kill).verify()
        after = {"timeline": timeline(primary), "leader": ha.leader()}
        run.figures["timeline"] = [before["timeline"], after["timeline"]]
        assert after["leader"] == leader, \
            f"expected {leader} to stay leader (Patroni restarts it in place), got {after}"
        if after["timeline"] != before["timeline"]:
            after["purge"] = wait_until(lambda: (lambda g: g if g > before["purge"] else None)(purge_gen(primary)),
                                        10, "a cache purge recorded for the new timeline")
            run.figures["purge_gen"] = [before["purge"], after["purge"]]


def test_haproxy_restarted(healthy, request):
    """HAProxy stopped and started again under load: every PgBouncer server connection through it breaks."""
    ha = healthy.ha

    def restart(run):
        t = run.mark("HAProxy restart")
        ha.haproxy_restart()
        run.mark("HAProxy back, its checks agreeing")
        run.recovered(t, 30, "the HAProxy restart")

    run = HaRun(healthy, "haproxy_restarted")
    with run.reporting(request):
        run.execute(restart).verify()


def master_changes(s):
    return total(scrape(s), "pgapi_redis_master_changes_total")


def test_sentinel_failover(healthy, request):
    """The Redis master is SIGKILLed right after writes were acknowledged; the Sentinels promote its
    replica, which may lack their last invalidations. Every worker of every server must follow (its link
    on the new master) and treat the change as lost state; afterwards the old master comes back as a
    replica of the new one (ha.sh up)."""
    ha = healthy.ha
    old = ha.redis_master()
    changes = {name: master_changes(s) for name, s in healthy.servers.items()}
    new = {}

    def fail_over(run):
        def just_acked():
            now = time.monotonic()
            return sum(1 for w in list(run.load.h.writes) if w.t_ack is not None and now - w.t_ack < 0.05) >= 2
        wait_until(just_acked, 10, "writes acknowledged in the last 50 ms", interval=0.005)
        pid = ha.redis_master_pid()
        kill9(pid)
        t = run.mark(f"SIGKILL Redis master {old} (pid {pid})")
        new["master"] = wait_until(lambda: (lambda m: m if m and m != old else None)(ha.redis_master()), 30,
                                   "the Sentinels to agree on a new master")
        run.mark(f"Sentinels: master {new['master']}")
        for s in healthy.servers.values():
            wait_every_worker(s, lambda j: j.get("redis_master") == new["master"] and j["redis"] == "up",
                              f"server {s.name}: its Redis link on the new master {new['master']}", 30)
        run.mark("every worker on the new master")
        run.recovered(t, 30, "the Sentinel failover")
        ha.up()
        run.mark("old master back, a replica of the new one")

    run = HaRun(healthy, "sentinel_failover")
    with run.reporting(request):
        run.execute(fail_over).verify()
        moved = {name: master_changes(s) - changes[name] for name, s in healthy.servers.items()}
        run.figures.update({"redis_master": [old, new.get("master")], "master_changes": moved})
        assert all(n >= 1 for n in moved.values()), \
            f"expected pgapi_redis_master_changes_total to grow on every server, got {moved}"
        line = f"redis sentinel: master pgapi is {new['master']}"
        silent = [s.name for s in healthy.servers.values() if line not in s.log_text()]
        assert not silent, f"expected the log line {line!r} on every server, missing on {silent}"


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
def test_switchover(healthy, request, round_):
    """patronictl switchover to the sync standby (the only candidate Patroni accepts in synchronous mode)
    under load; the old primary comes back as a replica and gets reads again once in sync."""
    ha = healthy.ha
    old, candidate = ha.leader(), ha.sync_standby()

    def switchover(run):
        t = run.mark(f"switchover {old} -> {candidate}")
        ha.switchover(candidate)
        run.mark(f"{candidate} leader")
        run.recovered(t, 60, "the switchover")
        ha.wait_layout(60)
        run.mark("cluster healthy")

    run = HaRun(healthy, "switchover", round_)
    with run.reporting(request):
        run.execute(switchover).verify()
        assert_reads_reach(healthy, old, run)


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
def test_unplanned_failover(healthy, request, round_):
    """kill -9 of the leader's Patroni and postmaster together: the sync standby takes over once the
    leader key expires (ttl); no acknowledged write is lost. Then the old primary's Patroni is started
    again (ha.sh up): it comes back as a replica and gets reads once in sync."""
    ha = healthy.ha
    old, standby = ha.leader(), ha.sync_standby()

    def kill(run):
        pids = ha.kill_node(old)
        t = run.mark(f"SIGKILL Patroni and postmaster {pids} of {old}")
        leader = wait_until(lambda: (lambda n: n if n and n != old else None)(ha.leader()), 60, "a new leader")
        run.mark(f"{leader} leader")
        assert leader == standby, f"expected the sync standby {standby} to take over, got {leader}"
        run.recovered(t, 60, "the failover")
        ha.up()
        run.mark(f"{old} back (ha.sh up), cluster healthy")

    run = HaRun(healthy, "failover", round_)
    with run.reporting(request):
        run.execute(kill).verify()
        assert_reads_reach(healthy, old, run)
