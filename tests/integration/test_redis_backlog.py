"""Issue 20: a Redis reply that waits in the worker's own socket is not Redis's silence. hiredis reads 16 kB
of replies per loop iteration; when a worker's iterations are long (8,192 connections on one worker in
`make bench-growth`), replies Redis had sent long before sat unread past command_timeout, the worker took
Redis for down, bypassed the cache, and every read went to the primary, whose pool queue then overflowed
(503 database_unavailable). A command's deadline now reads what the socket holds first.

The test makes that state without any timing race: Redis frozen while the worker sends its lookups, then
the worker frozen while Redis answers them all, held past command_timeout, then let go: its timers and the
replies (far more than 16 kB) are due in the same iteration. Every read must be a hit."""

import os
import signal
import socket
import time
import uuid

from lib.builders import create_user
from lib.cache import OwnRedis, redis_receive_queue, tcp_receive_queue

HIREDIS_READ = 16384  # what hiredis reads per readable event
WINDOW_BYTES = 56 * 1024  # replies held for the frozen worker: well within a TCP receive window (64 kB)
MAX_CONNECTIONS = 400
TIMEOUT_S = 2.0  # [redis] command_timeout: wide, the lookups must not expire before the worker is frozen


def client_receive_queue(redis_port):
    """Bytes Redis sent on its connections that the (frozen) worker has not read yet."""
    return tcp_receive_queue(redis_port, "remote")


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_answer(sock):
    """(status, x-cache) of the next response on sock (Content-Length framed)."""
    sock.settimeout(30)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before its answer; have {buf[:200]!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split(" ")[1]), headers.get("x-cache")


def test_replies_waiting_in_the_worker_s_socket_are_not_a_timeout(server, schema, tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    worker = None
    socks = []
    try:
        # health_interval long: no PING and no other periodic command while the bytes are counted
        s = server(workers=1, topology=schema, overrides={
            "redis": {"enabled": "on", "port": own.port, "prefix": f"t{uuid.uuid4().hex[:8]}",
                      "command_timeout": f"{int(TIMEOUT_S * 1000)}ms", "local_entries": 0},
            "database": {"health_interval": "10m"},
            "server": {"keepalive_timeout": "60s"}}).start()
        s.wait_for(lambda: s.get("/readyz").json().get("redis") == "up", 15, "redis up")
        worker = s.worker_pids()[0]
        user = create_user(s, name="n" * 200)  # a larger reply: fewer connections make the backlog
        path = f"/users/{user['id']}"
        s.wait_for(lambda: s.get(path).headers.get("x-cache") == "HIT", 10, f"a cache hit on {path}")
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        first = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        socks.append(first)

        # one lookup alone first: how many bytes one lookup and its reply are (each goes in one write)
        own.signal(signal.SIGSTOP)
        first.sendall(request)
        lookup = until(lambda: redis_receive_queue(own.port), 10, "a lookup to reach the frozen Redis")
        os.kill(worker, signal.SIGSTOP)
        own.signal(signal.SIGCONT)
        reply = until(lambda: client_receive_queue(own.port), 10, "its reply to reach the frozen worker")
        os.kill(worker, signal.SIGCONT)
        assert read_answer(first) == (200, "HIT")
        n = min(MAX_CONNECTIONS, WINDOW_BYTES // reply)
        assert n * reply >= 3 * HIREDIS_READ, f"{n} replies of {reply} bytes make too small a backlog"
        socks += [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(n - 1)]

        # every lookup sent to a frozen Redis; then the worker frozen and every reply sent to it
        own.signal(signal.SIGSTOP)
        sent_at = time.monotonic()
        for sk in socks:
            sk.sendall(request)
        until(lambda: redis_receive_queue(own.port) >= n * lookup, 10, f"{n} lookups to reach the frozen Redis")
        os.kill(worker, signal.SIGSTOP)
        own.signal(signal.SIGCONT)
        until(lambda: client_receive_queue(own.port) >= n * reply, 10,
              f"Redis to answer {n} lookups into the frozen worker's socket")
        time.sleep(max(0.0, sent_at + TIMEOUT_S + 0.5 - time.monotonic()))  # every deadline has passed
        os.kill(worker, signal.SIGCONT)
        answers = [read_answer(sk) for sk in socks]
        misses = [a for a in answers if a != (200, "HIT")]
        assert not misses, (f"{len(misses)} of {n} reads whose replies ({n * reply} bytes) waited in the "
                            f"worker's socket were not hits: {sorted(set(misses))}\n{s.log_tail(20)}")
        assert "command not answered within command_timeout" not in s.log_text(), s.log_tail(20)
        print(f"{n} lookups of {lookup} bytes, replies of {reply} bytes ({n * reply} in all) waiting past "
              f"command_timeout: all {n} reads hits")
    finally:
        if worker is not None:
            try:
                os.kill(worker, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for sk in socks:
            sk.close()
        own.stop()
