"""Issue 14: a client that closes its connection while its request waits. A read not yet sent to the
database is dropped (never sent), a write still commits and invalidates the cache; either is counted as
status 499 in pgapi_http_requests_total, as nginx logs it. The evidence that a read was never sent is the
pool's own statement counter (pgapi_pool_queries_total), compared exactly after a control read."""

import signal
import socket
import threading
import uuid
from contextlib import closing

from lib.builders import create_user
from lib.cache import OwnRedis, PING_BYTES, cached_server, redis_receive_queue, server_on_own_redis
from lib.locks import statement_waits_on_lock
from lib.metrics import scrape, total
from lib.topology import wait_until


def counter(s, name, **want):
    fams = scrape(s)
    return total(fams, name, **want) if name in fams else 0


def gone_count(s):
    return counter(s, "pgapi_http_requests_total", status="499")


def queries_published(s, n):
    """Waits until the pool statement counter (published once a second) reaches n; returns its value."""
    return wait_until(lambda: (lambda q: q if q >= n else None)(counter(s, "pgapi_pool_queries_total")), 15,
                      f"pgapi_pool_queries_total to reach {n}")


def request_then_leave_later(s, method, path, body=None):
    """Sends one request on a raw connection and returns the socket, still open, with its local port."""
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    data = body.encode() if body else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


def server_side_closed(server_port, client_port):
    """The server closed its end of the connection from client_port (no socket of it left in CLOSE_WAIT)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return state != "08"  # 08 = CLOSE_WAIT: our FIN seen, the server's socket still open
    return True


def leave(s, sock):
    """Closes the client's socket and waits until the server has closed its end (it saw the client go)."""
    port = sock.getsockname()[1]
    sock.close()
    wait_until(lambda: server_side_closed(s.port, port), 10, "the server to close the connection of the client that left")


def primary_as_postgres(schema):
    return schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port, dbname="pgapi",
                      user="postgres")


def test_read_queued_in_the_pool_is_dropped_when_its_client_leaves(schema, server):
    # no replica (a dead address): every read waits for the primary's only connection
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "off"},
                          "database": {"pool_size": 1, "queue_timeout": "30s", "statement_timeout": "30s",
                                       "replica": "host=127.0.0.1 port=1 dbname=none user=none"}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("primary") is True, 15, "primary up")
    r = s.request("POST", "/users", body={"name": "gone", "email": f"g-{uuid.uuid4().hex[:12]}@example.com"})
    assert r.status == 201, r
    uid = r.json()["id"]
    q0 = queries_published(s, 1)
    assert q0 == 1, f"expected only the POST counted so far, got {q0}"
    answers = []
    with closing(primary_as_postgres(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
        try:
            # the primary's only connection: a PATCH waiting on the row lock
            patch = threading.Thread(target=lambda: answers.append(
                s.request("PATCH", f"/users/{uid}", body={"name": "after"}, timeout=60).status))
            patch.start()
            wait_until(lambda: statement_waits_on_lock(schema), 15, "the PATCH waiting on its row lock")
            # a read can only wait in the pool queue; its client leaves
            sock = request_then_leave_later(s, "GET", f"/users/{uid}")
            wait_until(lambda: counter(s, "pgapi_pool_waiting", side="primary") == 1, 15,
                       "the read waiting in the pool queue (pgapi_pool_waiting)")
            leave(s, sock)
            wait_until(lambda: gone_count(s) == 1, 10, "the read whose client left counted as 499")
        finally:
            locker.rollback()
    patch.join(30)
    assert answers == [200], f"expected the PATCH answered, got {answers}"
    assert s.get(f"/users/{uid}").status == 200   # a control read: one statement
    q = queries_published(s, q0 + 2)
    assert q == q0 + 2, f"expected 2 statements (PATCH, control read) and none for the read whose client left, " \
        f"got {q - q0}"
    assert " 499 " in s.log_text(), "expected the access log to show the read as 499:\n" + s.log_tail()


def test_read_waiting_in_frozen_redis_is_dropped_when_its_client_leaves(schema, server, tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    try:
        s = server_on_own_redis(schema, server, own, "10s")
        u = create_user(s)
        q0 = queries_published(s, 1)
        own.signal(signal.SIGSTOP)
        try:
            sock = request_then_leave_later(s, "GET", f"/users/{u['id']}")
            wait_until(lambda: redis_receive_queue(own.port) > PING_BYTES, 10,
                       "the GET's cache lookup waiting, unread, in the frozen Redis")
            leave(s, sock)
        finally:
            own.signal(signal.SIGCONT)
        wait_until(lambda: gone_count(s) == 1, 15, "the read whose client left counted as 499 once Redis answered")
        assert s.get("/users/9000000000005").status == 404   # a control read: one statement
        q = queries_published(s, q0 + 1)
        assert q == q0 + 1, f"expected only the control read to reach the database, got {q - q0} statements"
    finally:
        own.stop()


def test_write_whose_client_leaves_still_commits_and_invalidates(schema, server):
    s = cached_server(server, schema)
    u = create_user(s)
    path = f"/users/{u['id']}"
    wait_until(lambda: s.get(path).headers.get("x-cache") == "HIT", 10, "the user's row cached")
    with closing(primary_as_postgres(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (u["id"],))
        sock = request_then_leave_later(s, "PATCH", path, body='{"name":"left-before-commit"}')
        wait_until(lambda: statement_waits_on_lock(schema), 15, "the PATCH waiting on its row lock")
        leave(s, sock)
        locker.rollback()   # the write goes on: it commits
    wait_until(lambda: gone_count(s) == 1, 15, "the write whose client left counted as 499 once done")
    with closing(primary_as_postgres(schema)) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM users WHERE id = %s", (u["id"],))
        assert cur.fetchone()[0] == "left-before-commit", "expected the write of the client that left committed"
    r = s.get(path)
    assert r.status == 200 and r.json()["name"] == "left-before-commit", \
        f"expected the cache invalidated (the new name served), got {r} X-Cache={r.headers.get('x-cache')}"
    # the invalidation ran (the cache is not bypassed): the old value deleted (MISS), or replaced by the
    # write's own row (HIT: write-through; the name above is the new one)
    assert r.headers.get("x-cache") in ("MISS", "HIT"), \
        f"expected a MISS or the written-through row, the cache not bypassed, got X-Cache={r.headers.get('x-cache')}"
