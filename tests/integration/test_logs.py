"""Issue 9, logs: one access line per request carrying its request id (the client's X-Request-Id, else a
generated one, returned either way), an error logged once with the request's id, JSON lines that parse
and carry request_id as a field on error lines too, and no password anywhere: not in the log, not in
--check-config, not in the metrics."""

import http.client
import json
import os
import signal
import subprocess
import threading
import time

from lib.metrics import scrape
from lib.pgapi_server import BAD_LOG_MARKERS, BINARY

SECRET = "s3cr3t-Pa55w0rd"


def dead_db_server(server, fmt):
    """Workers whose database is unreachable (port 1) and whose conninfo holds a password."""
    dsn = f"host=127.0.0.1 port=1 dbname=none user=none password={SECRET} connect_timeout=1"
    return server(workers=1, overrides={"database": {"primary": dsn, "replica": dsn, "queue_timeout": "300ms"},
                                        "log": {"format": fmt}}).start()


def lines_with(s, text):
    return [l for l in s.log_text().splitlines() if text in l]


def test_request_id_is_returned_and_in_one_access_line_and_one_error_line(server):
    s = dead_db_server(server, "text")
    r = s.request("POST", "/users", body={"name": "x", "email": "x@logs.test"}, headers={"X-Request-Id": "ops-4711"})
    assert r.status == 503 and r.headers["x-request-id"] == "ops-4711", (r, r.headers)
    gen = s.get("/users/1")
    rid = gen.headers["x-request-id"]
    assert gen.status == 503 and rid and rid != "ops-4711", gen.headers
    s.stop()
    for want in ("ops-4711", rid):
        access = lines_with(s, f"rid={want}")
        errors = [l for l in lines_with(s, f"request {want}:")]
        assert len(access) == 1, f"expected one access line for {want}, got {access}"
        assert len(errors) == 1, f"expected the failure logged once for {want}, got {errors}"
    assert SECRET not in s.log_text(), "a password reached the log"


def test_json_lines_parse_and_error_lines_carry_request_id(server):
    s = dead_db_server(server, "json")
    r = s.get("/users/7", headers={"X-Request-Id": "json-rid-1"})
    assert r.status == 503, r
    fams = scrape(s)
    assert SECRET not in json.dumps(fams), "a password reached the metrics"
    s.stop()
    records = []
    for line in s.log_text().splitlines():
        if line.startswith("==") or not line.strip():
            continue  # sanitizer banners are checked by the fixture
        records.append(json.loads(line))
    mine = [rec for rec in records if rec.get("request_id") == "json-rid-1"]
    kinds = sorted(rec["msg"] == "access" for rec in mine)
    assert kinds == [False, True], f"expected one access and one error record with request_id json-rid-1: {mine}"
    assert all({"ts", "level", "pid", "role"} <= rec.keys() for rec in records), records[:3]
    assert SECRET not in s.log_text()


def test_check_config_masks_the_password(tmp_path):
    ini = tmp_path / "p.ini"
    ini.write_text(f"[database]\nprimary = host=127.0.0.1 port=5 dbname=x user=y password={SECRET}\n")
    p = subprocess.run([BINARY, "--check-config", "--config", str(ini)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert SECRET not in p.stdout + p.stderr and "password=****" in p.stdout, p.stdout


FORGING = b"/a\x0cb\tc\xc2\x85d\xe2\x80\xa8e\xe2\x80\xa9f"  # form feed, tab, NEL, U+2028, U+2029: http-parser passes them
FORGING_ESCAPED = "/a\\u000cb\\u0009c\\u0085d\\u2028e\\u2029f"


def access_lines_of(s, marker):
    """The log's lines split on LF only (what a line-oriented reader that trusts LF sees) that hold marker;
    each must also be one line for a reader that splits on every Unicode line break."""
    with open(s.log_path, "rb") as f:
        lines = [l.decode("utf-8", errors="strict") for l in f.read().split(b"\n") if marker.encode() in l]
    for line in lines:
        assert len(line.splitlines()) == 1, f"a line-breaking character in a log line: {line!r}"
    return lines


def test_text_access_log_escapes_line_breaks_and_names_the_client(server):
    s = server(workers=1).start()
    data = s.raw(b"GET " + FORGING + b" HTTP/1.1\r\nHost: x\r\nX-Request-Id: forge-1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 404 "), data[:200]
    s.get("/healthz", headers={"X-Request-Id": "plain-1"})
    s.wait_for(lambda: "rid=plain-1" in s.log_text(), 5, "the access line of /healthz")
    forged = access_lines_of(s, "rid=forge-1")
    assert len(forged) == 1 and f"GET {FORGING_ESCAPED} 404 " in forged[0], forged
    for rid in ("forge-1", "plain-1"):
        line = access_lines_of(s, f"rid={rid}")[0]
        assert line.endswith(" client=127.0.0.1"), f"expected the client address on the access line: {line!r}"


def test_json_access_log_escapes_line_breaks_the_same_way(server):
    s = server(workers=1, overrides={"log": {"format": "json"}}).start()
    s.raw(b"GET " + FORGING + b" HTTP/1.1\r\nHost: x\r\nX-Request-Id: forge-2\r\nConnection: close\r\n\r\n")
    s.wait_for(lambda: "forge-2" in s.log_text(), 5, "the access line")
    lines = access_lines_of(s, '"request_id":"forge-2"')
    access = [l for l in lines if '"msg":"access"' in l]
    assert len(access) == 1 and f'"path":"{FORGING_ESCAPED}"' in access[0], access
    rec = json.loads(access[0])
    assert rec["path"] == FORGING.decode() and rec["client"] == "127.0.0.1", rec


def rotation_load(s, clients, answered, failed, stop):
    """Keep-alive clients sending GET /healthz with their own X-Request-Id until stop is set; the ids
    answered 200 go to `answered`, anything else to `failed`."""
    def client(n):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        i = 0
        try:
            while not stop.is_set():
                rid = f"rot-{n}-{i}"
                i += 1
                conn.request("GET", "/healthz", headers={"X-Request-Id": rid})
                r = conn.getresponse()
                r.read()
                (answered if r.status == 200 else failed).append((rid, r.status))
        except (OSError, http.client.HTTPException) as exc:
            failed.append((f"client {n}", repr(exc)))
        finally:
            conn.close()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    return threads


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def file_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_log_file_rotated_twice_under_load_loses_no_line(server, tmp_path):
    """[log] file: every line goes to the file (stderr stays empty), created 0640; a logrotate-style
    rotation (rename, then SIGUSR1 to the master) under load moves the master's and the workers' lines to
    a new file, and every request has exactly one access line across the files."""
    path = str(tmp_path / "pgapi.log")
    s = server(workers=2, overrides={"log": {"file": path}}).start()
    assert os.stat(path).st_mode & 0o777 == 0o640, oct(os.stat(path).st_mode)
    answered, failed, stop = [], [], threading.Event()
    threads = rotation_load(s, 4, answered, failed, stop)
    try:
        for k in (1, 2):
            mark = len(answered)
            wait_until(lambda: len(answered) >= mark + 300, 20, f"300 requests before rotation {k}")
            os.rename(path, f"{path}.{k}")
            s.signal(signal.SIGUSR1)
            wait_until(lambda: "reopened" in file_text(path), 10, f"the master's line in the new file ({k})")
            mark = len(answered)
            # the workers reopen after the master: their lines of requests sent from now reach the new file
            wait_until(lambda: len(answered) >= mark + 300 and file_text(path).count(" rid=rot-") >= 100, 20,
                       f"access lines in the new file after rotation {k}")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    s.stop()
    assert not failed, f"requests failed during the rotations: {failed[:10]}"
    texts = [file_text(f"{path}.1"), file_text(f"{path}.2"), file_text(path)]
    counts = {}
    for text in texts:
        for line in text.splitlines():
            if " rid=rot-" in line:
                rid = line.split(" rid=", 1)[1].split(" ", 1)[0]
                counts[rid] = counts.get(rid, 0) + 1
    missing = [rid for rid, _ in answered if counts.get(rid) != 1]
    assert not missing, f"{len(missing)} of {len(answered)} requests without exactly one access line: {missing[:10]}"
    assert len(counts) == len(answered), f"{len(counts)} access lines for {len(answered)} requests"
    bad = [l for t in texts for l in t.splitlines() if any(m in l for m in BAD_LOG_MARKERS)]
    assert not bad, f"sanitizer or alert lines in the log files: {bad[:10]}"
    assert " rid=rot-" not in s.log_text(), "access lines reached stderr with [log] file set"
    print(f"log rotation: {len(answered)} requests, lines per file {[t.count(' rid=rot-') for t in texts]}")
