"""Issue 18 item 3: conditional writes. PUT, PATCH and DELETE of a user or a post under If-Match, with the
ETag a GET (or a write) sent or the row's version; the test is in the statement that writes, so a 412
changes nothing, and of two writes racing with the same tag exactly one wins. Malformed lists are 400
invalid_header; If-None-Match on a write is refused (400 precondition_unsupported); a 412 invalidates no
cache entry. Real server, real primary + replica through PgBouncer, real Redis where the cache matters."""

import threading
from contextlib import closing

import pytest

from lib.builders import create_post, create_user, uniq
from lib.cache import cached_server
from lib.topology import wait_until

MISSING = 9000000000017


def etag(s, path):
    r = s.get(path)
    assert r.status == 200 and r.headers.get("etag"), f"GET {path}: expected 200 with an ETag, got {r}"
    return r.headers["etag"]


def write(s, method, path, if_match=None, body=None, headers=None):
    h = dict(headers or {})
    if if_match is not None:
        h["If-Match"] = if_match
    return s.request(method, path, body=body, headers=h)


def error_code(r):
    return r.json()["error"]["code"] if r.body else None


def primary_pgapi(schema):
    """postgres on the primary's pgapi database (the tables), over its unix socket."""
    return schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port, dbname="pgapi",
                      user="postgres")


def primary_row(schema, table, rid):
    with closing(primary_pgapi(schema)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT version FROM {table} WHERE id = %s", (rid,))
        row = cur.fetchone()
        return row[0] if row else None


# ---- users and posts alike ----------------------------------------------------------------------

def new_row(api, kind):
    if kind == "users":
        u = create_user(api)
        return f"/users/{u['id']}", u
    u = create_user(api)
    p = create_post(api, u["id"], "t", "c")
    return f"/posts/{p['id']}", p


def bodies(kind):
    if kind == "users":
        return {"PUT": {"name": "replaced", "email": f"{uniq('cond')}@example.com"}, "PATCH": {"name": "patched"}}
    return {"PUT": {"title": "replaced", "content": "r"}, "PATCH": {"title": "patched"}}


@pytest.mark.parametrize("kind", ["users", "posts"])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_matching_etag_writes_and_answers_the_new_etag(api, kind, method):
    path, _ = new_row(api, kind)
    tag = etag(api, path)
    r = write(api, method, path, tag, bodies(kind)[method])
    assert r.status == 200, f"{method} {path} If-Match {tag}: expected 200, got {r}"
    assert r.json()["version"] == 2, r
    new_tag = r.headers.get("etag")
    assert new_tag and new_tag != tag, f"expected the written row's new ETag, got {new_tag!r} (was {tag})"
    wait_until(lambda: api.get(path).json()["version"] == 2, 10, "the replica at version 2")
    assert etag(api, path) == new_tag, "the ETag a write answers must be the one the next GET sends"
    # chaining: the answer's tag is good for the next write
    r = write(api, method, path, new_tag, bodies(kind)[method])
    assert r.status == 200 and r.json()["version"] == 3, r


@pytest.mark.parametrize("kind", ["users", "posts"])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_stale_etag_is_412_and_nothing_changes(api, schema, kind, method):
    path, row = new_row(api, kind)
    old = etag(api, path)
    assert api.request("PATCH", path, body=bodies(kind)["PATCH"]).status == 200   # someone else's write
    r = write(api, method, path, old, bodies(kind).get(method))
    assert r.status == 412 and error_code(r) == "precondition_failed", f"{method} with a stale ETag: expected " \
        f"412 precondition_failed, got {r}"
    assert primary_row(schema, kind, row["id"]) == 2, "a 412 must leave the row as it was (version 2)"


@pytest.mark.parametrize("kind", ["users", "posts"])
def test_version_as_entity_tag(api, schema, kind):
    path, row = new_row(api, kind)
    r = write(api, "PATCH", path, '"2"', bodies(kind)["PATCH"])
    assert r.status == 412, f"If-Match \"2\" on a row at version 1: expected 412, got {r}"
    r = write(api, "PATCH", path, '"1"', bodies(kind)["PATCH"])
    assert r.status == 200 and r.json()["version"] == 2, f"If-Match \"1\" on version 1: expected 200, got {r}"
    r = write(api, "DELETE", path, '"1"')
    assert r.status == 412 and primary_row(schema, kind, row["id"]) == 2, r
    r = write(api, "DELETE", path, '"2"')
    assert r.status == 204 and primary_row(schema, kind, row["id"]) is None, r


def test_list_of_tags_matches_any_of_them(api):
    path, _ = new_row(api, "users")
    tag = etag(api, path)
    r = write(api, "PATCH", path, f'"nope", W/"weak", {tag} , "7"', {"name": "listed"})
    assert r.status == 200, f"a list holding the current ETag: expected 200, got {r}"
    r = write(api, "PATCH", path, '"nope", "1",,"2"', {"name": "listed by version"})
    assert r.status == 200 and r.json()["version"] == 3, f"a list holding the current version: expected 200, got {r}"


def test_weak_tags_never_match(api, schema):
    path, row = new_row(api, "users")
    tag = etag(api, path)
    for value in (f"W/{tag}", 'W/"1"'):
        r = write(api, "PATCH", path, value, {"name": "weak"})
        assert r.status == 412, f"If-Match {value} (weak: strong comparison): expected 412, got {r}"
    assert primary_row(schema, "users", row["id"]) == 1


def test_star_needs_only_the_row(api):
    path, _ = new_row(api, "posts")
    r = write(api, "PATCH", path, "*", {"title": "star"})
    assert r.status == 200, f"If-Match * on an existing row: expected 200, got {r}"
    for method in ("PUT", "PATCH", "DELETE"):
        r = write(api, method, f"/posts/{MISSING}", "*", bodies("posts").get(method))
        assert r.status == 404, f"{method} If-Match * on a missing row: expected 404, got {r}"


@pytest.mark.parametrize("kind", ["users", "posts"])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_missing_row_stays_404(api, kind, method):
    r = write(api, method, f"/{kind}/{MISSING}", '"1", "d41d8cd98f00b204e9800998ecf8427e"', bodies(kind).get(method))
    assert r.status == 404 and error_code(r) == "not_found", f"{method} If-Match on a missing row: expected " \
        f"404, got {r}"


def test_user_delete_under_if_match_takes_its_posts(api, schema):
    u = create_user(api)
    posts = [create_post(api, u["id"], f"p{i}", "c") for i in range(3)]
    path = f"/users/{u['id']}"
    r = write(api, "DELETE", path, '"0", "nope"')
    assert r.status == 412 and primary_row(schema, "users", u["id"]) == 1, r
    assert all(primary_row(schema, "posts", p["id"]) == 1 for p in posts), "a 412 deleted posts"
    wait_until(lambda: api.get(path).status == 200, 10, "the user on the replica")
    r = write(api, "DELETE", path, etag(api, path))
    assert r.status == 204, f"DELETE with the user's ETag: expected 204, got {r}"
    assert primary_row(schema, "users", u["id"]) is None
    assert all(primary_row(schema, "posts", p["id"]) is None for p in posts), "the user's posts must go with it"


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    'abc',                         # not quoted
    '"abc',                        # unterminated
    '"a" "b"',                     # no comma
    '*, "a"',                      # "*" is alone or not at all
    'w/"a"',                       # W/ is upper case
    '"a b"',                       # a space in a tag
    ' , ',                         # no tag at all
    ", ".join(['"t"'] * 33),       # more than 32 tags
    '"' + "x" * 520 + '"',         # longer than 511 bytes
])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_malformed_if_match_is_400(api, schema, method, value):
    path, row = new_row(api, "users")
    r = write(api, method, path, value, bodies("users").get(method))
    assert r.status == 400 and error_code(r) == "invalid_header", \
        f"{method} If-Match {value[:40]!r}: expected 400 invalid_header, got {r}"
    assert "If-Match" in r.json()["error"]["message"], r
    assert primary_row(schema, "users", row["id"]) == 1


def test_empty_and_repeated_if_match_are_400(api):
    path, _ = new_row(api, "users")
    tag = etag(api, path)
    for head in (b"If-Match: \r\n", f"If-Match: {tag}\r\nIf-Match: \"x\"\r\n".encode()):
        body = b'{"name":"raw"}'
        raw = api.raw(b"PATCH " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + head + b"\r\n" + body)
        assert raw.startswith(b"HTTP/1.1 400") and b"invalid_header" in raw, \
            f"expected 400 invalid_header for {head!r}, got {raw[:300]!r}"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("value", ["*", '"1"'])
def test_if_none_match_on_a_write_is_refused(api, schema, method, value):
    path, row = new_row(api, "users")
    r = write(api, method, path, None, bodies("users").get(method), headers={"If-None-Match": value})
    assert r.status == 400 and error_code(r) == "precondition_unsupported", \
        f"{method} If-None-Match {value}: expected 400 precondition_unsupported, got {r}"
    assert "POST creates" in r.json()["error"]["message"], r
    assert primary_row(schema, "users", row["id"]) == 1, "a refused precondition wrote"


# ---- the race ---------------------------------------------------------------------------------------

def lock_waiters(schema):
    with closing(schema.primary_admin()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgapi' AND wait_event_type = 'Lock' "
                    "AND query LIKE '%WITH % users %'")
        return cur.fetchone()[0]


@pytest.mark.parametrize("round_", range(3))
def test_two_patches_with_the_same_tag_one_wins(api, schema, round_):
    """Both PATCHes are in PostgreSQL at once, queued on a row lock this test holds; released, exactly one
    writes and the other is tested again against the row it wrote: 412."""
    path, u = new_row(api, "users")
    tag = etag(api, path)
    answers = []
    with closing(primary_pgapi(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (u["id"],))
        threads = [threading.Thread(target=lambda n=n: answers.append(
            write(api, "PATCH", path, tag, {"name": f"racer{n}"}, headers={}).status)) for n in range(2)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: lock_waiters(schema) == 2, 15, "both conditional PATCHes waiting on the row lock")
        finally:
            locker.rollback()
    for t in threads:
        t.join(30)
    assert sorted(answers) == [200, 412], f"expected exactly one 200 and one 412, got {answers}"
    assert primary_row(schema, "users", u["id"]) == 2, "expected exactly one write (version 2)"


def test_a_delete_and_a_patch_with_the_same_tag_one_wins(api, schema):
    """The user's conditional DELETE locks the row only if it still matches (tested again after a PATCH
    that came first); whichever goes first, the other gets 412."""
    path, u = new_row(api, "users")
    tag = etag(api, path)
    answers = []
    with closing(primary_pgapi(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (u["id"],))
        calls = [("DELETE", None), ("PATCH", {"name": "racer"})]
        threads = [threading.Thread(target=lambda m=m, b=b: answers.append(write(api, m, path, tag, b).status))
                   for m, b in calls]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: lock_waiters(schema) == 2, 15, "the DELETE and the PATCH waiting on the row lock")
        finally:
            locker.rollback()
    for t in threads:
        t.join(30)
    assert sorted(answers) in ([200, 412], [204, 412]), f"expected one write and one 412, got {answers}"
    expected = None if 204 in answers else 2
    assert primary_row(schema, "users", u["id"]) == expected, f"expected the row as the winner left it ({expected})"


# ---- the cache ------------------------------------------------------------------------------------------

def test_412_invalidates_nothing_and_a_conditional_write_invalidates_like_any(server, schema):
    s = cached_server(server, schema, redis={"write_through": "off"})  # the invalidation itself
    path, _ = new_row(s, "users")
    tag = etag(s, path)
    wait_until(lambda: s.get(path).headers.get("x-cache") == "HIT", 10, "the user cached")
    r = write(s, "PATCH", path, '"stale"', {"name": "never"})
    assert r.status == 412, r
    r = s.get(path)
    assert r.headers.get("x-cache") == "HIT" and r.json()["version"] == 1, \
        f"a 412 wrote nothing: the cached row must still be served, got X-Cache={r.headers.get('x-cache')} {r}"
    r = write(s, "PATCH", path, tag, {"name": "conditional"})
    assert r.status == 200, r
    r = s.get(path)
    assert r.json()["name"] == "conditional" and r.headers.get("x-cache") != "HIT", \
        f"a conditional write invalidates like any write: got X-Cache={r.headers.get('x-cache')} {r}"
