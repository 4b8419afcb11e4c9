"""Issue 18, CORS: `[server] cors_origins` (exact origins, or `*`), the response lines a browser needs
(Access-Control-Allow-Origin, Vary: Origin, Access-Control-Expose-Headers), OPTIONS preflights on every
API path, nothing at all for an origin not listed, a bounded Origin; and a real headless Chromium whose
page, served from another origin, calls the API with fetch (a GET, and a PATCH with a JSON body, which
needs a preflight): the allowed origin reads the answers, another one is blocked. Chromium's console log
and each page's DOM are the evidence (printed on failure, and in the session's figures)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from lib.builders import create_user
from lib.pgapi_fixtures import module_server
from lib.pgapi_server import BINARY, free_port

EXPOSED = {"etag", "pgapi-lsn", "x-cache", "location", "retry-after", "server-timing", "traceparent",
           "idempotent-replayed", "ratelimit", "ratelimit-policy"}
PREFLIGHT_HEADERS = {"content-type", "if-match", "idempotency-key", "authorization", "traceparent", "tracestate",
                     "pgapi-lsn"}


@pytest.fixture(scope="module")
def origins():
    """Two page origins on loopback: the first is allowed, the second is not."""
    return {"allowed": f"http://127.0.0.1:{free_port()}", "other": f"http://127.0.0.1:{free_port()}"}


@pytest.fixture(scope="module")
def cors(schema, tmp_path_factory, origins):
    yield from module_server(tmp_path_factory, "cors", schema,
                             {"server": {"cors_origins": f"https://app.example.com, {origins['allowed']}"},
                              "redis": {"enabled": "off"}, "database": {"health_interval": "200ms"}})


def names(value):
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def test_an_allowed_origin_gets_the_cors_lines(cors, origins):
    o = origins["allowed"]
    r = cors.get("/users?limit=1", headers={"Origin": o})
    assert r.status == 200, r
    assert r.headers.get("access-control-allow-origin") == o, f"expected ACAO {o}, got {r.headers}"
    assert "origin" in names(r.headers.get("vary", "")), f"expected Vary: Origin, got {r.headers}"
    assert EXPOSED <= names(r.headers.get("access-control-expose-headers", "")), r.headers
    assert "access-control-allow-credentials" not in r.headers, "pgapi allows no credentials"
    err = cors.get("/nowhere", headers={"Origin": o})  # errors too: the page must read the error's JSON
    assert err.status == 404 and err.headers.get("access-control-allow-origin") == o, err.headers


@pytest.mark.parametrize("origin", [
    "http://evil.example", "https://app.example.com.evil.example", "https://APP.example.com",
    "https://app.example.com/", "null", "", "https://app.example.com" + "x" * 300,
])
def test_another_origin_gets_no_cors_lines(cors, origin):
    r = cors.get("/users?limit=1", headers={"Origin": origin})
    assert r.status == 200, r
    cors_lines = {k: v for k, v in r.headers.items() if k.startswith("access-control-")}
    assert not cors_lines, f"expected no CORS line for Origin {origin[:60]!r}, got {cors_lines}"
    assert "origin" in names(r.headers.get("vary", "")), "the answer depends on Origin: Vary must say so"


def test_two_origin_lines_get_no_cors_lines(cors, origins):
    o = origins["allowed"]
    raw = f"GET /healthz HTTP/1.1\r\nHost: t\r\nOrigin: {o}\r\nOrigin: {o}\r\nConnection: close\r\n\r\n"
    answer = cors.raw(raw.encode()).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 200") and "access-control-" not in answer.lower(), answer


def test_preflight_of_an_allowed_origin(cors, origins):
    uid = create_user(cors)["id"]
    r = cors.request("OPTIONS", f"/users/{uid}", headers={
        "Origin": origins["allowed"], "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "content-type, traceparent"})
    assert r.status == 204 and r.body == b"", r
    assert r.headers.get("access-control-allow-origin") == origins["allowed"], r.headers
    methods = names(r.headers.get("access-control-allow-methods", ""))
    assert {"get", "head", "put", "patch", "delete"} <= methods, f"expected the path's methods, got {r.headers}"
    assert PREFLIGHT_HEADERS <= names(r.headers.get("access-control-allow-headers", "")), r.headers
    assert int(r.headers.get("access-control-max-age", "0")) > 0, r.headers
    assert "options" in names(r.headers.get("allow", "")), r.headers
    coll = cors.request("OPTIONS", "/users", headers={"Origin": origins["allowed"]})
    assert coll.status == 204 and {"get", "post"} <= names(coll.headers["access-control-allow-methods"]), coll.headers


def test_preflight_of_another_origin_and_of_no_path(cors, origins):
    r = cors.request("OPTIONS", "/users", headers={"Origin": origins["other"],
                                                   "Access-Control-Request-Method": "POST"})
    assert r.status == 204, r
    assert not [k for k in r.headers if k.startswith("access-control-")], f"expected no CORS line: {r.headers}"
    missing = cors.request("OPTIONS", "/nowhere", headers={"Origin": origins["allowed"]})
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found", missing


def test_without_cors_origins_nothing_is_added(api):
    r = api.get("/users?limit=1", headers={"Origin": "http://127.0.0.1:1"})
    assert r.status == 200 and not [k for k in r.headers if k.startswith("access-control-")], r.headers
    assert "vary" not in r.headers, r.headers
    opt = api.request("OPTIONS", "/users", headers={"Origin": "http://127.0.0.1:1"})
    assert opt.status == 204 and "allow" in opt.headers, opt
    assert not [k for k in opt.headers if k.startswith("access-control-")], opt.headers


def test_star_allows_every_origin_without_vary(server):
    s = server(workers=1, overrides={"server": {"cors_origins": "*"}}).start()
    r = s.get("/healthz", headers={"Origin": "http://anything.example:8080"})
    assert r.headers.get("access-control-allow-origin") == "*", r.headers
    assert "vary" not in r.headers and "access-control-allow-credentials" not in r.headers, r.headers


@pytest.mark.parametrize("value", ["http://a.example/path", "null", "*, http://a.example", "ftp://a.example",
                                   "a.example", "http://", "https://a.example:80 x", "http://" + "a" * 260])
def test_check_config_refuses_what_is_not_an_origin(tmp_path, value):
    ini = tmp_path / "p.ini"
    ini.write_text("[server]\n")
    # from the environment: an ini line stops at 198 characters, which the long value passes
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGAPI_")}
    env["PGAPI_SERVER_CORS_ORIGINS"] = value
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True, timeout=30,
                       env=env)
    assert p.returncode != 0 and "cors_origins" in p.stderr, \
        f"expected cors_origins = {value[:40]!r} refused, got {p.returncode}: {p.stdout}{p.stderr}"


# ---- a real browser ----------------------------------------------------------------------------------

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const q = new URLSearchParams(location.search), api = q.get("api"), id = q.get("id");
const out = {origin: location.origin};
function show() { document.getElementById("out").textContent = JSON.stringify(out); }
async function run() {
  try {
    const r = await fetch(api + "/users/" + id);
    out.get = {status: r.status, name: (await r.json()).name, etag: r.headers.get("ETag"),
               timing: r.headers.get("Server-Timing"), traceparent: r.headers.get("traceparent")};
  } catch (e) { out.get = {error: String(e)}; }
  try {
    const r = await fetch(api + "/users/" + id, {method: "PATCH", headers: {"Content-Type": "application/json"},
                                                 body: JSON.stringify({name: q.get("name")})});
    out.patch = {status: r.status, name: (await r.json()).name};
  } catch (e) { out.patch = {error: String(e)}; }
  console.log("pgapi-cors-result " + JSON.stringify(out));
  show();
}
run();
</script></body></html>
"""


def chromium_binary():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(profile):
    # --no-sandbox: the tests run as root, where Chromium refuses its sandbox; a fresh profile per run so
    # that no preflight cache carries over
    return [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000"]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not chromium_binary():
        pytest.skip("chromium is not installed (scripts/deps.sh installs Debian's chromium)")
    profile = tmp_path_factory.mktemp("chromium-probe")
    p = subprocess.run(chromium_args(profile) + ["--dump-dom", "about:blank"], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0 or "<html" not in p.stdout:
        pytest.skip(f"chromium cannot run headless as root with --no-sandbox here (exit {p.returncode}): "
                    f"{p.stderr[-500:]}")
    return chromium_binary()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, origins):
    """Both page origins served by python's http.server (one process each), stopped by PID afterwards."""
    root = tmp_path_factory.mktemp("pages")
    (root / "page.html").write_text(PAGE)
    procs = []
    for origin in origins.values():
        port = int(origin.rsplit(":", 1)[1])
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                      cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        deadline = time.monotonic() + 10
        for origin in origins.values():
            while True:
                try:
                    urllib.request.urlopen(origin + "/page.html", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the page server of {origin} did not come up")
                    time.sleep(0.05)
        yield origins
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)


def browse(tmp_path, origin, api_base, uid, name):
    """Chromium loads the page of origin; returns (the page's result, Chromium's console lines)."""
    url = f"{origin}/page.html?" + urllib.parse.urlencode({"api": api_base, "id": uid, "name": name})
    profile = tmp_path / f"profile-{origin.rsplit(':', 1)[1]}"
    p = subprocess.run(chromium_args(profile) + ["--dump-dom", url], capture_output=True, text=True, timeout=60)
    console = [l for l in p.stderr.splitlines() if "CONSOLE" in l or "CORS" in l or "pgapi-cors-result" in l]
    start, end = p.stdout.find('<pre id="out">'), p.stdout.find("</pre>")
    assert p.returncode == 0 and start >= 0, f"chromium failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-2000:]}"
    text = p.stdout[start + len('<pre id="out">'):end]
    text = text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert text != "pending", f"the page never finished:\n{p.stdout}\n" + "\n".join(console)
    return json.loads(text), console


def test_chromium_page_of_the_allowed_origin_reads_and_patches_another_is_blocked(
        cors, chromium, pages, tmp_path, record_property):
    api_base = f"http://127.0.0.1:{cors.port}"
    user = create_user(cors)
    t0 = time.monotonic()
    ok, ok_console = browse(tmp_path, pages["allowed"], api_base, user["id"], "from-allowed")
    blocked, blocked_console = browse(tmp_path, pages["other"], api_base, user["id"], "from-other")
    seconds = time.monotonic() - t0
    evidence = (f"allowed page: {json.dumps(ok)}\n  console: {ok_console}\n"
                f"other page: {json.dumps(blocked)}\n  console: {blocked_console}")
    record_property("figures", f"CORS-CHROMIUM {seconds:.1f}s " + evidence.replace("\n", " | "))
    print(evidence)

    assert ok.get("get", {}).get("status") == 200 and ok["get"]["name"] == user["name"], evidence
    assert ok["get"].get("etag") and ok["get"].get("traceparent") and "db;dur=" in (ok["get"].get("timing") or ""), \
        f"expected the exposed headers readable by the page: {evidence}"
    assert ok.get("patch") == {"status": 200, "name": "from-allowed"}, f"expected the preflighted PATCH: {evidence}"
    assert "error" in blocked.get("get", {}) and "error" in blocked.get("patch", {}), \
        f"expected both fetches of the other origin blocked: {evidence}"
    assert any("CORS" in l for l in blocked_console), f"expected Chromium's console to name CORS: {evidence}"
    # the blocked PATCH never ran: its preflight got no CORS lines, so the browser sent no PATCH
    now = cors.get(f"/users/{user['id']}").json()
    assert now["name"] == "from-allowed", f"expected only the allowed page's PATCH applied, got {now}"
    assert seconds < 20, f"the browser test took {seconds:.1f}s"



def test_check_config_takes_a_list_of_origins(tmp_path):
    ini = tmp_path / "p.ini"
    value = "https://app.example.com, http://127.0.0.1:8080,http://[::1]:3000"
    ini.write_text(f"[server]\ncors_origins = {value}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGAPI_")}
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True, timeout=30,
                       env=env)
    assert p.returncode == 0 and f"cors_origins = {value}" in p.stdout, p.stdout + p.stderr
