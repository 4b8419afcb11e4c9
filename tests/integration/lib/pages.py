"""Paged lists as tests walk them: expected statuses, following `next` links within the byte budget,
comparing ids in order, and big rows written straight to the primary."""

import time
from contextlib import closing, contextmanager

from .builders import create_user


def expect(r, status, code=None):
    """Asserts the status (and the error code), printing both sides; returns the JSON body or None."""
    assert r.status == status, f"expected {status}, got {r}"
    if code is not None:
        got = r.json()["error"]["code"]
        assert got == code, f"expected error code {code!r}, got {got!r} in {r}"
    return r.json() if r.body else None


def page_to_end(api, url, max_pages=100):
    """Follows `next` links from url; returns every id seen, in order."""
    seen, pages = [], 0
    while url:
        body = expect(api.get(url), 200)
        seen.extend(p["id"] for p in body["data"])
        url = body["next"]
        pages += 1
        assert pages < max_pages, f"pagination does not end after {pages} pages (at {url})"
    return seen


def wait_replica_ids(schema, sql, params, expected, timeout=15):
    """Rows written straight to the primary raise no fence: wait until the replica has them too."""
    deadline = time.monotonic() + timeout
    while True:
        with closing(schema.ro()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            got = [row[0] for row in cur.fetchall()]
        if got == expected:
            return
        assert time.monotonic() < deadline, f"replica has {len(got)} of {len(expected)} ids after {timeout}s"
        time.sleep(0.1)


def compare_ids(expected, seen):
    assert seen == expected, (f"expected {len(expected)} ids in order, got {len(seen)}; "
                              f"duplicates: {len(seen) - len(set(seen))}; missing: {len(set(expected) - set(seen))}; "
                              f"unexpected: {len(set(seen) - set(expected))}")


PAGE_BYTES = 256 * 1024  # [server] page_bytes' default
ENVELOPE = 200           # {"data":[...],"next":"..."} around the rows, with the commas between them


@contextmanager
def big_posts(api, schema, n=300):
    """A user with n posts of 10,000 emoji each (40 kB of UTF-8 a post, 12 MB in all, as in issue 14),
    written straight to the primary; waits until the replica has them. Yields (user, post ids); deletes
    them afterwards (other tests walk every post with a bounded number of pages)."""
    u = create_user(api)
    try:
        yield big_posts_insert(api, schema, u, n)
    finally:
        with closing(schema.rw()) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM users WHERE id = %s", (u["id"],))


def big_posts_insert(api, schema, u, n):
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO posts(title, content, user_id) SELECT 'big ' || g, repeat(%s, 10000), %s"
                    " FROM generate_series(1, %s) g", ("\U0001f389", u["id"], n))
        cur.execute("SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],))
        ids = [row[0] for row in cur.fetchall()]
    wait_replica_ids(schema, "SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],), ids)
    return u, ids


def walk_bounded(api, url, budget=PAGE_BYTES, max_pages=200):
    """page_to_end, checking that every page holds at most `budget` bytes of rows (a single larger row
    may come alone) and is not empty while a next page exists."""
    seen, pages = [], 0
    while url:
        r = api.get(url)
        body = expect(r, 200)
        rows = len(body["data"])
        assert len(r.body) <= budget + ENVELOPE or rows == 1, (
            f"{url}: expected at most {budget} bytes of rows, got {len(r.body)} bytes in {rows} rows")
        assert rows or not body["next"], f"{url}: an empty page with a next link {body['next']}"
        seen.extend(p["id"] for p in body["data"])
        url = body["next"]
        pages += 1
        assert pages < max_pages, f"pagination does not end after {pages} pages (at {url})"
    return seen, pages
