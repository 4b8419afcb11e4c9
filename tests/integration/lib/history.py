"""A history checker for the read-your-writes guarantee (docs/consistency.md).

Clients log what they did against the real server; afterwards `check(history)` finds every read that the
guarantee forbids. No pytest fixtures here: the module is plain Python and can be reused by any test.

Model. A key is a row, e.g. ("user", 12) or ("post", 7); every row carries a `version` that each UPDATE
increments (a trigger), and a create gives version 1.
- A write is logged with the time it was sent and, when it was acknowledged (2xx), the time right after
  its response was fully read and the version it returned (creates: 1; deletes: none). A write that got
  no answer (timeout, connection lost, 5xx) has an unknown outcome: it may or may not have happened, from
  the moment it was sent. A write refused with 4xx did not happen.
- A read is logged with the time just before it was sent, the time its answer was fully read, and what
  it saw: for each key a version, or None when the key was absent (404, missing from a list).
  `covers=group` says the answer lists a whole group (e.g. every post of one user): every key that joined
  the group with `History.member` and is not in the answer was seen absent.

Times are time.monotonic() values. Recording the read's start *before* sending and the write's
acknowledgement *after* reading its answer makes every comparison conservative: a read flagged as having
started after an acknowledgement really did.

Violations (each one carries every detail needed to find it in the server's log):
- stale: a read started after version v of the key was acknowledged and returned a version < v;
- lost_create: a read saw the key absent although its create was acknowledged before the read started,
  and no delete of it had even been sent before the read ended;
- resurrected: a read returned the row although its delete was acknowledged before the read started;
- future: a read returned a version higher than the number of updates sent before the read ended allows
  (a sanity check of the history itself and of the trigger);
- write_regression / duplicate_version: an acknowledged update returned a version not above that of an
  update acknowledged before it was sent, or two acknowledged updates returned the same version (a lost
  update).
`check_final(history, final)` compares the rows left on the primary with the history: nothing that was
acknowledged may be lost.
"""

import bisect
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

Key = Tuple[str, int]

CREATE, UPDATE, DELETE = "create", "update", "delete"
ACKED, FAILED, UNKNOWN = "acked", "failed", "unknown"
# 5xx error codes that say the write was not applied (never sent, or refused before it could commit;
# redis_unavailable: refused because its fences could not be raised deployment-wide, before it ran);
# any other 5xx (write_outcome_unknown above all) or no answer leaves the outcome unknown.
DEFINITE_FAILURE_CODES = frozenset({"database_unavailable", "primary_moved", "redis_unavailable"})


def key_str(key):
    return f"{key[0]}:{key[1]}"


@dataclass
class Write:
    key: Key
    kind: str                 # create / update / delete
    route: str                # e.g. "PATCH /users/:id"
    t_send: float
    t_end: float              # when the answer (or the error) came
    outcome: str              # acked / failed / unknown
    version: Optional[int]    # the version the acknowledgement returned (creates: 1, deletes: None)
    status: Optional[int]     # HTTP status, None when there was no answer
    detail: str = ""
    code: Optional[str] = None  # the error answer's code (e.g. write_outcome_unknown), if any

    @property
    def t_ack(self):
        return self.t_end if self.outcome == ACKED else None


@dataclass
class Read:
    route: str
    t_start: float
    t_end: float
    status: int
    seen: Dict[Key, Optional[int]]   # key -> version, or None: absent
    covers: Any = None               # a group whose members not in `seen` were absent
    source: str = ""                 # where the server says the answer came from (e.g. X-Cache), if it says
    rid: str = ""                    # the X-Request-Id it was sent with: its access line on the server


@dataclass
class Violation:
    kind: str
    key: Key
    route: str
    seen: Any                 # version seen (None: absent)
    expected: str             # what the guarantee required
    read_start: Optional[float] = None
    read_end: Optional[float] = None
    write: Optional[Write] = None   # the acknowledged write the read contradicts
    t0: float = 0.0
    note: str = ""

    def describe(self):
        ms = lambda t: "-" if t is None else f"{(t - self.t0) * 1000:.1f}ms"
        parts = [f"{self.kind}: {key_str(self.key)} via {self.route}: saw "
                 f"{'absent (404)' if self.seen is None else 'version ' + str(self.seen)}, expected {self.expected}"]
        if self.read_start is not None:
            parts.append(f"read started {ms(self.read_start)} ended {ms(self.read_end)}")
        if self.write is not None:
            w = self.write
            parts.append(f"contradicted {w.kind} ({w.route}, version {w.version}) sent {ms(w.t_send)} "
                         f"acknowledged {ms(w.t_ack)}")
            if self.read_start is not None and w.t_ack is not None:
                parts.append(f"read began {(self.read_start - w.t_ack) * 1000:.1f}ms after the acknowledgement")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    __str__ = describe


class History:
    """A thread-safe log of writes and reads. t0 (time.monotonic() at creation) is the origin of the
    times printed in violations."""

    def __init__(self):
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self.writes: List[Write] = []
        self.reads: List[Read] = []
        self.errors: List[Tuple[str, float, float, str]] = []   # (route, t_start, t_end, what)
        self.groups: Dict[Any, set] = collections.defaultdict(set)

    # -- logging --------------------------------------------------------------------------------
    def write(self, key, kind, route, t_send, t_end, status=None, version=None, detail="", code=None):
        """Logs a write. status 2xx: acknowledged (version: what the answer said; creates default to 1);
        4xx, or 5xx with an error `code` in DEFINITE_FAILURE_CODES: refused, did not happen; None or any
        other 5xx: unknown outcome. A 404 on a write of a key is also logged as a read that saw the key
        absent."""
        outcome = write_outcome(status, code)
        if outcome == ACKED and kind == CREATE and version is None:
            version = 1
        w = Write(key, kind, route, t_send, t_end, outcome, version if outcome == ACKED else None, status, detail,
                  code)
        with self._lock:
            self.writes.append(w)
            if status == 404:
                self.reads.append(Read(route + " (404)", t_send, t_end, status, {key: None}))
        return w

    def read(self, route, t_start, t_end, status, seen, covers=None, source="", rid=""):
        r = Read(route, t_start, t_end, status, dict(seen), covers, source, rid)
        with self._lock:
            self.reads.append(r)
        return r

    def error(self, route, t_start, t_end, what):
        """A read (or anything else) that got no usable answer: counted, not checked. `what` is
        "status N [code]" for an answer, else the exception (no answer)."""
        with self._lock:
            self.errors.append((route, t_start, t_end, str(what)))

    def member(self, group, key):
        """key belongs to group (e.g. ("posts_of", user_id)) from now on."""
        with self._lock:
            self.groups[group].add(key)


def write_outcome(status, code=None):
    """ACKED, FAILED or UNKNOWN for a write answered `status` (None: no answer) with error `code`."""
    if status is not None and 200 <= status < 300:
        return ACKED
    if status is not None and (400 <= status < 500 or code in DEFINITE_FAILURE_CODES):
        return FAILED
    return UNKNOWN


class _KeyState:
    """The writes of one key, indexed for the checks."""

    def __init__(self, key, writes):
        self.key = key
        acked = sorted((w for w in writes if w.outcome == ACKED and w.kind in (CREATE, UPDATE)),
                       key=lambda w: w.t_ack)
        self.ack_times = [w.t_ack for w in acked]
        # best[i]: the acknowledged write with the highest version among acked[0..i]
        self.best = []
        for w in acked:
            self.best.append(w if not self.best or w.version > self.best[-1].version else self.best[-1])
        creates = [w for w in writes if w.kind == CREATE and w.outcome == ACKED]
        self.create = min(creates, key=lambda w: w.t_ack) if creates else None
        deletes = [w for w in writes if w.kind == DELETE and w.outcome != FAILED]
        self.delete_acked = min((w for w in deletes if w.outcome == ACKED), key=lambda w: w.t_ack, default=None)
        self.delete_first_send = min((w.t_send for w in deletes), default=None)
        self.update_sends = sorted(w.t_send for w in writes if w.kind == UPDATE and w.outcome != FAILED)
        self.updates = [w for w in writes if w.kind == UPDATE]

    def acked_before(self, t):
        """The acknowledged create/update with the highest version acknowledged strictly before t."""
        i = bisect.bisect_left(self.ack_times, t)
        return self.best[i - 1] if i else None

    def max_possible_version(self, t_end):
        """1 (the create) + every update that may have run before t_end."""
        return 1 + bisect.bisect_left(self.update_sends, t_end)


@dataclass
class Result:
    violations: List[Violation]
    summary: Dict[str, Any] = field(default_factory=dict)

    def report(self, limit=20):
        lines = [f"{len(self.violations)} violation(s); summary: {format_summary(self.summary)}"]
        by_kind = collections.Counter(v.kind for v in self.violations)
        if by_kind:
            lines.append("by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
        for v in self.violations[:limit]:
            lines.append("  " + v.describe())
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def format_summary(summary):
    return "; ".join(f"{k}={v}" for k, v in summary.items())


def check(history: History, close_ms: float = 100.0) -> Result:
    """Every violation of the guarantee in the history, and a summary: reads and observations by route,
    writes by kind and outcome, errors, and how many observations each check could actually catch
    (`close_ms`: a read that began within that many ms after the newest acknowledgement of its key
    counts as a close call)."""
    with history._lock:
        writes = list(history.writes)
        reads = list(history.reads)
        errors = list(history.errors)
        groups = {g: set(m) for g, m in history.groups.items()}
    t0 = history.t0
    by_key = collections.defaultdict(list)
    for w in writes:
        by_key[w.key].append(w)
    states = {k: _KeyState(k, ws) for k, ws in by_key.items()}
    violations = []

    # write-side checks: versions acknowledged for one key only grow, never twice the same
    for k, st in states.items():
        acked = sorted((w for w in st.updates if w.outcome == ACKED), key=lambda w: w.t_ack)
        seen_versions = {}
        for w in acked:
            if w.version in seen_versions:
                other = seen_versions[w.version]
                violations.append(Violation("duplicate_version", k, w.route, w.version,
                                            f"a version other than {w.version}, which another acknowledged "
                                            f"update already returned", w.t_send, w.t_end, other, t0))
            seen_versions[w.version] = w
            before = st.acked_before(w.t_send)
            if before is not None and w.version <= before.version:
                violations.append(Violation("write_regression", k, w.route, w.version,
                                            f"a version above {before.version} (acknowledged before this "
                                            f"update was sent)", w.t_send, w.t_end, before, t0))

    routes = collections.Counter()
    sources = collections.Counter(f"{r.route} {r.source}" for r in reads if r.source)
    observations = collections.Counter()
    checkable = collections.Counter()
    close_calls = 0
    untracked = 0
    for r in reads:
        first = len(violations)
        routes[r.route] += 1
        seen = dict(r.seen)
        if r.covers is not None:
            for m in groups.get(r.covers, ()):
                seen.setdefault(m, None)
        for k, v in seen.items():
            st = states.get(k)
            if st is None or st.create is None:
                untracked += 1
                continue
            observations[r.route] += 1
            created_before = st.create.t_ack < r.t_start
            delete_excuse = st.delete_first_send is not None and st.delete_first_send < r.t_end
            deleted_before = st.delete_acked is not None and st.delete_acked.t_ack < r.t_start
            best = st.acked_before(r.t_start)
            if created_before and not delete_excuse:
                checkable["must_exist"] += 1
            if deleted_before:
                checkable["must_be_absent"] += 1
            if v is None:
                if created_before and not delete_excuse:
                    violations.append(Violation(
                        "lost_create", k, r.route, None,
                        "the row (its create was acknowledged before the read started; no delete was sent "
                        "before it ended)", r.t_start, r.t_end, st.create, t0))
                continue
            if deleted_before:
                violations.append(Violation("resurrected", k, r.route, v,
                                            "absent (its delete was acknowledged before the read started)",
                                            r.t_start, r.t_end, st.delete_acked, t0))
                continue
            if best is not None:
                checkable["versioned_after_ack"] += 1
                if (r.t_start - best.t_ack) * 1000 <= close_ms:
                    close_calls += 1
                if v < best.version:
                    violations.append(Violation("stale", k, r.route, v, f"version >= {best.version}",
                                                r.t_start, r.t_end, best, t0))
                    continue
            limit = st.max_possible_version(r.t_end)
            if v > limit:
                violations.append(Violation("future", k, r.route, v,
                                            f"version <= {limit} (1 + updates sent before the read ended)",
                                            r.t_start, r.t_end, None, t0))
        for v in violations[first:]:
            v.note = v.note or (f"answer's source: {r.source}" if r.source else "")
            v.note += f" (request id {r.rid})" if r.rid else ""

    violations.sort(key=lambda v: (v.read_start if v.read_start is not None else 0.0))
    wk = collections.Counter(f"{w.kind}:{w.outcome}" for w in writes)
    span = [x for r in reads for x in (r.t_start, r.t_end)] + [x for w in writes for x in (w.t_send, w.t_end)]
    summary = {
        "reads": len(reads),
        "observations": sum(observations.values()),
        "writes": len(writes),
        "acked_writes": sum(1 for w in writes if w.outcome == ACKED),
        "writes_by_kind": dict(sorted(wk.items())),
        "reads_by_route": dict(sorted(routes.items())),
        "observations_by_route": dict(sorted(observations.items())),
        "reads_by_source": dict(sorted(sources.items())),
        "errors": len(errors),
        "errors_by_route": dict(sorted(collections.Counter(f"{e[0]}: {e[3][:60]}" for e in errors).items())),
        "checkable": dict(sorted(checkable.items())),
        "close_calls": close_calls,
        "untracked_observations": untracked,
        "keys": len(states),
        "span_s": round(max(span) - min(span), 2) if span else 0,
    }
    return Result(violations, summary)


def check_final(history: History, final: Dict[Key, Optional[int]]) -> List[str]:
    """Compares each key's row on the primary after the run (`final`: version, or None if gone) with the
    history: an acknowledged delete leaves no row; an acknowledged create with no delete sent leaves one;
    the version is at least the highest acknowledged one and at most that plus the updates whose outcome
    is unknown (exactly the highest acknowledged one when every update was answered). Returns problems."""
    with history._lock:
        writes = list(history.writes)
    by_key = collections.defaultdict(list)
    for w in writes:
        by_key[w.key].append(w)
    problems = []
    for k in sorted(final):
        ws = by_key.get(k, [])
        got = final[k]
        deletes = [w for w in ws if w.kind == DELETE]
        if any(w.outcome == ACKED for w in deletes):
            if got is not None:
                problems.append(f"{key_str(k)}: expected no row (delete acknowledged), got version {got}")
            continue
        if any(w.outcome == UNKNOWN for w in deletes):
            if got is None:
                continue
        created = any(w.kind == CREATE and w.outcome == ACKED for w in ws)
        if got is None:
            if created:
                problems.append(f"{key_str(k)}: expected the row (create acknowledged, no delete), got none")
            continue
        acked = [w.version for w in ws if w.kind in (CREATE, UPDATE) and w.outcome == ACKED]
        unknown = sum(1 for w in ws if w.kind == UPDATE and w.outcome == UNKNOWN)
        if not acked:
            continue
        hi = max(acked)
        if not (hi <= got <= hi + unknown):
            want = (f"version {hi}" if unknown == 0 else
                    f"a version in {hi}..{hi + unknown} ({unknown} unanswered updates)")
            problems.append(f"{key_str(k)}: expected {want} (highest acknowledged), got {got}")
    return problems


def failed_requests(history: History):
    """(t_send, t_end, route, what) of every request answered 5xx or not at all: writes, and the reads and
    creates logged as errors ("status N [code]" or an exception). `what` is the error code, "status N"
    when the answer had none, or "no answer"."""
    with history._lock:
        writes = list(history.writes)
        errors = list(history.errors)
    out = []
    for w in writes:
        if w.status is None:
            out.append((w.t_send, w.t_end, w.route, "no answer"))
        elif w.status >= 500:
            out.append((w.t_send, w.t_end, w.route, w.code or f"status {w.status}"))
    for route, t_start, t_end, what in errors:
        parts = what.split()
        if parts[:1] != ["status"]:
            out.append((t_start, t_end, route, "no answer"))
        elif len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) >= 500:
            out.append((t_start, t_end, route, parts[2] if len(parts) > 2 else f"status {parts[1]}"))
    return sorted(out)


def unavailability(history: History, gap_s=0.5):
    """How long clients were turned away, from the history: each failed request (failed_requests) spans
    [sent, answered]; spans less than `gap_s` apart are one window (a client that failed tries again at
    once: the gap between its attempts is not availability). Returns {"unavailable_s": the windows' total,
    "windows": [(start, end) in seconds from the history's t0], "failed": n, "by_code": {code: n}}."""
    failed = failed_requests(history)
    windows = []
    for t_send, t_end, _, _ in failed:
        if windows and t_send <= windows[-1][1] + gap_s:
            windows[-1][1] = max(windows[-1][1], t_end)
        else:
            windows.append([t_send, t_end])
    t0 = history.t0
    return {"unavailable_s": round(sum(end - start for start, end in windows), 2),
            "windows": [(round(start - t0, 2), round(end - t0, 2)) for start, end in windows],
            "failed": len(failed),
            "by_code": dict(collections.Counter(what for _, _, _, what in failed).most_common())}
