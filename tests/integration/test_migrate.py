"""Integration tests for `pgapi migrate` and `pgapi seed` (tools/migrate.c, tools/seed.c, migrations/).

Destructive tests run in a scratch database per test (mig_test_<random>, owned by app, reached straight
on the primary); the concurrency test goes through PgBouncer (transaction mode) to the shared database
and leaves it fully migrated, as the other tests expect. Binary: $PGAPI_TEST_BINARY, else the ASan build.
"""

import difflib
import glob
import os
import re
import shutil
import socket
import subprocess
import time
import uuid

import psycopg2
import pytest

from lib.pgapi_server import free_port
from lib.topology import HOST, REPO_ROOT

BINARY = os.environ.get("PGAPI_TEST_BINARY", os.path.join(REPO_ROOT, "build", "asan", "pgapi"))
MIGRATIONS_DIR = os.path.join(REPO_ROOT, "migrations")
PGBIN = os.environ.get("PGAPI_PGBIN", "/usr/lib/postgresql/15/bin")
BAD_OUTPUT_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Assertion")
STATUS_LINE = re.compile(r"^(\d{4})  (\S+)\s+(applied|pending)\s+(\S+)\s*(.*)$")
TOOL_TIMEOUT = 120


# ---------------------------------------------------------------- helpers

def real_migrations():
    """[(id, name, filename)] of the repository's migrations, in order."""
    out = []
    for path in sorted(glob.glob(os.path.join(MIGRATIONS_DIR, "[0-9][0-9][0-9][0-9]_*.sql"))):
        fname = os.path.basename(path)
        out.append((int(fname[:4]), fname[5:-4], fname))
    assert out, f"expected migration files in {MIGRATIONS_DIR}, found none"
    return out


def tool_env(topology, dsn, migrations_dir=MIGRATIONS_DIR):
    env = dict(topology.env)
    env.pop("PGAPI_CONFIG", None)
    env["PGAPI_DATABASE_PRIMARY"] = dsn
    env["PGAPI_DATABASE_MIGRATIONS_DIR"] = migrations_dir
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    return env


def check_clean_output(proc_args, out, err):
    bad = [l for l in (out + err).splitlines() if any(m in l for m in BAD_OUTPUT_MARKERS)]
    assert not bad, f"`{' '.join(proc_args)}` printed sanitizer/assert lines (expected none):\n" + "\n".join(bad)


class Result:
    def __init__(self, args, rc, out, err, seconds):
        self.args, self.rc, self.out, self.err, self.seconds = args, rc, out, err, seconds

    @property
    def text(self):
        return self.out + self.err

    def describe(self):
        return (f"`pgapi {' '.join(self.args)}` exited {self.rc}\n--- stdout ---\n{self.out}"
                f"--- stderr ---\n{self.err}")

    def expect(self, rc):
        assert self.rc == rc, f"expected exit {rc}, got:\n{self.describe()}"
        return self


def run_tool(env, *args, timeout=TOOL_TIMEOUT):
    t0 = time.monotonic()
    p = subprocess.run([BINARY, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    res = Result(list(args), p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    check_clean_output(res.args, p.stdout, p.stderr)
    return res


def status_rows(result):
    """{id: (name, state, applied_at, flags)} from `migrate status` output."""
    rows = {}
    for line in result.out.splitlines():
        m = STATUS_LINE.match(line)
        if m:
            rows[int(m.group(1))] = (m.group(2), m.group(3), m.group(4), m.group(5).strip())
    return rows


def fetch_all(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def fetch_one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def copy_migrations(dest):
    os.makedirs(dest, exist_ok=True)
    for path in glob.glob(os.path.join(MIGRATIONS_DIR, "*.sql")):
        shutil.copy(path, dest)
    return str(dest)


def diff(a, b, a_name, b_name):
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), a_name, b_name))


class ScratchDb:
    """A throw-away database owned by app on the primary, and the env to point the tools at it."""

    def __init__(self, topology, name):
        self.topology = topology
        self.name = name
        self.dsn = f"host={HOST} port={topology.primary_port} dbname={name} user=app"
        self._conns = []

    def env(self, migrations_dir=MIGRATIONS_DIR):
        return tool_env(self.topology, self.dsn, migrations_dir)

    def connect(self):
        conn = psycopg2.connect(host=HOST, port=self.topology.primary_port, dbname=self.name, user="app",
                                passfile=os.path.join(self.topology.dir, "pgpass"), connect_timeout=5)
        conn.autocommit = True
        self._conns.append(conn)
        return conn

    def dump_schema(self):
        """pg_dump --schema-only as postgres over the unix socket: the whole schema, as text."""
        pg_dump = os.path.join(PGBIN, "pg_dump")
        if not os.path.exists(pg_dump):
            pg_dump = "pg_dump"
        p = subprocess.run([pg_dump, "--schema-only", "--no-owner", "-h",
                            self.topology.vars["PGAPI_PRIMARY_SOCKET_DIR"], "-p", str(self.topology.primary_port),
                            "-U", "postgres", self.name],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert p.returncode == 0, f"pg_dump of {self.name} exited {p.returncode}, expected 0:\n{p.stderr}"
        # recent pg_dump wraps its output in \restrict KEY / \unrestrict KEY with a random key per run
        return "".join(l for l in p.stdout.splitlines(True) if not l.startswith(("\\restrict ", "\\unrestrict ")))

    def close(self):
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture
def scratch(topology):
    name = "mig_test_" + uuid.uuid4().hex[:12]
    admin = topology.primary_admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER app')
    db = ScratchDb(topology, name)
    yield db
    db.close()
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated(scratch):
    run_tool(scratch.env(), "migrate", "up").expect(0)
    return scratch


def dead_dsn():
    return f"host={HOST} port={free_port()} dbname=nosuchdb user=app connect_timeout=3"


# ---------------------------------------------------------------- migrate

def test_each_down_exactly_undoes_its_up(scratch):
    env = scratch.env()
    migs = real_migrations()
    # a "down" with nothing applied only creates the (empty) schema_migrations: the baseline
    r = run_tool(env, "migrate", "down").expect(0)
    assert "nothing to revert" in r.out, f"expected 'nothing to revert', got:\n{r.describe()}"
    dumps = [scratch.dump_schema()]
    for mid, _, fname in migs:
        r = run_tool(env, "migrate", "up", "1").expect(0)
        assert f"applied {fname}" in r.out, f"expected 'applied {fname}', got:\n{r.describe()}"
        dumps.append(scratch.dump_schema())
        assert dumps[-1] != dumps[-2], f"{fname} changed nothing in the schema dump"
    for k in range(len(migs), 0, -1):
        fname = migs[k - 1][2]
        r = run_tool(env, "migrate", "down").expect(0)
        assert f"reverted {fname}" in r.out, f"expected 'reverted {fname}', got:\n{r.describe()}"
        got = scratch.dump_schema()
        assert got == dumps[k - 1], (f"after reverting {fname} the schema differs from before applying it "
                                     f"(expected == got):\n" + diff(dumps[k - 1], got, "expected", "got"))
    run_tool(env, "migrate", "up").expect(0)
    got = scratch.dump_schema()
    assert got == dumps[-1], ("up -> down all -> up gave another schema (expected == got):\n" +
                              diff(dumps[-1], got, "expected", "got"))
    for table in ("users", "posts", "schema_migrations"):
        assert f"CREATE TABLE public.{table} " in got, f"expected table {table} in the dump, got:\n{got}"


def test_status_lists_applied_and_pending(scratch, tmp_path):
    migs = real_migrations()
    d = copy_migrations(tmp_path / "m")
    for junk in ("README", "12_short.sql", "0099_Upper.sql"):
        (tmp_path / "m" / junk).write_text("-- +up\n-- +down\n")
    env = scratch.env(d)
    r = run_tool(env, "migrate", "status").expect(0)
    rows = status_rows(r)
    expected = {mid: (name, "pending") for mid, name, _ in migs}
    assert {k: v[:2] for k, v in rows.items()} == expected, f"expected rows {expected}, got:\n{r.describe()}"
    for junk in ("README", "12_short.sql", "0099_Upper.sql"):
        assert f"ignoring {junk}" in r.err, f"expected a warning 'ignoring {junk}', got:\n{r.describe()}"
    first = migs[0][0]
    run_tool(env, "migrate", "up", "1").expect(0)
    rows = status_rows(run_tool(env, "migrate", "status").expect(0))
    for mid, name, _ in migs:
        want = "applied" if mid == first else "pending"
        assert rows[mid][1] == want, f"migration {mid}: expected {want}, got {rows[mid]}"
        assert rows[mid][3] == "", f"migration {mid}: expected no flag, got {rows[mid][3]!r}"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", rows[first][2]), f"expected applied_at, got {rows[first]}"
    run_tool(env, "migrate", "up").expect(0)
    r = run_tool(env, "migrate", "status").expect(0)
    states = {k: v[1] for k, v in status_rows(r).items()}
    assert states == {mid: "applied" for mid, _, _ in migs}, f"expected all applied, got:\n{r.describe()}"
    db = scratch.connect()
    got = fetch_all(db, "SELECT id, name, length(checksum) FROM schema_migrations ORDER BY id")
    assert got == [(mid, name, 64) for mid, name, _ in migs], f"schema_migrations: got {got}"


def test_changed_applied_file_refuses_up(scratch, tmp_path):
    d = copy_migrations(tmp_path / "m")
    env = scratch.env(d)
    run_tool(env, "migrate", "up").expect(0)
    migs = real_migrations()
    edited = migs[1][2] if len(migs) > 1 else migs[0][2]
    with open(os.path.join(d, edited), "a") as f:
        f.write("-- an innocent-looking edit\n")
    nxt = migs[-1][0] + 1
    with open(os.path.join(d, f"{nxt:04d}_pending_one.sql"), "w") as f:
        f.write("-- +up\nCREATE TABLE must_not_exist (i int);\n-- +down\nDROP TABLE must_not_exist;\n")
    r = run_tool(env, "migrate", "up")
    assert r.rc == 1, f"expected exit 1 for an edited applied migration, got:\n{r.describe()}"
    assert edited in r.err and "CHECKSUM MISMATCH" in r.err, \
        f"expected the error to name {edited} and CHECKSUM MISMATCH, got:\n{r.describe()}"
    db = scratch.connect()
    assert fetch_one(db, "SELECT to_regclass('must_not_exist')") == (None,), \
        "expected the pending migration not to run after the refusal"
    r = run_tool(env, "migrate", "status")
    assert r.rc == 1, f"expected status to exit 1 on a mismatch, got:\n{r.describe()}"
    rows = status_rows(r)
    edited_id = int(edited[:4])
    assert rows[edited_id][3] == "CHECKSUM MISMATCH", f"expected the flag on {edited}, got:\n{r.describe()}"
    assert rows[nxt][1] == "pending", f"expected {nxt} pending, got:\n{r.describe()}"


def test_missing_applied_file_refuses_up(scratch, tmp_path):
    d = copy_migrations(tmp_path / "m")
    env = scratch.env(d)
    run_tool(env, "migrate", "up").expect(0)
    last_id, last_name, last_file = real_migrations()[-1]
    os.remove(os.path.join(d, last_file))
    r = run_tool(env, "migrate", "up")
    assert r.rc == 1, f"expected exit 1 for an applied migration without file, got:\n{r.describe()}"
    assert last_file in r.err and "MISSING FILE" in r.err, \
        f"expected the error to name {last_file} and MISSING FILE, got:\n{r.describe()}"
    r = run_tool(env, "migrate", "status")
    assert r.rc == 1, f"expected status exit 1, got:\n{r.describe()}"
    rows = status_rows(r)
    assert rows.get(last_id) and rows[last_id][:2] == (last_name, "applied") and rows[last_id][3] == "MISSING FILE", \
        f"expected '{last_id:04d} {last_name} applied ... MISSING FILE', got:\n{r.describe()}"
    r = run_tool(env, "migrate", "down")
    assert r.rc == 1 and last_file in r.err, f"expected down to refuse naming {last_file}, got:\n{r.describe()}"


def test_failing_migration_is_rolled_back_and_reported(scratch, tmp_path):
    d = copy_migrations(tmp_path / "m")
    env = scratch.env(d)
    migs = real_migrations()
    nxt = migs[-1][0] + 1
    broken = f"{nxt:04d}_broken.sql"
    with open(os.path.join(d, broken), "w") as f:
        f.write("-- a broken migration\n-- +up\nCREATE TABLE half_done (i int);\n"
                "SELECT 'back\\slash';\nSELEC 1;\n-- +down\nDROP TABLE half_done;\n")
    r = run_tool(env, "migrate", "up")
    assert r.rc == 1, f"expected exit 1 for a broken migration, got:\n{r.describe()}"
    assert f"{broken}:5:" in r.err and 'syntax error at or near "SELEC"' in r.err, \
        f"expected '{broken}:5: ... syntax error at or near \"SELEC\"', got:\n{r.describe()}"
    db = scratch.connect()
    got = [row[0] for row in fetch_all(db, "SELECT id FROM schema_migrations ORDER BY id")]
    assert got == [m[0] for m in migs], f"expected the good migrations applied ({[m[0] for m in migs]}), got {got}"
    assert fetch_one(db, "SELECT to_regclass('half_done')") == (None,), \
        "expected the broken migration's first statement rolled back, but table half_done exists"
    # a migration that commits on its own would escape the lock and the bookkeeping: refused
    with open(os.path.join(d, broken), "w") as f:
        f.write("-- +up\nCREATE TABLE self_commit (i int);\nCOMMIT;\n-- +down\nDROP TABLE self_commit;\n")
    r = run_tool(env, "migrate", "up")
    assert r.rc == 1 and "ended the transaction" in r.err, \
        f"expected a refusal of COMMIT inside a migration, got:\n{r.describe()}"


def test_concurrent_up_through_pgbouncer_applies_each_once(topology, tmp_path):
    """Three runners at once on the shared database through PgBouncer (transaction mode): the
    transaction-scoped advisory lock plus re-reading schema_migrations under it must apply every
    migration exactly once. Extra migrations (unique tables, CREATE without IF NOT EXISTS so a second
    run would fail) are reverted afterwards; the repository's ones stay applied."""
    migs = real_migrations()
    d = copy_migrations(tmp_path / "m")
    tag = uuid.uuid4().hex[:8]
    first_extra = migs[-1][0] + 1
    extras = list(range(first_extra, first_extra + 4))
    for n in extras:
        with open(os.path.join(d, f"{n:04d}_conc_{tag}_{n}.sql"), "w") as f:
            f.write(f"-- +up\nCREATE TABLE conc_{tag}_{n} (i int);\nSELECT pg_sleep(0.2);\n"
                    f"-- +down\nDROP TABLE conc_{tag}_{n};\n")
    dsn = f"host={HOST} port={topology.bouncer_port} dbname=pgapi_rw user=app"
    env = tool_env(topology, dsn, d)
    rw = topology.rw()
    try:
        procs = [subprocess.Popen([BINARY, "migrate", "up"], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=TOOL_TIMEOUT)
            outs.append((p.returncode, out, err))
            check_clean_output(["migrate", "up"], out, err)
        report = "\n".join(f"runner {i}: exit {rc}\n{out}{err}" for i, (rc, out, err) in enumerate(outs))
        assert all(rc == 0 for rc, _, _ in outs), f"expected every runner to exit 0, got:\n{report}"
        applied_lines = [l for _, out, _ in outs for l in out.splitlines() if l.startswith("applied ")]
        for n in extras:
            fname = f"{n:04d}_conc_{tag}_{n}.sql"
            count = sum(1 for l in applied_lines if l.startswith(f"applied {fname} "))
            assert count == 1, f"expected {fname} applied by exactly one runner, got {count}:\n{report}"
        ids = [r[0] for r in fetch_all(rw, "SELECT id FROM schema_migrations ORDER BY id")]
        want = [m[0] for m in migs] + extras
        assert ids == want, f"expected schema_migrations ids {want}, got {ids}"
        for n in extras:
            assert fetch_one(rw, "SELECT to_regclass(%s)", (f"conc_{tag}_{n}",)) == (f"conc_{tag}_{n}",), \
                f"expected table conc_{tag}_{n} to exist"
        for t in ("users", "posts"):
            assert fetch_one(rw, "SELECT to_regclass(%s)", (t,)) == (t,), f"expected table {t} to exist"
    finally:
        # revert only our extras, whatever state the runners left
        for _ in extras:
            top = fetch_one(rw, "SELECT max(id) FROM schema_migrations WHERE id >= %s", (first_extra,))
            if not top or top[0] is None:
                break
            run_tool(env, "migrate", "down")
    ids = [r[0] for r in fetch_all(rw, "SELECT id FROM schema_migrations ORDER BY id")]
    assert ids == [m[0] for m in migs], f"expected only the real migrations left applied, got {ids}"


def test_create_writes_next_numbered_file(topology, tmp_path):
    d = copy_migrations(tmp_path / "m")
    env = tool_env(topology, dead_dsn(), d)  # create must not need the database
    nxt = real_migrations()[-1][0] + 1
    r = run_tool(env, "migrate", "create", "add_widgets").expect(0)
    path = os.path.join(d, f"{nxt:04d}_add_widgets.sql")
    assert r.out.strip() == path, f"expected the new path {path} on stdout, got:\n{r.describe()}"
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f]
    assert lines.count("-- +up") == 1 and lines.count("-- +down") == 1 \
        and lines.index("-- +up") < lines.index("-- +down"), f"expected one '-- +up' then one '-- +down', got {lines}"
    r = run_tool(env, "migrate", "create", "and_more_2").expect(0)
    assert r.out.strip() == os.path.join(d, f"{nxt + 1:04d}_and_more_2.sql"), f"expected next number, got:\n{r.describe()}"
    before = sorted(os.listdir(d))
    for bad in ("Bad", "has-dash", "a b", "", "x" * 61, "../escape"):
        r = run_tool(env, "migrate", "create", bad)
        assert r.rc == 2, f"expected exit 2 for name {bad!r}, got:\n{r.describe()}"
    assert sorted(os.listdir(d)) == before, f"expected no new file from bad names, got {sorted(os.listdir(d))}"
    r = run_tool(tool_env(topology, dead_dsn(), str(tmp_path / "nonexistent")), "migrate", "create", "x")
    assert r.rc == 1 and "nonexistent" in r.err, f"expected exit 1 naming the missing dir, got:\n{r.describe()}"


def test_created_file_applies_and_reverts(scratch, tmp_path):
    d = copy_migrations(tmp_path / "m")
    env = scratch.env(d)
    path = run_tool(env, "migrate", "create", "empty_one").expect(0).out.strip()
    run_tool(env, "migrate", "up").expect(0)
    r = run_tool(env, "migrate", "down").expect(0)
    assert f"reverted {os.path.basename(path)}" in r.out, f"expected the new file reverted, got:\n{r.describe()}"


def test_usage_errors_exit_2(topology):
    env = tool_env(topology, dead_dsn())
    for args in (["migrate"], ["migrate", "sideways"], ["migrate", "up", "0"], ["migrate", "up", "x"],
                 ["migrate", "down", "1", "2"], ["migrate", "status", "extra"], ["migrate", "create"]):
        r = run_tool(env, *args)
        assert r.rc == 2 and "usage:" in r.err, f"expected exit 2 with usage, got:\n{r.describe()}"


def test_connection_failure_names_server_not_password(topology):
    port = free_port()
    env = tool_env(topology, f"host={HOST} port={port} dbname=nosuchdb user=app password=sekrit-pw-123")
    for args in (["migrate", "status"], ["migrate", "up"], ["seed", "--users", "1"]):
        r = run_tool(env, *args)
        assert r.rc == 1, f"expected exit 1, got:\n{r.describe()}"
        for part in (f"host={HOST}", f"port={port}", "dbname=nosuchdb"):
            assert part in r.err, f"expected {part!r} in the error, got:\n{r.describe()}"
        assert "sekrit-pw-123" not in r.text, f"the password leaked into the output:\n{r.describe()}"


def test_silent_server_times_out(topology):
    """A server that accepts TCP but never answers: connect_timeout (here from the conninfo) ends it."""
    with socket.socket() as lsock:
        lsock.bind((HOST, 0))
        lsock.listen(8)  # never accept(): the kernel completes the handshake, nobody talks
        port = lsock.getsockname()[1]
        env = tool_env(topology, f"host={HOST} port={port} dbname=x user=app connect_timeout=2")
        r = run_tool(env, "migrate", "status", timeout=60)
    assert r.rc == 1 and f"port={port}" in r.err, f"expected exit 1 naming port {port}, got:\n{r.describe()}"
    assert r.seconds < 15, f"expected the connect timeout to end it within 15 s, took {r.seconds:.1f} s"


# ---------------------------------------------------------------- schema behaviour

def expect_sqlstate(conn, sql, args, sqlstate, constraint=None):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
    except psycopg2.Error as exc:
        assert exc.pgcode == sqlstate, f"{sql} {args}: expected SQLSTATE {sqlstate}, got {exc.pgcode}: {exc}"
        if constraint:
            got = exc.diag.constraint_name
            assert got == constraint, f"{sql}: expected constraint {constraint}, got {got}"
        return
    pytest.fail(f"{sql} {args}: expected SQLSTATE {sqlstate}, but it succeeded")


def test_constraints_hold(migrated):
    db = migrated.connect()
    ins_user = "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id"
    uid = fetch_one(db, ins_user, ("Ada", "ada@example.com"))[0]
    expect_sqlstate(db, ins_user, ("", "empty@example.com"), "23514", "users_name_check")
    expect_sqlstate(db, ins_user, ("x" * 201, "long@example.com"), "23514", "users_name_check")
    expect_sqlstate(db, ins_user, (None, "null@example.com"), "23502")
    expect_sqlstate(db, ins_user, ("No At", "no-at-sign.example.com"), "23514", "users_email_check")
    expect_sqlstate(db, ins_user, ("Lead At", "@example.com"), "23514", "users_email_check")
    expect_sqlstate(db, ins_user, ("Long", "a@" + "b" * 253), "23514", "users_email_check")
    expect_sqlstate(db, ins_user, ("Twin", "ada@example.com"), "23505", "users_email_key")
    fetch_one(db, ins_user, ("x" * 200, "a@b"))  # both bounds inclusive
    ins_post = "INSERT INTO posts (title, content, user_id) VALUES (%s, %s, %s) RETURNING id, content, version"
    expect_sqlstate(db, ins_post, ("t", "c", 987654321), "23503", "posts_user_id_fkey")
    expect_sqlstate(db, ins_post, ("", "c", uid), "23514", "posts_title_check")
    expect_sqlstate(db, ins_post, ("x" * 201, "c", uid), "23514", "posts_title_check")
    expect_sqlstate(db, ins_post, ("t", "c" * 10001, uid), "23514", "posts_content_check")
    fetch_one(db, ins_post, ("t", "c" * 10000, uid))
    got = fetch_one(db, "INSERT INTO posts (title, user_id) VALUES ('no content', %s) RETURNING content, version",
                    (uid,))
    assert got == ("", 1), f"expected default content '' and version 1, got {got}"
    with db.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id = %s", (uid,))
    left = fetch_one(db, "SELECT count(*) FROM posts WHERE user_id = %s", (uid,))[0]
    assert left == 0, f"expected the user's posts deleted with it (ON DELETE CASCADE), got {left} left"
    idx = fetch_one(db, "SELECT indexdef FROM pg_indexes WHERE indexname = 'posts_user_id_idx'")
    assert idx and idx[0].endswith("(user_id, id)"), f"expected posts_user_id_idx on (user_id, id), got {idx}"


def test_update_bumps_version_and_updated_at(migrated):
    db = migrated.connect()
    uid, v, created, updated = fetch_one(
        db, "INSERT INTO users (name, email) VALUES ('V', 'v@example.com') "
            "RETURNING id, version, created_at, updated_at")
    assert v == 1 and created == updated, f"expected version 1 and updated_at = created_at, got {v}, {created}, {updated}"
    got = fetch_one(db, "UPDATE users SET name = 'V2' WHERE id = %s RETURNING version, updated_at", (uid,))
    assert got[0] == 2 and got[1] > updated, f"expected version 2 and a later updated_at, got {got} (was {updated})"
    got = fetch_one(db, "UPDATE users SET version = 100 WHERE id = %s RETURNING version", (uid,))
    assert got == (3,), f"expected the trigger to force version 3 over the app's 100, got {got}"
    got = fetch_one(db, "UPDATE users SET name = name WHERE id = %s RETURNING version", (uid,))
    assert got == (4,), f"expected a no-op update to bump version to 4 too, got {got}"
    pid, pv = fetch_one(db, "INSERT INTO posts (title, user_id) VALUES ('p', %s) RETURNING id, version", (uid,))
    got = fetch_one(db, "UPDATE posts SET title = 'p2' WHERE id = %s RETURNING version", (pid,))
    assert pv == 1 and got == (2,), f"expected post version 1 then 2, got {pv} then {got}"


# ---------------------------------------------------------------- seed

def expected_seed(users, posts):
    u = {(f"User {i}", f"user{i}@example.com") for i in range(1, users + 1)}
    p = {(f"user{i}@example.com", f"Post {j} of user {i}", f"Content of post {j} by user {i}.")
         for i in range(1, users + 1) for j in range(1, posts + 1)}
    return u, p


def seed_rows(db):
    u = set(fetch_all(db, "SELECT name, email FROM users"))
    p = set(fetch_all(db, "SELECT u.email, p.title, p.content FROM posts p JOIN users u ON u.id = p.user_id"))
    return u, p


def test_seed_is_deterministic_and_idempotent(migrated):
    env = migrated.env()
    r = run_tool(env, "seed", "--users", "200").expect(0)
    assert "inserted 200 users and 600 posts" in r.out, f"expected 200 users and 600 posts inserted, got:\n{r.describe()}"
    r = run_tool(env, "seed", "--users=200").expect(0)
    assert "inserted 0 users and 0 posts" in r.out, f"expected nothing inserted the second time, got:\n{r.describe()}"
    db = migrated.connect()
    counts = fetch_one(db, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts)")
    assert counts == (200, 600), f"expected (200 users, 600 posts), got {counts}"
    want_u, want_p = expected_seed(200, 3)
    got_u, got_p = seed_rows(db)
    assert got_u == want_u, f"users differ: missing {sorted(want_u - got_u)[:5]}, unexpected {sorted(got_u - want_u)[:5]}"
    assert got_p == want_p, f"posts differ: missing {sorted(want_p - got_p)[:5]}, unexpected {sorted(got_p - want_p)[:5]}"
    ids = fetch_all(db, "SELECT id, email FROM users ORDER BY id LIMIT 3")
    assert [e for _, e in ids] == ["user1@example.com", "user2@example.com", "user3@example.com"], \
        f"expected users created in order, got {ids}"
    r = run_tool(env, "seed", "--users", "200", "--posts-per-user", "4").expect(0)
    assert "inserted 0 users and 200 posts" in r.out, f"expected only the 4th posts added, got:\n{r.describe()}"


def test_seed_is_fast(migrated):
    r = run_tool(migrated.env(), "seed", "--users", "10000", "--posts-per-user", "5").expect(0)
    assert r.seconds < 10, f"expected 10,000 users x 5 posts well under 10 s, took {r.seconds:.2f} s"
    counts = fetch_one(migrated.connect(), "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM posts)")
    assert counts == (10000, 50000), f"expected (10000, 50000), got {counts}"


def test_seed_without_schema_fails_cleanly(scratch):
    r = run_tool(scratch.env(), "seed", "--users", "5")
    assert r.rc == 1 and "migrate up" in r.err, f"expected exit 1 with a hint to migrate, got:\n{r.describe()}"


def test_seed_rejects_bad_arguments(topology):
    env = tool_env(topology, dead_dsn())
    for args in (["--users", "0"], ["--users", "10000001"], ["--users", "-5"], ["--users", "12x"],
                 ["--posts-per-user", "-1"], ["--posts-per-user", "1001"], ["--users"], ["--bogus"], ["extra"]):
        r = run_tool(env, "seed", *args)
        assert r.rc == 2 and "usage:" in r.err, f"expected exit 2 with usage, got:\n{r.describe()}"
