"""Clients of GET /healthz that run while a server reloads, restarts or is replaced, and count every
request that failed: nothing may be refused or dropped."""

import http.client
import json
import threading


def client_loop(port, stop, results, keepalive=False):
    """Requests until stop is set; records (ok, detail, pid of the worker that answered or None).
    keep-alive clients retry a GET once when the server closed an idle connection before reading it, as
    RFC 9112 section 9.3.1 allows."""
    conn = None
    while not stop.is_set():
        for attempt in range(2):
            try:
                if conn is None or not keepalive:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                body = r.read()
                pid = json.loads(body).get("pid") if r.status == 200 else None
                results.append((r.status == 200, f"{r.status} {body[:80]!r}", pid))
                if not keepalive or r.getheader("Connection") == "close":
                    conn.close()
                    conn = None
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as exc:
                conn = None
                if not keepalive or attempt == 1:
                    results.append((False, repr(exc), None))
                    break
            except OSError as exc:
                conn = None
                results.append((False, repr(exc), None))
                break


def run_clients(port, n, keepalive):
    stop = threading.Event()
    results = []
    threads = [threading.Thread(target=client_loop, args=(port, stop, results, keepalive)) for _ in range(n)]
    for t in threads:
        t.start()
    return stop, results, threads


def finish_clients(stop, results, threads):
    """Stops the clients; asserts they made requests and none failed; returns how many they made."""
    stop.set()
    for t in threads:
        t.join(30)
    failed = [d for ok, d, _ in results if not ok]
    assert results, "the clients made no request"
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:5]}"
    return len(results)
