#!/usr/bin/env python3
"""Drives wrk against pgapi, the Node.js peer and nginx, started by bench/run.sh, and writes
bench/RESULTS.md. Each round runs every scenario once against every target (interleaved, so drift
hits all of them alike); the table quotes the median of the rounds. Not a test: nothing asserts.

Input: a JSON file (argv[1]) written by run.sh:
  {"targets": {"pgapi": {"port": P, "pid": PID}, ...}, "reset": [argv...], "facts": {...}}
"""
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DUR = os.environ.get("BENCH_DURATION", "10s")
WARM = os.environ.get("BENCH_WARMUP", "2s")
CONN = int(os.environ.get("BENCH_CONNECTIONS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

# name, label, {target: (path, script, write method)}; the first target is ours, the others compare
PEERS = ("peer", "peer_cluster")
SCENARIOS = [
    ("hello", "GET / (hello)", {"pgapi": ("/", None), "peer": ("/", None), "peer_cluster": ("/", None),
                                "nginx": ("/", None)}),
    ("user_cached", "GET /users/:id random, cached",
     {t: ("/", "user_random.lua") for t in ("pgapi",) + PEERS}),
    ("user_nocache", "GET /users/:id random, cache off",
     {"pgapi_nocache": ("/", "user_random.lua"), "peer_nocache": ("/", "user_random.lua"),
      "peer_cluster_nocache": ("/", "user_random.lua")}),
    ("list_cached", "GET /users?limit=50, cached",
     {"pgapi": ("/users?limit=50", None), "peer": ("/users", None), "peer_cluster": ("/users", None)}),
    ("list_nocache", "GET /users?limit=50, cache off", {"pgapi_nocache": ("/users?limit=50", None)}),
    ("post", "POST /users (primary)", {t: ("/", "create_user.lua") for t in ("pgapi",) + PEERS}),
    ("mix", "90% GET /users/:id, 10% update", {t: ("/", "mix.lua") for t in ("pgapi",) + PEERS}),
]
# BENCH_BASELINE (run.sh): an older commit runs every scenario of ours beside this tree
BASELINE = {"pgapi": "pgapi_baseline", "pgapi_nocache": "pgapi_baseline_nocache"}
for _, _, _targets in SCENARIOS:
    for _ours, _theirs in BASELINE.items():
        if _ours in _targets:
            _targets[_theirs] = _targets[_ours]
WRITE_METHOD = {"pgapi": "PATCH", "pgapi_baseline": "PATCH"}  # the peer's PUT is partial, our PATCH is the same


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def wrk_script(script):
    """wrk takes one script: the report hook plus the scenario's request function."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pgapi-bench-{os.getpid()}-{script or 'plain'}.lua")
    with open(path, "w") as out:
        for part in ("report.lua", script):
            if part:
                with open(os.path.join(HERE, "lua", part)) as f:
                    out.write(f.read() + "\n")
    return path


def wrk_run(port, path, script, target, duration):
    env = dict(os.environ, BENCH_WRITE_METHOD=WRITE_METHOD.get(target, "PUT"))
    cmd = ["wrk", "-t2", f"-c{CONN}", f"-d{duration}", "--latency", "-s", wrk_script(script),
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            rps, p50, p90, p99, errors, total = line.split()[1:]
            return {"rps": float(rps), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                    "errors": int(errors), "requests": int(total)}
    raise RuntimeError(f"wrk printed no result for {target} {path}: {out[-500:]}")


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


def run_round(cfg, n):
    subprocess.run(cfg["reset"], check=True)
    results = {}
    for name, label, targets in SCENARIOS:
        order = list(targets.items())
        if n % 2 == 0:  # every other round the other way round, so going first or last favours no one
            order.reverse()
        for target, (path, script) in order:
            if target not in cfg["targets"]:
                continue
            port = cfg["targets"][target]["port"]
            wrk_run(port, path, script, target, WARM)
            r = wrk_run(port, path, script, target, DUR)
            results[(name, target)] = r
            log(f"round {n} {label:36} {target:22} {r['rps']:>10.0f} req/s  p99 {r['p99']:7.2f} ms  "
                f"errors {r['errors']}")
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
    return "pgapi_nocache" if name.endswith("nocache") else "pgapi"


def peer_of(name, base):
    return base + "_nocache" if name.endswith("nocache") else base


def table(rounds):
    rows = ["| scenario | pgapi req/s | p50 | p90 | p99 | errors | peer req/s | peer p99 | peer errors | ratio "
            "| peer x2 req/s | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label, _ in SCENARIOS:
        us, peer, cl = ours(name), peer_of(name, "peer"), peer_of(name, "peer_cluster")
        m = {k: median(rounds, (name, us), k) for k in ("rps", "p50", "p90", "p99", "errors")}
        prps, pp99, perr = (median(rounds, (name, peer), k) for k in ("rps", "p99", "errors"))
        crps = median(rounds, (name, cl), "rps")
        note = " ³" if name == "list_cached" else ""
        rows.append(f"| {label} | {fmt(m['rps'])} | {fmt(m['p50'], 2)} | {fmt(m['p90'], 2)} | {fmt(m['p99'], 2)} | "
                    f"{fmt(m['errors'])} | {fmt(prps)} | {fmt(pp99, 2)} | {fmt(perr)} | {ratio(m['rps'], prps)}{note} | "
                    f"{fmt(crps)} | {ratio(m['rps'], crps)}{note} |")
        if name == "hello":
            n = {k: median(rounds, ("hello", "nginx"), k) for k in ("rps", "p50", "p90", "p99", "errors")}
            rows.append(f"| GET / (nginx, same workers) | {fmt(n['rps'])} | {fmt(n['p50'], 2)} | {fmt(n['p90'], 2)} | "
                        f"{fmt(n['p99'], 2)} | {fmt(n['errors'])} | | | | pgapi/nginx "
                        f"{ratio(m['rps'], n['rps'])} | | |")
    return rows


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
    p99 = median(rounds, ("user_cached", "pgapi"), "p99") or 0
    out.append(check(p99 < 5, f"cached GET /users/:id p99 {p99:.2f} ms at {CONN} connections (target < 5 ms)"))
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


def write_results(cfg, rounds, snapshots):
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
    else:
        lines += ["No peer and no nginx in this run (BENCH_PEERS=0): pgapi alone, and against BENCH_BASELINE's "
                  "commit when there is one.", ""]
    lines += table(rounds)
    lines += before_after(rounds, cfg)
    lines += ["", "³ not comparable: the peer has no pagination and returns all 10,000 users (one cached blob); "
              "pgapi returns a page of 50.", "", "## Targets (medians)", ""]
    lines += targets(rounds, snapshots, cfg)
    lines += ["", "## Memory (RSS in MB after each round: parent + [children])", ""]
    for t in cfg["targets"]:
        lines.append(rss_line(t, snapshots, cfg["targets"][t]["pid"]))
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    with open(os.environ.get("BENCH_RESULTS") or os.path.join(HERE, "RESULTS.md"), "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    rounds, snapshots = [], []
    for n in range(1, ROUNDS + 1):
        r, rss = run_round(cfg, n)
        rounds.append(r)
        snapshots.append(rss)
    write_results(cfg, rounds, snapshots)


if __name__ == "__main__":
    main()
