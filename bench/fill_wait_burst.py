#!/usr/bin/python3
"""Latency of a burst of concurrent misses on one key (issue 20, item 3): each round PATCHes one user
(its cached value goes), then BURST clients, each on its own keep-alive connection, GET it at once
(a barrier). Every binary given runs as its own server on one throw-away topology (its own Redis prefix)
and the rounds alternate between them, so a slow spell of a shared machine hits both alike. Prints
p50/p99/max per binary and worker count, the statements per round, and (when the binary has it)
pgapi_cache_fill_waits_total.

    bench/fill_wait_burst.py --binary before=/path/pgapi --binary after=build/pgapi \\
        [--workers 1 2] [--burst 64] [--rounds 40] [--port-base 27650]

Starts its own topology (tests/integration/lib) on --port-base and stops it, and every server, by PID."""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from lib.metrics import parse_exposition, total  # noqa: E402
from lib.pgapi_server import PgapiServer  # noqa: E402
from lib.topology import start_topology, stop_topology  # noqa: E402


def migrate(topo, binary):
    env = dict(os.environ)
    env.update(topo.env)
    env["PGAPI_DATABASE_PRIMARY"] = f"host=127.0.0.1 port={topo.bouncer_port} dbname=pgapi_rw user=app"
    subprocess.run([binary, "migrate", "up"], env=env, cwd=ROOT, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=120)


def metrics(s):
    c = http.client.HTTPConnection("127.0.0.1", s.metrics_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        fams = parse_exposition(c.getresponse().read().decode())
    finally:
        c.close()
    out = {"queries": total(fams, "pgapi_pool_queries_total")}
    if "pgapi_cache_fill_waits_total" in fams:
        for r in ("woken", "retried", "polled"):
            out[r] = total(fams, "pgapi_cache_fill_waits_total", result=r)
    return out


def burst(port, path, n):
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(n)]
    for c in conns:
        c.connect()
    barrier, lat, errors = threading.Barrier(n), [0.0] * n, []

    def one(i):
        barrier.wait(10)
        t0 = time.perf_counter()
        conns[i].request("GET", path)
        r = conns[i].getresponse()
        r.read()
        lat[i] = time.perf_counter() - t0
        if r.status != 200:
            errors.append(r.status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert not errors, errors
    return lat


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True, help="label=path")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--port-base", type=int, default=27650)
    a = ap.parse_args()
    binaries = [b.split("=", 1) for b in a.binary]
    topo = start_topology(a.port_base)
    servers = []
    try:
        migrate(topo, binaries[-1][1])
        for workers in a.workers:
            run = []
            for label, binary in binaries:
                d = tempfile.mkdtemp(prefix="fwb-")
                s = PgapiServer(d, topology=topo, workers=workers, binary=binary,
                                overrides={"redis": {"enabled": "on", "prefix": f"b{uuid.uuid4().hex[:8]}",
                                                     "local_entries": "0"}})
                servers.append(s)
                s.start()
                s.wait_for(lambda s=s: s.get("/readyz").status == 200, 20, "ready")
                uid = s.request("POST", "/users", body={"name": "b", "email": f"{uuid.uuid4().hex[:10]}@b.example"}
                                ).json()["id"]
                run.append({"label": label, "s": s, "path": f"/users/{uid}", "lat": [], "m0": metrics(s)})
            for rnd in range(a.rounds):
                for r in (run if rnd % 2 == 0 else run[::-1]):
                    assert r["s"].request("PATCH", r["path"], body={"name": f"r{rnd}"}).status == 200
                    r["lat"] += burst(r["s"].port, r["path"], a.burst)
            for r in run:
                m1 = metrics(r["s"])
                d = {k: m1[k] - r["m0"].get(k, 0) for k in m1}
                ms = [x * 1000 for x in r["lat"]]
                print(json.dumps({"binary": r["label"], "workers": workers, "burst": a.burst, "rounds": a.rounds,
                                  "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
                                  "max_ms": round(max(ms), 2),
                                  "statements_per_round": round(d.pop("queries") / a.rounds, 2),
                                  "fill_waits": d}), flush=True)
                r["s"].stop(signal.SIGTERM)
    finally:
        for s in servers:
            if s.alive():
                s.stop(signal.SIGTERM)
        stop_topology(topo)


if __name__ == "__main__":
    main()
