"""Issue 20 (item 3): reads that miss a key another request of the SAME worker is filling wait for that
fill and are answered when it lands (pgapi_cache_fill_waits_total result woken), not by polling Redis; a
write between the lease and the fill never lets a read that arrived after it get the older value; a
waiter whose client leaves is dropped cleanly. One server (one worker, no local cache, health checks
rare so nothing else reaches the paused PgBouncer) for the module; the rows are inserted before it
starts and replayed by the replica, so its reads of them go to the replica (pgapi_ro)."""

import concurrent.futures
import signal
import socket
import uuid
from contextlib import closing

import pytest
import redis as redis_lib

from lib.bouncer import bouncer_admin_run
from lib.consistency import wait_replica_caught_up
from lib.metrics import scrape, total
from lib.pgapi_server import PgapiServer
from lib.topology import wait_until

BURST = 24
ROWS = 4


def counter(s, name, **want):
    fams = scrape(s)
    return total(fams, name, **want) if name in fams else 0


def counts(s):
    """The numbers the tests compare: statements, the Redis tier's waits, and how they ended."""
    fams = scrape(s)
    return {"queries": total(fams, "pgapi_pool_queries_total"),
            "wait": total(fams, "pgapi_cache_lookups_total", layer="redis", result="wait"),
            "miss": total(fams, "pgapi_cache_lookups_total", layer="redis", result="miss"),
            "woken": total(fams, "pgapi_cache_fill_waits_total", result="woken"),
            "retried": total(fams, "pgapi_cache_fill_waits_total", result="retried"),
            "polled": total(fams, "pgapi_cache_fill_waits_total", result="polled")}


def delta(before, after):
    return {k: after[k] - before[k] for k in before}


@pytest.fixture(scope="module")
def srv(schema, tmp_path_factory):
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        ids = []
        for i in range(ROWS):
            cur.execute("INSERT INTO users (name, email) VALUES ('old', %s) RETURNING id",
                        (f"fw{uuid.uuid4().hex[:10]}@example.com",))
            ids.append(cur.fetchone()[0])
        conn.commit()
    wait_replica_caught_up(schema)  # the server's first replay sample passes them: their reads go there
    prefix = f"t{uuid.uuid4().hex[:8]}"
    s = PgapiServer(str(tmp_path_factory.mktemp("fill_wait")), topology=schema, workers=1,
                    overrides={"redis": {"enabled": "on", "prefix": prefix, "local_entries": "0",
                                         "command_timeout": "1s"},
                               "database": {"health_interval": "60s"}})
    s.start()
    s.wait_for(lambda: s.get("/readyz").status == 200 and s.get("/readyz").json().get("redis") == "up", 20,
               "/readyz 200 with redis up")
    s.prefix, s.ids = prefix, ids
    yield s
    rc = s.stop(signal.SIGTERM)
    bad = s.bad_log_lines()
    assert rc == 0 and not bad, f"server exit {rc}; bad log lines: {bad[:10]}\n{s.log_tail(60)}"


def get(s, path):
    r = s.get(path)
    return r.status, r.headers.get("x-cache"), (r.json() if r.status == 200 else None)


class Paused:
    """PgBouncer's database(s) paused for the block: statements sent meanwhile wait in it."""

    def __init__(self, topology, db=None):
        self.topology, self.what = topology, f"PAUSE {db}" if db else "PAUSE"
        self.resume = f"RESUME {db}" if db else "RESUME"

    def __enter__(self):
        bouncer_admin_run(self.topology, self.what)
        return self

    def __exit__(self, *exc):
        bouncer_admin_run(self.topology, self.resume)


def lease_key(s, r, uid):
    epoch = int(r.get(f"{s.prefix}:epoch") or 0)
    return f"{s.prefix}:e{epoch}:l:user:{uid}"


def test_a_burst_of_misses_on_one_key_is_answered_by_one_fill(srv, schema):
    """BURST concurrent misses of one key in one worker: one lease, one statement, every other request
    woken by that fill: no timed poll of Redis, no second statement."""
    s, uid = srv, srv.ids[0]
    path = f"/users/{uid}"
    before = counts(s)
    with concurrent.futures.ThreadPoolExecutor(BURST) as ex:
        with Paused(schema):  # the filler's statement waits in PgBouncer: every other read finds its lease
            futures = [ex.submit(get, s, path) for _ in range(BURST)]
            wait_until(lambda: counts(s)["wait"] - before["wait"] >= BURST - 1, 15,
                       f"{BURST - 1} reads waiting on the lease")
        results = [f.result(timeout=15) for f in futures]
    d = delta(before, counts(s))
    assert all(st == 200 and body["name"] == "old" and body["id"] == uid for st, _, body in results), results[:3]
    assert sorted(xc for _, xc, _ in results) == ["HIT"] * (BURST - 1) + ["MISS"], \
        f"expected one MISS (the filler) and {BURST - 1} answered by its fill, got {[r[1] for r in results]}"
    assert d == {"queries": 1, "wait": BURST - 1, "miss": 1, "woken": BURST - 1, "retried": 0, "polled": 0}, \
        f"expected one statement and {BURST - 1} waiters woken, none polling: {d}"
    assert get(s, path)[1] == "HIT", "expected the fill stored in Redis"


def test_a_write_between_lease_and_fill_never_serves_the_older_value(srv, schema):
    """The filler's read waits in PgBouncer (replica side paused) while a PATCH commits on the primary:
    its invalidation takes the lease away, so reads arriving after the PATCH's answer never wait on the
    old fill; they (and the ones that waited before it, whose fence the PATCH raised) all read the new
    value, and the old fill is refused by Redis."""
    s, uid = srv, srv.ids[1]
    path = f"/users/{uid}"
    r = redis_lib.Redis(port=schema.redis_port)
    lease = lease_key(s, r, uid)
    before = counts(s)
    with concurrent.futures.ThreadPoolExecutor(2 * BURST) as ex:
        with Paused(schema, "pgapi_ro"):
            filler = ex.submit(get, s, path)
            wait_until(lambda: r.exists(lease), 10, "the filler's lease")
            early = [ex.submit(get, s, path) for _ in range(BURST - 1)]
            wait_until(lambda: counts(s)["wait"] - before["wait"] >= BURST - 1, 15,
                       f"{BURST - 1} reads waiting on the lease")
            w = s.request("PATCH", path, body={"name": "new"})
            assert w.status == 200, w
            assert not r.exists(lease), "expected the PATCH's invalidation to take the filler's lease"
            late = [ex.submit(get, s, path) for _ in range(BURST)]  # read the primary (their fence)
            late_results = [f.result(timeout=15) for f in late]
        first = filler.result(timeout=15)
        early_results = [f.result(timeout=15) for f in early]
    assert all(st == 200 and body["name"] == "new" for st, _, body in late_results), \
        f"a read after the PATCH's answer got {[(st, b and b['name']) for st, _, b in late_results]}"
    assert first[0] == 200 and first[2]["name"] in ("old", "new"), first
    assert all(st == 200 and body["name"] == "new" for st, _, body in early_results), \
        (f"expected the early waiters, whose fence the PATCH raised, to read the new value, got "
         f"{[(st, b and b['name']) for st, _, b in early_results]}")
    status, xc, body = get(s, path)
    assert (status, body["name"]) == (200, "new"), (status, xc, body)
    d = delta(before, counts(s))
    assert d["polled"] == 0, f"no read of this worker should poll for its own worker's lease: {d}"


def test_a_waiter_whose_client_leaves_is_dropped_and_the_fill_still_answers_the_rest(srv, schema):
    """Bad input: clients that leave while their read waits on another's fill are dropped at once
    (499), the fill answers the others, and nothing leaks (the server's ASan log stays clean)."""
    s, uid = srv, srv.ids[2]
    path = f"/users/{uid}"
    before = counts(s)
    gone_before = counter(s, "pgapi_http_requests_total", status="499")
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        with Paused(schema):
            filler = ex.submit(get, s, path)
            wait_until(lambda: counts(s)["miss"] - before["miss"] >= 1, 10, "the filler's lease")
            socks = []
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                socks.append(sock)
            stayer = ex.submit(get, s, path)
            wait_until(lambda: counts(s)["wait"] - before["wait"] >= 4, 15, "4 reads waiting on the lease")
            for sock in socks:
                sock.close()
            wait_until(lambda: counter(s, "pgapi_http_requests_total", status="499") - gone_before >= 3, 15,
                       "the 3 waiters that left dropped while the fill still waits")
        first, kept = filler.result(timeout=15), stayer.result(timeout=15)
    assert first[0] == 200 and kept[0] == 200 and kept[2] == first[2], (first, kept)
    d = delta(before, counts(s))
    assert (d["queries"], d["woken"], d["polled"]) == (1, 1, 0), d


def test_a_worker_stopped_with_waiters_on_a_fill_frees_them(schema, server):
    """A stop (SIGTERM) while a fill's statement waits in PgBouncer with reads waiting on it: past the
    drain timeout the worker frees the holder and its waiters unanswered, and exits 0 with no sanitizer
    report (the fixture checks the log)."""
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "on", "prefix": f"t{uuid.uuid4().hex[:8]}", "local_entries": "0",
                                    "write_through": "off"},  # the create leaves the row uncached
                          "database": {"health_interval": "60s"}, "server": {"drain_timeout": "300ms"}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("redis") == "up", 15, "redis up")
    uid = s.request("POST", "/users", body={"name": "x", "email": f"x{uuid.uuid4().hex[:10]}@example.com"}
                    ).json()["id"]
    before = counts(s)
    socks = []
    try:
        with Paused(schema):
            for _ in range(4):
                sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
                sock.sendall(f"GET /users/{uid} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                socks.append(sock)
            wait_until(lambda: counts(s)["wait"] - before["wait"] >= 3, 15, "3 reads waiting on the lease")
            assert s.stop(signal.SIGTERM) == 0, s.log_tail()
            assert "drain_timeout passed with 4 connection(s) open" in s.log_text(), \
                f"expected the worker to exit with the 4 reads still in flight:\n{s.log_tail()}"
    finally:
        for sock in socks:
            sock.close()
