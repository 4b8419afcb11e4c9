"""Issue 18, tracing and timing: W3C traceparent/tracestate taken when valid and passed on (a new span of
ours on the response), a new trace when absent or invalid (never the bad value echoed), the trace id in
the JSON access log and in the SQL the primary runs (a leading sqlcommenter comment that
pg_stat_activity shows), and a Server-Timing header with queue, db and cache durations."""

import json
import re
import threading
import time
import uuid
from contextlib import closing

import pytest

from lib.builders import create_user
from lib.locks import statement_waits_on_lock
from lib.pgapi_fixtures import module_server
from lib.topology import wait_until

TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TIMING = re.compile(r"^\s*([a-z]+);dur=([0-9]+(?:\.[0-9]+)?)\s*$")


def span_of(r):
    tp = r.headers.get("traceparent", "")
    m = TP.match(tp)
    assert m, f"expected a version 00 traceparent on the response, got {tp!r} in {r.headers}"
    trace, span, flags = m.groups()
    assert trace != "0" * 32 and span != "0" * 16, f"an all-zero id in {tp!r}"
    return trace, span, flags


def server_timing(r):
    """Server-Timing as {name: milliseconds}; every member must parse."""
    raw = r.headers.get("server-timing")
    assert raw, f"expected a Server-Timing header, got {r.headers}"
    out = {}
    for member in raw.split(","):
        m = TIMING.match(member)
        assert m, f"Server-Timing member {member!r} of {raw!r} does not parse as name;dur=ms"
        out[m.group(1)] = float(m.group(2))
    assert set(out) == {"queue", "db", "cache"}, f"expected queue, db and cache in {raw!r}"
    return out


@pytest.fixture(scope="module")
def traced(schema, tmp_path_factory):
    """A server with the cache on (Server-Timing's cache) and JSON logs (the access log's trace_id)."""
    yield from module_server(tmp_path_factory, "traced", schema,
                             {"log": {"format": "json"}, "database": {"health_interval": "200ms"}})


def test_a_request_without_traceparent_gets_a_new_trace(traced):
    a, b = traced.get("/healthz"), traced.get("/healthz")
    ta, sa, fa = span_of(a)
    tb, sb, _ = span_of(b)
    assert ta != tb and sa != sb, f"expected a new trace and span per request, got {ta}/{sa} twice"
    assert fa == "01", f"expected a new trace sampled (flags 01), got {fa}"
    assert "tracestate" not in a.headers, a.headers


def test_a_valid_traceparent_is_continued_with_a_new_span(traced):
    sent = f"00-{TRACE}-{PARENT}-01"
    r = traced.get("/healthz", headers={"traceparent": sent, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"})
    trace, span, flags = span_of(r)
    assert (trace, flags) == (TRACE, "01"), f"expected the trace {TRACE} and flags 01 continued, got {r.headers}"
    assert span != PARENT, "expected a span of the server's own, not the client's parent id"
    assert r.headers.get("tracestate") == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", r.headers
    unsampled = traced.get("/healthz", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert span_of(unsampled)[2] == "00", f"expected the client's flags 00 kept, got {unsampled.headers}"


BAD = {
    "version 01": f"01-{TRACE}-{PARENT}-01",
    "version ff": f"ff-{TRACE}-{PARENT}-01",
    "uppercase hex": f"00-{TRACE.upper()}-{PARENT}-01",
    "bad hex": f"00-{TRACE[:-1]}g-{PARENT}-01",
    "all-zero trace id": f"00-{'0' * 32}-{PARENT}-01",
    "all-zero parent id": f"00-{TRACE}-{'0' * 16}-01",
    "too long": f"00-{TRACE}-{PARENT}-01-extra",
    "too short": f"00-{TRACE}-{PARENT}-1",
    "wrong separators": f"00_{TRACE}_{PARENT}_01",
    "injection": f"00-{TRACE}-{PARENT}-01*/ DROP TABLE users; /*",
}


@pytest.mark.parametrize("why", sorted(BAD))
def test_an_invalid_traceparent_is_replaced_never_echoed(traced, why):
    bad = BAD[why]
    r = traced.get("/healthz", headers={"traceparent": bad, "tracestate": "vendor=ignored"})
    trace, _, _ = span_of(r)
    assert bad not in json.dumps(r.headers), f"{why}: the invalid traceparent came back: {r.headers}"
    assert trace != TRACE and trace != TRACE.lower(), f"{why}: expected a new trace id, got the client's: {r.headers}"
    assert "tracestate" not in r.headers, f"{why}: a tracestate of a refused trace was passed on: {r.headers}"


def test_two_traceparent_lines_are_refused(traced):
    raw = (f"GET /healthz HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\n"
           f"traceparent: 00-{TRACE}-{PARENT}-01\r\nConnection: close\r\n\r\n").encode()
    answer = traced.raw(raw).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 200"), answer
    m = re.search(r"\r\ntraceparent: (\S+)\r\n", answer)
    assert m and TP.match(m.group(1)) and TRACE not in m.group(1), \
        f"expected a new trace for two traceparent lines (W3C: invalid), got:\n{answer}"


def test_an_oversized_tracestate_is_dropped(traced):
    r = traced.get("/healthz", headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=" + "b" * 600})
    assert span_of(r)[0] == TRACE and "tracestate" not in r.headers, r.headers


def test_the_trace_id_is_in_the_json_access_log(traced):
    rid = f"trace-log-{uuid.uuid4().hex[:8]}"
    r = traced.get("/users?limit=1", headers={"X-Request-Id": rid, "traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert r.status == 200, r
    gen = traced.get("/users?limit=1", headers={"X-Request-Id": rid + "-gen"})
    gen_trace = span_of(gen)[0]

    def access(want_rid):
        for line in traced.log_text().splitlines():
            if want_rid in line and '"msg":"access"' in line:
                rec = json.loads(line)
                if rec.get("request_id") == want_rid:
                    return rec
        return None

    rec = wait_until(lambda: access(rid), 5, f"the access line of {rid}")
    assert rec.get("trace_id") == TRACE, f"expected trace_id {TRACE} in the access record, got {rec}"
    rec = wait_until(lambda: access(rid + "-gen"), 5, f"the access line of {rid}-gen")
    assert rec.get("trace_id") == gen_trace, f"expected the generated trace id {gen_trace}, got {rec}"


def primary_as_postgres(schema):
    return schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port, dbname="pgapi",
                      user="postgres")


def waiting_update_queries(schema):
    with closing(schema.primary_admin()) as conn, conn.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE datname = 'pgapi' AND wait_event_type = 'Lock'")
        return [q for (q,) in cur.fetchall() if "UPDATE users" in q]


def test_the_trace_is_in_the_sql_pg_stat_activity_shows(traced, schema):
    """A PATCH waits on a row lock a test connection holds; pg_stat_activity shows its statement, which
    starts with the comment naming the server's span of the client's trace."""
    uid = create_user(traced)["id"]
    answers = []
    with closing(primary_as_postgres(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
        try:
            patch = threading.Thread(target=lambda: answers.append(traced.request(
                "PATCH", f"/users/{uid}", body={"name": "traced"}, timeout=30,
                headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})))
            patch.start()
            wait_until(lambda: statement_waits_on_lock(schema), 15, "the PATCH waiting on its row lock")
            queries = waiting_update_queries(schema)
            time.sleep(0.3)  # the lock held a while longer: the PATCH's db time must show it
        finally:
            locker.rollback()
    patch.join(30)
    assert len(answers) == 1 and answers[0].status == 200, f"expected the PATCH answered 200, got {answers}"
    sent = answers[0].headers["traceparent"]
    assert TRACE in sent, answers[0].headers
    want = f"/*traceparent='{sent}'*/ UPDATE users"
    assert any(q.startswith(want) for q in queries), \
        f"expected a waiting statement starting with {want!r} in pg_stat_activity, got {queries}"
    timing = server_timing(answers[0])
    assert timing["db"] >= 300, f"expected the PATCH's db time to hold its wait on the lock, got {timing}"


def test_server_timing_measures_db_and_cache(traced):
    uid = create_user(traced)["id"]
    first = traced.get(f"/users/{uid}")
    assert first.status == 200, first
    t = server_timing(first)
    if first.headers.get("x-cache") == "MISS":
        assert t["db"] > 0, f"expected a read from the database to show its db time, got {t}"
    assert t["cache"] > 0, f"expected the Redis lookup timed, got {t} ({first.headers.get('x-cache')})"
    hit = wait_until(lambda: (lambda r: r if r.headers.get("x-cache") == "HIT" else None)(traced.get(f"/users/{uid}")),
                     5, "a cache hit")
    t = server_timing(hit)
    assert t["db"] == 0 and t["queue"] == 0, f"expected no database time on a hit, got {t}"
    health = server_timing(traced.get("/healthz"))
    assert health == {"queue": 0, "db": 0, "cache": 0}, f"expected zeros where nothing ran, got {health}"
