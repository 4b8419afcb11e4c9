"""Issue 14: a worker told to stop at once (TERM: a second stop signal, or an expired drain_timeout) while
requests are still in the pool queue, on a database connection or in Redis. It must exit without touching
what it freed: the requests are dropped (their connections close), no callback runs on a freed HTTP
connection, nothing leaks. The server runs the ASan build; the `server` fixture fails a test whose log
has a sanitizer line, and each test checks the log itself too, to say what it expected."""

import os
import signal
import threading
import uuid
from contextlib import closing

from lib.builders import create_user
from lib.cache import OwnRedis, PING_BYTES, redis_receive_queue, server_on_own_redis
from lib.locks import statement_waits_on_lock
from lib.metrics import scrape, value
from lib.topology import pid_alive, wait_until


def requests_in_threads(s, n, method, path, body=None):
    """n requests, each on its own connection in its own thread; returns (threads, outcomes)."""
    outcomes = []

    def one():
        try:
            outcomes.append(s.request(method, path, body=body, timeout=60).status)
        except Exception as exc:  # the worker dropped the connection: what a fast stop does
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, outcomes


def worker_term_and_check(s, threads, outcomes):
    """TERMs the (only) worker, waits for it to go and for the clients to see their connections end;
    asserts no sanitizer report. The master respawns the worker."""
    [worker] = s.worker_pids()
    os.kill(worker, signal.SIGTERM)
    wait_until(lambda: not pid_alive(worker), 20, "the worker to exit after SIGTERM")
    for t in threads:
        t.join(30)
    assert len(outcomes) == len(threads), f"expected every client to see its connection end, got {outcomes}"
    assert 200 not in outcomes, f"expected no request answered after the worker stopped, got {outcomes}"
    bad = s.bad_log_lines()
    assert not bad, "expected no sanitizer report after the worker's exit, got:\n" + "\n".join(bad[:40])


def test_worker_term_with_writes_queued_and_one_on_a_locked_row(schema, server):
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "off"},
                          "database": {"pool_size": 1, "queue_timeout": "60s", "statement_timeout": "60s",
                                       "health_interval": "10s"}}).start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 15, "ready")
    r = s.request("POST", "/users", body={"name": "locked", "email": f"l-{uuid.uuid4().hex[:12]}@example.com"})
    assert r.status == 201, r
    uid = r.json()["id"]
    with closing(schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port,
                            dbname="pgapi", user="postgres")) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
        threads, outcomes = requests_in_threads(s, 3, "PATCH", f"/users/{uid}", body={"name": "held"})
        # one PATCH waits on the row lock (the only connection busy), the other two in the pool queue
        wait_until(lambda: statement_waits_on_lock(schema), 15, "a PATCH waiting on the row lock")
        wait_until(lambda: value(scrape(s), "pgapi_pool_waiting", side="primary") == 2, 15,
                   "two PATCH waiting in the pool queue (pgapi_pool_waiting)")
        worker_term_and_check(s, threads, outcomes)
        locker.rollback()
    assert "exiting with writes in flight" in s.log_text(), \
        "expected the worker to say the write it dropped mid-statement makes the cache bypassed:\n" + s.log_tail()


def test_worker_term_with_a_read_waiting_on_frozen_redis(schema, server, tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    try:
        s = server_on_own_redis(schema, server, own, "5s")
        u = create_user(s)
        own.signal(signal.SIGSTOP)  # alive, connections kept, answering nothing
        threads, outcomes = requests_in_threads(s, 1, "GET", f"/users/{u['id']}")
        wait_until(lambda: redis_receive_queue(own.port) > PING_BYTES, 10,
                   "the GET's cache lookup waiting, unread, in the frozen Redis")
        worker_term_and_check(s, threads, outcomes)
    finally:
        own.stop()
