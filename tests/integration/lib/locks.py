"""Row locks seen from the primary: a test holds a lock and waits until a server's statement queues on it."""

from contextlib import closing


def statement_waits_on_lock(topo):
    with closing(topo.primary_admin()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgapi' AND wait_event_type = 'Lock' "
                    "AND query ~ '^(/\\*[^*]*\\*/ )?UPDATE users'")  # after the trace's comment, if any
        return cur.fetchone()[0] >= 1
