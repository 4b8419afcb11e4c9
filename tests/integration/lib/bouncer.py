"""PgBouncer's admin console and the replica's WAL replay, as tests use them: statement counts per
database, pause and resume of replay, an admin command."""

import time
from contextlib import closing


def bouncer_queries(topology):
    """{database: total_query_count} from PgBouncer's admin console."""
    with closing(topology.bouncer_admin()) as conn, conn.cursor() as cur:
        cur.execute("SHOW STATS")
        cols = [d[0] for d in cur.description]
        return {row[cols.index("database")]: int(row[cols.index("total_query_count")]) for row in cur.fetchall()}


def replay_pause(topology):
    with closing(topology.replica_admin()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cur.execute("SELECT pg_get_wal_replay_pause_state()")
            if cur.fetchone()[0] == "paused":
                return
            time.sleep(0.05)
    raise AssertionError("replica replay did not pause")


def replay_resume(topology):
    with closing(topology.replica_admin()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_wal_replay_resume()")


def bouncer_admin_run(topology, command):
    conn = topology.bouncer_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(command)
    finally:
        conn.close()
