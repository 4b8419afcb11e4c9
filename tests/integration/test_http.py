"""Issue 3: the server's HTTP/1.1 as seen on the wire: limits (413, 431, 414), timeouts (408, idle
keep-alive), keep-alive and pipelining, HTTP/1.0 and bad requests, the access log. Each test starts its
own server on a private port. The process side of the same issue is in test_process.py."""

import re
import socket
import time


def test_oversized_body_gets_413_and_header_431(server):
    s = server(workers=1, overrides={"server": {"max_body_bytes": "1k", "max_header_bytes": "2k"}}).start()
    r = s.request("POST", "/users", body=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert r.status == 413, f"expected 413, got {r}"
    assert r.json()["error"]["code"] == "body_too_large"
    r = s.get("/", headers={"X-Filler": "a" * 4000})
    assert r.status == 431, f"expected 431, got {r}"
    r = s.get("/" + "a" * 4000)
    assert r.status in (414, 431), f"expected 414, got {r}"
    # chunked body over the limit
    data = s.raw(b"POST /users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"800\r\n" + b"y" * 0x800 + b"\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


def test_slow_headers_get_408(server):
    s = server(workers=1, overrides={"server": {"request_timeout": "1s", "keepalive_timeout": "10s"}}).start()
    t0 = time.monotonic()
    data = s.raw(b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=5)
    assert data.startswith(b"HTTP/1.1 408"), f"expected 408, got {data[:200]!r}"
    assert time.monotonic() - t0 < 4


def test_idle_keepalive_closed_after_timeout(server):
    s = server(workers=1, overrides={"server": {"keepalive_timeout": "1s"}}).start()
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
        t0 = time.monotonic()
        assert sock.recv(10) == b""
        assert 0.5 < time.monotonic() - t0 < 4


def test_keepalive_and_pipelining(server):
    s = server(workers=1).start()
    data = s.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"200", b"404"], f"expected 3 in-order answers, got {statuses}: {data!r}"


def test_http10_and_bad_requests(server):
    s = server(workers=1).start()
    data = s.raw(b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello World!"), data
    data = s.raw(b"GARBAGE\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and b"not HTTP" in data, data  # not HTTP at all
    data = s.raw(b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 501 ") and b"not_implemented" in data, data  # a method we do not know
    r = s.request("DELETE", "/")
    assert r.status == 405 and "GET" in r.headers["allow"], r
    r = s.get("/does/not/exist")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", r


def test_access_log_has_method_path_status_duration(server):
    s = server(workers=1).start()
    s.get("/healthz", headers={"X-Request-Id": "test-rid-42"})
    s.wait_for(lambda: "GET /healthz 200" in s.log_text(), 5, "an access log line")
    line = [l for l in s.log_text().splitlines() if "GET /healthz 200" in l][-1]
    assert "ms" in line and "rid=test-rid-42" in line, line
