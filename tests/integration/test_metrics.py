"""Issue 9: GET /metrics on its own listener, in the Prometheus text format. Every worker's series carries
a worker="<slot>" label; the master's (restarts, reloads, generation) have none. Tests read the exposition
with a strict parser (HELP/TYPE before samples, label syntax, cumulative buckets) and compare the numbers
with what they did, as deltas between two scrapes."""

import http.client
import os
import re
import signal
import socket
import time
from contextlib import closing

import pytest

from lib.bouncer import replay_pause, replay_resume
from lib.builders import create_user
from lib.metrics import scrape, total, value
from lib.pgapi_server import free_port
from lib.topology import wait_until

PUBLISH_S = 1.3  # workers publish pool and cache counters every second; request counters are immediate


def histograms_consistent(fams):
    """Buckets are cumulative, end with +Inf, and +Inf equals _count, per series."""
    series = {}
    for name, labels, v in fams["pgapi_http_request_duration_seconds"]["samples"]:
        key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        series.setdefault(key, {"buckets": [], "count": None})
        if name.endswith("_bucket"):
            series[key]["buckets"].append((labels["le"], v))
        elif name.endswith("_count"):
            series[key]["count"] = v
    for key, s in series.items():
        counts = [v for _, v in s["buckets"]]
        assert counts == sorted(counts), f"buckets not cumulative for {key}: {s['buckets']}"
        assert s["buckets"][-1][0] == "+Inf" and counts[-1] == s["count"], f"+Inf != count for {key}: {s}"


@pytest.fixture
def cached(server, schema):
    s = server(workers=2, topology=schema, overrides={"database": {"health_interval": "200ms"}}).start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 20, "/readyz 200")
    return s


def test_metrics_listener_is_separate_and_serves_only_metrics(cached):
    s = cached
    assert s.get("/metrics").status == 404, "the API port must not expose /metrics"
    conn = http.client.HTTPConnection("127.0.0.1", s.metrics_port, timeout=10)
    try:
        conn.request("GET", "/users")
        r = conn.getresponse()
        r.read()
        assert r.status == 404, f"the metrics port serves /metrics only, got {r.status} for /users"
        conn.request("POST", "/metrics", body=b"{}", headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 405 and "GET" in r.getheader("Allow"), (r.status, r.getheader("Allow"))
    finally:
        conn.close()
    fams = scrape(s)
    for name, typ in [("pgapi_http_requests_total", "counter"), ("pgapi_http_request_duration_seconds", "histogram"),
                      ("pgapi_pool_connections", "gauge"), ("pgapi_pool_waiting", "gauge"),
                      ("pgapi_pool_errors_total", "counter"), ("pgapi_replica_lag_seconds", "gauge"),
                      ("pgapi_cache_lookups_total", "counter"), ("pgapi_cache_errors_total", "counter"),
                      ("pgapi_worker_restarts_total", "counter"), ("pgapi_reloads_total", "counter")]:
        assert name in fams and fams[name]["type"] == typ, f"{name}: expected a {typ}, got {fams.get(name)}"
    workers = {l["worker"] for _, l, _ in fams["pgapi_pool_connections"]["samples"]}
    assert workers == {"0", "1"}, f"expected series of workers 0 and 1, got {workers}"
    info = {l["backend"]: l for _, l, _ in fams["pgapi_backend_info"]["samples"]}
    assert info["primary"]["dbname"] == "pgapi_rw" and info["replica0"]["dbname"] == "pgapi_ro", info
    assert all("password" not in str(l) for l in info.values())


def test_requests_latency_and_pool_counts_match_what_was_done(cached):
    s = cached
    u = create_user(s, "m-count")
    time.sleep(PUBLISH_S)
    before = scrape(s)
    for _ in range(20):
        assert s.get(f"/users/{u['id']}").status == 200
    for _ in range(5):
        assert s.get("/users/999999999999").status == 404
    for _ in range(3):
        assert s.get("/no/such/route").status == 404
    dup = s.request("POST", "/users", body={"name": "dup", "email": u["email"]})
    assert dup.status == 409, dup
    time.sleep(PUBLISH_S)
    after = scrape(s)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    got = {
        "200": delta("pgapi_http_requests_total", route="/users/:id", method="GET", status=200),
        "404": delta("pgapi_http_requests_total", route="/users/:id", method="GET", status=404),
        "unmatched": delta("pgapi_http_requests_total", route="unmatched", status=404),
        "409": delta("pgapi_http_requests_total", route="/users", method="POST", status=409),
    }
    assert got == {"200": 20, "404": 5, "unmatched": 3, "409": 1}, f"request counts: {got}"
    assert delta("pgapi_http_request_duration_seconds_count", route="/users/:id") == 25
    assert delta("pgapi_http_request_duration_seconds_sum", route="/users/:id") > 0
    histograms_consistent(after)
    # the conflict is a statement the primary refused; reads of missing rows are answered, not errors
    assert delta("pgapi_pool_errors_total", backend="primary") == 1, \
        f"primary errors: {delta('pgapi_pool_errors_total', backend='primary')}"
    assert delta("pgapi_pool_queries_total", backend="primary") >= 1
    lookups = delta("pgapi_cache_lookups_total")
    assert lookups >= 20, f"expected the 20 single-row reads to be cache lookups (local or Redis), got {lookups}"
    assert delta("pgapi_cache_lookups_total", layer="local", result="hit") + \
        delta("pgapi_cache_lookups_total", layer="redis", result="hit") >= 15, "repeated reads of one row hit"
    for fam in ("pgapi_http_requests_total", "pgapi_pool_queries_total", "pgapi_cache_lookups_total"):
        for name, labels, v in after[fam]["samples"]:
            old = [x for n, l, x in before[fam]["samples"] if n == name and l == labels]
            assert not old or v >= old[0], f"counter went backwards: {name}{labels} {old[0]} -> {v}"


def test_pool_gauges_show_connections_per_backend(cached):
    s = cached

    def connected(f):
        return {(w, b): sum(v for _, l, v in f["pgapi_pool_connections"]["samples"]
                            if l["worker"] == w and l["backend"] == b and l["state"] in ("idle", "in_use"))
                for w in ("0", "1") for b in ("primary", "replica0")}
    def up(f):
        return {(w, b): value(f, "pgapi_backend_up", worker=w, backend=b)
                for w in ("0", "1") for b in ("primary", "replica0")}
    want = {(w, b): 2 for w in ("0", "1") for b in ("primary", "replica0")}
    # A backend is up once a health check on one of its connections has passed: a connection counts as
    # connected (in_use, running that check) a moment before. So both are waited for, not one then the other.
    fams = wait_until(lambda: (lambda f: f if connected(f) == want and set(up(f).values()) == {1}
                               else None)(scrape(s)), 10,
                      "pool_size (2) connections per worker and backend, each backend up")
    for w in ("0", "1"):
        assert value(fams, "pgapi_pool_waiting", worker=w, side="primary") == 0


def test_replica_lag_is_reported_and_takes_the_replica_out(server, schema):
    s = server(workers=1, topology=schema,
               overrides={"database": {"health_interval": "200ms", "max_replica_lag": "1s"}}).start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 20, "/readyz 200")
    replay_pause(schema)
    try:
        create_user(s, "m-lag")  # the replica is now behind the primary
        fams = wait_until(lambda: (lambda f: f if value(f, "pgapi_replica_lag_seconds", backend="replica0") > 1.0 else None)(scrape(s)),
                          15, "the replica's lag to pass 1 s")
        assert value(fams, "pgapi_backend_up", backend="replica0") == 0, "a replica past max_replica_lag is out"
    finally:
        replay_resume(schema)
    fams = wait_until(lambda: (lambda f: f if value(f, "pgapi_backend_up", backend="replica0") == 1 else None)(scrape(s)),
                      15, "the replica back in rotation")
    assert value(fams, "pgapi_replica_lag_seconds", backend="replica0") == 0


def test_worker_restart_and_reloads_are_counted_and_counters_survive(cached):
    s = cached
    for _ in range(10):
        assert s.get("/").status == 200
    before = scrape(s)
    root_before = total(before, "pgapi_http_requests_total", route="/")
    victim = s.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    s.wait_for(lambda: s.workers_replaced([victim], 2), 15, "the worker respawned")
    after = wait_until(lambda: (lambda f: f if value(f, "pgapi_worker_restarts_total") == 1 else None)(scrape(s)),
                       10, "pgapi_worker_restarts_total 1")
    assert total(after, "pgapi_http_requests_total", route="/") >= root_before, "a restart must not reset counters"
    gen = value(after, "pgapi_generation")
    s.signal(signal.SIGHUP)
    fams = wait_until(lambda: (lambda f: f if value(f, "pgapi_generation") == gen + 1 else None)(scrape(s)),
                      20, "generation + 1 after SIGHUP")
    assert value(fams, "pgapi_reloads_total", result="ok") == 1
    assert value(fams, "pgapi_worker_restarts_total") == 1, "a reload is not a restart"
    assert total(fams, "pgapi_http_requests_total", route="/") >= root_before
    s.write_ini(text="[server]\nworkers = many\n")
    s.signal(signal.SIGHUP)
    wait_until(lambda: value(scrape(s), "pgapi_reloads_total", result="refused") == 1, 10, "a refused reload counted")


def test_metrics_address_follows_a_reload_and_can_be_off(cached):
    s = cached
    old = s.metrics_port
    s.metrics_port = free_port()
    s.settings["metrics"]["listen"] = f"127.0.0.1:{s.metrics_port}"
    s.write_ini()
    s.signal(signal.SIGHUP)
    wait_until(lambda: _serves(s.metrics_port), 20, "metrics on the new address")

    def old_closed():
        with closing(socket.socket()) as sock:
            return sock.connect_ex(("127.0.0.1", old)) != 0
    wait_until(old_closed, 20, "the old metrics address closed once the old workers left")
    s.settings["metrics"]["listen"] = "off"
    s.write_ini()
    s.signal(signal.SIGHUP)
    port = s.metrics_port
    wait_until(lambda: not _serves(port), 20, "metrics off after a reload")
    assert s.get("/").status == 200


def _serves(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/metrics")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def test_alert_rules_name_only_metrics_the_server_exposes(cached):
    import yaml
    from lib.pgapi_server import REPO_ROOT
    with open(os.path.join(REPO_ROOT, "conf", "prometheus-rules.yml")) as f:
        rules = yaml.safe_load(f)
    fams = scrape(cached)
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 8
    for expr in exprs:
        for name in re.findall(r"\b(pgapi_[a-z_]+)", expr):
            base = re.sub(r"_bucket$", "", name)
            assert base in fams, f"rule {expr.strip()!r} names {name}, which /metrics does not expose"
        for label in re.findall(r'\b([a-z_]+)=~?"', expr):
            assert any(label in l for fam in fams.values() for _, l, _ in fam["samples"]), \
                f"rule {expr.strip()!r} filters on label {label}, which no series has"
