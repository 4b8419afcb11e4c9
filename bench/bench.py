#!/usr/bin/env python3
"""Drives wrk against pgapi, the Node.js peers (Express, Fastify) and nginx, and pgbench through
PgBouncer, all started by bench/run.sh, and writes bench/RESULTS.md. Each round runs every scenario once
against every target (interleaved, so drift hits all of them alike); the table quotes the median of the
rounds. With BENCH_GROWTH, the growth curves follow (data size, connections, workers, memory per idle
connection). Not a test: nothing asserts.

Input: a JSON file (argv[1]) written by run.sh:
  {"targets": {"pgapi": {"port": P, "pid": PID}, ...}, "reset": [argv...], "pgbench": {...} | null,
   "growth": {"mode": "0|1|only", "grow": [argv...], "metrics": {target: port}}, "facts": {...}}
"""
import atexit
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DUR = os.environ.get("BENCH_DURATION", "10s")
WARM = os.environ.get("BENCH_WARMUP", "2s")
CONN = int(os.environ.get("BENCH_CONNECTIONS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
FILL = "3s"  # bench/lua/user_all.lua reads every user once in well under this

# name, label, {target: (path, script)}; the first target is ours, the others compare. "pgbench" is no
# HTTP target: its path names the pgbench script (PGBENCH below), run through PgBouncer with CONN clients.
PEERS = ("peer", "peer_cluster", "fastify")
SCENARIOS = [
    ("hello", "GET / (hello)", {"pgapi": ("/", None), "peer": ("/", None), "peer_cluster": ("/", None),
                                "fastify": ("/", None), "nginx": ("/", None)}),
    ("user_cached", "GET /users/:id random, cached",
     {t: ("/", "user_random.lua") for t in ("pgapi",) + PEERS}),
    # the same reads with an HS256 bearer token (the same one every request: the worker's verified-token
    # cache), against a server with [auth] mode = required, interleaved with the open one in the same
    # scenario (issue 18: authentication costs at most 10%)
    ("user_cached_auth", "GET /users/:id random, cached, HS256 token",
     {"pgapi_auth": ("/", "user_random_auth.lua"), "pgapi": ("/", "user_random.lua")}),
    ("user_nocache", "GET /users/:id random, cache off",
     {"pgapi_nocache": ("/", "user_random.lua"), "peer_nocache": ("/", "user_random.lua"),
      "peer_cluster_nocache": ("/", "user_random.lua"), "fastify_nocache": ("/", "user_random.lua"),
      "pgbench": ("select", None)}),
    ("list_cached", "GET /users?limit=50, cached",
     {"pgapi": ("/users?limit=50", None), "peer": ("/users", None), "peer_cluster": ("/users", None),
      "fastify": ("/users?limit=50", None)}),
    ("list_nocache", "GET /users?limit=50, cache off",
     {"pgapi_nocache": ("/users?limit=50", None), "fastify_nocache": ("/users?limit=50", None)}),
    ("post", "POST /users (primary)",
     dict({t: ("/", "create_user.lua") for t in ("pgapi",) + PEERS}, pgbench=("insert", None))),
    # the mix's write alone: its rate is the write side of the mix's harmonic limit (targets)
    ("update", "PATCH /users/:id random (primary)",
     dict({t: ("/", "update_user.lua") for t in ("pgapi",) + PEERS}, pgbench=("update", None))),
    ("mix", "90% GET /users/:id, 10% update", {t: ("/", "mix.lua") for t in ("pgapi",) + PEERS}),
]
# pgbench's scripts: what pgapi's uncached GET /users/:id and POST /users ask of the database, one
# statement per transaction (PgBouncer's transaction pooling), with -M extended: unnamed statements
# with parameters, as libpq's PQsendQueryParams sends them. The INSERT's email is unique by its xid.
PGBENCH = {
    "select": ("pgapi_ro", "\\set id random(1, 10000)\n"
               "SELECT id, name, email, version, created_at, updated_at FROM users WHERE id = :id;\n"),
    "insert": ("pgapi_rw", "INSERT INTO users (name, email) VALUES ('bench', 'pgb' || pg_current_xact_id() || "
               "'@example.com') RETURNING id, name, email, version, created_at, updated_at;\n"),
    "update": ("pgapi_rw", "\\set id random(1, 10000)\n"
               "UPDATE users SET name = 'pgb ' || :id WHERE id = :id "
               "RETURNING id, name, email, version, created_at, updated_at;\n"),
}
# BENCH_BASELINE (run.sh): an older commit runs every scenario of ours beside this tree
BASELINE = {"pgapi": "pgapi_baseline", "pgapi_nocache": "pgapi_baseline_nocache"}
for _, _, _targets in SCENARIOS:
    for _ours, _theirs in BASELINE.items():
        if _ours in _targets:
            _targets[_theirs] = _targets[_ours]
# the Express peer's PUT is partial, our PATCH and Fastify's PATCH are the same
WRITE_METHOD = {"pgapi": "PATCH", "pgapi_baseline": "PATCH", "fastify": "PATCH"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


SCRIPTS = set()  # the scripts written for wrk, removed at exit


@atexit.register
def remove_scripts():
    for path in SCRIPTS:
        try:
            os.unlink(path)
        except OSError:
            pass


def wrk_script(script):
    """wrk takes one script: the report hook plus the scenario's request function."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pgapi-bench-{os.getpid()}-{script or 'plain'}.lua")
    SCRIPTS.add(path)
    with open(path, "w") as out:
        for part in ("report.lua", script):
            if part:
                with open(os.path.join(HERE, "lua", part)) as f:
                    out.write(f.read() + "\n")
    return path


TOKEN = {}  # "token": the HS256 bearer token of pgapi_auth, made once from run.sh's secret file


def hs256_token(secret):
    """A JWT with every scope, valid for a day, signed with secret (bytes)."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(
        {"sub": "bench", "exp": int(time.time()) + 86400, "scope": "read write admin"}).encode())
    return signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def wrk_run(port, path, script, target, duration, conns=None, users=None, timeout=None):
    method = WRITE_METHOD.get(target, "PATCH" if target.startswith(("so_", "growth")) else "PUT")
    env = dict(os.environ, BENCH_WRITE_METHOD=method, BENCH_TOKEN=TOKEN.get("token", ""))
    env["BENCH_ZIPF"] = os.environ.get("BENCH_GROWTH_ZIPF", "1.1")
    if users:
        env["BENCH_USERS"] = str(users)
    cmd = ["wrk", "-t2", f"-c{conns or CONN}", f"-d{duration}", "--latency", "-s", wrk_script(script)]
    cmd += [f"--timeout={timeout}"] if timeout else []
    cmd += [f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            rps, p50, p90, p99, errors, total = line.split()[1:7]
            kinds = dict(zip(("connect", "read", "write", "timeout", "status"), map(int, line.split()[7:12])))
            return {"rps": float(rps), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                    "errors": int(errors), "requests": int(total), "error_kinds": {k: v for k, v in kinds.items() if v}}
    raise RuntimeError(f"wrk printed no result for {target} {path}: {out[-500:]}")


def pgbench_run(cfg, kind, duration):
    """pgbench with CONN clients through PgBouncer (the database pgapi's side of it uses), the password
    from the topology's passfile: {"rps": tps, "p50": mean latency, "errors": failed transactions}.
    pgbench gives a mean, not percentiles: the mean goes in the p50 column and the p99s stay empty."""
    pb = cfg["pgbench"]
    db, script = PGBENCH[kind]
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pgapi-bench-{os.getpid()}-pgbench-{kind}.sql")
    SCRIPTS.add(path)
    with open(path, "w") as out:
        out.write(script)
    secs = max(1, int(float(duration.rstrip("s"))))
    cmd = [pb["bin"], "-n", "-M", "extended", "-c", str(CONN), "-j", "2", "-T", str(secs), "-f", path,
           "-h", "127.0.0.1", "-p", str(pb["port"]), "-U", "app", db]
    env = dict(os.environ, PGPASSFILE=pb["passfile"])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    tps = re.search(r"^tps = ([\d.]+)", p.stdout, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", p.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", p.stdout, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", p.stdout, re.M)
    if not tps:
        raise RuntimeError(f"pgbench {kind} printed no tps (exit {p.returncode}): {(p.stdout + p.stderr)[-500:]}")
    return {"rps": float(tps.group(1)), "p50": float(lat.group(1)) if lat else None, "p90": None, "p99": None,
            "errors": int(failed.group(1)) if failed else (0 if p.returncode == 0 else 1),
            "requests": int(done.group(1)) if done else 0}


def tree_rss(pid):
    """RSS in MB of pid and of each of its children: {pid: MB}."""
    out = {}
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[p] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


# Scale-out (run.sh, BENCH_SCALEOUT): N servers behind HAProxy ("cluster") against one server with the
# same total workers, reached directly ("single") and through its own HAProxy ("single_lb"). Where they
# exist: the cluster with the deployment-wide fences off (a test-only setting: what the fences cost)
# and BENCH_BASELINE's commit as a cluster. Every role keeps Redis on (a deployment needs it); the
# uncached reads are pages larger than the roles' max_value_bytes, so each one misses the cache.
SO_ROLES = ("single", "single_lb", "single_ratelimit", "cluster", "cluster_nofences", "cluster_baseline")
SO_SCENARIOS = [
    ("so_cached", "GET /users/:id random, cached (local cache on)", "user_random.lua"),
    ("so_uncached", "GET /users?limit=10&after_id=random, never cached", "list_random.lua"),
    ("so_post", "POST /users (primary)", "create_user.lua"),
    ("so_mix", "90% GET /users/:id, 10% update", "mix.lua"),
]
SO_MARK = ("<!-- scale-out: written by bench/bench.py; BENCH_SCALEOUT=only replaces just this section -->",
           "<!-- /scale-out -->")


def so_roles(cfg):
    have = cfg.get("scaleout", {}).get("roles", {})
    return [r for r in SO_ROLES if r in have]


class Redis:
    """Just enough RESP to AUTH as Redis's default user and read INFO (no client library needed)."""

    def __init__(self, port, password):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.call("AUTH", "default", password)

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        line = self.line()
        if line.startswith(b"-"):
            raise RuntimeError(f"redis {args[0]}: {line.decode()}")
        if line.startswith(b"$"):
            n = int(line[1:])
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        return line.decode()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def commandstats(self):
        """{command: (calls, usec)} from INFO commandstats."""
        stats = {}
        for m in re.finditer(r"^cmdstat_(\S+?):calls=(\d+),usec=(\d+)", self.call("INFO", "commandstats"), re.M):
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        return stats


def redis_for(cfg):
    so = cfg["scaleout"]
    with open(so["secrets"]) as f:
        password = next(line.split("=", 1)[1].strip() for line in f if line.startswith("REDIS_ADMIN_PASSWORD="))
    return Redis(so["redis_port"], password)


SAMPLE = re.compile(r'^(pgapi_pool_queries_total|pgapi_cache_lookups_total)\{([^}]*)\} (\S+)$', re.M)


def server_counters(ports):
    """Statements by side and cache lookups by layer/result, summed over the servers' /metrics."""
    out = {}
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        for name, labels, v in SAMPLE.findall(body.decode()):
            lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = ("side", lab.get("side")) if name == "pgapi_pool_queries_total" else \
                  ("cache", lab.get("layer") + "_" + lab.get("result"))
            out[key] = out.get(key, 0) + float(v)
    return out


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def so_run(cfg, redis, name, label, script, role, n):
    """One measured run of a scale-out role, with the Redis commands and the servers' counters it
    caused (INFO commandstats and /metrics read just before and just after the measured wrk)."""
    info = cfg["scaleout"]["roles"][role]
    if name == "so_cached":  # every row read once first: each role's Redis prefix starts empty each round
        wrk_run(info["port"], "/", "user_all.lua", "so_" + role, FILL)
    wrk_run(info["port"], "/", script, "so_" + role, WARM)
    redis_before, counters_before = redis.commandstats(), server_counters(info["metrics"])
    r = wrk_run(info["port"], "/", script, "so_" + role, DUR)
    redis_after, counters_after = redis.commandstats(), server_counters(info["metrics"])
    calls = {k: v[0] - redis_before.get(k, (0, 0))[0] for k, v in redis_after.items()}
    usec = sum(v[1] - redis_before.get(k, (0, 0))[1] for k, v in redis_after.items())
    req = max(r["requests"], 1)
    r["redis_cmds"] = {k: c / req for k, c in calls.items() if c}
    r["redis_per_req"] = sum(calls.values()) / req
    r["redis_us_per_req"] = usec / req
    counters = delta(counters_after, counters_before)
    statements = counters.get(("side", "primary"), 0) + counters.get(("side", "replica"), 0)
    r["replica_share"] = counters.get(("side", "replica"), 0) / statements if statements else None
    # per request, not per lookup: a request may count a lookup in more than one layer (a local copy
    # found, then checked in Redis), so the layers' lookups need not add up to the requests
    r["local_hit_share"] = counters.get(("cache", "local_hit"), 0) / req if name in ("so_cached", "so_mix") else None
    log(f"round {n} {label:46} {role:18} {r['rps']:>10.0f} req/s  p99 {r['p99']:7.2f} ms  "
        f"errors {r['errors']}  redis {r['redis_per_req']:.2f} cmd/req")
    return r


def run_scaleout(cfg, n, results):
    if not cfg.get("scaleout", {}).get("roles"):
        return
    redis = redis_for(cfg)
    for name, label, script in SO_SCENARIOS:
        roles = so_roles(cfg)
        if n % 2 == 0:
            roles.reverse()
        for role in roles:
            results[(name, role)] = so_run(cfg, redis, name, label, script, role, n)
    redis.sock.close()


ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))  # scenario names; empty: every one


def run_round(cfg, n):
    subprocess.run(cfg["reset"], check=True)
    results = {}
    for name, label, targets in SCENARIOS:
        if ONLY and name not in ONLY:
            continue
        order = list(targets.items())
        if n % 2 == 0:  # every other round the other way round, so going first or last favours no one
            order.reverse()
        for target, (path, script) in order:
            if target == "pgbench":
                if not cfg.get("pgbench"):
                    continue
                pgbench_run(cfg, path, WARM)
                r = pgbench_run(cfg, path, DUR)
                results[(name, target)] = r
                log(f"round {n} {label:36} {'pgbench ' + path:22} {r['rps']:>10.0f} tps    mean {fmt(r['p50'], 2)} ms  "
                    f"errors {r['errors']}")
                continue
            if target not in cfg["targets"]:
                continue
            port = cfg["targets"][target]["port"]
            wrk_run(port, path, script, target, WARM)
            r = wrk_run(port, path, script, target, DUR)
            results[(name, target)] = r
            log(f"round {n} {label:36} {target:22} {r['rps']:>10.0f} req/s  p99 {r['p99']:7.2f} ms  "
                f"errors {r['errors']}")
    run_scaleout(cfg, n, results)
    rss = {t: tree_rss(v["pid"]) for t, v in cfg["targets"].items()}
    return results, rss


def median(rounds, key, field):
    vals = [r[key][field] for r in rounds if key in r]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.1f}x"


def rss_line(label, snapshots, pid):
    cols = []
    for i, snap in enumerate(snapshots, 1):
        procs = snap.get(label, {})
        parent = procs.get(pid)
        kids = [v for p, v in sorted(procs.items()) if p != pid]
        cols.append(f"round {i}: " + (f"{parent:.1f}" if parent else "?") +
                    (" + [" + ", ".join(f"{k:.1f}" for k in kids) + "]" if kids else ""))
    return f"- {label}: " + "; ".join(cols)


def ours(name):
    return "pgapi_nocache" if name.endswith("nocache") else "pgapi_auth" if name.endswith("_auth") else "pgapi"


def peer_of(name, base):
    return base + "_nocache" if name.endswith("nocache") else base


def table(rounds):
    rows = ["| scenario | pgapi req/s | p50 | p90 | p99 | errors | peer req/s | peer p99 | peer errors | ratio "
            "| peer x2 req/s | ratio | Fastify xN req/s | Fastify p99 | Fastify errors | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label, _ in SCENARIOS:
        us, peer, cl, fy = ours(name), peer_of(name, "peer"), peer_of(name, "peer_cluster"), peer_of(name, "fastify")
        m = {k: median(rounds, (name, us), k) for k in ("rps", "p50", "p90", "p99", "errors")}
        prps, pp99, perr = (median(rounds, (name, peer), k) for k in ("rps", "p99", "errors"))
        crps = median(rounds, (name, cl), "rps")
        frps, fp99, ferr = (median(rounds, (name, fy), k) for k in ("rps", "p99", "errors"))
        note = " ³" if name == "list_cached" else ""
        fnote = " ⁴" if name == "list_cached" else ""
        rows.append(f"| {label} | {fmt(m['rps'])} | {fmt(m['p50'], 2)} | {fmt(m['p90'], 2)} | {fmt(m['p99'], 2)} | "
                    f"{fmt(m['errors'])} | {fmt(prps)} | {fmt(pp99, 2)} | {fmt(perr)} | {ratio(m['rps'], prps)}{note} | "
                    f"{fmt(crps)} | {ratio(m['rps'], crps)}{note} | {fmt(frps)} | {fmt(fp99, 2)} | {fmt(ferr)} | "
                    f"{ratio(m['rps'], frps)}{fnote} |")
        if name == "hello":
            n = {k: median(rounds, ("hello", "nginx"), k) for k in ("rps", "p50", "p90", "p99", "errors")}
            rows.append(f"| GET / (nginx, same workers) | {fmt(n['rps'])} | {fmt(n['p50'], 2)} | {fmt(n['p90'], 2)} | "
                        f"{fmt(n['p99'], 2)} | {fmt(n['errors'])} | | | | pgapi/nginx "
                        f"{ratio(m['rps'], n['rps'])} | | | | | | |")
        if median(rounds, (name, "pgbench"), "rps"):
            what = PGBENCH_LABEL.get(name, name)
            g = {k: median(rounds, (name, "pgbench"), k) for k in ("rps", "p50", "errors")}
            rows.append(f"| {what} (tps) | {fmt(g['rps'])} | {fmt(g['p50'], 2)} ⁵ | | | {fmt(g['errors'])} | | | | "
                        f"pgapi/pgbench {m['rps'] / g['rps'] if m['rps'] else 0:.2f}x | | | | | | |")
    return rows


PGBENCH_LABEL = {"user_nocache": f"pgbench `SELECT` by id via PgBouncer, {CONN} clients",
                 "post": f"pgbench `INSERT` via PgBouncer, {CONN} clients",
                 "update": f"pgbench `UPDATE` by id via PgBouncer, {CONN} clients"}


def before_after(rounds, cfg):
    """This tree against BENCH_BASELINE's commit, per scenario: medians, and the spread of the rounds
    (min..max) of each, so a difference can be told from run-to-run noise."""
    if "pgapi_baseline" not in cfg["targets"]:
        return []
    rows = ["", f"## Before and after: this tree against {cfg.get('baseline', 'the baseline')}", "",
            "| scenario | before req/s (min..max) | after req/s (min..max) | change | before p99 | after p99 |",
            "|---|---|---|---|---|---|"]
    for name, label, _ in SCENARIOS:
        now, then = ours(name), BASELINE[ours(name)]
        a, b = ([r[(name, t)]["rps"] for r in rounds if (name, t) in r] for t in (now, then))
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(f"| {label} | {fmt(mb)} ({fmt(min(b))}..{fmt(max(b))}) | {fmt(ma)} ({fmt(min(a))}..{fmt(max(a))}) "
                    f"| {(ma - mb) / mb * 100:+.1f}% | {fmt(median(rounds, (name, then), 'p99'), 2)} "
                    f"| {fmt(median(rounds, (name, now), 'p99'), 2)} |")
    return rows


def targets(rounds, snapshots, cfg):
    def rps(name, t):
        return median(rounds, (name, t), "rps") or 0

    def check(ok, text):
        return f"- {'met' if ok else 'MISSED'}: {text}"

    out = []
    for name, want in (("user_cached", 10), ("user_nocache", 5), ("post", 3)):
        if rps(name, peer_of(name, "peer")) == 0:
            out.append(f"- {name}: no peer in this run (BENCH_PEERS=0)")
            continue
        r = rps(name, ours(name)) / rps(name, peer_of(name, "peer"))
        out.append(check(r >= want, f"{name}: {r:.1f}x the peer (target {want}x)"))
    if rps("user_cached_auth", "pgapi_auth") and rps("user_cached_auth", "pgapi"):
        r = rps("user_cached_auth", "pgapi_auth") / rps("user_cached_auth", "pgapi")
        out.append(check(r >= 0.9, f"cached GET /users/:id with an HS256 token: {r:.2f}x the same reads without "
                         "(target >= 0.90x: authentication costs at most 10%)"))
    # issue 20: the Fastify peer (cluster mode, pgapi's worker count) is the stronger one
    for name, want in (("user_cached", 3.5), ("mix", 3)):
        if rps(name, "fastify") == 0:
            out.append(f"- {name}: no Fastify peer in this run")
            continue
        r = rps(name, "pgapi") / rps(name, "fastify")
        out.append(check(r >= want, f"{name}: {r:.2f}x the Fastify peer (target {want}x)"))
    p99 = median(rounds, ("user_cached", "pgapi"), "p99") or 0
    out.append(check(p99 < 5, f"cached GET /users/:id p99 {p99:.2f} ms at {CONN} connections (target < 5 ms)"))
    # the mix against its own limit: pgapi's pure cached-read and pure write (POST) rates of the same run,
    # as if the two only shared the machine: 1 / (0.9 / reads + 0.1 / writes)
    reads, writes, mix = rps("user_cached", "pgapi"), rps("post", "pgapi"), rps("mix", "pgapi")
    if reads and writes and mix:
        limit = 1 / (0.9 / reads + 0.1 / writes)
        out.append(check(mix / limit >= 0.8, f"90/10 mix {mix:,.0f} req/s: {mix / limit:.2f}x its harmonic limit "
                         f"1 / (0.9 / {reads:,.0f} + 0.1 / {writes:,.0f}) = {limit:,.0f} req/s (target >= 0.8x)"))
    # the same with the mix's own write (PATCH, scenario update) as the write side: the limit takes
    # POST's rate, and a POST is cheaper than a PATCH (creates share one multi-row INSERT)
    updates = rps("update", "pgapi")
    if reads and updates and mix:
        limit = 1 / (0.9 / reads + 0.1 / updates)
        out.append(f"- (the same, PATCH as the write) 90/10 mix: {mix / limit:.2f}x 1 / (0.9 / {reads:,.0f} + 0.1 / "
                   f"{updates:,.0f}) = {limit:,.0f} req/s")
    if rps("update", "pgbench") and updates:
        out.append(f"- (no target) PATCH /users/:id {updates:,.0f} req/s: {updates / rps('update', 'pgbench'):.2f}x "
                   f"pgbench's `UPDATE` by id through PgBouncer ({rps('update', 'pgbench'):,.0f} tps)")
    if rps("post", "pgbench") and writes:
        r = writes / rps("post", "pgbench")
        out.append(check(r >= 0.85, f"POST /users {writes:,.0f} req/s: {r:.2f}x pgbench's INSERT through PgBouncer "
                         f"({rps('post', 'pgbench'):,.0f} tps, {CONN} clients; target >= 0.85x)"))
    if rps("user_nocache", "pgbench") and rps("user_nocache", "pgapi_nocache"):
        r = rps("user_nocache", "pgapi_nocache") / rps("user_nocache", "pgbench")
        out.append(f"- (no target) uncached GET /users/:id: {r:.2f}x pgbench's `SELECT` by id through PgBouncer "
                   f"({rps('user_nocache', 'pgbench'):,.0f} tps)")
    if rps("hello", "nginx"):
        r = rps("hello", "pgapi") / rps("hello", "nginx")
        out.append(check(r >= 0.8, f"GET /: {r:.2f}x nginx (target 0.8x)"))
    pid = cfg["targets"]["pgapi"]["pid"]
    last = [v for p, v in snapshots[-1]["pgapi"].items() if p != pid]
    out.append(check(last and max(last) < 10, f"largest pgapi worker RSS after the run {max(last or [0]):.1f} MB "
                     "(target < 10 MB)"))
    if len(snapshots) >= 2:
        growth = max(snapshots[-1]["pgapi"].get(p, 0) - snapshots[-2]["pgapi"].get(p, 0)
                     for p in snapshots[-1]["pgapi"])
        out.append(check(growth < 0.5, f"pgapi RSS growth from round {len(snapshots) - 1} to {len(snapshots)}: "
                         f"{growth:+.2f} MB (target: none)"))
    errs = sum(r[k]["errors"] for r in rounds for k in r if k[1].startswith("pgapi"))
    out.append(check(errs == 0, f"pgapi errors over every scenario and round: {errs}"))
    return out


ROLE_TEXT = {
    "single": "one server of {total} workers, wrk straight to it",
    "single_ratelimit": "the same with `[ratelimit]` on, limits too high to refuse anything (one GCRA `EVALSHA` "
                        "per request of the users and posts routes)",
    "single_lb": "the same server through an HAProxy of its own (the cluster's HAProxy configuration, one server)",
    "cluster": "{servers} servers of {workers} worker(s) behind HAProxy (round-robin, `option httpchk GET /readyz`), "
               "on their defaults (but `max_value_bytes`, above): one Redis prefix, local caches on",
    "cluster_nofences": "the same cluster with `[redis] deployment_fences = off` (the test-only switch): "
                        "the difference is what the deployment-wide fences cost",
    "cluster_baseline": "BENCH_BASELINE's commit ({baseline}) as the same cluster",
}


def so_median(rounds, key, field):
    vals = [r[key][field] for r in rounds if key in r and r[key].get(field) is not None]
    return statistics.median(vals) if vals else None


def pct(v):
    return "—" if v is None else f"{v * 100:.0f}%"


def change(a, b):
    return "—" if not a or not b else f"{(a - b) / b * 100:+.1f}%"


def top_commands(rounds, key, k=4):
    """The commands of most calls per request (medians over the rounds), e.g. "evalsha 0.61, mget 0.40"."""
    cmds = {c for r in rounds if key in r for c in r[key].get("redis_cmds", {})}
    per = {c: statistics.median([r[key]["redis_cmds"].get(c, 0) for r in rounds if key in r]) for c in cmds}
    best = sorted((v, c) for c, v in per.items() if v >= 0.005)[::-1][:k]
    return ", ".join(f"{c} {v:.2f}" for v, c in best) or "—"


def scaleout_rows(rounds, cfg):
    rows = ["| scenario | role | req/s (min..max) | vs single_lb | p50 | p90 | p99 | errors | Redis cmd/req "
            "| Redis µs/req | commands per request | replica share | local hits |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label, _ in SO_SCENARIOS:
        base = so_median(rounds, (name, "single_lb"), "rps")
        for role in so_roles(cfg):
            key = (name, role)
            rps = [r[key]["rps"] for r in rounds if key in r]
            if not rps:
                continue
            m = {f: so_median(rounds, key, f) for f in ("rps", "p50", "p90", "p99", "errors", "redis_per_req",
                                                          "redis_us_per_req", "replica_share", "local_hit_share")}
            rows.append(f"| {label} | {role} | {fmt(m['rps'])} ({fmt(min(rps))}..{fmt(max(rps))}) | "
                        f"{change(m['rps'], base) if role != 'single_lb' else ''} | {fmt(m['p50'], 2)} | "
                        f"{fmt(m['p90'], 2)} | {fmt(m['p99'], 2)} | {fmt(m['errors'])} | {fmt(m['redis_per_req'], 2)} | "
                        f"{fmt(m['redis_us_per_req'], 1)} | {top_commands(rounds, key)} | {pct(m['replica_share'])} | "
                        f"{pct(m['local_hit_share'])} |")
    return rows


def paired(rounds, name, role, other):
    """Per round, role's req/s over other's (run minutes apart, so the machine's drift cancels out):
    (median, min, max) of the ratios, or None."""
    ratios = [r[(name, role)]["rps"] / r[(name, other)]["rps"] for r in rounds
              if (name, role) in r and (name, other) in r and r[(name, other)]["rps"]]
    return (statistics.median(ratios), min(ratios), max(ratios)) if ratios else None


def scaleout_costs(rounds):
    def m(name, role, field):
        return so_median(rounds, (name, role), field)

    out = []
    # the fences' own cost where the build can switch them off; else the cluster against one server
    for other, what in (("cluster_nofences", "the same cluster with the deployment-wide fences off"),
                        ("single_lb", "one server of as many workers behind the same HAProxy")):
        p = paired(rounds, "so_cached", "cluster", other)
        if p:
            out.append(f"- {'met' if p[0] >= 0.85 else 'MISSED'}: cached reads in the cluster against {what}: "
                       f"{(p[0] - 1) * 100:+.1f}% throughput (median of the rounds' ratios; "
                       f"{(p[1] - 1) * 100:+.1f}%..{(p[2] - 1) * 100:+.1f}%; target: at most 15% less)")
            break
    for other, what in (("single", "one server reached directly (HAProxy's hop included)"),
                        ("single_lb", "one server behind HAProxy"),
                        ("cluster_nofences", "the cluster without the deployment-wide fences"),
                        ("cluster_baseline", "the baseline's cluster")):
        parts = []
        for name, label, _ in SO_SCENARIOS:
            a, b = m(name, "cluster", "p50"), m(name, other, "p50")
            a99, b99 = m(name, "cluster", "p99"), m(name, other, "p99")
            p = paired(rounds, name, "cluster", other)
            if None in (a, b, a99, b99, p):
                continue
            parts.append(f"{label}: throughput {(p[0] - 1) * 100:+.1f}%, p50 {a - b:+.2f} ms, p99 {a99 - b99:+.2f} ms")
        if parts:
            out.append(f"- the cluster against {what}: " + "; ".join(parts))
    return out


def script_calls(rounds, key):
    """EVALSHA and EVAL calls per request (median of the rounds): each is one round trip, whatever the
    script runs inside (INFO commandstats also counts the commands a script calls: TIME, GET, SET)."""
    vals = [sum(r[key].get("redis_cmds", {}).get(c, 0) for c in ("evalsha", "eval")) for r in rounds if key in r]
    return statistics.median(vals) if vals else None


def ratelimit_costs(rounds):
    """What `[ratelimit]` adds: the issue's target is at most one Redis round trip per request."""
    out = []
    for name, label, _ in SO_SCENARIOS:
        a, b = script_calls(rounds, (name, "single_ratelimit")), script_calls(rounds, (name, "single"))
        ca, cb = so_median(rounds, (name, "single_ratelimit"), "redis_per_req"), so_median(rounds, (name, "single"),
                                                                                            "redis_per_req")
        p = paired(rounds, name, "single_ratelimit", "single")
        if None in (a, b, ca, cb, p):
            continue
        out.append(f"- {'met' if a - b <= 1.05 else 'MISSED'}: {label}: the rate limiter adds {a - b:+.2f} script "
                   f"calls (round trips) per request (target: at most one); {ca - cb:+.2f} commands counted with "
                   f"the script's own TIME, GET and SET; throughput {(p[0] - 1) * 100:+.1f}%")
    return out


def scaleout_section(rounds, cfg):
    so = cfg.get("scaleout", {})
    if not so.get("roles"):
        return []
    f = cfg["facts"]
    total = so["servers"] * so["workers"]
    lines = [SO_MARK[0], "## Scale-out: servers behind HAProxy against one server", "",
             f"{time.strftime('%Y-%m-%d')}, `BENCH_SCALEOUT={so['mode']} bench/run.sh` on {cfg.get('commit', '?')} "
             f"({ROUNDS} rounds, medians "
             f"quoted, min..max of the rounds beside). Machine: {f['nproc']} cores ({f['cpu']}), HAProxy {so['haproxy']}, "
             f"Redis {f['redis']}. wrk -t2 -c{CONN} -d{DUR} after a {WARM} warm-up; everything (wrk, HAProxy, every "
             "server, PostgreSQL, PgBouncer, Redis) shares the same cores. Each role has its own Redis prefix and "
             "`[redis] max_value_bytes = 1024`: the uncached scenario's pages (1.7 KB) are never cached, so each "
             "of those reads misses Redis and goes to the database; the rows of the other scenarios (under 300 "
             "bytes) are cached as on the defaults. Roles (`scripts/cluster.sh` starts each):", ""]
    for role in SO_ROLES:
        if role in so["roles"]:
            lines.append(f"- **{role}**: " + ROLE_TEXT[role].format(total=total, servers=so["servers"],
                                                                    workers=so["workers"],
                                                                    baseline=cfg.get("baseline") or "?"))
    lines += ["", "Redis cmd/req and µs/req: `INFO commandstats` (calls, usec) read just before and just after the "
              "measured run, the difference divided by the run's requests (every server on the machine counts: the "
              "idle ones' health checks add a few dozen commands a second, under 0.01 per request). Replica share: "
              "statements on replicas over all statements (`pgapi_pool_queries_total`), local hits: "
              "`pgapi_cache_lookups_total{layer=\"local\",result=\"hit\"}` per request, both over the role's "
              "servers during the measured run.", ""]
    lines += scaleout_rows(rounds, cfg)
    lines += ["", "### What the cluster costs", "",
              "Throughput changes are the median over the rounds of each round's ratio (the two runs minutes "
              "apart: other work on the machine shifts both alike); latencies are differences of medians.", ""]
    lines += scaleout_costs(rounds)
    rl = ratelimit_costs(rounds)
    if rl:
        lines += ["", "### What the rate limiter costs", "",
                  "`single_ratelimit` against `single` (the same server, `[ratelimit]` on): one `EVALSHA` before "
                  "the handler, not pipelined with the cache lookup (a local hit needs no Redis at all).", ""]
        lines += rl
    lines.append(SO_MARK[1])
    return lines


def replace_scaleout_section(path, section):
    replace_section(path, section, SO_MARK)


# Growth curves (run.sh, BENCH_GROWTH): how throughput, p99 and memory change with the data, the
# connections and the workers. Servers: growth_w1 and growth_w2 (1 and 2 workers, Redis on, each its own
# prefix) and growth_w2_nocache (2 workers, Redis off), all taking 20,000 connections.
GROWTH_SIZES = [int(x) for x in os.environ.get("BENCH_GROWTH_SIZES", "10000,100000,1000000").split(",") if x]
GROWTH_CONNS = [int(x) for x in os.environ.get("BENCH_GROWTH_CONNS", "64,1024,8192").split(",") if x]
GROWTH_IDLE = int(os.environ.get("BENCH_GROWTH_IDLE", "4000"))
METRICS_LAG = 1.2  # a worker publishes its counters to /metrics once a second: wait for the last ones
GROWTH_TIMEOUT = "10s"  # wrk's reply timeout in the connection curve
GROWTH_FILL_MAX = "300s"  # the longest a fill may take (1M rows at 3,500 reads a second)
GROWTH_MARK = ("<!-- growth: written by bench/bench.py; BENCH_GROWTH=only replaces just this section -->",
               "<!-- /growth -->")
GROWTH_DIST = (("uniform", "user_random.lua"), ("zipf", "user_zipf.lua"))
GROWTH_READS = (("growth_w2", "cached"), ("growth_w2_nocache", "uncached"))


def growth_fill(cfg, target, users):
    """Every row read once (bench/lua/user_all.lua stops after one pass), so a cached run starts on a
    warm cache; capped at GROWTH_FILL_MAX, and the share of reads the cache answered during the measured
    run is reported beside it, so a fill cut short shows."""
    port = cfg["targets"][target]["port"]
    env = dict(os.environ, BENCH_USERS=str(users))
    cmd = ["wrk", "-t2", f"-c{CONN}", f"-d{GROWTH_FILL_MAX}", "-s", wrk_script("user_all.lua"), f"http://127.0.0.1:{port}/"]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as p:
        filled = 0
        for line in p.stdout:  # wrk runs for its whole -d even when its threads have stopped
            filled += line.strip() == "FILLED"
            if filled == 2:  # -t2
                p.send_signal(signal.SIGINT)
                break
        p.communicate(timeout=60)


def growth_hits(cfg, target, fn):
    """fn() run between two reads of target's /metrics: (fn's result, cache hits per request)."""
    port = cfg["growth"]["metrics"].get(target)
    before = server_counters([port]) if port else {}
    r = fn()
    if port:
        time.sleep(METRICS_LAG)
        d = delta(server_counters([port]), before)
        hits = d.get(("cache", "local_hit"), 0) + d.get(("cache", "redis_hit"), 0)
        r["hits"] = min(1.0, hits / max(r["requests"], 1))
    return r


def workers_rss(cfg, target):
    """RSS (MB) of each worker of target (its master's children), in pid order."""
    pid = cfg["targets"][target]["pid"]
    return [v for p, v in sorted(tree_rss(pid).items()) if p != pid]


STATUS = re.compile(r'^pgapi_http_requests_total\{[^}]*status="(\w+)"\} (\d+)$', re.M)
REFUSED = re.compile(r'^pgapi_http_(?:client_)?connections_refused_total(?:\{[^}]*\})? (\d+)$', re.M)


def http_statuses(port):
    """The server's answers by status and its refused connections, from its /metrics: {"503": n, ...,
    "refused": n}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        body = b""
        while chunk := s.recv(65536):
            body += chunk
    text, out = body.decode(), {}
    for status, n in STATUS.findall(text):
        out[status] = out.get(status, 0) + int(n)
    out["refused"] = sum(int(n) for n in REFUSED.findall(text))
    return out


def not_ok(after, before):
    """What a run's non-2xx answers were, e.g. "503 x 966, refused 12" (from two http_statuses)."""
    d = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) and not k.startswith("2")}
    return ", ".join(f"{k} x {v:,}" for k, v in sorted(d.items()))


def kinds(r):
    """wrk's errors by kind, e.g. "(connect 12, timeout 3)", or ""."""
    k = r.get("error_kinds") or {}
    return "(" + ", ".join(f"{name} {v:,}" for name, v in k.items()) + ")" if k else ""


def growth_data(cfg, users, n, res):
    """One round at one data size: Redis emptied, the cached server filled, then cached and uncached
    reads with uniform and Zipf ids, the order reversed every other round."""
    subprocess.run(cfg["reset"] + [str(users)], check=True)
    growth_fill(cfg, "growth_w2", users)
    runs = [(t, kind, dist, script) for t, kind in GROWTH_READS for dist, script in GROWTH_DIST]
    if n % 2 == 0:
        runs.reverse()
    for target, kind, dist, script in runs:
        port = cfg["targets"][target]["port"]
        wrk_run(port, "/", script, target, WARM, users=users)
        r = growth_hits(cfg, target, lambda: wrk_run(port, "/", script, target, DUR, users=users))
        res.setdefault(("data", users, kind, dist), []).append(r)
        log(f"growth round {n} {users:>9,} users {kind:8} {dist:7} {r['rps']:>10.0f} req/s  p99 {r['p99']:7.2f} ms  "
            f"errors {r['errors']}  cache hits/req {pct(r.get('hits'))}")


def growth_conns(cfg, n, res):
    """One round of cached reads (uniform ids over the seeded 10,000) at each connection count, against
    1 and 2 workers, with each worker's RSS right after the run."""
    subprocess.run(cfg["reset"], check=True)
    targets = ["growth_w1", "growth_w2"]
    if n % 2 == 0:
        targets.reverse()
    for target in targets:
        growth_fill(cfg, target, 10000)
        port = cfg["targets"][target]["port"]
        for conns in GROWTH_CONNS:
            # wrk's 2 s timeout would count the slowest of 8,192 connections as errors, not as latency
            wrk_run(port, "/", "user_random.lua", target, WARM, conns=conns, timeout=GROWTH_TIMEOUT)
            mport = cfg["growth"]["metrics"][target]
            before = http_statuses(mport)
            r = wrk_run(port, "/", "user_random.lua", target, DUR, conns=conns, timeout=GROWTH_TIMEOUT)
            r["rss"] = workers_rss(cfg, target)
            time.sleep(METRICS_LAG)
            r["answers"] = not_ok(http_statuses(mport), before)
            res.setdefault(("conns", target, conns), []).append(r)
            log(f"growth round {n} {target:18} {conns:>5} connections {r['rps']:>10.0f} req/s  p99 {r['p99']:7.2f} ms  "
                f"errors {r['errors']} {kinds(r)} {r['answers']} worker RSS {', '.join(f'{v:.1f}' for v in r['rss'])} MB")


def growth_idle(cfg, target, count):
    """The RSS the workers of target gain per idle keep-alive connection: count connections opened, one
    GET / answered on each (so each has been through a request and holds what a kept-alive connection
    holds), left idle for a second; the workers' RSS summed before and after, the difference divided.
    Run on servers that have served nothing yet (run_growth), whose heaps hold no freed memory to reuse."""
    port = cfg["targets"][target]["port"]
    before = sum(workers_rss(cfg, target))
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            got = b""
            while b"Hello" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"{target} closed idle connection {len(socks) + 1} of {count}")
                got += chunk
            socks.append(s)
        time.sleep(1)
        after = sum(workers_rss(cfg, target))
    finally:
        for s in socks:
            s.close()
    return {"count": count, "before": before, "after": after, "bytes": (after - before) * 1024 * 1024 / count}


def run_growth(cfg):
    """The growth curves, sizes ascending (each size's rows added once, its rounds run on them)."""
    res = {}
    # the idle connections first, while the servers have served nothing: a worker's heap keeps what a
    # load of 8,192 connections made it take, and idle connections opened after that would reuse it
    for target in ("growth_w1", "growth_w2"):
        r = growth_idle(cfg, target, GROWTH_IDLE)
        res[("idle", target)] = r
        log(f"growth {target}: {r['count']} idle keep-alive connections: workers' RSS {r['before']:.1f} -> "
            f"{r['after']:.1f} MB, {r['bytes']:,.0f} bytes per connection")
    subprocess.run(cfg["growth"]["grow"] + ["10000"], check=True)
    for n in range(1, ROUNDS + 1):
        growth_conns(cfg, n, res)
    for users in GROWTH_SIZES:
        subprocess.run(cfg["growth"]["grow"] + [str(users)], check=True)
        for n in range(1, ROUNDS + 1):
            growth_data(cfg, users, n, res)
    return res


def growth_median(runs, field):
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def bar(v, top, width=30):
    return "#" * max(1, round(width * v / top)) if v and top else ""


def growth_section(res, cfg):
    if not res:
        return []
    f = cfg["facts"]
    zipf = os.environ.get("BENCH_GROWTH_ZIPF", "1.1")
    lines = [GROWTH_MARK[0], "## Growth: data, connections, workers", "",
             f"{time.strftime('%Y-%m-%d')}, `BENCH_GROWTH={cfg['growth']['mode']} bench/run.sh` on "
             f"{cfg.get('commit', '?')} ({ROUNDS} rounds, medians quoted). Machine: {f['nproc']} cores ({f['cpu']}); "
             f"wrk -t2 -d{DUR} after a {WARM} warm-up on the same cores as everything else. Servers of 1 and 2 "
             "workers (Redis on, each its own prefix) and of 2 workers with Redis off, `max_connections` 20,000, "
             "`keepalive_timeout` 10 min. Cached runs start after every row was read once (`user_all.lua`, "
             f"up to {GROWTH_FILL_MAX}); \"cache hits/req\" is what the cache (local or Redis) answered during the measured run "
             f"(`pgapi_cache_lookups_total`). Zipf: rank k drawn with weight k^-{zipf}, ranks spread over the ids.", "",
             "### Data size (2 workers, 64 connections)", "",
             "| users | reads | ids | req/s | p50 | p99 | errors | cache hits/req | |", "|---|---|---|---|---|---|---|---|---|"]
    top = max([growth_median(v, "rps") or 0 for k, v in res.items() if k[0] in ("data", "conns")] or [0])
    for users in GROWTH_SIZES:
        for _, kind in GROWTH_READS:
            for dist, _ in GROWTH_DIST:
                runs = res.get(("data", users, kind, dist))
                if not runs:
                    continue
                m = {k: growth_median(runs, k) for k in ("rps", "p50", "p99", "errors", "hits")}
                lines.append(f"| {users:,} | {kind} | {dist} | {fmt(m['rps'])} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | "
                             f"{fmt(m['errors'])} | {pct(m['hits']) if kind == 'cached' else '—'} | "
                             f"`{bar(m['rps'], top)}` |")
    lines += ["", "### Connections and workers (cached reads, uniform ids over 10,000 users)", "",
              "| workers | connections | req/s | p50 | p99 | errors (the last round's by kind) | the server's non-2xx "
              "answers and refused connections (last round) | RSS per worker after (MB) | |",
              "|---|---|---|---|---|---|---|---|---|"]
    for target, w in (("growth_w1", 1), ("growth_w2", 2)):
        for conns in GROWTH_CONNS:
            runs = res.get(("conns", target, conns))
            if not runs:
                continue
            m = {k: growth_median(runs, k) for k in ("rps", "p50", "p99", "errors")}
            rss = ", ".join(f"{v:.1f}" for v in runs[-1]["rss"])
            lines.append(f"| {w} | {conns:,} | {fmt(m['rps'])} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | "
                         f"{fmt(m['errors'])} {kinds(runs[-1])} | {runs[-1]['answers'] or '—'} | {rss} | "
                         f"`{bar(m['rps'], top)}` |")
    lines += ["", "Non-2xx answers are `pgapi_http_requests_total` by status over the measured run (499: requests "
              "still in flight when wrk closed its connections at the run's end, not errors the client saw); "
              "refused: `pgapi_http_connections_refused_total`.", "",
              "### Memory per idle keep-alive connection (target: at most 4 KB)", ""]
    for target, w in (("growth_w1", 1), ("growth_w2", 2)):
        r = res.get(("idle", target))
        if r:
            lines.append(f"- {'met' if r['bytes'] <= 4096 else 'MISSED'}: {w} worker(s): {r['count']:,} idle "
                         f"connections (each after one `GET /`), workers' RSS {r['before']:.1f} -> {r['after']:.1f} MB: "
                         f"{r['bytes']:,.0f} bytes per connection (user-space RSS only; the kernel's socket buffers "
                         "are not in it)")
    lines.append(GROWTH_MARK[1])
    return lines


def replace_section(path, section, marks):
    """A BENCH_*=only run: that section of an existing report is replaced, the rest kept (or the section
    goes before the notes, or at the end)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    new = "\n".join(section)
    if marks[0] in text and marks[1] in text:
        head, rest = text.split(marks[0], 1)
        text = head + new + rest.split(marks[1], 1)[1]
    elif "\n## Where the time goes" in text:
        head, rest = text.split("\n## Where the time goes", 1)
        text = head + "\n" + new + "\n\n## Where the time goes" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    with open(path, "w") as out:
        out.write(text)


def write_results(cfg, rounds, snapshots, growth=None):
    path = os.environ.get("BENCH_RESULTS") or os.path.join(HERE, "RESULTS.md")
    if cfg.get("growth", {}).get("mode") == "only":
        section = growth_section(growth, cfg)
        replace_section(path, section, GROWTH_MARK)
        print("\n".join(section))
        return
    if cfg.get("scaleout", {}).get("mode") == "only":
        section = scaleout_section(rounds, cfg)
        replace_scaleout_section(path, section)
        print("\n".join(section))
        return
    f = cfg["facts"]
    lines = [
        "# Benchmark results", "",
        f"{time.strftime('%Y-%m-%d')}, `bench/run.sh` ({ROUNDS} rounds, medians quoted). Machine: {f['nproc']} cores "
        f"({f['cpu']}), Linux {f['kernel']}. PostgreSQL {f['postgres']}, PgBouncer {f['pgbouncer']}, Redis {f['redis']}, "
        f"Node.js {f['node']}, nginx {f['nginx']}, {f['wrk']}.", "",
        f"wrk -t2 -c{CONN} -d{DUR} after a {WARM} warm-up, per scenario and target. wrk, the servers, PostgreSQL "
        "(primary + streaming replica, fsync off), PgBouncer and Redis all share the same cores. 10,000 users with 5 "
        "posts each on both sides; rows added by a round are deleted and Redis is flushed before the next round. "
        f"pgapi runs its default {cfg['workers']} workers, access log off. Latencies in ms; errors are non-2xx "
        "responses plus socket errors.", "",
    ]
    if "peer" in cfg["targets"]:
        lines += [
            "- **peer**: `../shared/peer-express` as the tutorial runs it, one Node.js process "
            "(`src/index-redis.js`).",
            f"- **peer x2**: the same app in Node's cluster mode with {cfg['workers']} workers (`src/cluster.js`), "
            "as many processes as pgapi has workers.",
            "- Both peers talk to PostgreSQL directly (their own database `peer` on the primary, TypeORM pool of "
            "10); pgapi goes through PgBouncer, reads to the replica.", ""]
    if "fastify" in cfg["targets"]:
        lines[-1:-1] = [
            f"- **Fastify xN**: `../shared/peer-fastify` in Node's cluster mode with {cfg['workers']} workers "
            "(pgapi's count): Fastify 5 with compiled response schemas, node-postgres pools of 10 per side straight "
            "to PostgreSQL (writes to the primary, reads to the replica), ioredis cache-aside of single users "
            "with auto-pipelining; its own database `peer_fastify`, a copy of `peer`. Its write in the mix is a "
            "`PATCH`, as ours.",
            "- ⁴ Fastify's `GET /users?limit=50` is paginated like ours but never cached (a replica read each)."]
    if cfg.get("pgbench"):
        lines += [f"pgbench rows: `pgbench -n -M extended -c {CONN} -j 2 -T <duration>` through PgBouncer (pgapi_ro "
                  "for the SELECT, pgapi_rw for the INSERT and the UPDATE), one statement per transaction as pgapi sends them: the "
                  "database's own ceiling for those statements on this machine. ⁵ pgbench reports a mean latency, "
                  "not percentiles: the mean is in the p50 column.", ""]
    else:
        lines += ["No peer and no nginx in this run (BENCH_PEERS=0): pgapi alone, and against BENCH_BASELINE's "
                  "commit when there is one.", ""]
    lines += table(rounds)
    lines += before_after(rounds, cfg)
    lines += ["", "³ not comparable: the peer has no pagination and returns all 10,000 users (one cached blob); "
              "pgapi returns a page of 50.", "", "## Targets (medians)", ""]
    lines += targets(rounds, snapshots, cfg)
    section = scaleout_section(rounds, cfg)
    if section:
        lines += [""] + section
    section = growth_section(growth, cfg)
    if section:
        lines += [""] + section
    lines += ["", "## Memory (RSS in MB after each round: parent + [children])", ""]
    for t in cfg["targets"]:
        lines.append(rss_line(t, snapshots, cfg["targets"][t]["pid"]))
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    if cfg.get("auth_secret_file") and os.path.exists(cfg["auth_secret_file"]):
        with open(cfg["auth_secret_file"], "rb") as f:
            TOKEN["token"] = hs256_token(f.read().strip())
    rounds, snapshots = [], []
    mode = cfg.get("growth", {}).get("mode", "0")
    for n in range(1, ROUNDS + 1 if mode != "only" else 1):
        r, rss = run_round(cfg, n)
        rounds.append(r)
        snapshots.append(rss)
    growth = run_growth(cfg) if mode != "0" else None
    write_results(cfg, rounds, snapshots, growth)


if __name__ == "__main__":
    main()
