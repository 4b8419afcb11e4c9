"""Issue 19, alert rules and dashboard checked by the real tools: promtool checks conf/prometheus-rules.yml
and runs its unit tests (tests/prometheus/rules_test.yml: a firing and a quiet case for every alert), and
a real Prometheus scrapes a running pgapi under load while every PromQL expression of
conf/grafana-dashboard.json is run against it: none may error or come back empty."""

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from lib.pgapi_fixtures import module_server
from lib.pgapi_server import REPO_ROOT, free_port

RULES = os.path.join(REPO_ROOT, "conf", "prometheus-rules.yml")
RULE_TESTS = os.path.join(REPO_ROOT, "tests", "prometheus", "rules_test.yml")
DASHBOARD = os.path.join(REPO_ROOT, "conf", "grafana-dashboard.json")
# Grafana's variables, as a dashboard user would have them: every instance, a rate window of a few scrapes
VARIABLES = {"$__rate_interval": "15s", "$instance": ".*"}


def run(*argv):
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    return p.returncode, p.stdout + p.stderr


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    rc, out = run("promtool", "check", "rules", RULES)
    assert rc == 0, out
    rc, out = run("promtool", "test", "rules", RULE_TESTS)
    assert rc == 0, out
    with open(RULES) as f:
        alerts = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r}
    with open(RULE_TESTS) as f:
        cases = yaml.safe_load(f)["tests"]
    firing = {a["alertname"] for c in cases for a in c["alert_rule_test"] if a.get("exp_alerts")}
    quiet = {a["alertname"] for c in cases for a in c["alert_rule_test"] if not a.get("exp_alerts")}
    assert alerts and alerts == firing, f"alerts without a firing test: {alerts - firing}"
    assert alerts == quiet, f"alerts without a quiet test: {alerts - quiet}"


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check above can fail: an expression that does not parse is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(x[5m])\n")
    rc, out = run("promtool", "check", "rules", str(bad))
    assert rc != 0, out


def dashboard_queries():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"an unknown variable in panel {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


class Prometheus:
    """A real Prometheus (Debian's package) scraping one pgapi's metrics every 500 ms."""

    def __init__(self, tmp, target):
        self.dir = tmp
        self.port = free_port()
        self.config = os.path.join(tmp, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump({"global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
                            "scrape_configs": [{"job_name": "pgapi", "static_configs": [{"targets": [target]}]}]},
                           f)
        self.proc = None

    def start(self):
        log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        try:
            self.wait_for(lambda: self.query("up") is not None, 30, "Prometheus answering")
        except BaseException:
            self.stop()  # the caller's finally is not reached: no Prometheus may outlive the test
            raise
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self):
        with open(os.path.join(self.dir, "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def query(self, expr):
        """The API's answer for an instant query (status, data), or None while it does not answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            try:
                return json.load(e)  # a refused query: its error, in the API's JSON
            except ValueError:
                return None  # "Service Unavailable" in plain text while its storage starts
        except OSError:
            return None

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Prometheus exited ({self.proc.returncode}): {self.log()}")
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; Prometheus log: {self.log()}")


@pytest.fixture(scope="module")
def scraped(schema, tmp_path_factory):
    """A pgapi (cache on, its own prefix) under a mixed load, scraped by Prometheus."""
    # command_timeout 1 s: on a loaded machine a slower Redis answer would make writes 503 and reads
    # bypass the cache, which this test is not about
    yield from module_server(tmp_path_factory, "scraped", schema,
                             {"redis": {"enabled": "on", "prefix": f"prom{uuid.uuid4().hex[:8]}",
                                        "command_timeout": "1s"},
                              "database": {"health_interval": "200ms"}})


def mixed_load(s, seconds):
    """Creates, reads (twice: a miss, then a hit), patches and lists users from 4 clients. The load only
    feeds the metrics: a create refused on a loaded machine is counted, not a failure of this test."""
    stop = time.monotonic() + seconds
    created, errors = [], []

    def client(n):
        i = 0
        while time.monotonic() < stop:
            i += 1
            r = s.request("POST", "/users", body={"name": f"p{n}-{i}", "email": f"p{n}-{i}-{uuid.uuid4().hex[:6]}@prom.test"})
            if r.status != 201:
                errors.append(r)
                continue
            created.append(r)
            uid = r.json()["id"]
            for _ in range(2):
                s.get(f"/users/{uid}")
            s.request("PATCH", f"/users/{uid}", body={"name": f"q{n}-{i}"})
            s.get(f"/users/{uid}")
            s.get("/users?limit=5")
            s.get(f"/users/{10**12 + i}")
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(created) >= 20, f"expected the load to create users, got {len(created)} ({errors[:5]})"


def test_every_dashboard_expression_returns_data_from_a_real_scrape(scraped, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (scripts/deps.sh installs it)")
    prom = Prometheus(str(tmp_path), f"127.0.0.1:{scraped.metrics_port}").start()
    try:
        prom.wait_for(lambda: (prom.query('up{job="pgapi"} == 1') or {}).get("data", {}).get("result"), 30,
                      "a first successful scrape of pgapi")
        mixed_load(scraped, 4.0)
        time.sleep(1.5)  # three more scrapes: the last samples hold the load's final counts
        empty, failed = [], []

        def all_answer():
            """Every expression run; true when none failed or came back empty (a loaded machine's
            Prometheus may be a scrape or two behind: the caller asks again for a while)."""
            empty.clear()
            failed.clear()
            for title, expr in dashboard_queries():
                ans = prom.query(expr)
                if not ans or ans.get("status") != "success":
                    failed.append((title, expr, ans))
                elif not ans["data"]["result"]:
                    empty.append((title, expr))
            return not failed and not empty
        deadline = time.monotonic() + 10
        while not all_answer() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not failed, "dashboard expressions Prometheus refused:\n" + "\n".join(map(str, failed))
        assert not empty, "dashboard expressions with no data after load:\n" + "\n".join(map(str, empty))
        # and the load shows: requests were counted, reads went somewhere and some hit the cache
        rate = prom.query('sum(rate(pgapi_http_requests_total{route!=""}[60s]))')["data"]["result"]
        assert float(rate[0]["value"][1]) > 0, rate
        hits = prom.query('sum(increase(pgapi_cache_lookups_total{result="hit"}[60s]))')["data"]["result"]
        assert float(hits[0]["value"][1]) > 0, hits
        print(f"dashboard: {len(dashboard_queries())} expressions answered with data")
    finally:
        prom.stop()
