"""Issue 4: the worker's database pool against the real topology: concurrency on a small pool, reads on
the replica and writes on the primary (PgBouncer SHOW STATS), read-your-writes with replay paused on the
replica, and fallback to the primary while the replica is down."""

import concurrent.futures
import json
import os
import socket
import subprocess
from contextlib import closing
import time
import uuid

import pytest

from lib.bouncer import bouncer_admin_run, bouncer_queries, replay_pause, replay_resume
from lib.builders import create_user
from lib.metrics import scrape, total
from lib.pgapi_server import PgapiServer
from lib.topology import wait_until


def wait_stats_settle(topology):
    time.sleep(0.3)  # PgBouncer refreshes SHOW STATS every stats_period; totals are exact counters
    return bouncer_queries(topology)


def test_hundred_concurrent_reads_on_a_small_pool(api):
    u = create_user(api)
    with concurrent.futures.ThreadPoolExecutor(100) as ex:
        results = list(ex.map(lambda i: api.get(f"/users/{u['id']}"), range(100)))
    bad = [r for r in results if r.status != 200]
    assert not bad, f"{len(bad)} of 100 reads failed, e.g. {bad[:3]}"


def test_reads_use_the_replica_and_writes_the_primary(api, schema):
    u = create_user(api)
    time.sleep(1.0)  # the replica replays the insert and the workers sample its position
    before = wait_stats_settle(schema)
    for _ in range(50):
        assert api.get(f"/users/{u['id']}").status == 200
    for i in range(10):
        assert api.request("PATCH", f"/users/{u['id']}", body={"name": f"w{i}"}).status == 200
    time.sleep(2.5)  # SHOW STATS totals are published every stats_period (1 s in the topology? default 60)
    after = bouncer_queries(schema)
    ro = after.get("pgapi_ro", 0) - before.get("pgapi_ro", 0)
    rw = after.get("pgapi_rw", 0) - before.get("pgapi_rw", 0)
    assert ro >= 50, f"expected at least 50 queries on the replica side, got {ro} (primary side {rw})"
    assert rw >= 20, f"expected the 10 writes (+ their LSN reads) on the primary side, got {rw}"


def test_read_your_writes_with_replay_paused(api, schema):
    u = create_user(api)
    time.sleep(1.0)
    replay_pause(schema)
    try:
        for i in range(20):
            r = api.request("PATCH", f"/users/{u['id']}", body={"name": f"v{i}"})
            assert r.status == 200, r
            got = api.get(f"/users/{u['id']}").json()
            assert got["name"] == f"v{i}" and got["version"] == r.json()["version"], \
                f"read after acknowledged write {i} returned {got}"
            listed = api.get(f"/users?after_id={u['id'] - 1}&limit=1").json()["data"][0]
            assert listed["name"] == f"v{i}", f"list after write {i} returned {listed}"
        created = create_user(api)
        assert api.get(f"/users/{created['id']}").status == 200, "404 after an acknowledged create"
        assert api.request("DELETE", f"/users/{created['id']}").status == 204
        assert api.get(f"/users/{created['id']}").status == 404, "row still visible after an acknowledged delete"
        # the replica really is behind: it does not have the last write
        with closing(schema.ro()) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM users WHERE id = %s", (u["id"],))
            assert cur.fetchone()[0] != "v19", "replay was not paused: the test proves nothing"
    finally:
        replay_resume(schema)
    # replay resumed: reads go back to the replica
    time.sleep(1.5)
    before = wait_stats_settle(schema)
    for _ in range(30):
        assert api.get(f"/users/{u['id']}").json()["name"] == "v19"
    time.sleep(2.5)
    after = bouncer_queries(schema)
    ro = after.get("pgapi_ro", 0) - before.get("pgapi_ro", 0)
    assert ro >= 30, f"expected reads back on the replica after resume, got {ro} replica-side queries"


def migrated_own_topology(make_topology):
    """A topology of the test's own at base + 20, up and migrated."""
    from lib.pgapi_fixtures import migrate_env
    from lib.pgapi_server import BINARY, REPO_ROOT
    topo = make_topology(20)
    topo.up()
    p = subprocess.run([BINARY, "migrate", "up"], env=migrate_env(topo), cwd=REPO_ROOT, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert p.returncode == 0, p.stderr
    return topo


def test_replica_down_reads_fall_back_to_primary(make_topology, tmp_path):
    topo = migrated_own_topology(make_topology)
    s = PgapiServer(str(tmp_path), topology=topo, workers=1,
                    overrides={"redis": {"enabled": "off"}, "database": {"health_interval": "200ms"}})
    s.start()
    try:
        s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 20, "replica in rotation")
        u = create_user(s)
        subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m",
                        "fast", "-D", topo.vars["PGAPI_REPLICA_PGDATA"]], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=60)
        failures = [r for r in (s.get(f"/users/{u['id']}") for _ in range(50)) if r.status != 200]
        assert not failures, f"reads failed with the replica down: {failures[:3]}"
        s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 0, 10, "replica out of rotation")
        assert s.get("/readyz").status == 200, "the primary is up: still ready"
        topo.up()  # restarts the stopped replica
        s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 30, "replica back in rotation")
        assert s.get(f"/users/{u['id']}").status == 200
    finally:
        rc = s.stop()
        assert rc == 0 and not s.bad_log_lines(), s.log_tail(60)


def test_queue_full_and_queue_timeout_give_503_fast(schema, server):
    import threading
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "off"},
                          "database": {"pool_size": 1, "queue_size": 2, "queue_timeout": "500ms",
                                       "statement_timeout": "1s", "health_interval": "10s"}}).start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 15, "ready")
    u = create_user(s)
    bouncer_admin_run(schema, "PAUSE pgapi_rw")
    try:
        results = []

        def patch(i):
            t0 = time.monotonic()
            r = s.request("PATCH", f"/users/{u['id']}", body={"name": f"q{i}"}, timeout=30)
            results.append((r.status, r.json()["error"]["code"] if r.status != 200 else "", time.monotonic() - t0))

        threads = [threading.Thread(target=patch, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        bouncer_admin_run(schema, "RESUME pgapi_rw")
    statuses = sorted(r[0] for r in results)
    assert statuses == [503] * 6, f"expected every write to fail with 503 while PgBouncer is paused, got {results}"
    # queued ones were never sent (database_unavailable); one sent and held by PgBouncer past the statement
    # bound may or may not have been applied, as far as the server can tell (write_outcome_unknown)
    assert all(r[1] in ("database_unavailable", "write_outcome_unknown") for r in results), results
    assert sum(r[1] == "database_unavailable" for r in results) >= 4, results
    assert max(r[2] for r in results) < 5, f"a request hung past its bound: {results}"
    # queue_size 2 on a pool of 1: at least three of six were refused at once (queue full)
    assert sum(1 for r in results if r[2] < 0.4) >= 3, f"expected immediate refusals when the queue is full: {results}"
    assert "queue is full" in s.log_text() and "timed out waiting" in s.log_text(), s.log_tail()
    s.wait_for(lambda: s.request("PATCH", f"/users/{u['id']}", body={"name": "after"}).status == 200, 15,
               "writes succeed again after RESUME")


def test_lagging_replica_leaves_rotation(schema, server):
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "off"},
                          "database": {"max_replica_lag": "1s", "health_interval": "200ms"}}).start()
    rep = lambda: s.get("/readyz").json()["replicas"][0]
    s.wait_for(lambda: rep()["up"], 15, "replica in rotation")
    u = create_user(s)
    replay_pause(schema)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and rep()["up"]:
            assert s.request("PATCH", f"/users/{u['id']}", body={"name": "lag"}).status == 200
            time.sleep(0.3)
        state = rep()
        assert not state["up"] and state["lag_ms"] > 1000, f"expected the lagging replica out of rotation: {state}"
        assert s.get(f"/users/{u['id']}").json()["name"] == "lag", "reads must come from the primary meanwhile"
        assert "over max_replica_lag" in s.log_text(), s.log_tail()
    finally:
        replay_resume(schema)
    s.wait_for(lambda: rep()["up"], 15, "replica back in rotation after replay resumed")


def test_dead_database_gives_503_json(server):
    s = server(workers=1).start()  # primary and replica point at port 1
    for method, path, body in [("GET", "/users/1", None), ("GET", "/users", None),
                               ("POST", "/users", {"name": "n", "email": "a@b.co"}),
                               ("DELETE", "/users/1", None)]:
        t0 = time.monotonic()
        r = s.request(method, path, body=body)
        assert r.status == 503 and r.json()["error"]["code"] == "database_unavailable", f"{method} {path}: {r}"
        assert time.monotonic() - t0 < 3, f"{method} {path} took {time.monotonic() - t0:.1f}s"


def test_concurrent_reads_are_batched_and_each_gets_its_own_row(schema, server):
    """Reads of one statement that queue behind a busy pool run as one `id = ANY($1)`: fewer statements
    reach PgBouncer than requests were made, and every request still gets its own row (or its 404).
    The reads are made to queue: PgBouncer holds the worker's two connections (PAUSE) while 1,020
    clients send one read each, and lets go once the worker has queued them. (Sent as fast as this
    client could, they queued only when the worker outran it: on a busy machine 927 statements ran for
    1,020 reads.)"""
    ids = []
    for _ in range(20):
        ids.append(new_user_on(schema)["id"])
    missing = [max(ids) + 1000 + i for i in range(10)]
    srv = queueing_server(schema, server)
    wanted = (ids + missing) * 34  # 1,020 reads: other servers' health checks are noise beside them
    before = wait_stats_settle(schema)
    # all but the two that PgBouncer holds wait in the worker's queues
    socks = sent_while_paused(schema, srv, ("pgapi_ro", "pgapi_rw"), lambda: reads_send(srv, wanted),
                              len(wanted) - 2)
    answers = [read_answer(sock) for sock in socks]
    time.sleep(2.5)
    after = bouncer_queries(schema)
    for i, (status, body) in zip(wanted, answers):
        if i in missing:
            assert status == 404, (i, status, body)
        else:
            assert status == 200 and json.loads(body)["id"] == i, (i, status, body)
    queries = sum(after.get(d, 0) - before.get(d, 0) for d in ("pgapi_ro", "pgapi_rw"))
    # without batching: one statement per read, plus other servers' health checks (so above 1,020)
    assert queries < len(wanted) * 0.9, f"{queries} statements for {len(wanted)} reads: no batching"


def test_reads_the_primary_takes_from_the_replicas_queue_are_batched_too(schema, server):
    """While the replica's connection is held, the primary's connection takes the reads queued for the
    replicas: as batches, as it takes its own, not one statement per read."""
    ids = [new_user_on(schema)["id"] for _ in range(20)]
    srv = queueing_server(schema, server)
    wanted = ids * 25  # 500 reads
    before = wait_stats_settle(schema)
    bouncer_admin_run(schema, "PAUSE pgapi_ro")
    try:  # the replica's connection stays held past the primary's
        socks = sent_while_paused(schema, srv, ("pgapi_rw",), lambda: reads_send(srv, wanted), len(wanted) - 2)
        answers = [read_answer(sock) for sock in socks[1:]]  # the first read is the one held
    finally:
        bouncer_admin_run(schema, "RESUME pgapi_ro")
    read_answer(socks[0])
    after = wait_stats_settle(schema)
    for i, (status, body) in zip(wanted[1:], answers):
        assert status == 200 and json.loads(body)["id"] == i, (i, status, body)
    on_primary = after.get("pgapi_rw", 0) - before.get("pgapi_rw", 0)
    assert on_primary < len(wanted) / 5, f"{on_primary} statements on the primary for {len(wanted) - 1} reads"


def queueing_server(schema, server):
    """One worker with one connection a side, a queue that holds every read the batching tests send and
    waits as long as they hold PgBouncer; serving once the replica has replayed what was inserted."""
    srv = server(workers=1, topology=schema, overrides={"redis": {"enabled": "off"},
                                                        "database": {"pool_size": "1", "queue_size": "2048",
                                                                     "queue_timeout": "60s"}})
    srv.start()
    srv.wait_for(lambda: srv.get("/readyz").status == 200, 20, "/readyz 200")
    time.sleep(1.0)  # the replica has replayed the inserts and the worker has sampled its position
    return srv


def sent_while_paused(schema, srv, dbs, send, queued):
    """send() while PgBouncer holds dbs (PAUSE), until `queued` requests wait in the worker's queues; then
    the databases are resumed. What send() returned (the sockets to read the answers from)."""
    for db in dbs:
        bouncer_admin_run(schema, f"PAUSE {db}")
    try:
        socks = send()
        srv.wait_for(lambda: total(scrape(srv), "pgapi_pool_waiting") >= queued, 30,
                     f"{queued} requests queued in the worker")
        return socks
    finally:
        for db in reversed(dbs):
            bouncer_admin_run(schema, f"RESUME {db}")


def reads_send(srv, ids):
    """One connection per id, each sending GET /users/<id> at once; the sockets, to read the answers."""
    socks = []
    for i in ids:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        sock.sendall(f"GET /users/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        socks.append(sock)
    return socks

def read_answer(sock):
    """(status, body) of the one answer a Connection: close request gets, read to the close."""
    with sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def new_user_on(topology):
    with closing(topology.rw()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO users (name, email) VALUES ('batch', %s) RETURNING id",
                    (f"batch-{uuid.uuid4().hex[:12]}@example.com",))
        row = cur.fetchone()
        conn.commit()
        return {"id": row[0]}


def test_concurrent_writes_share_commit_lsn_reads_and_read_their_writes(schema, server):
    """A commit-LSN read serves every write that committed before it was sent: under concurrency fewer
    than two statements per write reach the primary side, and each client still reads its own write."""
    srv = server(workers=1, topology=schema, overrides={"redis": {"enabled": "off"},
                                                        "database": {"pool_size": "2"}})
    srv.start()
    srv.wait_for(lambda: srv.get("/readyz").status == 200, 20, "/readyz 200")
    tag = uuid.uuid4().hex[:10]

    def write(i):
        email = f"lsn-{tag}-{i}@example.com"
        r = srv.request("POST", "/users", body={"name": "lsn", "email": email})
        return (r.status, r.json()["id"] if r.status == 201 else None, email)

    def read_back(created):
        status, uid, email = created
        got = srv.get(f"/users/{uid}")
        return got.status == 200 and got.json()["email"] == email

    n = 512  # other servers' health checks share the counters: noise beside this many
    before = wait_stats_settle(schema)
    with concurrent.futures.ThreadPoolExecutor(128) as ex:
        created = list(ex.map(write, range(n)))
    time.sleep(2.5)
    after = bouncer_queries(schema)
    assert all(c[0] == 201 for c in created), [c for c in created if c[0] != 201][:5]
    rw = after.get("pgapi_rw", 0) - before.get("pgapi_rw", 0)
    # one statement per create and one LSN read per create without sharing: 2n; creates shared alone
    # bring it under n + LSN reads, LSN reads shared alone under n + a few
    assert rw < n * 1.5, f"{rw} statements on the primary side for {n} writes: neither creates nor LSN reads shared"
    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        assert all(ex.map(read_back, created)), "a write was not visible to a read after its answer"


def test_concurrent_creates_share_statements_and_a_conflict_fails_only_its_own(schema, server):
    """Creates queued behind a busy pool run as one multi-row INSERT; when one row of it conflicts (a
    duplicate email) nothing of it commits and each create runs again alone: the duplicates get 409,
    every other create 201 with its own row, and no row is lost or doubled."""
    srv = server(workers=1, topology=schema, overrides={"redis": {"enabled": "off"},
                                                        "database": {"pool_size": "1"}})
    srv.start()
    srv.wait_for(lambda: srv.get("/readyz").status == 200, 20, "/readyz 200")
    tag = uuid.uuid4().hex[:10]
    emails = [f"mb-{tag}-{i}@example.com" for i in range(400)]
    emails += emails[::20]  # 20 duplicates spread over the load

    def create(email):
        r = srv.request("POST", "/users", body={"name": f"n {email}", "email": email})
        return email, r.status, (r.json() if r.status == 201 else None)

    before = wait_stats_settle(schema)
    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        outcomes = list(ex.map(create, emails))
    time.sleep(2.5)
    after = bouncer_queries(schema)
    created = [o for o in outcomes if o[1] == 201]
    conflicts = [o for o in outcomes if o[1] == 409]
    assert len(created) == 400 and len(conflicts) == 20, [o[:2] for o in outcomes if o[1] not in (201, 409)][:5]
    for email, _, body in created:
        assert body["email"] == email and body["name"] == f"n {email}", body
    assert len({body["id"] for _, _, body in created}) == 400
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT email, id FROM users WHERE email LIKE %s", (f"mb-{tag}-%",))
        rows = dict(cur.fetchall())
    assert rows == {body["email"]: body["id"] for _, _, body in created}
    # (how many statements ran depends on how the duplicates fell into batches: each batch holding one
    # runs again row by row; that creates share statements is asserted by the test without conflicts)


def test_concurrent_post_creates_with_a_missing_owner_fail_only_their_own(schema, server):
    """Posts created under load share multi-row INSERTs; one for a user that does not exist fails the
    shared statement (foreign key), so each runs again alone: it gets its 404, the others their 201."""
    srv = server(workers=1, topology=schema, overrides={"redis": {"enabled": "off"},
                                                        "database": {"pool_size": "1"}})
    srv.start()
    srv.wait_for(lambda: srv.get("/readyz").status == 200, 20, "/readyz 200")
    owners = [new_user_on(schema)["id"] for _ in range(5)]
    missing = max(owners) + 100000
    targets = [(owners[i % 5], f"t{i}") for i in range(300)] + [(missing, f"m{i}") for i in range(10)]

    def create(target):
        uid, title = target
        r = srv.request("POST", f"/users/{uid}/posts", body={"title": title, "content": "c"})
        return uid, title, r.status, (r.json() if r.status == 201 else None)

    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        outcomes = list(ex.map(create, targets))
    for uid, title, status, body in outcomes:
        if uid == missing:
            assert status == 404, (uid, title, status)
        else:
            assert status == 201 and body["user_id"] == uid and body["title"] == title, (uid, title, status, body)
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM posts WHERE user_id = ANY(%s)", (owners,))
        assert cur.fetchone()[0] == 300


def writes_send(srv, writes):
    """One connection per (method, path, body), each sent at once; the sockets, to read the answers."""
    socks = []
    for method, path, body in writes:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        socks.append(sock)
    return socks


def test_concurrent_patches_share_statements_and_each_gets_its_own_row(schema, server):
    """Plain PATCHes and PUTs queued behind a busy pool run as one UPDATE ... FROM per statement, rows
    locked in id order: each request still gets its own row (or its 404), two writes of one row never
    share a statement (both apply, one after the other), and a conflict (a duplicate email) fails only
    its own write (the shared statement commits nothing and each runs again alone)."""
    tag = uuid.uuid4().hex[:10]
    users = [new_user_on(schema)["id"] for _ in range(40)]
    taken = new_user_on(schema)["id"]
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT email FROM users WHERE id = %s", (taken,))
        taken_email = cur.fetchone()[0]
        cur.execute("INSERT INTO posts (user_id, title, content) SELECT %s, 'p', 'c' FROM generate_series(1, 10)"
                    " RETURNING id", (users[0],))
        posts = [r[0] for r in cur.fetchall()]
        conn.commit()
    missing = max(users + [taken]) + 100000
    writes = [("PATCH", f"/users/{u}", {"name": f"a-{tag}-{u}"}) for u in users[10:]]
    for u in users[:10]:  # each row twice in a row: never in one statement, both applied in turn
        writes += [("PATCH", f"/users/{u}", {"name": f"a-{tag}-{u}"}), ("PATCH", f"/users/{u}", {"name": f"c-{tag}-{u}"})]
    writes += [("PUT", f"/users/{u}", {"name": f"b-{tag}-{u}", "email": f"b-{tag}-{u}@example.com"})
               for u in users[10:20]]  # a PUT runs in statements of its own kind
    writes += [("PATCH", f"/users/{missing}", {"name": "nobody"}),
               ("PATCH", f"/users/{users[20]}", {"email": taken_email})]  # the conflict: 409
    writes += [("PATCH", f"/posts/{p}", {"title": f"t-{tag}-{p}"}) for p in posts]
    srv = queueing_server(schema, server)
    before = total(scrape(srv), "pgapi_pool_batches_total", side="primary")
    socks = sent_while_paused(schema, srv, ("pgapi_rw",), lambda: writes_send(srv, writes), len(writes) - 1)
    answers = [read_answer(sock) for sock in socks]
    batches = total(scrape(srv), "pgapi_pool_batches_total", side="primary") - before
    final = {}
    for (method, path, body), (status, raw) in zip(writes, answers):
        if path == f"/users/{missing}":
            assert status == 404, (path, status, raw)
            continue
        if body.get("email") == taken_email:
            assert status == 409, (path, status, raw)
            continue
        assert status == 200, (method, path, status, raw)
        row = json.loads(raw)
        assert f"/{row['id']}" == path[path.rindex("/"):], (path, row)
        for k, v in body.items():
            assert row[k] == v, (method, path, k, row)
        final.setdefault(path, []).append(row)
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name, email, version FROM users WHERE id = ANY(%s)", (users,))
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    for u in users:
        answered = sorted(final[f"/users/{u}"], key=lambda r: r["version"])
        if u in users[:20]:  # both writes applied, one after the other, each answered its own version
            assert len(answered) == 2 and answered[1]["version"] == answered[0]["version"] + 1, answered
        newest = answered[-1]
        assert rows[u] == (newest["name"], newest["email"], newest["version"]), (u, rows[u], newest)
    # 71 writes queued, at most 32 to a statement, of three kinds (users' PATCH and PUT, posts' PATCH):
    # at least one shared statement per kind, two for the 50 user PATCHes
    assert batches >= 4, f"{batches} shared statements for {len(writes)} queued writes"


def bouncer_waiting_clients(topology, db):
    """Client connections PgBouncer holds for db, waiting for a server (SHOW POOLS cl_waiting)."""
    conn = topology.bouncer_admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW POOLS")
            cols = [d[0] for d in cur.description]
            return sum(row[cols.index("cl_waiting")] for row in cur.fetchall() if row[cols.index("database")] == db)
    finally:
        conn.close()


def test_read_moves_to_the_primary_when_the_replica_holds_its_connection(schema, server):
    """Issue 14: a replica that went can hold its connections' statements in PgBouncer, unanswered, until the
    statement bound. A read arriving meanwhile must not wait behind them for queue_timeout while the primary
    has an idle connection. PAUSE pgapi_ro holds the replica's only connection the same way."""
    import threading
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "off"},
                          "database": {"pool_size": 1, "queue_timeout": "3s", "statement_timeout": "10s",
                                       "health_interval": "10s"}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 15, "replica in rotation")
    held = []
    bouncer_admin_run(schema, "PAUSE pgapi_ro")
    try:
        t = threading.Thread(target=lambda: held.append(s.get("/users/9000000000001", timeout=30)))
        t.start()
        wait_until(lambda: bouncer_waiting_clients(schema, "pgapi_ro") >= 1, 10,
                   "the first read held by PgBouncer on the replica's only connection")
        t0 = time.monotonic()
        r = s.get("/users/9000000000002")
        took = time.monotonic() - t0
    finally:
        bouncer_admin_run(schema, "RESUME pgapi_ro")
    t.join(30)
    assert r.status == 404, f"expected the second read answered (404) by the primary, got {r}"
    assert took < 1.0, f"expected the second read answered at once (queue_timeout is 3s), took {took:.2f}s"
    assert held and held[0].status == 404, f"expected the held read answered after RESUME, got {held}"


def test_reload_keeps_the_old_generation_serving_while_the_new_one_connects(schema, server):
    """A new worker accepts only once its primary answers (or a connection fails, or connect_timeout
    passes). A reload to a primary that does not answer yet (a listener that completes the TCP handshake
    and then says nothing) leaves the old generation serving writes meanwhile; before, the new workers
    took the requests at once and they waited in the pool queue until queue_timeout (503)."""
    import signal
    import socket
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes handshakes; nothing ever reads or answers
    try:
        s = server(workers=2, topology=schema,
                   overrides={"redis": {"enabled": "off"},
                              "database": {"connect_timeout": "10s", "queue_timeout": "500ms"}}).start()
        s.wait_for(lambda: s.get("/readyz").status == 200, 20, "/readyz 200")
        s.settings["database"]["primary"] = f"host=127.0.0.1 port={hole.getsockname()[1]} dbname=pgapi_rw user=app"
        s.write_ini()
        s.signal(signal.SIGHUP)
        s.wait_for(lambda: "reloading: generation 2" in s.log_text(), 10, "the reload to start")
        t0, statuses = time.monotonic(), []
        while time.monotonic() - t0 < 3:
            statuses.append(s.request("POST", "/users", body={"name": "warm-up",
                                                              "email": f"w-{uuid.uuid4().hex[:12]}@example.com"}).status)
        assert statuses and all(st == 201 for st in statuses), \
            f"expected every write during the new generation's warm-up served (201) by the old one, got {statuses}"
        assert "reload complete" not in s.log_text(), "the new generation must not serve before its primary answers"
    finally:
        hole.close()  # the new workers' connections fail: they serve (503 for writes) and the old ones go


def bouncer_ini_path(topo):
    """The topology's pgbouncer.ini (under its postgres-owned part, DIR/pg or what DIR/pgdata.path names)."""
    base = os.path.join(topo.dir, "pg")
    marker = os.path.join(topo.dir, "pgdata.path")
    if os.path.exists(marker):
        with open(marker) as f:
            base = f.readline().strip()
    return os.path.join(base, "pgbouncer", "pgbouncer.ini")


def test_a_read_the_primary_address_sends_to_a_standby_is_not_served(make_topology, tmp_path):
    """A load balancer in front of Patroni can hand PgBouncer's pgapi_rw a standby for a moment (HAProxy 2.6
    starts with every server up; a check takes a moment to see a promotion or a crash restart), while
    pgapi's own connections to PgBouncer stay up: no reconnection, so no health check runs. A read pgapi
    sends to the primary waits for no fence (it is taken as the newest data), so it must not be served
    there. Here pgapi_rw is re-pointed at the replica (RELOAD) while the replica's replay is paused and
    lacks the row: served, the read would be a 404 for an acknowledged create."""
    topo = migrated_own_topology(make_topology)
    s = PgapiServer(str(tmp_path), topology=topo, workers=1,
                    overrides={"redis": {"enabled": "off"},
                               "database": {"health_interval": "60s", "queue_timeout": "1s"}})
    s.start()
    try:
        s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 20, "replica in rotation")
        replay_pause(topo)
        u = create_user(s)
        path = f"/users/{u['id']}"
        assert s.get(path).status == 200, "the primary serves the new row"
        ini = bouncer_ini_path(topo)
        with open(ini) as f:
            text = f.read()
        rw = f"pgapi_rw = host=127.0.0.1 port={topo.primary_port} "
        assert rw in text, f"expected {rw!r} in {ini}"
        with open(ini, "w") as f:
            f.write(text.replace(rw, f"pgapi_rw = host=127.0.0.1 port={topo.replica_port} "))
        bouncer_admin_run(topo, "RELOAD")
        statuses = [s.get(path).status for _ in range(5)]
        assert 404 not in statuses, f"a read on the primary's address was served by the standby: {statuses}"
        # the first to meet the standby says so at warn level (the rest of the outage at debug): the read
        # ("a read found the primary's address leading to a standby") or, when a connection of the primary
        # side was made again first, its check ("the primary's address leads to a standby"); a helper's run
        # on a loaded machine met the second first and missed the first line
        log = s.log_text()
        assert "the primary's address leads to a standby" in log or "primary's address leading to a standby" in log, \
            s.log_tail(30)
    finally:
        replay_resume(topo)
        rc = s.stop()
    assert rc == 0, s.log_tail(60)
