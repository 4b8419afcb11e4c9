#!/usr/bin/python3
"""How long one write's invalidation blocks Redis when a list's live set is full (issue 14), with the
real Lua scripts of a worker/cache/cache.c: N distinct pages of one list are filled the way a worker fills
them (lookup script for a lease, then fill script), then the invalidation script drops the list; its
run time is read from Redis's SLOWLOG (microseconds, Redis-side only).

    bench/invalidate_pages.py [--rev REV] [--port P] [--pages N ...] [--list-pages B]

--rev takes cache.c from a git revision (e.g. the one before the bound) instead of the work tree.
Starts its own redis-server on --port (default 27690) in a temp dir and stops it by PID."""

import argparse
import os
import re
import subprocess
import tempfile
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scripts(rev):
    src = (subprocess.run(["git", "-C", ROOT, "show", f"{rev}:worker/cache/cache.c"], capture_output=True, text=True,
                          check=True).stdout if rev else open(os.path.join(ROOT, "worker", "cache", "cache.c")).read())
    out = {}
    for name in ("LUA_LOOKUP", "LUA_FILL", "LUA_INVALIDATE"):
        body = re.search(rf"static const char {name}\[\] =(.*?);\n", src, re.S).group(1)
        out[name] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)).encode().decode("unicode_escape")
    return out


def run(r, lua, pages, list_pages):
    prefix, gen, value = f"b{time.time_ns()}", "posts", "x" * 250
    for i in range(pages):
        base = f"plist:0:1:{i}"
        kind, token, _, epoch, key = r.eval(lua["LUA_LOOKUP"], 0, prefix, base, "3000", gen)
        assert kind == 2, kind
        args = [prefix, key, epoch, token, value, "3600", "0000000000000001", gen, base, str(list_pages)]
        assert r.eval(lua["LUA_FILL"], 0, *args) == 1
    live = r.scard(f"{prefix}:e0:pages:{gen}")
    r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()
    r.eval(lua["LUA_INVALIDATE"], 0, prefix, "0000000000000002", "60000", "0", "1", gen)
    us = [e["duration"] for e in r.slowlog_get(10) if bytes(e["command"]).lower().startswith(b"eval")]
    r.config_set("slowlog-log-slower-than", 10000)
    return live, max(us)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev")
    ap.add_argument("--port", type=int, default=27690)
    ap.add_argument("--pages", type=int, nargs="+", default=[2000])
    ap.add_argument("--list-pages", type=int, default=256)
    a = ap.parse_args()
    lua = scripts(a.rev)
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.Popen(["redis-server", "--port", str(a.port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            r = redis.Redis(port=a.port)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            for n in a.pages:
                live, us = run(r, lua, n, a.list_pages)
                print(f"{a.rev or 'work tree'}: {n} pages filled, {live} tracked: invalidation {us / 1000:.2f} ms")
        finally:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
