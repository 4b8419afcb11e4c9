"""The read-your-writes load and its checks (test_consistency.py, test_faults.py, faultload.py): writer
threads update, create and delete users and posts on a few hot keys, reader threads read them through
every read route, all recorded in a history.History; ReplicaWatch pauses WAL replay at random (or a
replica apply delay holds it back); run_and_check then asserts that no read contradicted an acknowledged
write, that the primary holds every acknowledged version and that the cache equals the primary."""

import bisect
import collections
import contextlib
import http.client
import itertools
import json
import os
import random
import select
import threading
import time
import uuid
from contextlib import closing

import redis as redis_lib

from .bouncer import bouncer_queries, replay_resume
from .cache import epoch_of
from .history import CREATE, DELETE, FAILED, UPDATE, History, check, check_final, key_str, write_outcome
from .metrics import scrape, total

LOAD_SECONDS = 7.0
WRITERS = 4
READERS = 8
HOT_USERS = 5
WORKERS = 2
HEALTH_INTERVAL_S = 0.1
REQUEST_TIMEOUT_S = 5.0
MAX_LIVE_CHURN = 6             # created-and-not-yet-deleted churn users / posts kept at most
MIN_READS = 1500
MIN_ACKED_UPDATES = 150
MIN_CREATES = 10
MIN_DELETES = 5
# statements the replica answered for requests (pgapi's own count, health checks apart); one statement
# may carry up to 32 reads (the pool batches queued by-id reads) and the workers' local caches answer
# many reads
MIN_REPLICA_READS = 10

# Which tables the writers may write in each phase: quiet phases let the replica catch up with a
# table's fence so that reads of it go to the replica; the next write is then the interesting moment.
PHASES = ("users", "posts", "both", "none")
PHASE_TABLES = {"users": ("users",), "posts": ("posts",), "both": ("users", "posts"), "none": ()}


def error_code(resp):
    """The code of an error answer ({"error": {"code": ...}}), else None."""
    if isinstance(resp, dict) and isinstance(resp.get("error"), dict):
        return resp["error"].get("code")
    return None


def status_text(status, resp):
    """How an error answer is logged in the history: "status N", then its error code if it has one."""
    code = error_code(resp)
    return f"status {status} {code}" if code else f"status {status}"


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Schedule:
    """Phases of random length and kind; every `quiet_every`-th phase is "none" and lasts `quiet_len`
    (a random range) so that the replica surely gets some reads however the dice fall."""

    def __init__(self, rng, total, shortest, longest, weights, quiet_every=4, quiet_len=(0.4, 0.6)):
        self.starts, self.phases = [], []
        t = 0.0
        while t < total + 10:
            self.starts.append(t)
            if len(self.phases) % quiet_every == quiet_every - 1:
                self.phases.append("none")
                t += rng.uniform(*quiet_len)
            else:
                self.phases.append(rng.choices(PHASES, weights)[0])
                t += rng.uniform(shortest, longest)

    def at(self, elapsed):
        return self.phases[max(0, bisect.bisect_right(self.starts, elapsed) - 1)]


REQUEST_IDS = itertools.count(1)   # X-Request-Id of the history's requests: a violation names its access line


class Client:
    """One keep-alive HTTP connection; a request that gets no answer closes it (the next one reconnects).
    Like urllib3, a kept-alive connection the server has closed meanwhile (readable while idle: EOF) is
    replaced before the next request rather than written to."""

    def __init__(self, port, timeout=REQUEST_TIMEOUT_S, label=""):
        self.port = port
        self.timeout = timeout
        self.label = label    # which server this is, when there are several: added to self.cache
        self.conn = None
        self.cache = ""
        self.rid = ""

    def drop_if_closed(self):
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self.close()

    def call(self, method, path, body=None):
        """-> (status, parsed JSON body or None, t_send, t_end); raises when there is no answer. The
        answer's X-Cache header (HIT/MISS/BYPASS, then " from <label>" if the client has one) is left in
        self.cache."""
        self.drop_if_closed()
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.rid = f"h{next(REQUEST_IDS)}"
        headers, data = {"X-Request-Id": self.rid}, None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        t_send = time.monotonic()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        t_end = time.monotonic()
        self.cache = r.getheader("X-Cache", "")
        if self.cache and self.label:
            self.cache += f" from {self.label}"
        if r.will_close:
            self.close()
        return r.status, (json.loads(raw) if raw else None), t_send, t_end

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Keys:
    """The keys writers and readers share: hot users and their posts (never deleted) and churn keys."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hot_users, self.hot_posts = [], []
        self.churn_users, self.churn_posts = [], []          # every churn key ever created (read targets)
        self.live_users, self.live_posts = [], []            # created and no delete sent yet

    def pick(self, rng, kind):
        with self.lock:
            hot = self.hot_users if kind == "user" else self.hot_posts
            churn = self.churn_users if kind == "user" else self.churn_posts
            return rng.choice(churn) if churn and rng.random() < 0.25 else rng.choice(hot)


class Load:
    """Writers and readers against one server, logging into one History. A deployment of several servers
    sets `write_port` (writers and the set-up) and `read_ports` (reader i reads from read_ports[i % n])."""

    def __init__(self, srv, seed, schedule):
        self.srv = srv
        self.write_port = srv.port
        self.read_ports = [srv.port]
        self.port_labels = {}       # port -> server name, added to each read's source (X-Cache)
        self.seed = seed
        self.schedule = schedule
        self.h = History()
        self.refused_emails = []    # creates answered with a definite refusal: no such row may exist
        self.keys = Keys()
        self.stop = threading.Event()
        self.start = None
        self.crashes = []

    # -- setup through the API -------------------------------------------------------------------
    def create_hot_keys(self):
        c = Client(self.write_port)
        try:
            for i in range(HOT_USERS):
                uid = self.create_user(c, f"hot{i}")
                assert uid is not None, "creating a hot user failed"
                self.keys.hot_users.append(uid)
            for uid in self.keys.hot_users:
                pid = self.create_post(c, uid)
                assert pid is not None, f"creating a post of hot user {uid} failed"
                self.keys.hot_posts.append(pid)
        finally:
            c.close()

    def create_user(self, c, name):
        route = "POST /users"
        t = time.monotonic()
        email = f"c-{uuid.uuid4().hex[:16]}@example.com"
        try:
            status, body, t_send, t_end = c.call("POST", "/users", {"name": name, "email": email})
        except (OSError, http.client.HTTPException) as exc:
            self.h.error(route, t, time.monotonic(), exc)   # no id known: nothing to check
            return None
        if status != 201:
            self.h.error(route, t_send, t_end, status_text(status, body))
            if write_outcome(status, error_code(body)) == FAILED:
                self.refused_emails.append(email)
            return None
        self.h.write(("user", body["id"]), CREATE, route, t_send, t_end, status, body["version"])
        return body["id"]

    def create_post(self, c, uid):
        route = "POST /users/:id/posts"
        t = time.monotonic()
        try:
            status, body, t_send, t_end = c.call("POST", f"/users/{uid}/posts",
                                                 {"title": "p", "content": "consistency"})
        except (OSError, http.client.HTTPException) as exc:
            self.h.error(route, t, time.monotonic(), exc)
            return None
        if status != 201:
            self.h.error(route, t_send, t_end, status_text(status, body))
            return None
        key = ("post", body["id"])
        self.h.member(("posts_of", uid), key)
        self.h.write(key, CREATE, route, t_send, t_end, status, body["version"])
        return body["id"]

    # -- writers -------------------------------------------------------------------------------
    def write(self, c, key, kind, route, method, path, body=None):
        t = time.monotonic()
        try:
            status, resp, t_send, t_end = c.call(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            self.h.write(key, kind, route, t, time.monotonic(), None, detail=repr(exc))
            return
        version = resp.get("version") if isinstance(resp, dict) and kind == UPDATE else None
        if kind == UPDATE and 200 <= status < 300 and not isinstance(version, int):
            self.crashes.append(f"{route} {key_str(key)} answered {status} without a version: {resp!r}")
        self.h.write(key, kind, route, t_send, t_end, status, version,
                     detail="" if status < 300 else json.dumps(resp)[:200], code=error_code(resp))

    def writer(self, idx):
        rng = random.Random(self.seed * 1000 + idx)
        c = Client(self.write_port)
        n = 0
        try:
            while not self.stop.is_set():
                tables = PHASE_TABLES[self.schedule.at(time.monotonic() - self.start)]
                if not tables:
                    self.stop.wait(0.005)
                    continue
                n += 1
                table = rng.choice(tables)
                x = rng.random()
                k = self.keys
                if table == "users":
                    with k.lock:
                        live = len(k.live_users)
                        victim = k.live_users.pop(0) if (x > 0.92 or live > MAX_LIVE_CHURN) and live else None
                        target = rng.choice(k.live_users) if k.live_users and x < 0.1 else rng.choice(k.hot_users)
                    if victim is not None:
                        self.write(c, ("user", victim), DELETE, "DELETE /users/:id", "DELETE", f"/users/{victim}")
                    elif x > 0.84:
                        uid = self.create_user(c, f"churn{idx}-{n}")
                        if uid is not None:
                            with k.lock:
                                k.churn_users.append(uid)
                                k.live_users.append(uid)
                    else:
                        self.write(c, ("user", target), UPDATE, "PATCH /users/:id", "PATCH", f"/users/{target}",
                                   {"name": f"w{idx}-{n}"})
                else:
                    with k.lock:
                        live = len(k.live_posts)
                        victim = k.live_posts.pop(0) if (x > 0.92 or live > MAX_LIVE_CHURN) and live else None
                        target = rng.choice(k.live_posts) if k.live_posts and x < 0.1 else rng.choice(k.hot_posts)
                        owner = rng.choice(k.hot_users)
                    if victim is not None:
                        self.write(c, ("post", victim), DELETE, "DELETE /posts/:id", "DELETE", f"/posts/{victim}")
                    elif x > 0.84:
                        pid = self.create_post(c, owner)
                        if pid is not None:
                            with k.lock:
                                k.churn_posts.append(pid)
                                k.live_posts.append(pid)
                    else:
                        self.write(c, ("post", target), UPDATE, "PATCH /posts/:id", "PATCH", f"/posts/{target}",
                                   {"title": f"w{idx}-{n}"})
        except Exception as exc:  # a bug in the test itself: reported by the test, never swallowed
            self.crashes.append(f"writer {idx}: {exc!r}")
        finally:
            c.close()

    # -- readers -------------------------------------------------------------------------------
    def reader(self, idx):
        rng = random.Random(self.seed * 1000 + 500 + idx)
        port = self.read_ports[idx % len(self.read_ports)]
        c = Client(port, label=self.port_labels.get(port, ""))
        routes = [self.read_user, self.read_post, self.read_user_with_posts, self.read_users_list,
                  self.read_posts_list, self.read_user_posts]
        try:
            while not self.stop.is_set():
                rng.choice(routes)(c, rng)
        except Exception as exc:
            self.crashes.append(f"reader {idx}: {exc!r}")
        finally:
            c.close()

    def get(self, c, route, path):
        """-> (status, body, t_start, t_end) for 200/404; None (logged as an error) otherwise."""
        t = time.monotonic()
        try:
            status, body, t_start, t_end = c.call("GET", path)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.h.error(route, t, time.monotonic(), exc)
            return None
        if status not in (200, 404):
            self.h.error(route, t_start, t_end, status_text(status, body))
            return None
        return status, body, t_start, t_end

    def read_one(self, c, rng, kind, route, path_of):
        key = (kind, self.keys.pick(rng, kind))
        got = self.get(c, route, path_of(key[1]))
        if got:
            status, body, t0, t1 = got
            self.h.read(route, t0, t1, status, {key: body["version"] if status == 200 else None}, source=c.cache, rid=c.rid)

    def read_user(self, c, rng):
        self.read_one(c, rng, "user", "GET /users/:id", lambda i: f"/users/{i}")

    def read_post(self, c, rng):
        self.read_one(c, rng, "post", "GET /posts/:id", lambda i: f"/posts/{i}")

    def read_user_with_posts(self, c, rng):
        route = "GET /users/:id?include=posts"
        uid = self.keys.pick(rng, "user")
        got = self.get(c, route, f"/users/{uid}?include=posts")
        if got:
            status, body, t0, t1 = got
            if status == 404:
                self.h.read(route, t0, t1, status, {("user", uid): None}, source=c.cache, rid=c.rid)
                return
            seen = {("user", uid): body["version"]}
            seen.update({("post", p["id"]): p["version"] for p in body["posts"]})
            # the embedding lists every post of the user only when no link leads to more (issue 14's bound)
            covers = ("posts_of", uid) if body["posts_next"] is None else None
            self.h.read(route, t0, t1, status, seen, covers=covers, source=c.cache, rid=c.rid)

    def read_list(self, c, rng, kind, route, path):
        want = self.keys.pick(rng, kind)
        got = self.get(c, route, f"{path}?after_id={want - 1}&limit=1")
        if got:
            status, body, t0, t1 = got
            if status != 200:
                self.h.error(route, t0, t1, f"status {status}")
                return
            seen = {(kind, want): None}
            for row in body["data"]:
                seen[(kind, row["id"])] = row["version"]
            self.h.read(route, t0, t1, status, seen, source=c.cache, rid=c.rid)

    def read_users_list(self, c, rng):
        self.read_list(c, rng, "user", "GET /users?after_id=&limit=1", "/users")

    def read_posts_list(self, c, rng):
        self.read_list(c, rng, "post", "GET /posts?after_id=&limit=1", "/posts")

    def read_user_posts(self, c, rng):
        route = "GET /users/:id/posts"
        with self.keys.lock:
            uid = rng.choice(self.keys.hot_users)
        got = self.get(c, route, f"/users/{uid}/posts?limit=1000")
        if got:
            status, body, t0, t1 = got
            if status != 200:
                self.h.read(route, t0, t1, status, {("user", uid): None}, source=c.cache, rid=c.rid)
                return
            seen = {("post", p["id"]): p["version"] for p in body["data"]}
            covers = ("posts_of", uid) if body["next"] is None else None
            self.h.read(route, t0, t1, status, seen, covers=covers, source=c.cache, rid=c.rid)

    def settle(self, passes=30):
        """After the load, with no write running: reads of every route, recorded like the others. A load
        that ends in a burst of writes to the hot keys can leave nothing cached (each value invalidated
        after its last fill); these reads fill the cache again, so the check of what it holds is never
        empty, and any stale value the load left is still there to be found (a hit does not replace it;
        the history check sees what the hit returned)."""
        rng = random.Random(self.seed * 1000 + 999)
        routes = [self.read_user, self.read_post, self.read_user_with_posts, self.read_users_list,
                  self.read_posts_list, self.read_user_posts]
        for port in dict.fromkeys(self.read_ports):   # each port once, in order
            c = Client(port, label=self.port_labels.get(port, ""))
            try:
                for _ in range(passes):
                    for route in routes:
                        route(c, rng)
            finally:
                c.close()

    # -- the run -------------------------------------------------------------------------------
    def run(self, seconds):
        self.start = time.monotonic()
        threads = [threading.Thread(target=self.writer, args=(i,), name=f"writer{i}") for i in range(WRITERS)]
        threads += [threading.Thread(target=self.reader, args=(i,), name=f"reader{i}") for i in range(READERS)]
        for t in threads:
            t.start()
        try:
            self.stop.wait(seconds)
        finally:
            self.stop.set()
            for t in threads:
                t.join(REQUEST_TIMEOUT_S * 3)
        stuck = [t.name for t in threads if t.is_alive()]
        assert not stuck, \
            f"expected every client thread to stop within {REQUEST_TIMEOUT_S * 3}s, still running: {stuck}"
        return time.monotonic() - self.start


class ReplicaWatch:
    """A thread against the replica while the load runs: pauses and resumes WAL replay at random
    (pause=True) or only samples it, and records how often the replica was seen behind the primary."""

    def __init__(self, topology, seed, pause):
        self.topology = topology
        self.rng = random.Random(seed * 1000 + 999)
        self.pause = pause
        self.stop = threading.Event()
        self.pauses = self.confirmed = self.samples = self.behind = 0
        self.max_behind_bytes = 0
        self.frozen = 0        # pauses during which the replay position did not move
        self.errors = []
        self.thread = threading.Thread(target=self.run, name="replica-watch")

    def sample(self, rcur, pcur):
        """Replica replay position first, then the primary's: behind if the primary had WAL it lacked."""
        rcur.execute("SELECT pg_last_wal_replay_lsn()::text")
        replay = lsn_int(rcur.fetchone()[0])
        pcur.execute("SELECT pg_current_wal_lsn()::text")
        current = lsn_int(pcur.fetchone()[0])
        self.samples += 1
        if current > replay:
            self.behind += 1
            self.max_behind_bytes = max(self.max_behind_bytes, current - replay)
        return replay

    def run(self):
        try:
            with closing(self.topology.replica_admin()) as rconn, closing(self.topology.primary_admin()) as pconn, \
                    rconn.cursor() as rcur, pconn.cursor() as pcur:
                try:
                    while not self.stop.wait(self.rng.uniform(0.2, 1.0)):
                        if not self.pause:
                            self.sample(rcur, pcur)
                            continue
                        rcur.execute("SELECT pg_wal_replay_pause()")
                        self.pauses += 1
                        paused = False
                        deadline = time.monotonic() + 1.0
                        while not paused and time.monotonic() < deadline and not self.stop.is_set():
                            rcur.execute("SELECT pg_get_wal_replay_pause_state()")
                            paused = rcur.fetchone()[0] == "paused"
                            if not paused:
                                time.sleep(0.02)
                        self.confirmed += paused
                        first = self.sample(rcur, pcur) if paused else None
                        self.stop.wait(self.rng.uniform(0.2, 1.0))
                        if paused:   # behind / frozen are only counted while replay is surely paused
                            self.frozen += self.sample(rcur, pcur) == first
                        rcur.execute("SELECT pg_wal_replay_resume()")
                finally:
                    if self.pause:
                        rcur.execute("SELECT pg_wal_replay_resume()")
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            if self.pause:
                try:
                    replay_resume(self.topology)
                except Exception as exc:
                    self.errors.append(f"resume: {exc!r}")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(20)
        if self.pause:
            replay_resume(self.topology)   # whatever happened in the thread
        return False

    def numbers(self):
        return (f"pauses={self.pauses} (confirmed {self.confirmed}, replay frozen in {self.frozen}), "
                f"samples={self.samples}, behind={self.behind}, max_behind_bytes={self.max_behind_bytes}")


def wait_replica_caught_up(topology, timeout=15):
    """The replica has replayed everything the primary had when we asked (leaves it ready for later tests)."""
    with closing(topology.primary_admin()) as pconn, pconn.cursor() as pcur:
        pcur.execute("SELECT pg_current_wal_lsn()::text")
        target = lsn_int(pcur.fetchone()[0])
    deadline = time.monotonic() + timeout
    with closing(topology.replica_admin()) as rconn, rconn.cursor() as rcur:
        while True:
            rcur.execute("SELECT pg_last_wal_replay_lsn()::text")
            got = lsn_int(rcur.fetchone()[0])
            if got >= target:
                return
            assert time.monotonic() < deadline, \
                f"expected the replica to replay up to {target:X} within {timeout}s, it is at {got:X}"
            time.sleep(0.05)


def final_versions(topology, keys):
    final = {}
    with closing(topology.rw()) as conn, conn.cursor() as cur:
        for kind, table in (("user", "users"), ("post", "posts")):
            ids = [i for k, i in keys if k == kind]
            cur.execute(f"SELECT id, version FROM {table} WHERE id = ANY(%s)", (ids,))
            rows = dict(cur.fetchall())
            final.update({(kind, i): rows.get(i) for i in ids})
    return final


def start_server(server, schema):
    prefix = f"hist{uuid.uuid4().hex[:8]}"  # this server's own cache namespace, scanned afterwards
    s = server(workers=WORKERS, topology=schema,
               overrides={"database": {"health_interval": f"{int(HEALTH_INTERVAL_S * 1000)}ms"},
                          "redis": {"prefix": prefix}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 20, "the replica in rotation")
    s.prefix = prefix
    return s


def cache_mismatches(srv, schema, redis_port=None):
    """Every value cached in the server's current epoch (in the topology's Redis, or the one on
    `redis_port`), compared with the primary: a cached row must exist there with the same version; an
    embedded or listed post likewise. Returns (checked, problems)."""
    r = redis_lib.Redis(port=redis_port or schema.redis_port)
    epoch = epoch_of(srv, redis_port or schema.redis_port)
    rows = []  # (what, table, id, version seen)
    for k in r.scan_iter(f"{srv.prefix}:e{epoch}:v:*"):
        key = k.decode().split(":v:", 1)[1]
        raw = r.get(k)
        if raw is None:
            continue  # expired or dropped meanwhile
        value = json.loads(raw[16:])  # a value is its data LSN (16 hex digits), then the body
        kind = key.split(":", 1)[0]
        if kind in ("user", "user-with-posts"):
            rows.append((key, "users", value["id"], value["version"]))
            rows += [(key, "posts", p["id"], p["version"]) for p in value.get("posts", [])]
        elif kind == "post":
            rows.append((key, "posts", value["id"], value["version"]))
        else:  # a list page
            table = "users" if kind == "users" else "posts"
            rows += [(key, table, x["id"], x["version"]) for x in value["data"]]
    problems = []
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        for key, table, ident, version in rows:
            cur.execute(f"SELECT version FROM {table} WHERE id = %s", (ident,))
            got = cur.fetchone()
            if got is None or got[0] != version:
                problems.append(f"{key}: cached {table} {ident} version {version}, primary has "
                                f"{'no row' if got is None else got[0]}")
    return len(rows), problems


def cache_diagnosis(srv, schema):
    """What the cache looked like: keys per epoch and kind in Redis, the servers' cache counters and
    its Redis log lines (for a failure message)."""
    r = redis_lib.Redis(port=schema.redis_port)
    kinds = collections.Counter(k.decode().split(":", 1)[1].rsplit(":", 1)[0] for k in r.scan_iter(f"{srv.prefix}:*"))
    series = collections.Counter()
    for fam_name, fam in scrape(srv).items():
        if fam_name.startswith("pgapi_cache_"):
            for name, labels, value in fam["samples"]:
                series[name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "worker") + "}"] += value
    with open(srv.log_path, errors="replace") as f:
        lines = [line.rstrip() for line in f if "redis" in line][-10:]
    return (f"epoch={epoch_of(srv, schema.redis_port)} keys={dict(kinds)} "
            f"counters={series} log={lines}")


def replica_statements(srv):
    return total(scrape(srv), "pgapi_pool_queries_total", side="replica")


def run_and_check(srv, schema, watch, schedule, seed, min_replica_reads=MIN_REPLICA_READS):
    load = Load(srv, seed, schedule)
    load.create_hot_keys()
    time.sleep(0.3)  # the hot keys replicate and the workers sample the replica past them
    time.sleep(1.1)  # the workers publish their pool counters every second
    before, before_stmts = bouncer_queries(schema), replica_statements(srv)
    with watch:
        elapsed = load.run(LOAD_SECONDS)
    time.sleep(1.3)  # SHOW STATS totals are published every stats_period (1 s), pgapi's every second
    after = bouncer_queries(schema)
    ro = after.get("pgapi_ro", 0) - before.get("pgapi_ro", 0)
    rw = after.get("pgapi_rw", 0) - before.get("pgapi_rw", 0)
    # statements the replica answered for requests (pgapi counts them apart from its health checks)
    replica_stmts = replica_statements(srv) - before_stmts
    load.settle()

    result = check(load.h)
    s = result.summary
    wk = s["writes_by_kind"]
    acked_updates = wk.get("update:acked", 0)
    creates = wk.get("create:acked", 0) - 2 * HOT_USERS
    deletes = wk.get("delete:acked", 0)
    numbers = (f"seed={seed} load={elapsed:.1f}s; {result.report(0)}\n"
               f"pgbouncer: pgapi_ro +{ro} queries (health checks included), pgapi_rw +{rw}; replica statements "
               f"for requests +{replica_stmts}; "
               f"replica: {watch.numbers()}")
    print(numbers)

    assert not load.crashes, f"expected the client threads to run cleanly, got: {load.crashes[:5]}\n{numbers}"
    assert not watch.errors, f"expected the replica thread to run cleanly, got: {watch.errors}\n{numbers}"
    assert not result.violations, \
        f"expected no read to contradict an acknowledged write, got:\n{result.report(20)}\n{numbers}"
    keys = {w.key for w in load.h.writes}
    lost = check_final(load.h, final_versions(schema, keys))
    assert not lost, (f"expected the primary to hold every acknowledged version, got {len(lost)} problem(s):\n"
                      + "\n".join(lost[:20]) + f"\n{numbers}")
    checked, stale = cache_mismatches(srv, schema)
    assert not stale, f"expected every cached entry to equal the primary's row, got:\n" + "\n".join(stale[:20])
    assert checked >= 1, f"expected something in the cache to check, got nothing: {cache_diagnosis(srv, schema)}"

    # not vacuous: enough traffic, every route exercised, every check had reads it could have failed
    assert s["reads"] >= MIN_READS, f"expected at least {MIN_READS} reads, got {s['reads']}\n{numbers}"
    assert acked_updates >= MIN_ACKED_UPDATES, \
        f"expected at least {MIN_ACKED_UPDATES} acknowledged updates, got {acked_updates}\n{numbers}"
    assert creates >= MIN_CREATES and deletes >= MIN_DELETES, \
        (f"expected at least {MIN_CREATES} creates and {MIN_DELETES} deletes during the load, "
         f"got {creates} and {deletes}\n{numbers}")
    gets = {r: n for r, n in s["reads_by_route"].items() if r.startswith("GET ")}
    assert len(gets) == 6 and min(gets.values()) >= 50, \
        f"expected at least 50 reads on each of the 6 read routes, got {gets}\n{numbers}"
    ch = s["checkable"]
    assert ch.get("versioned_after_ack", 0) >= 1000 and ch.get("must_exist", 0) >= 500 \
        and ch.get("must_be_absent", 0) >= 20, \
        (f"expected enough reads each check could catch (>=1000 versioned, >=500 must-exist, "
         f">=20 must-be-absent), got {ch}\n{numbers}")
    errors = s["errors"]
    assert errors <= s["reads"] // 100, \
        f"expected at most 1% failed reads, got {errors} of {s['reads']}: {s['errors_by_route']}\n{numbers}"
    # the replica served reads and really was behind
    assert replica_stmts >= min_replica_reads, \
        (f"expected at least {min_replica_reads} statements served by the replica for requests "
         f"(pgapi_pool_queries_total, side replica), got {replica_stmts}\n{numbers}")
    assert watch.behind >= 1, f"expected the replica to be seen behind the primary at least once, got {watch.numbers()}"
    return result, watch


def seed_of_run():
    return int(os.environ.get("PGAPI_TEST_SEED") or random.randrange(1 << 30))


@contextlib.contextmanager
def replica_apply_delay(topology, delay="1s"):
    """recovery_min_apply_delay on the replica for the block (reset, and the replica caught up, after)."""
    with closing(topology.replica_admin()) as conn, conn.cursor() as cur:
        try:
            cur.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
            cur.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 5
            while True:
                cur.execute("SHOW recovery_min_apply_delay")
                if cur.fetchone()[0] == delay:
                    break
                assert time.monotonic() < deadline, f"expected recovery_min_apply_delay to become {delay} after reload"
                time.sleep(0.05)
            yield
        finally:
            cur.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
            cur.execute("SELECT pg_reload_conf()")
            wait_replica_caught_up(topology)


def delayed_schedule(seed):
    """Quiet phases that outlast a 1 s apply delay, for the replica to catch up with a table's fence."""
    return Schedule(random.Random(seed), LOAD_SECONDS, 0.4, 2.0, (3, 3, 1, 2), quiet_every=3, quiet_len=(1.5, 2.0))
