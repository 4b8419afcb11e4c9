"""Posts: every /posts and /users/:id/posts route and error over real HTTP against the running server and
the session topology (PostgreSQL primary + replica through PgBouncer)."""

from contextlib import closing
import json
import time

import pytest

from lib.bouncer import replay_pause, replay_resume
from lib.builders import create_post, create_user
from lib.pages import (ENVELOPE, PAGE_BYTES, big_posts, compare_ids, expect, page_to_end, wait_replica_ids,
                       walk_bounded)


def test_post_lifecycle(api):
    u = create_user(api)
    r = api.request("POST", f"/users/{u['id']}/posts", body={"title": "Hello", "content": "First post"})
    post = expect(r, 201)
    assert r.headers["location"] == f"/posts/{post['id']}", f"expected Location /posts/{post['id']}, got {r.headers}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    want = {"title": "Hello", "content": "First post", "user_id": u["id"], "version": 1}
    assert {k: post[k] for k in want} == want, f"expected {want}, got {post}"
    assert set(post) == {"id", "title", "content", "user_id", "version", "created_at", "updated_at"}, post
    assert expect(api.get(f"/posts/{post['id']}"), 200) == post
    r = api.request("PUT", f"/posts/{post['id']}", body={"title": "Hello again", "content": ""})
    got = expect(r, 200)
    assert (got["title"], got["content"], got["version"]) == ("Hello again", "", 2), got
    assert got["created_at"] == post["created_at"] and got["updated_at"] >= post["updated_at"], got
    assert expect(api.get(f"/posts/{post['id']}"), 200) == got
    r = api.request("DELETE", f"/posts/{post['id']}")
    assert r.status == 204 and r.body == b"", f"expected 204 with no body, got {r}"
    expect(api.get(f"/posts/{post['id']}"), 404, "not_found")
    expect(api.request("DELETE", f"/posts/{post['id']}"), 404, "not_found")
    expect(api.request("PUT", f"/posts/{post['id']}", body={"title": "t", "content": "c"}), 404, "not_found")
    expect(api.request("PATCH", f"/posts/{post['id']}", body={"title": "t"}), 404, "not_found")


def test_version_increments_on_put_and_patch(api):
    u = create_user(api)
    p = create_post(api, u["id"], title="v1", content="body")
    got = expect(api.request("PATCH", f"/posts/{p['id']}", body={"title": "v2"}), 200)
    assert (got["title"], got["content"], got["version"]) == ("v2", "body", 2), got
    got = expect(api.request("PATCH", f"/posts/{p['id']}", body={"content": "new body"}), 200)
    assert (got["title"], got["content"], got["version"]) == ("v2", "new body", 3), got
    got = expect(api.request("PUT", f"/posts/{p['id']}", body={"title": "v4", "content": "put"}), 200)
    assert (got["title"], got["content"], got["version"]) == ("v4", "put", 4), got
    got = expect(api.request("PATCH", f"/posts/{p['id']}", body={"content": ""}), 200)
    assert (got["title"], got["content"], got["version"]) == ("v4", "", 5), got
    expect(api.request("PATCH", f"/posts/{p['id']}", body={}), 400, "missing_field")
    expect(api.request("PATCH", f"/posts/{p['id']}", body={"user_id": 1}), 400, "read_only_field")
    assert expect(api.get(f"/posts/{p['id']}"), 200)["version"] == 5, "a refused PATCH changed the post"


def test_create_for_unknown_user_is_404(api):
    r = api.request("POST", "/users/9223372036854775807/posts", body={"title": "t", "content": "c"})
    err = expect(r, 404, "not_found")["error"]
    assert "user" in err["message"] and "9223372036854775807" in err["message"], f"message names the user: {err}"
    u = create_user(api)
    expect(api.request("DELETE", f"/users/{u['id']}"), 204)
    err = expect(api.request("POST", f"/users/{u['id']}/posts", body={"title": "t", "content": "c"}), 404,
                 "not_found")["error"]
    assert err["message"] == f"user {u['id']} not found", f"expected the user named, got {err}"


def test_unicode_round_trip(api):
    u = create_user(api)
    for title, content in [("Zoë 山田 🎉", 'quote " back\\slash </script>\n\ttab'), ("é" * 200, "🚀" * 10000)]:
        p = create_post(api, u["id"], title=title, content=content)
        got = api.get(f"/posts/{p['id']}")
        body = expect(got, 200)
        assert (body["title"], body["content"]) == (title, content), f"expected {title[:20]!r}, got {body['title'][:20]!r}"
        json.loads(got.body.decode("utf-8"))


# (fields, status, error code): what each rule of the body refuses
FIELD_ERRORS = [
    ({"content": "c"}, 400, "missing_field"),
    ({"title": "t"}, 400, "missing_field"),
    ({"title": "t", "content": None}, 400, "missing_field"),
    ({"title": 5, "content": "c"}, 400, "wrong_type"),
    ({"title": "t", "content": ["c"]}, 400, "wrong_type"),
    ({"title": "", "content": "c"}, 422, "invalid_value"),
    ({"title": "x" * 201, "content": "c"}, 422, "invalid_value"),
    ({"title": "t", "content": "x" * 10001}, 422, "invalid_value"),
    ({"title": "a\0b", "content": "c"}, 422, "invalid_value"),
    ({"title": "t", "content": "c", "tags": ["x"]}, 400, "unknown_field"),
    ({"title": "t", "content": "c", "Title": "t"}, 400, "unknown_field"),   # names are case-sensitive
    ({"title": "t", "content": "c", "body": None}, 400, "unknown_field"),
    ({"title": "t", "content": "c", "id": 1}, 400, "read_only_field"),
    ({"title": "t", "content": "c", "user_id": 1}, 400, "read_only_field"),
    ({"title": "t", "content": "c", "version": 1}, 400, "read_only_field"),
    ({"title": "t", "content": "c", "created_at": "2024-01-01T00:00:00+00:00"}, 400, "read_only_field"),
    ({"title": "t", "content": "c", "updated_at": "2024-01-01T00:00:00+00:00"}, 400, "read_only_field"),
]
# (raw body, content type, status, error code): bodies refused before their fields are looked at
RAW_ERRORS = [
    (b'{"title":"t"', "application/json", 400, "malformed_json"),
    (b'["t","c"]', "application/json", 400, "malformed_json"),
    (b'{"title":"\xff","content":"c"}', "application/json", 400, "malformed_json"),
    (b'{"title":"t","content":"c"}', "text/plain", 415, "unsupported_media_type"),
    (b'{"title":"t","content":"' + b"x" * 70000 + b'"}', "application/json", 413, "body_too_large"),
]


@pytest.mark.parametrize("body,ctype,status,code", RAW_ERRORS + [
    (json.dumps(fields).encode(), "application/json", status, code) for fields, status, code in FIELD_ERRORS])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_write_validation_errors(api, method, body, ctype, status, code):
    u = create_user(api)
    p = create_post(api, u["id"])
    path = f"/users/{u['id']}/posts" if method == "POST" else f"/posts/{p['id']}"
    r = api.request(method, path, body=body, headers={"Content-Type": ctype})
    err = expect(r, status, code)["error"]
    if code in ("unknown_field", "read_only_field"):  # the message names the member
        member = next(k for k in json.loads(body) if k not in ("title", "content"))
        assert f'"{member}"' in err["message"], f"expected {member!r} named in {err}"
    assert expect(api.get(f"/posts/{p['id']}"), 200) == p, "a refused write changed the post"
    if method == "POST":
        assert [x["id"] for x in expect(api.get(f"/users/{u['id']}/posts"), 200)["data"]] == [p["id"]], \
            "a refused POST created a post"


@pytest.mark.parametrize("fields,status,code", [
    ({}, 400, "missing_field"),
    ({"title": None, "content": None}, 400, "missing_field"),
    ({"title": ""}, 422, "invalid_value"),
    ({"content": 5}, 400, "wrong_type"),
    ({"content": "x" * 10001}, 422, "invalid_value"),
    ({"titel": "typo"}, 400, "unknown_field"),
    ({"title": "t", "draft": True}, 400, "unknown_field"),
    ({"user_id": 1}, 400, "read_only_field"),
    ({"title": "t", "version": 1}, 400, "read_only_field"),
])
def test_patch_validation_errors(api, fields, status, code):
    u = create_user(api)
    p = create_post(api, u["id"])
    expect(api.request("PATCH", f"/posts/{p['id']}", body=fields), status, code)
    assert expect(api.get(f"/posts/{p['id']}"), 200) == p, "a refused PATCH changed the post"


def test_post_read_back_and_sent_whole_is_refused_as_read_only(api):
    """The documented choice: a post as read (id, user_id, version, timestamps included) sent back by PUT
    or PATCH is refused with read_only_field, never applied with those members silently ignored."""
    u = create_user(api)
    p = create_post(api, u["id"])
    for method in ("PUT", "PATCH"):
        err = expect(api.request(method, f"/posts/{p['id']}", body=dict(p, title="echoed")), 400,
                     "read_only_field")["error"]
        assert '"id"' in err["message"], err
    assert expect(api.get(f"/posts/{p['id']}"), 200) == p, "a refused write changed the post"
    got = expect(api.request("PUT", f"/posts/{p['id']}", body={"title": "echoed", "content": p["content"]}), 200)
    assert (got["title"], got["version"]) == ("echoed", 2), got


def test_limits_are_inclusive(api):
    u = create_user(api)
    p = create_post(api, u["id"], title="t" * 200, content="c" * 10000)
    assert (len(p["title"]), len(p["content"])) == (200, 10000), "expected 200/10000 characters"
    p = create_post(api, u["id"], title="t", content="")
    assert p["content"] == "", p


def test_unknown_and_invalid_ids(api):
    for path in ["/posts/0", "/posts/-1", "/posts/abc", "/posts/1.5", "/posts/9223372036854775808",
                 "/posts/9223372036854775807", "/users/abc/posts", "/users/0/posts", "/posts/1/posts"]:
        expect(api.get(path), 404, "not_found")
    expect(api.request("PATCH", "/posts/9223372036854775807", body={"title": "t"}), 404, "not_found")
    expect(api.request("DELETE", "/posts/9223372036854775807"), 404, "not_found")


@pytest.mark.parametrize("method,path,allowed", [
    ("POST", "/posts", {"GET", "HEAD"}),
    ("DELETE", "/posts", {"GET", "HEAD"}),
    ("POST", "/posts/1", {"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
    ("PUT", "/users/1/posts", {"GET", "HEAD", "POST"}),
    ("DELETE", "/users/1/posts", {"GET", "HEAD", "POST"}),
])
def test_method_not_allowed_lists_allow(api, method, path, allowed):
    r = api.request(method, path, body={})
    expect(r, 405, "method_not_allowed")
    got = set(x.strip() for x in r.headers["allow"].split(","))
    assert got == allowed, f"expected Allow {sorted(allowed)}, got {sorted(got)}"


@pytest.mark.parametrize("base", ["/posts", "/users/1/posts"])
def test_pagination_parameters_are_checked(api, base):
    for q in ["limit=0", "limit=1001", "limit=x", "after_id=-1", "limit=%zz", "after_id=1e3"]:
        expect(api.get(f"{base}?{q}"), 400, "invalid_parameter")


def test_user_posts_of_unknown_and_of_postless_user(api):
    err = expect(api.get("/users/9223372036854775807/posts"), 404, "not_found")["error"]
    assert err["message"] == "user 9223372036854775807 not found", err
    u = create_user(api)
    body = expect(api.get(f"/users/{u['id']}/posts"), 200)
    assert body == {"data": [], "next": None}, f"expected an empty page, got {body}"
    p = create_post(api, u["id"])
    body = expect(api.get(f"/users/{u['id']}/posts?after_id={p['id']}"), 200)
    assert body == {"data": [], "next": None}, f"expected an empty page past the last post, got {body}"


def test_user_posts_paged_to_the_end(api, schema):
    u, other = create_user(api), create_user(api)
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        # interleaved with another user's posts, so the user filter is exercised on every page
        cur.execute("INSERT INTO posts(title, content, user_id) SELECT 'p' || g, 'c', CASE WHEN g %% 3 = 0"
                    " THEN %s ELSE %s END FROM generate_series(1, 3750) g", (other["id"], u["id"]))
        cur.execute("SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],))
        expected = [row[0] for row in cur.fetchall()]
    assert len(expected) == 2500, f"expected 2500 posts inserted, got {len(expected)}"
    wait_replica_ids(schema, "SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],), expected)
    first = expect(api.get(f"/users/{u['id']}/posts"), 200)
    assert [p["id"] for p in first["data"]] == expected[:50], "default page is not the first 50 posts"
    assert first["next"] == f"/users/{u['id']}/posts?limit=50&after_id={expected[49]}", first["next"]
    assert all(p["user_id"] == u["id"] for p in first["data"]), "another user's post in the page"
    compare_ids(expected, page_to_end(api, f"/users/{u['id']}/posts?limit=1000"))
    compare_ids(expected, page_to_end(api, f"/users/{u['id']}/posts?limit=999"))


def test_all_posts_paged_to_the_end(api, schema):
    u = create_user(api)
    for i in range(3):
        create_post(api, u["id"], title=f"all {i}")
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM posts ORDER BY id")
        expected = [row[0] for row in cur.fetchall()]
    wait_replica_ids(schema, "SELECT id FROM posts ORDER BY id", (), expected)
    compare_ids(expected, page_to_end(api, "/posts?limit=1000"))
    body = expect(api.get("/posts?limit=2"), 200)
    assert len(body["data"]) == 2 and body["next"] == f"/posts?limit=2&after_id={body['data'][1]['id']}", body


def test_include_posts_embeds_the_users_posts(api):
    u = create_user(api)
    posts = [create_post(api, u["id"], title=f"t{i}", content=f"c{i}") for i in range(3)]
    got = expect(api.get(f"/users/{u['id']}?include=posts"), 200)
    assert got["posts"] == posts, f"expected the 3 posts as created, got {got['posts']}"
    assert got["posts_next"] is None, f"expected no link to more posts, got {got['posts_next']}"
    assert expect(api.get(f"/users/{u['id']}/posts"), 200)["data"] == posts
    del got["posts"], got["posts_next"]
    assert got == expect(api.get(f"/users/{u['id']}"), 200)


def test_deleting_a_user_deletes_its_posts(api):
    u = create_user(api)
    posts = [create_post(api, u["id"]) for _ in range(3)]
    expect(api.request("DELETE", f"/users/{u['id']}"), 204)
    for p in posts:
        expect(api.get(f"/posts/{p['id']}"), 404, "not_found")
    expect(api.get(f"/users/{u['id']}/posts"), 404, "not_found")
    listed = {p["id"] for p in expect(api.get(f"/posts?after_id={posts[0]['id'] - 1}&limit=10"), 200)["data"]}
    assert not listed & {p["id"] for p in posts}, f"deleted posts still listed: {listed}"


def test_read_your_writes_with_replay_paused(api, schema):
    u = create_user(api)
    old = create_post(api, u["id"], title="before pause")
    time.sleep(1.0)  # the replica replays the user and the workers sample its position
    replay_pause(schema)
    try:
        made = create_post(api, u["id"], title="during pause")
        assert expect(api.get(f"/posts/{made['id']}"), 200) == made, "404 or stale after an acknowledged create"
        for i in range(10):
            w = expect(api.request("PATCH", f"/posts/{old['id']}", body={"title": f"v{i}"}), 200)
            got = expect(api.get(f"/posts/{old['id']}"), 200)
            assert (got["title"], got["version"]) == (f"v{i}", w["version"]), f"read after write {i} returned {got}"
            listed = expect(api.get(f"/users/{u['id']}/posts"), 200)["data"]
            assert [p["title"] for p in listed] == [f"v{i}", "during pause"], f"page after write {i}: {listed}"
            embedded = expect(api.get(f"/users/{u['id']}?include=posts"), 200)["posts"]
            assert embedded == listed, f"include=posts after write {i}: {embedded}"
        expect(api.request("DELETE", f"/posts/{made['id']}"), 204)
        expect(api.get(f"/posts/{made['id']}"), 404, "not_found")
        with closing(schema.ro()) as conn, conn.cursor() as cur:
            cur.execute("SELECT title FROM posts WHERE id = %s", (old["id"],))
            assert cur.fetchone()[0] != "v9", "replay was not paused: the test proves nothing"
    finally:
        replay_resume(schema)


def bouncer_bytes_sent(schema):
    """Bytes PgBouncer has passed on from PostgreSQL for pgapi's two databases (SHOW STATS totals,
    published every stats_period: 1 s in the topology)."""
    with closing(schema.bouncer_admin()) as conn, conn.cursor() as cur:
        cur.execute("SHOW STATS")
        cols = [d[0] for d in cur.description]
        return sum(int(row[cols.index("total_received")]) + int(row[cols.index("total_sent")])
                   for row in cur.fetchall() if row[cols.index("database")] in ("pgapi_rw", "pgapi_ro"))


def test_pages_of_big_posts_stop_at_the_byte_budget_and_skip_no_row(api, schema):
    """Issue 14: `GET /posts?limit=1000` over 300 posts of 10,000 emoji was a 12 MB answer. A page now
    ends before the row that would pass page_bytes (PostgreSQL drops the rest: PgBouncer passes on less
    than a megabyte), and its next link continues after the last row sent, so the walk sees every row."""
    with big_posts(api, schema) as (u, ids):
        pages_of_big_posts(api, schema, u, ids)


def pages_of_big_posts(api, schema, u, ids):
    time.sleep(1.2)  # SHOW STATS totals settle (stats_period 1 s)
    before = bouncer_bytes_sent(schema)
    r = api.get(f"/users/{u['id']}/posts?limit=1000")
    time.sleep(1.2)
    shipped = bouncer_bytes_sent(schema) - before
    first = expect(r, 200)
    assert len(r.body) <= PAGE_BYTES + ENVELOPE, f"expected a page of at most {PAGE_BYTES} bytes, got {len(r.body)}"
    n = len(first["data"])
    assert 1 <= n < 300 and [p["id"] for p in first["data"]] == ids[:n], f"expected the first posts, got {n}"
    assert first["next"] == f"/users/{u['id']}/posts?limit=1000&after_id={ids[n - 1]}", first["next"]
    assert shipped < 1024 * 1024, f"expected PostgreSQL to send less than 1 MB for the page, PgBouncer passed {shipped}"
    seen, pages = walk_bounded(api, f"/users/{u['id']}/posts?limit=1000")
    compare_ids(ids, seen)
    assert pages >= 12000000 // PAGE_BYTES, f"expected the 12 MB over many pages, got {pages}"
    seen, _ = walk_bounded(api, f"/posts?limit=1000&after_id={ids[0] - 1}")
    compare_ids(ids, seen)


def test_a_row_larger_than_the_budget_comes_alone(server, schema):
    """With page_bytes at its 1 kB minimum, every 40 kB post is a page of its own: never an empty page,
    never a row skipped."""
    s = server(workers=1, topology=schema, overrides={"redis": {"enabled": "off"},
                                                      "server": {"page_bytes": "1k"}}).start()
    s.wait_for(lambda: s.get("/readyz").status == 200, 20, "/readyz 200")
    with big_posts(s, schema, n=5) as (u, ids):
        seen, pages = walk_bounded(s, f"/users/{u['id']}/posts?limit=1000", budget=1024)
    compare_ids(ids, seen)
    assert pages == 5, f"expected one page per post, got {pages}"
