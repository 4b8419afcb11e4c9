"""Issue 20, item 1: write-through. A committed update or create stores its row in Redis when it is
provably the newest (docs/consistency.md, "Write-through"). First the invalidation script's ordering,
called directly with EVAL against the topology's real Redis (its text read from worker/cache/cache.c, so
the test runs the very script the server sends); then end to end: two servers sharing one Redis and
prefix answer a PATCH's or POST's row from the cache at once, byte for byte what the database answers,
and many concurrent PATCHes of one row leave the database's final row cached."""

import concurrent.futures
import json
import os
import re
import signal
import uuid
from contextlib import closing

import pytest

from lib.builders import create_post, create_user
from lib.metrics import scrape, total
from lib.pgapi_server import REPO_ROOT, PgapiServer

NONE = "FFFFFFFFFFFFFFFF"  # an unknown commit LSN, and a key's primary-only fence


def script_text():
    """LUA_INVALIDATE as cache.c sends it: its C string literals joined."""
    with open(os.path.join(REPO_ROOT, "worker", "cache", "cache.c")) as f:
        src = f.read()
    body = src[src.index("static const char LUA_INVALIDATE[] ="):]
    body = body[:body.index('";') + 2]
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))


SCRIPT = script_text()


def lsn(n):
    return f"{n:016X}"


class Store:
    """The script's view of one prefix in the topology's Redis."""

    def __init__(self, redis, deployment=False):
        self.r, self.p, self.deployment = redis, f"twt{uuid.uuid4().hex[:8]}", deployment

    def epoch(self):
        return (self.r.get(f"{self.p}:epoch") or b"0").decode()

    def write(self, commit, mode, key, version, value="", keys=None, epoch=None, fences=()):
        """One committed write's invalidation: mode 's' (offer its row), 'v' (record the version), 'd' (a
        deletion). keys: the change's keys (an update names its row's; a create names none)."""
        keys = [key] if keys is None else keys
        epoch = self.epoch() if epoch is None else epoch
        args = [self.p, commit, "60000", "0", "0", str(len(fences)), "1" if self.deployment else "0", mode, key,
                str(version), value, "3600", epoch, *fences, *keys]
        res, e = self.r.eval(SCRIPT, 0, *args)
        return res, e.decode()

    def value(self, key):
        v = self.r.get(f"{self.p}:e{self.epoch()}:v:{key}")
        return None if v is None else v.decode()

    def fence(self, key):
        f = self.r.get(f"{self.p}:f:{key}")
        return None if f is None else f.decode()

    def lease(self, key, token="7"):
        self.r.set(f"{self.p}:e{self.epoch()}:l:{key}", token, px=3000)

    def leased(self, key):
        return self.r.exists(f"{self.p}:e{self.epoch()}:l:{key}") == 1


STORED, OLDER, FENCE, EPOCH = 2, 3, 4, 5


def row(version):
    return json.dumps({"id": 1, "name": f"v{version}", "version": version})


@pytest.fixture
def store(schema):
    return Store(schema.redis())


def test_newer_version_wins_whatever_its_lsn(store):
    # W4 (version 3) reads its LSN at once (100); W (version 2) committed before it but read its LSN later
    # (200, a later group): W's older row must not replace W4's
    assert store.write(lsn(100), "s", "user:1", 3, row(3)) == (STORED, "0")
    assert store.value("user:1") == "0" * 16 + row(3), "stored with LSN tag 0, the row as given"
    assert store.write(lsn(200), "s", "user:1", 2, row(2))[0] == OLDER
    assert store.value("user:1") == "0" * 16 + row(3), "the newer version stays"
    assert store.fence("user:1") == lsn(200), "the fence is raised as by any write"
    assert store.write(lsn(300), "s", "user:1", 4, row(4))[0] == STORED
    assert store.value("user:1").endswith(row(4))


def test_same_lsn_keeps_no_older_row(store):
    # one grouped LSN read for two writes of the row: whichever comes first, no older row stays
    assert store.write(lsn(100), "s", "user:1", 2, row(2))[0] == STORED
    assert store.write(lsn(100), "s", "user:1", 3, row(3))[0] == FENCE, "not strictly past the fence"
    assert store.value("user:1") is None, "the older row was deleted, the newer not stored"
    assert store.write(lsn(100), "s", "user:2", 3, row(3))[0] == STORED
    assert store.write(lsn(100), "s", "user:2", 2, row(2))[0] == OLDER
    assert store.value("user:2").endswith(row(3))


def test_deletion_blocks_an_older_update(store):
    assert store.write(lsn(100), "s", "user:1", 4, row(4))[0] == STORED
    store.write(lsn(200), "d", "user:1", 0, keys=["user:1", "user-with-posts:1", "post:9"])
    assert store.value("user:1") is None
    # an update that committed before the deletion, its invalidation late, with a later LSN and any version
    assert store.write(lsn(300), "s", "user:1", 5, row(5))[0] == OLDER
    assert store.value("user:1") is None
    assert store.write(lsn(300), "s", "post:9", 7, row(7))[0] == OLDER, "the cascade's rows are tombstoned too"


def test_unknown_lsn_never_stores_and_its_fence_blocks_later_rows(store):
    assert store.write(NONE, "s", "user:1", 2, row(2))[0] == FENCE
    assert store.value("user:1") is None and store.fence("user:1") == NONE
    assert store.write(lsn(500), "s", "user:1", 3, row(3))[0] == FENCE, "a primary-only fence never stores"
    assert store.value("user:1") is None
    # what the server sends for an unknown LSN: the version only
    assert store.write(NONE, "v", "user:2", 2, "")[0] == 1
    assert store.value("user:2") is None
    assert store.write(lsn(100), "s", "user:2", 2, row(2))[0] == OLDER, "its version was recorded"


def test_new_epoch_or_unverified_store_never_stores(store, schema):
    before = store.epoch()
    store.r.incr(f"{store.p}:epoch")
    assert store.write(lsn(100), "s", "user:1", 2, row(2), epoch=before) == (EPOCH, store.epoch())
    assert store.value("user:1") is None
    dep = Store(schema.redis(), deployment=True)
    assert dep.write(lsn(100), "s", "user:1", 2, row(2), fences=["users:t"])[0] == EPOCH, "no marker"
    dep.r.set(f"{dep.p}:verified", "x/0/0")
    assert dep.write(lsn(200), "s", "user:1", 3, row(3), fences=["users:t"])[0] == STORED
    assert dep.r.hget(f"{dep.p}:fences", "users:t") == lsn(200).encode(), "the deployment's fences as today"
    assert dep.r.xlen(f"{dep.p}:log") == 2, "every write logged as today"


def test_lease_always_goes_and_a_create_raises_its_key(store):
    store.lease("user:1")
    assert store.write(lsn(100), "s", "user:1", 1, row(1), keys=[])[0] == STORED, "a create names no key"
    assert not store.leased("user:1") and store.fence("user:1") == lsn(100)
    store.lease("user:1")
    assert store.write(lsn(200), "s", "user:1", 1, row(1))[0] == OLDER
    assert not store.leased("user:1"), "an older write still takes the lease (a fill under way may be older)"
    store.lease("user:3")
    store.write(lsn(300), "v", "user:3", 2, "")
    assert not store.leased("user:3") and store.value("user:3") is None


# ---- end to end ----------------------------------------------------------------------------------

def start_server(tmp_path_factory, schema, name, prefix, **redis):
    s = PgapiServer(str(tmp_path_factory.mktemp(name)), topology=schema, workers=2,
                    overrides={"redis": {"enabled": "on", "prefix": prefix, **redis},
                               "database": {"health_interval": "200ms"}})
    s.start()
    s.wait_for(lambda: s.get("/readyz").status == 200 and s.get("/readyz").json().get("redis") == "up", 20,
               "/readyz 200 with redis up")
    return s


def stop_server(s):
    rc = s.stop(signal.SIGTERM)
    bad = s.bad_log_lines()
    assert rc == 0 and not bad, f"server exit {rc}; bad log lines: {bad[:10]}\n{s.log_tail(60)}"


@pytest.fixture(scope="module")
def pair(schema, tmp_path_factory):
    """Two servers on one Redis and prefix (the deployment's fences on, local copies on, as by default)."""
    prefix = f"twt{uuid.uuid4().hex[:8]}"
    a = start_server(tmp_path_factory, schema, "a", prefix)
    b = start_server(tmp_path_factory, schema, "b", prefix)
    a.prefix = b.prefix = prefix
    yield a, b
    stop_server(b)
    stop_server(a)


def cached(s, path):
    r = s.get(path)
    assert r.status == 200, r
    return r.headers.get("x-cache"), r.body


def from_database(s, path, token):
    """The row as the database answers it: a read with the write's token is not served the written row
    (tagged LSN 0), so it reads the database."""
    r = s.get(path, headers={"Pgapi-Lsn": token})
    assert r.status == 200 and r.headers.get("x-cache") == "BYPASS", (r, r.headers.get("x-cache"))
    return r.body


def test_written_row_is_served_from_the_cache_at_once_on_both_servers(pair):
    a, b = pair
    u = create_user(a)
    p = create_post(a, u["id"])
    for path in (f"/users/{u['id']}", f"/posts/{p['id']}"):
        for s in (a, b):
            assert cached(s, path)[0] == "HIT", f"{path}: a create is written through"
    for i in range(3):
        for path, body in ((f"/users/{u['id']}", {"name": f"n{i}"}), (f"/posts/{p['id']}", {"title": f"t{i}"})):
            w = a.request("PATCH", path, body=body)
            assert w.status == 200, w
            for s in (a, b):
                xc, got = cached(s, path)
                assert (xc, got) == ("HIT", w.body), f"{path} on {s.port} after PATCH {i}: {xc} {got!r}"
            assert from_database(b, path, w.headers["pgapi-lsn"]) == w.body, "RETURNING is what a GET answers"
    a.wait_for(lambda: total(scrape(a), "pgapi_cache_write_through_total", result="stored") >= 8, 10,
               "written-through rows counted")


def test_concurrent_patches_leave_the_database_row_cached(pair, schema):
    a, b = pair
    u = create_user(a)
    path = f"/users/{u['id']}"

    def patch(i):
        s = (a, b)[i % 2]
        r = s.request("PATCH", path, body={"name": f"c{i}"})
        assert r.status == 200, r

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        list(ex.map(patch, range(60)))
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, version FROM users WHERE id = %s", (u["id"],))
        name, version = cur.fetchone()
    assert version == 61, f"60 PATCHes after the create, version {version}"
    r = schema.redis()
    epoch = (r.get(f"{a.prefix}:epoch") or b"0").decode()
    key = f"{a.prefix}:e{epoch}:v:user:{u['id']}"
    if r.exists(key):  # absent when the newest write's LSN did not pass the fence: then a read fills it
        v = json.loads(r.get(key)[16:])
        assert (v["name"], v["version"]) == (name, version), f"Redis holds {v}, the database {name} {version}"
    for s in (a, b):
        got = json.loads(cached(s, path)[1])
        assert (got["name"], got["version"]) == (name, version), f"server {s.port} answered {got}"
    for k in r.scan_iter(match=f"{a.prefix}:e{epoch}:v:user:{u['id']}"):
        v = json.loads(r.get(k)[16:])
        assert (v["name"], v["version"]) == (name, version), f"Redis holds {v} under {k}, the database {name}"


def test_off_only_deletes(schema, tmp_path_factory):
    s = start_server(tmp_path_factory, schema, "off", f"twt{uuid.uuid4().hex[:8]}", write_through="off")
    try:
        u = create_user(s)
        path = f"/users/{u['id']}"
        s.wait_for(lambda: cached(s, path)[0] == "HIT", 5, "a hit after a fill")
        assert s.request("PATCH", path, body={"name": "off"}).status == 200
        assert cached(s, path)[0] == "MISS", "write_through off: the PATCH deleted the value"
    finally:
        stop_server(s)
