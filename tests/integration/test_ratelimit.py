"""Issue 18, rate limiting: `[ratelimit]` on the API routes, one GCRA step in Redis per request, keyed by
the client address (the subject once authentication fills it: tests/unit/test_ratelimit.c covers that
key until then); reads and writes with budgets of their own; 429 rate_limited with Retry-After and the
IETF RateLimit/RateLimit-Policy fields (successful answers carry RateLimit too); the client address from
X-Forwarded-For only through a trusted proxy, and from a real HAProxy's PROXY v2 header (send-proxy-v2);
malformed or untrusted PROXY headers refused; with Redis cut off, each worker's own limiter, counted in
pgapi_ratelimit_total and logged once.

One server for the module (2 workers), Redis reached through a relay the last test cuts. Limits are small
(a read a second, burst 3; a write a second, burst 2), so a client is limited after a handful of requests
and whole again within 3 s. Tests never count on timing: each client address is fresh (random in 127/8 or
198.18/15), a 429 is awaited within many more requests than the burst, and recovery is polled."""

import http.client
import os
import random
import re
import socket
import struct
import time

import jwt
import pytest

from lib.builders import uniq
from lib.haproxy import HAProxy
from lib.metrics import scrape, total
from lib.pgapi_fixtures import module_server
from lib.pgapi_server import Response, free_port
from lib.relay import Relay

TRUSTED = "127.0.0.9"  # the proxies' address: trusted_proxies, and HAProxy's source toward pgapi
READ_BURST, WRITE_BURST = 3, 2
READS_POLICY = '"reads";q=3;w=3'  # burst 3 over the 3 s a rate of 1/s takes to earn it back
WRITES_POLICY = '"writes";q=2;w=2'
MOST = 40  # requests sent at most to see a 429: far more than a burst plus what the rate refills meanwhile
PROXY_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(scope="module")
def redis_relay(schema):
    relay = Relay(free_port(), schema.redis_port).start()
    yield relay
    relay.kill()


@pytest.fixture(scope="module")
def rl(schema, tmp_path_factory, redis_relay):
    yield from module_server(tmp_path_factory, "ratelimit", schema, {
        "server": {"proxy_protocol": "on", "trusted_proxies": f"{TRUSTED}/32"},
        "ratelimit": {"enabled": "on", "read_rate": 1, "read_burst": READ_BURST, "write_rate": 1,
                      "write_burst": WRITE_BURST},
        "redis": {"port": redis_relay.port},
        "database": {"health_interval": "200ms"}})


AUTH_SECRET = "ratelimit-subjects-" + "5e" * 20  # HS256: at least 32 bytes


@pytest.fixture(scope="module")
def rl_auth(schema, tmp_path_factory):
    """A server requiring tokens, with the same small limits: its budgets are the tokens' subjects'."""
    secret = tmp_path_factory.mktemp("rl-secret") / "hs256"
    secret.write_text(AUTH_SECRET + "\n")
    os.chmod(secret, 0o600)
    yield from module_server(tmp_path_factory, "ratelimit-auth", schema, {
        "auth": {"mode": "required", "hs256_secret_file": str(secret)},
        "ratelimit": {"enabled": "on", "read_rate": 1, "read_burst": READ_BURST, "write_rate": 1,
                      "write_burst": WRITE_BURST},
        "database": {"health_interval": "200ms"}})


def token(sub):
    return jwt.encode({"sub": sub, "scope": "read write", "exp": int(time.time()) + 300}, AUTH_SECRET,
                      algorithm="HS256")


@pytest.fixture(scope="module")
def haproxy(rl, tmp_path_factory):
    """A real HAProxy in front of the server that sends each client's address in a PROXY v2 header, from
    the trusted address."""
    h = HAProxy(tmp_path_factory.mktemp("haproxy"), [("s1", rl.port)], f"send-proxy-v2 source {TRUSTED}")
    h.start()
    yield h
    h.stop()


def fresh_loopback():
    """A client address of its own on loopback (Linux routes all of 127/8 there)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def fresh_remote():
    """An address for X-Forwarded-For (198.18.0.0/15: benchmarking, never a real client)."""
    return f"198.{random.randint(18, 19)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def call(port, method, path, source, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def read_as(s, xff=None, source=TRUSTED, port=None, path="/users?limit=1"):
    return call(port or s.port, "GET", path, source, {"X-Forwarded-For": xff} if xff else None)


def write_as(s, xff, source=TRUSTED):
    body = '{"name": "%s", "email": "%s@example.com"}' % (uniq("name"), uniq("mail"))
    return call(s.port, "POST", "/users", source, {"X-Forwarded-For": xff}, body)


def until_limited(send, ok=(200,)):
    """Sends until a 429: -> (how many were answered before it, the 429)."""
    for i in range(MOST):
        r = send()
        if r.status == 429:
            return i, r
        assert r.status in ok, f"expected {ok} or 429, got {r}"
    pytest.fail(f"expected a 429 within {MOST} requests (burst {READ_BURST}, 1/s), got none")


def test_reads_and_writes_have_budgets_of_their_own(rl):
    client = fresh_remote()
    first = read_as(rl, client)
    assert first.status == 200, first
    assert first.headers.get("ratelimit-policy") == READS_POLICY, first.headers
    assert first.headers.get("ratelimit") == '"reads";r=2;t=1', f"a fresh client's first read: {first.headers}"
    n, _ = until_limited(lambda: read_as(rl, client))
    assert n >= READ_BURST - 1, f"expected the burst ({READ_BURST}) allowed first, got a 429 after {n + 1}"
    w = write_as(rl, client)  # reads spent, writes untouched
    assert w.status == 201, f"expected a write allowed while the client's reads are limited, got {w}"
    assert w.headers.get("ratelimit-policy") == WRITES_POLICY, w.headers
    assert w.headers.get("ratelimit") == '"writes";r=1;t=1', w.headers
    n, limited = until_limited(lambda: write_as(rl, client), ok=(201,))
    assert limited.headers.get("ratelimit-policy") == WRITES_POLICY, limited.headers
    other = fresh_remote()  # and a client whose writes are spent still reads
    until_limited(lambda: write_as(rl, other), ok=(201,))
    r = read_as(rl, other)
    assert r.status == 200 and r.headers.get("ratelimit") == '"reads";r=2;t=1', r


def test_429_is_the_error_shape_with_retry_after_and_ratelimit(rl):
    client = fresh_remote()
    _, r = until_limited(lambda: read_as(rl, client))
    assert r.headers.get("content-type") == "application/json", r.headers
    err = r.json()["error"]
    assert err["code"] == "rate_limited" and "reads" in err["message"], err
    retry = r.headers.get("retry-after", "")
    assert retry.isdigit() and 1 <= int(retry) <= 3, f"expected Retry-After 1..3 s, got {retry!r}"
    m = re.fullmatch(r'"reads";r=0;t=(\d+)', r.headers.get("ratelimit", ""))
    assert m and 1 <= int(m.group(1)) <= 3, f"expected RateLimit r=0 and t 1..3, got {r.headers}"
    assert r.headers.get("ratelimit-policy") == READS_POLICY, r.headers


def test_a_limited_client_recovers(rl):
    client = fresh_remote()
    _, limited = until_limited(lambda: read_as(rl, client))
    retry = int(limited.headers["retry-after"])
    time.sleep(retry)  # what the answer told the client to wait, then a poll: no timing is asserted
    deadline, last = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        last = read_as(rl, client)
        if last.status == 200:
            break
        time.sleep(0.2)
    assert last.status == 200, f"expected the client served again after Retry-After {retry} s, got {last}"
    assert re.fullmatch(r'"reads";r=\d+;t=\d+', last.headers.get("ratelimit", "")), last.headers


def test_two_clients_through_a_trusted_proxy_are_limited_apart(rl):
    a, b = fresh_remote(), fresh_remote()
    until_limited(lambda: read_as(rl, f"{fresh_remote()}, {a}"))  # the left entry is the client's own word
    r = read_as(rl, b)
    assert r.status == 200 and r.headers.get("ratelimit") == '"reads";r=2;t=1', \
        f"expected client {b} untouched by {a}'s budget, got {r}"
    rid = uniq("rid")
    r = call(rl.port, "GET", "/users?limit=1", TRUSTED, {"X-Forwarded-For": b, "X-Request-Id": rid})
    rl.wait_for(lambda: any(rid in l for l in rl.log_text().splitlines()), 5, "the access line")
    line = next(l for l in rl.log_text().splitlines() if rid in l)
    assert line.endswith(f" client={b} sub=-"), f"expected the access log to name the client {b}: {line!r}"


def test_an_untrusted_peers_forwarded_for_is_ignored(rl):
    source = fresh_loopback()
    # a new X-Forwarded-For on every request: were it believed, each would have a fresh budget
    until_limited(lambda: read_as(rl, fresh_remote(), source=source))
    rid = uniq("rid")
    call(rl.port, "GET", "/users?limit=1", source, {"X-Forwarded-For": "203.0.113.9", "X-Request-Id": rid})
    rl.wait_for(lambda: any(rid in l for l in rl.log_text().splitlines()), 5, "the access line")
    line = next(l for l in rl.log_text().splitlines() if rid in l)
    assert line.endswith(f" client={source} sub=-"), f"expected the peer {source} logged, not its header: {line!r}"


def test_probes_and_the_document_are_not_limited(rl):
    source = fresh_loopback()
    until_limited(lambda: read_as(rl, source=source))
    for path in ("/healthz", "/readyz", "/openapi.yaml", "/"):
        for _ in range(READ_BURST + 2):
            r = read_as(rl, source=source, path=path)
            assert r.status == 200 and "ratelimit" not in r.headers, f"{path}: expected 200 unlimited, got {r}"


def test_proxy_v2_from_haproxy_limits_each_client(rl, haproxy):
    c1, c2 = fresh_loopback(), fresh_loopback()
    first = read_as(rl, source=c1, port=haproxy.port)
    assert first.status == 200 and first.headers.get("ratelimit") == '"reads";r=2;t=1', first
    until_limited(lambda: read_as(rl, source=c1, port=haproxy.port))
    r = read_as(rl, source=c2, port=haproxy.port)
    assert r.status == 200 and r.headers.get("ratelimit") == '"reads";r=2;t=1', \
        f"expected {c2} (through the same HAProxy) untouched by {c1}'s budget, got {r}"
    rid = uniq("rid")
    call(haproxy.port, "GET", "/users?limit=1", c2, {"X-Request-Id": rid})
    rl.wait_for(lambda: any(rid in l for l in rl.log_text().splitlines()), 5, "the access line")
    line = next(l for l in rl.log_text().splitlines() if rid in l)
    assert line.endswith(f" client={c2} sub=-"), f"expected the PROXY header's client {c2} logged: {line!r}"


def proxy_v2(src, dst="127.0.0.1", sport=40000, dport=80, version_command=0x21, family=0x11, extra=b""):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + extra
    return PROXY_SIG + bytes([version_command, family]) + struct.pack("!H", len(body)) + body


def raw_from(s, source, chunks, timeout=5):
    """Sends each chunk (a short pause between them, so they arrive apart), then reads until close."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=timeout, source_address=(source, 0)) as c:
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.05)
            try:
                c.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return b""
        out = []
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                out.append(b)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(out)


GET = b"GET /users?limit=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def test_a_proxy_header_in_pieces_names_the_client(rl):
    client = fresh_remote()
    header = proxy_v2(client)
    answer = raw_from(rl, TRUSTED, [header[:5], header[5:14], header[14:] + GET]).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 200") and '"reads";r=2;t=1' in answer, answer[:400]


@pytest.mark.parametrize("what,source,data", [
    ("version 1 in a v2 header", TRUSTED, proxy_v2("198.18.0.1", version_command=0x11)),
    ("an unknown command", TRUSTED, proxy_v2("198.18.0.1", version_command=0x2F)),
    ("an unknown family", TRUSTED, proxy_v2("198.18.0.1", family=0x51)),
    ("addresses cut short", TRUSTED, PROXY_SIG + b"\x21\x11\x00\x04" + b"\x01\x02\x03\x04"),
    ("a length over the bound", TRUSTED, PROXY_SIG + b"\x21\x11\x04\x00" + b"\x00" * 1024),
    ("a well-formed header from an untrusted peer", None, proxy_v2("198.18.0.1")),
])
def test_a_bad_proxy_header_is_refused(rl, what, source, data):
    source = source or fresh_loopback()
    answer = raw_from(rl, source, [data + GET])
    assert answer == b"", f"{what}: expected the connection closed unanswered, got {answer[:200]!r}"
    r = read_as(rl, source=fresh_loopback())
    assert r.status == 200, f"the server must go on serving after {what}: {r}"


def test_a_refused_proxy_header_is_logged(rl):
    raw_from(rl, fresh_loopback(), [proxy_v2("198.18.0.2") + GET])
    raw_from(rl, TRUSTED, [proxy_v2("198.18.0.2", version_command=0x11) + GET])
    rl.wait_for(lambda: "untrusted peer's PROXY header" in rl.log_text(), 5, "the untrusted PROXY line")
    rl.wait_for(lambda: "malformed PROXY header" in rl.log_text(), 5, "the malformed PROXY line")


def ratelimit_counts(s):
    fams = scrape(s)
    return {r: total(fams, "pgapi_ratelimit_total", result=r)
            for r in ("allowed", "limited", "local_allowed", "local_limited")}


def settled_decisions(s):
    """The decisions counted, once every worker has published the earlier tests' (each publishes once a
    second): the same sum in two scrapes more than a second apart."""
    last, since = None, 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = sum(ratelimit_counts(s).values())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.2:
            return now
        time.sleep(0.1)
    pytest.fail(f"the decision count never settled (last {last})")


def test_one_decision_per_limited_request_and_none_for_probes(rl):
    """The limiter's cost: each request of an API route is one decision, one EVALSHA (a decision is one
    command by construction: cache_rate_check); probes make none."""
    before = settled_decisions(rl)
    n = 7
    for _ in range(n):
        read_as(rl, fresh_remote())
        read_as(rl, fresh_remote(), path="/healthz")
        read_as(rl, fresh_remote(), path="/readyz")
    rl.wait_for(lambda: sum(ratelimit_counts(rl).values()) - before >= n, 5, f"{n} decisions counted")
    after = sum(ratelimit_counts(rl).values())
    assert after - before == n, f"expected {n} decisions for {n} API requests and {2 * n} probes, got {after - before}"


# last: it cuts Redis off (and brings it back)
def test_redis_down_each_worker_limits_alone_and_counts_it(rl, redis_relay):
    rl.wait_for(lambda: ratelimit_counts(rl)["allowed"] > 0 and ratelimit_counts(rl)["limited"] > 0, 5,
                "the shared decisions of the tests before counted")
    before = ratelimit_counts(rl)
    logged = len(rl.log_text())  # a slow start may have had its own short fallback: only what follows counts

    def lines(text):
        return [l for l in rl.log_text()[logged:].splitlines() if text in l]
    redis_relay.kill()
    client = fresh_remote()
    # each worker has 1/2 of the burst (1) at 1/2 the rate: limited within a few requests, whichever
    # worker takes them; reads go to PostgreSQL meanwhile (the cache is bypassed)
    n, limited = until_limited(lambda: read_as(rl, client))
    assert limited.json()["error"]["code"] == "rate_limited" and limited.headers.get("retry-after"), limited
    rl.wait_for(lambda: ratelimit_counts(rl)["local_limited"] > before["local_limited"] and
                ratelimit_counts(rl)["local_allowed"] > before["local_allowed"], 5,
                "pgapi_ratelimit_total{result=local_*} counting the local decisions")
    for _ in range(10):  # more local decisions, on both workers: no line per request
        read_as(rl, fresh_remote())
    starts = lines("ratelimit: Redis cannot answer")
    per_worker = [re.search(r" (worker#\d+) ", l).group(1) for l in starts]
    assert starts and len(per_worker) == len(set(per_worker)), \
        f"expected the fallback logged once per worker (when it first decided alone), got {starts}"
    redis_relay.proc = Relay(redis_relay.port, redis_relay.target_port).start().proc  # the fixture stops it
    rl.wait_for(lambda: read_as(rl, fresh_remote()).status == 200 and lines("ratelimit: Redis answers again"), 15,
                "the shared limiter back")


def test_authenticated_clients_are_limited_per_subject_not_per_address(rl_auth):
    """Two subjects from one address: one spends its reads, the other still reads; the same subject from
    another address shares the spent budget."""
    alice, bob = uniq("alice"), uniq("bob")
    here, there = fresh_loopback(), fresh_loopback()

    def read(sub, source):
        return call(rl_auth.port, "GET", "/users?limit=1", source, {"Authorization": f"Bearer {token(sub)}"})
    n, limited = until_limited(lambda: read(alice, here))
    assert n >= READ_BURST - 1 and limited.json()["error"]["code"] == "rate_limited", limited
    r = read(bob, here)
    assert r.status == 200 and r.headers.get("ratelimit") == '"reads";r=2;t=1', \
        f"expected another subject from the same address to have its own budget, got {r} {r.headers}"
    r = read(alice, there)
    assert r.status == 429, f"expected the subject's budget spent from any address, got {r}"
    anonymous = call(rl_auth.port, "GET", "/users?limit=1", here)
    assert anonymous.status == 401, anonymous


def test_bad_tokens_are_limited_by_their_address(rl_auth):
    """A client guessing tokens gets 401s until its address's budget is spent, then 429s: a refused
    token is no way around the limits."""
    source = fresh_loopback()
    bad = {"Authorization": "Bearer " + token(uniq("mallory"))[:-4] + "AAAA"}  # a signature that fails
    n, limited = until_limited(lambda: call(rl_auth.port, "GET", "/users?limit=1", source, bad), ok=(401,))
    assert n >= READ_BURST - 1, f"expected the burst of 401s first, got a 429 after {n + 1}"
    assert limited.json()["error"]["code"] == "rate_limited" and "retry-after" in limited.headers, limited
    assert call(rl_auth.port, "GET", "/users?limit=1", fresh_loopback(), bad).status == 401, \
        "another address still gets its own budget"
