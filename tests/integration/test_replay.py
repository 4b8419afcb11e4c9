"""Issue 20: replay positions learned from the replicas' own reads. A replica read returns the replica's
pg_last_wal_replay_lsn() in its statement, so reads a fresh write's fence sent to the primary return to
the replica without waiting for a health check (health_interval is set long here: 60 s, so that none runs
while a test waits), and what the client gets is the row alone (the column is the pool's). And the replica
wait: a read whose fence no replica has replayed yet waits (replica_wait) for one, probing its position,
and runs on the primary only if none replays it in time."""

import time
import uuid
from contextlib import closing

import pytest

from lib.bouncer import replay_pause, replay_resume
from lib.builders import create_user
from lib.metrics import scrape, total
from lib.pgapi_server import PgapiServer
from lib.topology import wait_until


def replica_queries(s):
    return total(scrape(s), "pgapi_pool_queries_total", backend="replica0")


def fence_reads(s):
    return total(scrape(s), "pgapi_pool_primary_reads_total", reason="fence")


def replica_waits(s, side):
    return total(scrape(s), "pgapi_pool_replica_waits_total", side=side)


def fence_bucket(user_id):
    """common/consistency.c bucket_of: the row fence a read by id waits for."""
    return ((user_id * 0x9E3779B97F4A7C15) % 2 ** 64 >> 52) % 4096


def create_user_apart(s):
    """A new user whose row fence is not the old user's (1 in 4096 would share it: the old user's reads,
    which teach the pool the replica's position, would then wait for the new one's writes too)."""
    while True:
        u = create_user(s)
        if fence_bucket(u["id"]) != fence_bucket(s.old_id):
            return u


def back_on_replica(s, path):
    """Reads the old user (unfenced: on the replica, whose position it returns), then path: whether the
    replica ran path's read, and its answer."""
    assert served_by_replica(s, f"/users/{s.old_id}")[0], "a read of an unfenced row left the replica"
    return served_by_replica(s, path)


def served_by_replica(s, path):
    """GET path (200 expected) and whether the replica ran its statement (one worker: its counters are
    exact when scraped)."""
    before = replica_queries(s)
    r = s.get(path)
    assert r.status == 200, f"expected 200 for {path}, got {r}"
    return replica_queries(s) > before, r


def old_user(schema):
    """A user written on the primary and replayed before the server starts (no fence of the server is above
    it): its reads go to the replica as soon as the replica's first sample has reached the pool's floor."""
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        tag = uuid.uuid4().hex[:12]
        cur.execute("INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id",
                    (f"old-{tag}", f"old-{tag}@example.com"))
        old_id = cur.fetchone()[0]
    with closing(schema.ro()) as conn, conn.cursor() as cur:
        def replayed():
            cur.execute("SELECT count(*) FROM users WHERE id = %s", (old_id,))
            return cur.fetchone()[0] == 1
        wait_until(replayed, 20, "the replica replays the user written before the server started")
    return old_id


def replay_server_run(schema, tmp_path_factory, replica_wait):
    """One worker, cache off (every read reaches the pool), health checks every 60 s, reads fenced by a
    write wait replica_wait for the replica, and an old user (old_user) whose reads run on the replica."""
    old_id = old_user(schema)
    s = PgapiServer(str(tmp_path_factory.mktemp("replay")), topology=schema, workers=1,
                    overrides={"redis": {"enabled": "off"},
                               "database": {"health_interval": "60s", "replica_wait": replica_wait}})
    s.start()
    try:
        s.wait_for(lambda: s.get("/readyz").json().get("replicas_up") == 1, 20, "replica in rotation")
        # The replica's first sample may trail the primary's first (the pool's floor) by a WAL record
        # written between them: then only the next health check lets it serve (up to 60 s, rarely).
        s.wait_for(lambda: served_by_replica(s, f"/users/{old_id}")[0], 130, "a read of the old user on the replica")
        s.old_id = old_id
        yield s
    finally:
        rc = s.stop()
        bad = s.bad_log_lines()
        assert rc == 0 and not bad, f"server exit {rc}; bad log lines: {bad[:10]}\n{s.log_tail(60)}"


@pytest.fixture(scope="module")
def replay_server(schema, tmp_path_factory):
    """replica_wait 0: a read fenced by a write runs on the primary at once."""
    yield from replay_server_run(schema, tmp_path_factory, "0")


def replica_lag_ms(s):
    return s.get("/readyz").json()["replicas"][0]["lag_ms"]


@pytest.fixture(scope="module")
def wait_server(schema, tmp_path_factory):
    """replica_wait at its maximum, 1 s: long enough that a loaded machine's replay still makes it. Reads
    wait only for a replica whose lag as last sampled is under the wait; a sample that caught the replica a
    record behind reports the time since its last replayed commit (up to 60 s until the next check)."""
    for s in replay_server_run(schema, tmp_path_factory, "1s"):
        s.wait_for(lambda: replica_lag_ms(s) < 1000, 130, "the replica's sampled lag under replica_wait")
        yield s


def test_after_a_write_reads_of_its_row_return_to_the_replica_before_a_health_check(replay_server, record_property):
    s = replay_server
    u = create_user_apart(s)
    samples0 = total(scrape(s), "pgapi_pool_replay_samples_total", side="replica")
    for round_ in range(3):
        r = s.request("PATCH", f"/users/{u['id']}", body={"name": f"r{round_}"})
        assert r.status == 200, r
        fence0 = fence_reads(s)
        # No replica read since the commit: the pool knows no replica position at or past it.
        on_replica, got = served_by_replica(s, f"/users/{u['id']}")
        assert not on_replica, "the first read after the write ran on the replica before any position passed it"
        assert got.json()["name"] == f"r{round_}", f"read your write: expected r{round_}, got {got.json()}"
        assert fence_reads(s) == fence0 + 1, "expected the read counted as a primary read for its fence"
        t0, polls = time.monotonic(), 0

        def moved():
            nonlocal polls
            polls += 1
            on, again = back_on_replica(s, f"/users/{u['id']}")
            assert again.json()["name"] == f"r{round_}", f"expected r{round_}, got {again.json()}"
            return on
        s.wait_for(moved, 20, "a read of the written row back on the replica")
        record_property("figures", f"replay round {round_}: the written row back on the replica after {polls} "
                        f"poll(s), {1000 * (time.monotonic() - t0):.0f} ms (health_interval 60 s; noisy machine)")
        assert fence_reads(s) - fence0 <= polls, "the reads of the written row kept going to the primary"
    samples = total(scrape(s), "pgapi_pool_replay_samples_total", side="replica") - samples0
    assert samples >= 6, f"expected replay positions learned from the replica's reads, got {samples}"


def test_replica_reads_answer_the_row_alone(replay_server):
    """The position's column never reaches the client: a row by id (the keys a write answers), a page of a
    list (its rows and next link: rows.c reads the last row's columns), a 404 (no row, no position)."""
    s = replay_server
    written = create_user_apart(s)
    on_replica, r = served_by_replica(s, f"/users/{s.old_id}")
    assert on_replica, "expected the unfenced read on the replica"
    assert sorted(r.json()) == sorted(written), f"expected the keys {sorted(written)}, got {r.json()}"
    s.wait_for(lambda: back_on_replica(s, f"/users/{written['id']}")[0], 20, "the new user read on the replica")
    on_replica, r = served_by_replica(s, f"/users?after_id={s.old_id - 1}&limit=2")
    assert on_replica, "expected the page read on the replica"
    page = r.json()
    assert page["data"][0]["id"] == s.old_id and len(page["data"]) == 2, page
    assert all(sorted(u) == sorted(written) for u in page["data"]), page
    assert page["next"] == f"/users?limit=2&after_id={page['data'][1]['id']}", page  # more users follow
    on_replica, r = served_by_replica(s, f"/users?after_id={written['id']}&limit=2")
    assert r.json() == {"data": [], "next": None}, f"expected the empty last page, got {r.json()}"
    r = s.get(f"/users/{2 ** 62}")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found", f"expected a 404, got {r}"


def test_a_read_fenced_by_a_write_waits_for_the_replica_to_replay_it(wait_server, record_property):
    """Right after a write, no replica position the pool knows is at its commit (the last one learned came
    before it): the read of its row waits, the pool probes the replica, and the read runs there once the
    replica has replayed the commit. Nothing runs on the primary for the fence."""
    s = wait_server
    u = create_user_apart(s)
    for round_ in range(3):
        r = s.request("PATCH", f"/users/{u['id']}", body={"name": f"w{round_}"})
        assert r.status == 200, r
        fence0, waited0, gave_up0 = fence_reads(s), replica_waits(s, "replica"), replica_waits(s, "primary")
        t0 = time.monotonic()
        on_replica, got = served_by_replica(s, f"/users/{u['id']}")
        ms = 1000 * (time.monotonic() - t0)
        assert got.json()["name"] == f"w{round_}", f"read your write: expected w{round_}, got {got.json()}"
        assert on_replica, "expected the read to wait for the replica and run there"
        assert fence_reads(s) == fence0, "expected no primary read for the fence"
        assert replica_waits(s, "replica") == waited0 + 1, "expected one read that waited and ran on the replica"
        assert replica_waits(s, "primary") == gave_up0, "expected no read to give up on the replica"
        record_property("figures", f"replica wait round {round_}: the read after the write answered in {ms:.1f} ms "
                        "from the replica")


def test_a_read_no_replica_replays_in_time_runs_on_the_primary(wait_server, schema):
    """Replay paused: the read waits its full replica_wait (1 s), then runs on the primary and still reads
    the write; reads of rows the write did not touch keep running on the replica meanwhile."""
    s = wait_server
    u = create_user_apart(s)
    replay_pause(schema)
    try:
        r = s.request("PATCH", f"/users/{u['id']}", body={"name": "paused"})
        assert r.status == 200, r
        fence0, gave_up0 = fence_reads(s), replica_waits(s, "primary")
        t0 = time.monotonic()
        on_replica, got = served_by_replica(s, f"/users/{u['id']}")
        waited = time.monotonic() - t0
        assert not on_replica, "the replica ran a read whose write it has not replayed"
        assert got.json()["name"] == "paused", f"read your write: expected paused, got {got.json()}"
        assert waited >= 0.9, f"expected the read to wait about replica_wait (1 s) first, it took {waited:.3f} s"
        assert fence_reads(s) == fence0 + 1, "expected the read counted as a primary read for its fence"
        assert replica_waits(s, "primary") == gave_up0 + 1, "expected one read that gave up on the replica"
        assert served_by_replica(s, f"/users/{s.old_id}")[0], "an unfenced read left the replica"
    finally:
        replay_resume(schema)
