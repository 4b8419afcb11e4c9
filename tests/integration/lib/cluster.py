"""A deployment of several pgapi servers on one topology (issue 16): three servers, each with its
embedded defaults except ports, sharing one Redis and one prefix, behind a real HAProxy and also
addressed directly; and the history run that checks the read-your-writes guarantee across them
(writes on server a, reads on b, c and through HAProxy; lib/consistency.py's load, lib/history.py's
checker) with a fault injected mid-run, then what must hold afterwards.

The Redis is a redis-server of the test's own (lib/cache.py), so that it can be frozen, restarted empty
and flushed; server b reaches it through a TCP relay (lib/relay.py) that a run kills to cut b off."""

import collections
import http.client
import os
import random
import signal
import threading
import time
import uuid
from contextlib import closing

import redis as redis_lib

from .cache import OwnRedis
from .consistency import (Client, Load, ReplicaWatch, Schedule, final_versions, seed_of_run,
                          wait_replica_caught_up)
from .haproxy import HAProxy
from .history import check, check_final
from .metrics import scrape, total
from .pgapi_server import PgapiServer, free_port
from .relay import Relay
from .topology import wait_until

NAMES = ("a", "b", "c")          # a takes the writes; b (through the relay) and c the reads
WORKERS = 2
RUN_SECONDS = 8.0
FAULT_AT_S = 2.5                 # a fault starts this far into the run
FAULT_MIN_S = 1.5                # and lasts at least this long ...
FAULT_MIN_READS = 20             # ... and until this many reads were answered during it
SETTLE_S = 10.0                  # after a run, every server agrees with the primary within this
CACHE_BACK_S = 15.0              # and serves from the cache again within this
PROBE_READS = 100                # uncached reads per reading server, replay running, for the replica share
MIN_REPLICA_SHARE = 0.30
PUBLISH_PERIOD_S = 1.1           # the workers publish their pool counters once a second
# not vacuous: a run had traffic, and each check had reads it could have failed
MIN_READS = 800
MIN_ACKED_UPDATES = 50
MIN_VERSIONED_AFTER_ACK = 300
MIN_MUST_EXIST = 200
MAX_READ_ERROR_SHARE = 0.02      # reads with no usable answer (a killed worker's connections, ...)


def wait_every_worker(s, predicate, what, timeout=20):
    """Polls /readyz until predicate(body) held on every worker (each answers for itself)."""
    seen = set()

    def all_workers():
        body = s.get("/readyz").json()
        (seen.add if predicate(body) else seen.discard)(body["worker"])
        return len(seen) == WORKERS
    s.wait_for(all_workers, timeout, f"/readyz: {what} on every worker")


class Cluster:
    """Three servers (a, b, c) on the topology's PostgreSQL, one Redis of our own (b through a relay),
    HAProxy in front. Everything is stopped by PID in stop()."""

    def __init__(self, workdir, topology):
        self.dir = str(workdir)
        self.topology = topology
        self.prefix = f"cluster{uuid.uuid4().hex[:8]}"   # shared by the three; apart from other tests'
        self.redis = OwnRedis(self.dir)
        self.relay = None
        self.servers = {}
        self.haproxy = None
        self.extra = {}            # [redis] settings on top of the defaults (the negative control's)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self):
        # each part is recorded before it starts, so that stop() stops whatever a failed start left
        self.redis.start()
        self.relay = Relay(free_port(), self.redis.port)
        self.relay.start()
        for name in NAMES:
            self.servers[name] = self.make_server(name)
        self.start_servers()
        self.haproxy = HAProxy(self.dir, [(n, s.port) for n, s in self.servers.items()])
        self.haproxy.start()
        return self

    def make_server(self, name):
        d = os.path.join(self.dir, f"srv-{name}")
        os.makedirs(d, exist_ok=True)
        s = PgapiServer(d, topology=self.topology, workers=WORKERS)
        s.name = name
        s.prefix = self.prefix
        self.configure(s)
        return s

    def configure(self, s):
        """The embedded defaults but for ports (and the test harness's log file): the pool size the
        harness lowers for single-server tests is put back to its default."""
        s.settings["database"].pop("pool_size", None)
        port = self.relay.port if s.name == "b" else self.redis.port
        s.settings["redis"].update({"port": port, "prefix": self.prefix, **self.extra})
        s.write_ini()

    def start_servers(self):
        for s in self.servers.values():
            s.start()
        self.wait_healthy()

    def wait_healthy(self):
        """Every worker of every server sees the primary, the replica and Redis up."""
        for s in self.servers.values():
            wait_every_worker(s, lambda j: j["primary"] and j["replicas_up"] == 1 and j["redis"] == "up",
                              f"server {s.name}: primary, replica and Redis up")
        if self.haproxy is not None:
            wait_until(lambda: self.haproxy.servers_up() == set(NAMES), 10, "haproxy to see every server UP")

    def reconfigure(self, extra):
        """Restarts the three servers with `extra` [redis] settings (HAProxy stays up and sees them go
        and come back)."""
        self.stop_servers()
        self.extra = dict(extra)
        for s in self.servers.values():
            self.configure(s)
        self.start_servers()

    def restart(self, name):
        """Stops one server (SIGTERM, exit 0 and a clean log) and starts it again: new workers."""
        self.stop_servers([self.servers[name]])
        self.servers[name].start()
        self.wait_healthy()

    def stop_servers(self, servers=None):
        """SIGTERM each; every one must exit 0 with no sanitizer report or alert in its log."""
        problems = []
        for s in servers or self.servers.values():
            if s.proc is None:
                continue   # never started
            rc = s.stop(signal.SIGTERM)
            bad = s.bad_log_lines()
            if rc != 0 or bad:
                problems.append(f"server {s.name}: exit {rc}, bad log lines {bad[:10]}\n{s.log_tail(40)}")
        assert not problems, "\n".join(problems)

    def stop(self):
        try:
            if self.haproxy is not None:
                self.haproxy.stop()
            self.stop_servers()
        finally:
            if self.relay is not None:
                self.relay.kill()
            self.redis.stop()

    # -- faults ------------------------------------------------------------------------------------
    def redis_client(self):
        return redis_lib.Redis(port=self.redis.port, socket_timeout=5, socket_connect_timeout=5)

    def heal(self):
        """Whatever a failed run left broken is mended: Redis running and thawed, the relay up."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        else:
            self.redis.signal(signal.SIGCONT)
        if not self.relay.alive():
            self.relay.start()

    def fail_over(self, replica):
        """The Redis is killed and `replica` (an OwnRedis, no longer replicating) takes its port, as a
        failover that moves the address would: every server reconnects to a store that missed what was
        written after its replication stopped."""
        port = self.redis.port
        self.redis.proc.kill()
        self.redis.proc.wait(10)
        assert redis_lib.Redis(port=replica.port).config_set("port", port), "expected CONFIG SET port to succeed"
        replica.port = port
        self.redis = replica

    def port_labels(self):
        labels = {s.port: name for name, s in self.servers.items()}
        labels[self.haproxy.port] = "haproxy"
        return labels

    def read_ports(self):
        """Reader i reads from entry i % 8: b and c three readers each, HAProxy two."""
        b, c, h = self.servers["b"].port, self.servers["c"].port, self.haproxy.port
        return [b, c, b, c, b, c, h, h]


def connection_per_worker(s, tries=100):
    """{worker slot: a keep-alive Client whose connection that worker accepted} for every worker of s
    (which worker accepts a connection is chance: /readyz names the one that answered)."""
    out = {}
    for _ in range(tries):
        c = Client(s.port)
        status, body, _, _ = c.call("GET", "/readyz")
        assert status == 200, f"expected /readyz 200, got {status} {body!r:.200}"
        if body["worker"] in out:
            c.close()
        else:
            out[body["worker"]] = c
        if len(out) == WORKERS:
            return out
    for c in out.values():
        c.close()
    raise AssertionError(f"expected a connection to each of {WORKERS} workers within {tries}, got {sorted(out)}")


# -- one history run ---------------------------------------------------------------------------------

class Run:
    """A history run against the cluster: the load (writes on a, reads on b, c and HAProxy) with WAL
    replay paused at random, and `fault(run)` called in this thread meanwhile."""

    def __init__(self, cluster, title, seed=None):
        self.cluster = cluster
        self.title = title
        self.seed = seed if seed is not None else seed_of_run()
        schedule = Schedule(random.Random(self.seed), RUN_SECONDS, 0.15, 0.6, (3, 3, 1.5, 2))
        self.load = Load(cluster.servers["a"], self.seed, schedule)
        self.load.read_ports = cluster.read_ports()
        self.load.port_labels = cluster.port_labels()
        self.marks = []
        self.elapsed = None
        self.failure = None

    def mark(self, what):
        t = time.monotonic()
        self.marks.append((what, t))
        return t

    def timeline(self):
        t0 = self.load.start or self.load.h.t0
        return ", ".join(f"{what} {t - t0:+.2f}s" for what, t in self.marks) or "no fault"

    def _run_load(self):
        try:
            self.elapsed = self.load.run(RUN_SECONDS)
        except BaseException as exc:   # re-raised in the test's thread
            self.failure = exc

    def execute(self, fault=None):
        """Runs the load; returns once it stopped, replay resumed and the replica caught up."""
        self.load.create_hot_keys()
        before = replica_counts(self.cluster)
        watch = ReplicaWatch(self.cluster.topology, self.seed, pause=True)
        runner = threading.Thread(target=self._run_load, name="cluster-load")
        try:
            with watch:
                runner.start()
                if fault is not None:
                    fault(self)
                runner.join(RUN_SECONDS + 60)
        finally:
            self.load.stop.set()
            runner.join(30)
            self.cluster.heal()
            wait_replica_caught_up(self.cluster.topology)
        self.watch = watch
        if self.failure is not None:
            raise self.failure
        assert not runner.is_alive(), "expected the load to stop"
        assert not watch.errors, f"expected the replica thread to run cleanly, got: {watch.errors}"
        assert not self.load.crashes, f"expected the client threads to run cleanly, got: {self.load.crashes[:5]}"
        self.run_counts = delta(before, replica_counts(self.cluster, published=True))
        return self

    # -- helpers for faults ----------------------------------------------------------------------
    def at(self, seconds):
        """Waits until the load has run `seconds` (a fault's moment in the run)."""
        wait_until(lambda: self.load.start is not None and time.monotonic() - self.load.start >= seconds,
                   RUN_SECONDS + 10, f"the load to have run {seconds}s")

    def acked_writes_since(self, t):
        return [w for w in list(self.load.h.writes) if w.t_send >= t and w.t_ack is not None]

    def reads_since(self, t):
        return [r for r in list(self.load.h.reads) if r.t_start >= t]

    def hold(self, t, what):
        """The fault started at t lasts at least FAULT_MIN_S and until FAULT_MIN_READS reads were
        answered during it (by the servers: the fault was met, not slept through)."""
        wait_until(lambda: time.monotonic() - t >= FAULT_MIN_S and len(self.reads_since(t)) >= FAULT_MIN_READS,
                   RUN_SECONDS + 10, f"{FAULT_MIN_READS} reads answered during {what}")

    # -- after the run ---------------------------------------------------------------------------
    def verify(self):
        """Everything issue 16 expects of a run. Returns the figures (also printed)."""
        load, cluster = self.load, self.cluster
        load.settle(passes=5)
        result = check(load.h)
        s = result.summary
        keys = {w.key for w in load.h.writes}
        lost = check_final(load.h, final_versions(cluster.topology, keys))
        lost += phantom_creates(cluster.topology, load.refused_emails)
        figures = self.figures(result)
        print(figures)
        assert not result.violations, \
            f"expected no read to contradict an acknowledged write, got:\n{result.report(20)}\n{figures}"
        assert not lost, (f"expected the primary to hold exactly what clients were told, got {len(lost)} "
                          f"problem(s):\n" + "\n".join(lost[:20]) + f"\n{figures}")
        assert_not_vacuous(result, figures)
        looks, settle_s = converge(cluster, keys, hot_users=load.keys.hot_users)
        cache_s = cache_back(cluster, load.keys.hot_users[0])
        share, probe = replica_share(cluster)
        print(f"CLUSTER {self.title}: every server agreed with the primary at look {looks} ({settle_s:.2f}s); "
              f"cache hits again after {cache_s:.2f}s; replica share of {probe['replica'] + probe['primary']} "
              f"uncached reads on b and c with replay running: {share:.0%} ({probe})")
        assert share >= MIN_REPLICA_SHARE, \
            (f"expected at least {MIN_REPLICA_SHARE:.0%} of uncached reads on b and c served by the replica "
             f"while replay runs (pgapi_pool_queries_total), got {share:.0%}: {probe}")
        return result

    def figures(self, result):
        s = result.summary
        sources = collections.Counter()
        for r in self.load.h.reads:
            sources[r.source or "-"] += 1
        rc = self.run_counts
        run_share = rc["replica"] / max(1, rc["replica"] + rc["primary"])
        by_server = self.cluster.haproxy.requests_by_server()
        return (f"CLUSTER {self.title}: seed={self.seed} load={self.elapsed or 0:.1f}s "
                f"violations={len(result.violations)} reads={s['reads']} observations={s['observations']} "
                f"writes={s['writes_by_kind']} errors={s['errors_by_route']} x_cache={dict(sources)} "
                f"checkable={s['checkable']}\n"
                f"  timeline: {self.timeline()}\n"
                f"  statements on b+c during the load: {rc} (replica {run_share:.0%}); "
                f"haproxy sessions by server (module so far): {by_server}\n"
                f"  replica: {self.watch.numbers()}")


def assert_history_checkable(result, figures, min_reads=MIN_READS, min_acked_updates=MIN_ACKED_UPDATES,
                             min_versioned_after_ack=MIN_VERSIONED_AFTER_ACK, min_must_exist=MIN_MUST_EXIST):
    """A run had traffic, and each check of the history had reads it could have failed."""
    s = result.summary
    ch = s["checkable"]
    acked_updates = s["writes_by_kind"].get("update:acked", 0)
    assert s["reads"] >= min_reads, f"expected at least {min_reads} reads, got {s['reads']}\n{figures}"
    assert acked_updates >= min_acked_updates, \
        f"expected at least {min_acked_updates} acknowledged updates, got {acked_updates}\n{figures}"
    assert ch.get("versioned_after_ack", 0) >= min_versioned_after_ack and \
        ch.get("must_exist", 0) >= min_must_exist, \
        (f"expected enough reads each check could catch (>= {min_versioned_after_ack} versioned after an "
         f"acknowledgement, >= {min_must_exist} must-exist), got {ch}\n{figures}")


def assert_not_vacuous(result, figures):
    s = result.summary
    assert_history_checkable(result, figures)
    gets = {r for r in s["reads_by_route"] if r.startswith("GET ")}
    assert len(gets) >= 6, f"expected reads on the 6 read routes, got {sorted(gets)}\n{figures}"
    read_errors = {k: n for k, n in s["errors_by_route"].items() if k.startswith("GET ")}
    assert sum(read_errors.values()) <= s["reads"] * MAX_READ_ERROR_SHARE, \
        (f"expected at most {MAX_READ_ERROR_SHARE:.0%} reads without a usable answer, got "
         f"{sum(read_errors.values())} of {s['reads']}: {read_errors}\n{figures}")


def phantom_creates(topology, refused_emails):
    """Creates the client was told were refused (4xx, 503 with a definite code) that exist anyway."""
    if not refused_emails:
        return []
    with closing(topology.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT email FROM users WHERE email = ANY(%s)", (list(refused_emails),))
        return [f"a create refused with a definite error exists: {r[0]}" for r in cur.fetchall()]


# -- every server against the primary ----------------------------------------------------------------

def primary_state(topology, keys, hot_users):
    """{path: expected answer}: a row's version (None: 404) by id, and each hot user's posts as
    {id: version}."""
    final = final_versions(topology, keys)
    want = {f"/{kind}s/{ident}": version for (kind, ident), version in final.items()}
    with closing(topology.rw()) as conn, conn.cursor() as cur:
        for uid in hot_users:
            cur.execute("SELECT id, version FROM posts WHERE user_id = %s", (uid,))
            want[f"/users/{uid}/posts?limit=1000"] = dict(cur.fetchall())
    return want


def server_answer(c, path):
    status, body, _, _ = c.call("GET", path)
    if path.endswith("/posts?limit=1000"):
        assert status == 200 and body["next"] is None, f"GET {path}: {status} {body!r:.200}"
        return {p["id"]: p["version"] for p in body["data"]}
    assert status in (200, 404), f"GET {path}: {status} {body!r:.200}"
    return body["version"] if status == 200 else None


def mismatches(cluster, want):
    out = []
    for s in cluster.servers.values():
        c = Client(s.port)
        try:
            for path, expected in want.items():
                got = server_answer(c, path)
                if got != expected:
                    out.append(f"server {s.name} GET {path}: got {got}, primary has {expected} "
                               f"(X-Cache {c.cache})")
        finally:
            c.close()
    return out


def converge(cluster, keys, hot_users):
    """Every server's answer for every key equals the primary's within SETTLE_S. Returns how many looks
    (each a read of every path on every server) that took, and how long."""
    want = primary_state(cluster.topology, keys, hot_users)
    t0 = time.monotonic()
    last, looks = [], []

    def agreed():
        looks.append(1)
        try:
            last[:] = mismatches(cluster, want)
        except (AssertionError, OSError, ValueError, http.client.HTTPException) as exc:   # not a row, not a 404
            last[:] = [str(exc)]
        return not last
    try:
        wait_until(agreed, SETTLE_S, "every server to agree with the primary", interval=0.2)
    except AssertionError:
        raise AssertionError(f"expected every server's answer for every key ({len(want)} paths) to equal the "
                             f"primary's within {SETTLE_S}s, still {len(last)} differ:\n" + "\n".join(last[:20]))
    return len(looks), time.monotonic() - t0


def cache_back(cluster, uid):
    """Each server serves a row from the cache again (the fault did not leave the cache off)."""
    t0 = time.monotonic()
    for s in cluster.servers.values():
        c = Client(s.port)
        try:
            def hit():
                c.call("GET", f"/users/{uid}")
                return c.cache == "HIT"
            try:
                wait_until(hit, CACHE_BACK_S, f"server {s.name} to serve /users/{uid} from the cache "
                           f"(X-Cache HIT) after the run", interval=0.1)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last X-Cache {c.cache}; {redis_diagnosis(s)}") from None
        finally:
            c.close()
    return time.monotonic() - t0


def redis_diagnosis(s):
    """What a server says of its Redis, for a failure message: /readyz and its last log lines on it (and on
    the purges, epochs and primaries that decide whether its cache is in use)."""
    marks = ("redis", "purge", "epoch", "primary", "deployment")
    lines = [l for l in s.log_text().splitlines()
             if any(m in l.lower() for m in marks) and " GET /" not in l and " POST /" not in l][-24:]
    return f"/readyz {s.get('/readyz').body.decode()[:300]}; log:\n" + "\n".join(lines)


# -- where reads went ----------------------------------------------------------------------------

def replica_counts(cluster, published=False):
    """Statements answered on b and c by side, from pgapi_pool_queries_total (health checks apart). The
    workers publish their pool counters once a second, and no event tells that they did: with
    `published`, one period passes first, so that everything done before the call is counted. (Waiting
    for the counters to stop moving does not work: the servers' own periodic statements, such as the
    purge record's read, never stop.)"""
    if published:
        time.sleep(PUBLISH_PERIOD_S)
    out = collections.Counter()
    for name in ("b", "c"):
        fams = scrape(cluster.servers[name])
        for side in ("replica", "primary"):
            out[side] += total(fams, "pgapi_pool_queries_total", side=side)
    return out


def delta(before, after):
    return {side: int(after[side] - before[side]) for side in ("replica", "primary")}


def replicas_sampled_past_primary(cluster):
    """Every worker of b and c has sampled the replica at or past the primary's position now. A purge
    (after a fault) raises every fence's floor to the primary's position then: until a worker's next
    replica sample (each health_interval) shows the replica past it, its reads go to the primary."""
    with closing(cluster.topology.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn() - '0/0'")
        target = int(cur.fetchone()[0])

    def sampled():
        for name in ("b", "c"):
            fams = scrape(cluster.servers[name])
            samples = [v for n, labels, v in fams["pgapi_backend_wal_lsn_bytes"]["samples"]
                       if labels.get("backend") == "replica0"]
            if not samples or min(samples) < target:
                return False
        return True
    wait_until(sampled, 10, "b and c sampling the replica at or past the primary's position")


def replica_share(cluster):
    """PROBE_READS uncached reads on each of b and c (pages past the last id: never cached, each one
    statement), replay running, once the servers have sampled the replica past the primary's position:
    the share the replica answered. Counted from published counters only, so that the reads made just
    before are not taken for the probe's."""
    replicas_sampled_past_primary(cluster)
    before = replica_counts(cluster, published=True)
    base = 10 ** 12 + random.randrange(10 ** 9)
    for name in ("b", "c"):
        c = Client(cluster.servers[name].port)
        try:
            for i in range(PROBE_READS):
                status, body, _, _ = c.call("GET", f"/users?limit=5&after_id={base + i}")
                assert status == 200 and body["data"] == [], f"expected an empty page, got {status} {body!r:.200}"
        finally:
            c.close()
    want = 2 * PROBE_READS
    got = wait_until(lambda: (lambda d: d if d["replica"] + d["primary"] >= want else None)(
        delta(before, replica_counts(cluster))), 10, f"{want} statements counted on b and c")
    return got["replica"] / max(1, got["replica"] + got["primary"]), got
