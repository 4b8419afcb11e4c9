"""A steady client load for the fault tests (test_faults.py), and what is checked after it.

A few threads, each on its own keep-alive connection, create, update, delete and read users of their
own through the HTTP API, paced and bounded in count and time. Every request is recorded: what was sent,
the status, the error code, the answer, when it was sent and answered. Writes and reads also go into a
history.History, so that afterwards the primary can be compared with what clients were told: nothing
acknowledged (2xx) is missing, nothing refused (4xx, or 503 with a code of DEFINITE_FAILURE_CODES)
exists, and no read contradicted an acknowledged write. A 503 "write_outcome_unknown" or a request with
no answer may have been applied or not; only its count is reported (with how many were in fact applied).
"""

import collections
import http.client
import random
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Optional

from .history import ACKED, CREATE, DELETE, FAILED, UPDATE, History, check, check_final, write_outcome
from .consistency import Client, final_versions

NO_ANSWER = (OSError, http.client.HTTPException, ValueError)


@dataclass
class Outcome:
    """One request and what came of it."""
    thread: int
    op: str                 # create, update, delete, read, list
    method: str
    path: str
    sent: Any               # the JSON body sent, or None
    status: Optional[int]   # None: no answer (`error` says why)
    code: str               # the error code of an error answer, else ""
    body: str               # the answer, cut short
    t_send: float
    t_end: float
    error: str = ""
    cache: str = ""         # X-Cache
    resp: Any = None        # the parsed answer

    @property
    def seconds(self):
        return self.t_end - self.t_send

    @property
    def failed(self):
        """No answer, a 5xx, or a 4xx other than a read's 404 (reads of deleted users are expected)."""
        if self.status is None or self.status >= 500:
            return True
        return self.status >= 400 and not (self.op in ("read", "list") and self.status == 404)

    def kind(self):
        """What a failure was, for counting: "503 database_unavailable", "no answer: ConnectionResetError"."""
        if self.status is None:
            return f"no answer: {self.error.split('(')[0]}"
        return f"{self.status} {self.code}".strip()

    def __str__(self):
        return (f"{self.method} {self.path} -> {self.status if self.status is not None else self.error} "
                f"{self.code} in {self.seconds:.3f}s {self.body[:120]!r}")


class FaultLoad:
    """The load against one server. start(), then mark() the fault's moments, then stop(); verify()
    compares the primary with what clients were told; report() gives the counts."""

    def __init__(self, srv, threads=4, max_seconds=60.0, max_requests=8000, pace_s=0.01, timeout_s=10.0,
                 seed=None, deletes=True):
        self.srv = srv
        self.threads = threads
        self.max_seconds = max_seconds
        self.max_per_thread = max_requests // threads
        self.pace_s = pace_s
        self.deletes = deletes       # off: no user is deleted
        self.timeout_s = timeout_s
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.tag = uuid.uuid4().hex[:10]
        self.h = History()
        self.lock = threading.Lock()
        self.outcomes = []
        self.marks = []              # (what, monotonic time)
        self.failed_emails = []      # creates refused: no such row may exist
        self.unknown_emails = []     # creates of unknown outcome
        self.live = collections.defaultdict(list)  # each client's users: created, no delete sent
        self.gone = collections.defaultdict(list)  # deleted (acknowledged or not): read targets
        self.crashes = []
        self.stop_ev = threading.Event()
        self.workers = []
        self.t_start = None

    # -- the run -------------------------------------------------------------------------------------
    def start(self, users_per_thread=3):
        """Creates each thread's first users (they must succeed), then starts the threads."""
        c = Client(self.srv.port, timeout=self.timeout_s)
        try:
            for idx in range(self.threads):
                for i in range(users_per_thread):
                    o = self.create(c, idx, f"setup{i}")
                    assert o.status == 201, f"expected the load's setup create to succeed, got {o}"
        finally:
            c.close()
        self.t_start = time.monotonic()
        self.mark("load started")
        self.workers = [threading.Thread(target=self.run_thread, args=(i,), name=f"load{i}")
                        for i in range(self.threads)]
        for t in self.workers:
            t.start()
        return self

    def stop(self, check=True):
        """Stops the threads; with check, asserts they stopped and ran cleanly."""
        self.stop_ev.set()
        for t in self.workers:
            t.join(self.timeout_s * 2)
        self.mark("load stopped")
        if not check:
            return
        stuck = [t.name for t in self.workers if t.is_alive()]
        assert not stuck, f"expected every load thread to stop within {self.timeout_s * 2}s, still running: {stuck}"
        assert not self.crashes, f"expected the load threads to run cleanly, got: {self.crashes[:5]}"

    def steady(self, seconds=1.0, requests=100):
        """Waits until the load has run `seconds` and made `requests` requests (before a fault)."""
        self.wait_for(lambda: time.monotonic() > self.t_start + seconds and len(self.records()) >= requests,
                      20, "the load to run steadily")
        return self

    def __enter__(self):
        return self.start().steady()

    def __exit__(self, exc_type, *exc):
        self.stop(check=exc_type is None)   # an assertion of its own would hide the block's failure
        return False

    def mark(self, what):
        t = time.monotonic()
        with self.lock:
            self.marks.append((what, t))
        return t

    def run_thread(self, idx):
        rng = random.Random(self.seed * 100 + idx)
        c = Client(self.srv.port, timeout=self.timeout_s)
        deadline = time.monotonic() + self.max_seconds
        n = 0
        try:
            while not self.stop_ev.is_set() and n < self.max_per_thread and time.monotonic() < deadline:
                n += 1
                self.step(c, idx, n, rng)
                self.stop_ev.wait(self.pace_s)
        except Exception as exc:  # a bug in the load itself: reported, never swallowed
            self.crashes.append(f"thread {idx}: {exc!r}")
        finally:
            c.close()

    def step(self, c, idx, n, rng):
        live, gone = self.live[idx], self.gone[idx]
        x = rng.random()
        if x < 0.15 or not live:
            self.create(c, idx, n)
        elif x < 0.45:
            self.update(c, idx, rng.choice(live), n)
        elif x < 0.55 and len(live) > 2 and self.deletes:
            self.delete(c, idx, live.pop(rng.randrange(len(live))))
        elif x < 0.9:
            targets = live + gone[-3:]
            self.read(c, idx, rng.choice(targets))
        else:
            self.list(c, idx, rng.choice(live))

    # -- one request ---------------------------------------------------------------------------------
    def call(self, c, idx, op, method, path, body=None):
        t = time.monotonic()
        try:
            status, resp, t_send, t_end = c.call(method, path, body)
        except NO_ANSWER as exc:
            o = Outcome(idx, op, method, path, body, None, "", "", t, time.monotonic(), error=repr(exc))
        else:
            code = ""
            if isinstance(resp, dict) and isinstance(resp.get("error"), dict):
                code = resp["error"].get("code", "")
            o = Outcome(idx, op, method, path, body, status, code, str(resp)[:300], t_send, t_end, cache=c.cache,
                        resp=resp)
        with self.lock:
            self.outcomes.append(o)
        return o

    def create(self, c, idx, n):
        email = f"fault-{self.tag}-{idx}-{n}@example.com"
        o = self.call(c, idx, "create", "POST", "/users", {"name": f"f{idx}-{n}", "email": email})
        if o.status == 201:
            uid = o.resp["id"]
            self.h.write(("user", uid), CREATE, "POST /users", o.t_send, o.t_end, 201, o.resp["version"])
            self.live[idx].append(uid)
        elif write_outcome(o.status, o.code) == FAILED:
            self.failed_emails.append(email)
        else:
            self.unknown_emails.append(email)
        return o

    def update(self, c, idx, uid, n):
        o = self.call(c, idx, "update", "PATCH", f"/users/{uid}", {"name": f"u{idx}-{n}"})
        version = o.resp.get("version") if o.status == 200 else None
        self.h.write(("user", uid), UPDATE, "PATCH /users/:id", o.t_send, o.t_end, o.status, version,
                     detail=o.body[:200] if o.failed else "", code=o.code)
        return o

    def delete(self, c, idx, uid):
        o = self.call(c, idx, "delete", "DELETE", f"/users/{uid}")
        self.h.write(("user", uid), DELETE, "DELETE /users/:id", o.t_send, o.t_end, o.status,
                     detail=o.body[:200] if o.failed else "", code=o.code)
        if write_outcome(o.status, o.code) == FAILED and o.status != 404:
            self.live[idx].append(uid)   # refused: the row is still there
        else:
            self.gone[idx].append(uid)
        return o

    def read(self, c, idx, uid):
        o = self.call(c, idx, "read", "GET", f"/users/{uid}")
        if o.status in (200, 404):
            self.h.read("GET /users/:id", o.t_send, o.t_end, o.status,
                        {("user", uid): o.resp["version"] if o.status == 200 else None}, source=o.cache)
        return o

    def list(self, c, idx, uid):
        o = self.call(c, idx, "list", "GET", f"/users?after_id={uid - 1}&limit=1")
        if o.status == 200:
            seen = {("user", uid): None}
            seen.update({("user", row["id"]): row["version"] for row in o.resp["data"]})
            self.h.read("GET /users?after_id=&limit=1", o.t_send, o.t_end, o.status, seen, source=o.cache)
        return o

    # -- looking at what happened --------------------------------------------------------------------
    def records(self, t0=None, t1=None, ops=None):
        """Outcomes sent within [t0, t1] (either bound optional), of the given ops."""
        with self.lock:
            out = list(self.outcomes)
        return [o for o in out if (t0 is None or o.t_send >= t0) and (t1 is None or o.t_send <= t1)
                and (ops is None or o.op in ops)]

    def wait_for(self, predicate, timeout, what):
        """Polls predicate() (on the records so far) until truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}\n{self.report(what)}"
            assert not self.stop_ev.is_set() and any(t.is_alive() for t in self.workers), \
                f"the load stopped while waiting for {what}"
            time.sleep(0.05)

    def wait_requests(self, n, after, timeout=20, what="requests"):
        """Waits until n more requests were answered after `after`; returns them."""
        return self.wait_for(lambda: len(self.records(after)) >= n and self.records(after), timeout,
                             f"{n} {what} sent after {after - self.t_start:+.2f}s")

    def first_success(self, after, ops=("create", "update", "delete")):
        """The first write (by default) sent after `after` that succeeded, or None."""
        ok = [o for o in self.records(after, ops=ops) if not o.failed]
        return min(ok, key=lambda o: o.t_send) if ok else None

    def verify(self, topology):
        """Compares the primary with what clients were told. Returns (problems, facts)."""
        result = check(self.h)
        problems = [f"read contradicts an acknowledged write: {v}" for v in result.violations]
        keys = {w.key for w in self.h.writes}
        final = final_versions(topology, keys)
        problems += [f"primary differs from what clients were told: {p}" for p in check_final(self.h, final)]
        with closing(topology.rw()) as conn, conn.cursor() as cur:
            cur.execute("SELECT email FROM users WHERE email = ANY(%s)", (self.failed_emails,))
            phantom = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT count(*) FROM users WHERE email = ANY(%s)", (self.unknown_emails,))
            unknown_creates_applied = cur.fetchone()[0]
        problems += [f"a create the client was told failed exists: {e}" for e in phantom]
        facts = {"violations": len(result.violations), "lost_or_phantom": len(problems) - len(result.violations),
                 "unknown_creates": len(self.unknown_emails), "unknown_creates_applied": unknown_creates_applied,
                 "reads_checked": result.summary["observations"]}
        facts.update(self.unknown_updates_applied(final))
        self.facts = facts
        return problems, facts

    def unknown_updates_applied(self, final):
        """Unknown-outcome updates and deletes, and how many of them the primary shows were applied."""
        by_key = collections.defaultdict(list)
        for w in self.h.writes:
            by_key[w.key].append(w)
        upd = upd_applied = dels = dels_applied = 0
        for key, ws in by_key.items():
            acked = [w.version for w in ws if w.outcome == ACKED and w.kind in (CREATE, UPDATE)]
            unknown_upd = sum(1 for w in ws if w.kind == UPDATE and w.outcome not in (ACKED, FAILED))
            unknown_del = sum(1 for w in ws if w.kind == DELETE and w.outcome not in (ACKED, FAILED))
            upd += unknown_upd
            dels += unknown_del
            if unknown_upd and final.get(key) is not None and acked:
                upd_applied += final[key] - max(acked)
            if unknown_del and final.get(key) is None:
                dels_applied += 1
        return {"unknown_updates": upd, "unknown_updates_applied": upd_applied,
                "unknown_deletes": dels, "unknown_deletes_applied": dels_applied}

    def counts(self, t0=None, t1=None):
        recs = self.records(t0, t1)
        failed = [o for o in recs if o.failed]
        return {
            "sent": len(recs),
            "by_op": dict(sorted(collections.Counter(o.op for o in recs).items())),
            "failed": len(failed),
            "failures": dict(sorted(collections.Counter(f"{o.op} {o.kind()}" for o in failed).items())),
            "slowest_s": round(max((o.seconds for o in recs), default=0.0), 3),
            "writes": dict(sorted(collections.Counter(f"{w.kind}:{w.outcome}" for w in self.h.writes).items())),
            "cache": dict(sorted(collections.Counter(o.cache for o in recs if o.cache).items())),
        }

    def report(self, title):
        """One block of facts about the run, printed by each test (RELIABILITY.md quotes them)."""
        t0 = self.t_start or self.h.t0
        marks = ", ".join(f"{what} {t - t0:+.2f}s" for what, t in self.marks)
        lines = [f"FAULT {title}: seed={self.seed} threads={self.threads}", f"  timeline: {marks}"]
        for k, v in self.counts().items():
            lines.append(f"  {k}: {v}")
        if getattr(self, "facts", None):
            lines.append(f"  checked: {self.facts}")
        bad = [o for o in self.records() if o.failed]
        for o in bad[:6] + (bad[-2:] if len(bad) > 8 else bad[6:8]):
            lines.append(f"  failure at {o.t_send - t0:+.2f}s: {o}")
        return "\n".join(lines)
