"""Issue 5 (users part): every /users route and error over real HTTP against the running server and the
session topology (PostgreSQL primary + replica through PgBouncer)."""

import concurrent.futures
from contextlib import closing
import json
import uuid

import pytest


def uniq(prefix="u"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_user(api, name=None, email=None):
    name = name or uniq("name")
    email = email or f"{uniq('mail')}@example.com"
    r = api.request("POST", "/users", body={"name": name, "email": email})
    assert r.status == 201, f"expected 201 creating {name!r}, got {r}"
    return r.json()


def test_tutorial_curl_sequence(api):
    email = f"{uniq('sahar')}@example.com"
    r = api.request("POST", "/users", body={"name": "sahar Doe", "email": email})
    assert r.status == 201, r
    user = r.json()
    assert r.headers["location"] == f"/users/{user['id']}"
    assert (user["name"], user["email"], user["version"]) == ("sahar Doe", email, 1)
    assert r.headers["content-type"].startswith("application/json")
    listed = api.get(f"/users?after_id={user['id'] - 1}&limit=1000").json()["data"]
    assert any(u["id"] == user["id"] for u in listed), f"user {user['id']} not in list"
    r = api.request("PUT", f"/users/{user['id']}", body={"name": "Jane Doe", "email": email})
    assert r.status == 200 and r.json()["name"] == "Jane Doe" and r.json()["version"] == 2, r
    assert api.get(f"/users/{user['id']}").json()["name"] == "Jane Doe"
    r = api.request("DELETE", f"/users/{user['id']}")
    assert r.status == 204 and r.body == b"", r
    assert api.get(f"/users/{user['id']}").status == 404


def test_patch_changes_only_given_fields(api):
    u = create_user(api)
    r = api.request("PATCH", f"/users/{u['id']}", body={"name": "Patched"})
    assert r.status == 200, r
    got = r.json()
    assert (got["name"], got["email"], got["version"]) == ("Patched", u["email"], 2), got
    r = api.request("PATCH", f"/users/{u['id']}", body={})
    assert r.status == 400 and r.json()["error"]["code"] == "missing_field", r


def test_unicode_names_round_trip(api):
    for name in ["Zoë Ærøskøbing", "山田 太郎", "emoji 🎉🚀", 'quote " back\\slash </script>', "\u00e9\u0301"]:
        u = create_user(api, name=name)
        got = api.get(f"/users/{u['id']}")
        assert got.status == 200 and got.json()["name"] == name, f"expected {name!r}, got {got}"
        json.loads(got.body.decode("utf-8"))  # valid UTF-8 JSON


@pytest.mark.parametrize("body,ctype,status,code", [
    (b'{"name":"a"', "application/json", 400, "malformed_json"),
    (b'[1,2]', "application/json", 400, "malformed_json"),
    (b'{"name":"a","email":"a@b.c"} x', "application/json", 400, "malformed_json"),
    (b'{"email":"a@b.co"}', "application/json", 400, "missing_field"),
    (b'{"name":"n"}', "application/json", 400, "missing_field"),
    (b'{"name":5,"email":"a@b.co"}', "application/json", 400, "wrong_type"),
    (b'{"name":"","email":"a@b.co"}', "application/json", 422, "invalid_value"),
    (b'{"name":"n","email":"not-an-email"}', "application/json", 422, "invalid_value"),
    (json.dumps({"name": "x" * 201, "email": "a@b.co"}).encode(), "application/json", 422, "invalid_value"),
    (b'{"name":"a\\u0000b","email":"a@b.co"}', "application/json", 422, "invalid_value"),
    (b'{"name":"\xff\xfe","email":"a@b.co"}', "application/json", 400, "malformed_json"),
    (b'{"name":"n","email":"a@b.co"}', "text/plain", 415, "unsupported_media_type"),
    (b"[" * 10000 + b"]" * 10000, "application/json", 400, "malformed_json"),
])
def test_create_validation_errors(api, body, ctype, status, code):
    r = api.request("POST", "/users", body=body, headers={"Content-Type": ctype})
    assert r.status == status, f"expected {status} for {body[:60]!r}, got {r}"
    assert r.json()["error"]["code"] == code, r


def test_name_of_200_multibyte_characters_is_accepted(api):
    u = create_user(api, name="é" * 200)
    assert len(u["name"]) == 200


def test_unknown_and_invalid_ids(api):
    for path in ["/users/0", "/users/-1", "/users/abc", "/users/1.5", "/users/9223372036854775808",
                 "/users/99999999999999999999", "/users/007"]:
        r = api.get(path)
        assert r.status == 404 and r.json()["error"]["code"] == "not_found", f"{path}: {r}"
    r = api.get("/users/9223372036854775807")
    assert r.status == 404, r
    r = api.request("PUT", "/users/9223372036854775807", body={"name": "n", "email": "a@b.co"})
    assert r.status == 404, r
    r = api.request("DELETE", "/users/9223372036854775807")
    assert r.status == 404, r


def test_method_not_allowed_lists_allow(api):
    r = api.request("POST", "/users/1", body={})
    assert r.status == 405, r
    assert set(x.strip() for x in r.headers["allow"].split(",")) >= {"GET", "PUT", "PATCH", "DELETE"}, r.headers


def test_list_pagination_limits(api):
    for q in ["limit=0", "limit=1001", "limit=x", "after_id=-1", "limit=%zz"]:
        r = api.get(f"/users?{q}")
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_parameter", f"{q}: {r}"
    r = api.get("/users?limit=2")
    body = r.json()
    assert r.status == 200 and len(body["data"]) <= 2


def test_ten_thousand_users_paged_to_the_end(api, schema):
    marker = uniq("page")
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO users(name, email) SELECT %s || '-' || g, %s || '-' || g || '@example.com'"
                    " FROM generate_series(1, 10000) g", (marker, marker))
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM users ORDER BY id")
        expected = [row[0] for row in cur.fetchall()]
    # written straight to the primary, so no fence sends the reads there: wait for the replica to have them
    from test_posts_api import wait_replica_ids
    wait_replica_ids(schema, "SELECT id FROM users ORDER BY id", (), expected)
    seen = []
    url = "/users?limit=1000"
    pages = 0
    while url:
        r = api.get(url)
        assert r.status == 200, r
        body = r.json()
        seen.extend(u["id"] for u in body["data"])
        url = body["next"]
        pages += 1
        assert pages < 100, "pagination does not end"
    assert seen == expected, (f"expected {len(expected)} ids in order, got {len(seen)}; "
                              f"duplicates: {len(seen) - len(set(seen))}; missing: {len(set(expected) - set(seen))}")


def test_concurrent_creates_with_same_email(api):
    email = f"{uniq('race')}@example.com"

    def create(i):
        return api.request("POST", "/users", body={"name": f"racer {i}", "email": email}).status

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        statuses = list(ex.map(create, range(20)))
    assert statuses.count(201) == 1 and statuses.count(409) == 19, f"expected one 201 and 19 409, got {statuses}"


def test_user_delete_names_a_post_committed_while_it_waited(api, schema):
    """user_delete() (migration 0004), which DELETE /users/:id runs, lists every post it removes, even
    one whose insert was in flight when the deletion began: the server drops exactly those posts from
    the cache. A single statement would not see it (its snapshot is older than the insert's commit),
    which the last part shows, so the function is what makes the list whole."""
    import threading

    def race(delete_sql):
        uid = create_user(api)["id"]
        with closing(schema.rw()) as ins, closing(schema.rw()) as dele:
            ins.autocommit = dele.autocommit = True
            with ins.cursor() as c:
                c.execute("INSERT INTO posts(title, content, user_id) VALUES ('old', '', %s) RETURNING id", (uid,))
                old = c.fetchone()[0]
                c.execute("BEGIN")
                c.execute("INSERT INTO posts(title, content, user_id) VALUES ('new', '', %s) RETURNING id", (uid,))
                new = c.fetchone()[0]
            got = []
            t = threading.Thread(target=lambda: got.append(_fetch(dele, delete_sql, uid)))
            t.start()
            t.join(1.0)
            assert t.is_alive(), "expected the deletion to wait for the insert's lock on the user"
            with ins.cursor() as c:
                c.execute("COMMIT")
            t.join(10)
            with dele.cursor() as c:
                c.execute("SELECT count(*) FROM posts WHERE user_id = %s", (uid,))
                assert c.fetchone()[0] == 0, "expected every post of the user deleted"
        return sorted(got[0] or []), sorted([old, new])

    listed, posts = race("SELECT post_ids FROM user_delete(%s)")
    assert listed == posts, f"expected user_delete() to name both posts {posts}, got {listed}"
    listed, posts = race("WITH p AS (SELECT array_agg(id) AS ids FROM posts WHERE user_id = %s) "
                         "DELETE FROM users u USING p WHERE u.id = %s RETURNING p.ids")
    assert listed == posts[:1], f"expected one statement to miss the post committed meanwhile, got {listed}"


def _fetch(conn, sql, uid):
    with conn.cursor() as c:
        c.execute(sql, (uid,) * sql.count("%s"))
        return c.fetchone()[0]


def test_delete_user_removes_posts(api, schema):
    u = create_user(api)
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO posts(title, content, user_id) VALUES ('t1', 'c', %s), ('t2', 'c', %s)",
                    (u["id"], u["id"]))
    r = api.get(f"/users/{u['id']}?include=posts")
    assert r.status == 200 and [p["title"] for p in r.json()["posts"]] == ["t1", "t2"], r
    assert api.request("DELETE", f"/users/{u['id']}").status == 204
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM posts WHERE user_id = %s", (u["id"],))
        assert cur.fetchone()[0] == 0
    r = api.get(f"/users/{u['id']}?include=posts")
    assert r.status == 404, r
    assert api.get(f"/users/{u['id']}?include=comments").status == 400


def test_include_posts_embeds_the_first_posts_and_links_the_rest(api, schema):
    """Issue 14: ?include=posts embedded every post of the user (12 MB for 300 posts of 10,000 emoji).
    It now embeds the first embed_posts (50) in id order, within the page_bytes budget, and posts_next is
    the page of /users/:id/posts after the last one embedded: following it yields every other post."""
    from test_posts_api import big_posts, compare_ids, walk_bounded, wait_replica_ids, PAGE_BYTES, ENVELOPE
    u = create_user(api)
    with closing(schema.rw()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO posts(title, content, user_id) SELECT 'p' || g, 'c', %s FROM generate_series(1, 120) g",
                    (u["id"],))
        cur.execute("SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],))
        ids = [row[0] for row in cur.fetchall()]
    wait_replica_ids(schema, "SELECT id FROM posts WHERE user_id = %s ORDER BY id", (u["id"],), ids)
    got = api.get(f"/users/{u['id']}?include=posts").json()
    assert [p["id"] for p in got["posts"]] == ids[:50], f"expected the first 50 posts, got {len(got['posts'])}"
    assert got["posts_next"] == f"/users/{u['id']}/posts?limit=50&after_id={ids[49]}", got["posts_next"]
    rest, _ = walk_bounded(api, got["posts_next"])
    compare_ids(ids[50:], rest)

    with big_posts(api, schema) as (big, big_ids):
        r = api.get(f"/users/{big['id']}?include=posts")
        got = r.json()
        n = len(got["posts"])
        assert r.status == 200 and len(r.body) <= PAGE_BYTES + ENVELOPE + 1000, (
            f"expected at most {PAGE_BYTES} bytes, got {len(r.body)}")
        assert 1 <= n < 50 and [p["id"] for p in got["posts"]] == big_ids[:n], f"expected the first posts, got {n}"
        assert got["posts_next"] == f"/users/{big['id']}/posts?limit=50&after_id={big_ids[n - 1]}", got["posts_next"]
        rest, _ = walk_bounded(api, got["posts_next"])
        compare_ids(big_ids[n:], rest)
