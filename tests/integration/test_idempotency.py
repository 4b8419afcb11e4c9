"""Issue 18 item 4: Idempotency-Key (draft-ietf-httpapi-idempotency-key-header-09) on POST, PUT, PATCH and
DELETE. The answer is stored by the statement that writes (migration 0007); the same key with the same
request gets it again (Idempotent-Replayed: true) and writes nothing; with another request 422; while the
first is in flight 409; a failed write stores nothing; expired keys are reused and purged; malformed keys
are 400; a write_outcome_unknown says whether a resend is safe; a replay raises no fence and invalidates
nothing. Real server, real primary + replica through PgBouncer, real Redis where the cache matters."""

import json
import signal
import threading
from contextlib import closing

import pytest

from lib.builders import create_post, create_user, uniq
from lib.cache import OwnRedis, cached_server
from lib.pgapi_fixtures import module_server
from lib.topology import wait_until

MISSING = 9000000000019


@pytest.fixture(scope="module")
def s(schema, tmp_path_factory):
    """One server for the module: cache off, expired keys purged every 200 ms (the default ttl, 24 h: a
    test makes a key expire by moving its created_at back)."""
    yield from module_server(tmp_path_factory, "idem", schema,
                             {"redis": {"enabled": "off"}, "database": {"health_interval": "200ms"},
                              "idempotency": {"purge_interval": "200ms"}})


def keyed(s, method, path, key, body=None, headers=None):
    h = {"Idempotency-Key": key, **(headers or {})}
    return s.request(method, path, body=body, headers=h)


def code(r):
    return r.json()["error"]["code"] if r.body else None


def replayed(r):
    return r.headers.get("idempotent-replayed")


def primary(schema):
    """postgres on the primary's pgapi database, over its unix socket (PgBouncer does not see it)."""
    conn = schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port, dbname="pgapi",
                      user="postgres")
    conn.autocommit = True
    return conn


def sql(schema, query, args=None):
    with closing(primary(schema)) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def version(schema, table, rid):
    rows = sql(schema, f"SELECT version FROM {table} WHERE id = %s", (rid,))
    return rows[0][0] if rows else None


def stored(schema, key):
    return sql(schema, "SELECT status, row_id FROM pgapi_idempotency_keys WHERE scope = '' AND key = %s", (key,))


def new_row(s, kind):
    u = create_user(s)
    if kind == "users":
        return f"/users/{u['id']}", u
    p = create_post(s, u["id"], "t", "c")
    return f"/posts/{p['id']}", p


def bodies(kind):
    if kind == "users":
        return {"PUT": {"name": "replaced", "email": f"{uniq('idem')}@example.com"}, "PATCH": {"name": "patched"}}
    return {"PUT": {"title": "replaced", "content": "r"}, "PATCH": {"title": "patched"}}


# ---- replays ------------------------------------------------------------------------------------------

def test_post_replayed_creates_one_row(s, schema):
    key, email = uniq("k"), f"{uniq('idem')}@example.com"
    first = keyed(s, "POST", "/users", key, body={"name": "once", "email": email})
    assert first.status == 201 and replayed(first) is None, f"the first POST: expected 201, got {first}"
    # the same request: the same fields, whatever the JSON's member order and spacing
    again = keyed(s, "POST", "/users", key, body=json.dumps({"email": email, "name": "once"}, indent=2),
                  headers={"Content-Type": "application/json"})
    assert again.status == 201 and replayed(again) == "true", \
        f"the same POST again: expected 201 with Idempotent-Replayed: true, got {again} {again.headers}"
    assert again.body == first.body, f"expected the first answer again: {first.body!r} vs {again.body!r}"
    assert again.headers.get("location") == first.headers.get("location") == f"/users/{first.json()['id']}"
    assert again.headers.get("etag") == first.headers.get("etag"), "a replay has the first answer's ETag"
    assert again.headers.get("pgapi-lsn"), "a replay carries a Pgapi-Lsn (past the first write's commit)"
    assert sql(schema, "SELECT count(*) FROM users WHERE email = %s", (email,)) == [(1,)], "expected one row"
    assert stored(schema, key) == [(201, str(first.json()["id"]))]


def test_post_of_a_post_replayed(s, schema):
    u, key = create_user(s), uniq("k")
    first = keyed(s, "POST", f"/users/{u['id']}/posts", key, body={"title": "t", "content": "c"})
    again = keyed(s, "POST", f"/users/{u['id']}/posts", key, body={"title": "t", "content": "c"})
    assert first.status == again.status == 201 and replayed(again) == "true", (first, again)
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == f"/posts/{first.json()['id']}"
    assert sql(schema, "SELECT count(*) FROM posts WHERE user_id = %s", (u["id"],)) == [(1,)], "expected one post"


@pytest.mark.parametrize("kind", ["users", "posts"])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_replayed_write_once(s, schema, kind, method):
    path, row = new_row(s, kind)
    key, body = uniq("k"), bodies(kind)[method]
    first = keyed(s, method, path, key, body=body)
    assert first.status == 200 and first.json()["version"] == 2, first
    for _ in range(2):
        again = keyed(s, method, path, key, body=body)
        assert again.status == 200 and replayed(again) == "true" and again.body == first.body, \
            f"{method} {path} again: expected the first 200 replayed, got {again} {again.headers}"
    assert version(schema, kind, row["id"]) == 2, "expected exactly one write (version 2)"


@pytest.mark.parametrize("kind", ["users", "posts"])
def test_delete_replayed_as_204(s, schema, kind):
    path, row = new_row(s, kind)
    key = uniq("k")
    first = keyed(s, "DELETE", path, key)
    assert first.status == 204, first
    again = keyed(s, "DELETE", path, key)
    assert again.status == 204 and replayed(again) == "true" and again.body == b"", \
        f"DELETE {path} again: expected its 204 replayed (not a 404), got {again} {again.headers}"
    assert version(schema, kind, row["id"]) is None
    assert s.request("DELETE", path).status == 404, "without the key, the row is gone: 404"


def test_keyed_write_under_if_match(s, schema):
    path, u = new_row(s, "users")
    tag = s.get(path).headers["etag"]
    key = uniq("k")
    first = keyed(s, "PATCH", path, key, body={"name": "cond"}, headers={"If-Match": tag})
    assert first.status == 200, first
    again = keyed(s, "PATCH", path, key, body={"name": "cond"}, headers={"If-Match": tag})
    assert again.status == 200 and replayed(again) == "true", f"expected the replay, not a 412: {again}"
    # the tags are part of the request: another If-Match with the key is another request
    other = keyed(s, "PATCH", path, key, body={"name": "cond"}, headers={"If-Match": '"2"'})
    assert other.status == 422 and code(other) == "idempotency_key_mismatch", other
    assert version(schema, "users", u["id"]) == 2


# ---- what is not stored, what is refused ------------------------------------------------------------------

def test_another_request_with_the_key_is_422_and_writes_nothing(s, schema):
    path, u = new_row(s, "users")
    other_path, other = new_row(s, "users")
    key = uniq("k")
    assert keyed(s, "PATCH", path, key, body={"name": "first"}).status == 200
    for method, p, body in [("PATCH", path, {"name": "second"}), ("PATCH", other_path, {"name": "first"}),
                            ("PUT", path, {"name": "first", "email": f"{uniq('m')}@example.com"}),
                            ("DELETE", path, None), ("POST", "/users", {"name": "n", "email": "n@example.com"})]:
        r = keyed(s, method, p, key, body=body)
        assert r.status == 422 and code(r) == "idempotency_key_mismatch", \
            f"{method} {p} with the key of another request: expected 422 idempotency_key_mismatch, got {r}"
    assert version(schema, "users", u["id"]) == 2 and version(schema, "users", other["id"]) == 1, \
        "a 422 must write nothing"


def test_a_failed_write_stores_nothing(s, schema):
    key = uniq("k")
    r = keyed(s, "PATCH", f"/users/{MISSING}", key, body={"name": "x"})
    assert r.status == 404 and stored(schema, key) == [], f"a 404 stores nothing: {r}, {stored(schema, key)}"
    path, u = new_row(s, "users")
    r = keyed(s, "PATCH", path, key, body={"name": "x"}, headers={"If-Match": '"7"'})
    assert r.status == 412 and stored(schema, key) == [], f"a 412 stores nothing: {r}"
    # the key is free: the client retries with the right tag
    r = keyed(s, "PATCH", path, key, body={"name": "x"}, headers={"If-Match": '"1"'})
    assert r.status == 200 and replayed(r) is None and version(schema, "users", u["id"]) == 2, r
    dup = create_user(s)
    r = keyed(s, "PATCH", path, uniq("k"), body={"email": dup["email"]})
    assert r.status == 409 and code(r) == "conflict", f"a duplicate email is the usual 409: {r}"


def test_keys_of_another_caller_never_meet(s, schema):
    """The scope is the caller (the token's subject; '' anonymous): a key another caller stored is not
    this caller's."""
    path, u = new_row(s, "users")
    key = uniq("k")
    sql(schema, "INSERT INTO pgapi_idempotency_keys (scope, key, request_hash, status, row_id, body) "
                "VALUES ('someone-else', %s, 'x', 200, '1', '{}')", (key,))
    r = keyed(s, "PATCH", path, key, body={"name": "mine"})
    assert r.status == 200 and replayed(r) is None and r.json()["name"] == "mine", r
    assert sorted(sql(schema, "SELECT scope FROM pgapi_idempotency_keys WHERE key = %s", (key,))) == \
        [("",), ("someone-else",)]


def test_a_key_in_flight_is_409_then_replayed(s, schema):
    """The first PATCH holds the key's lock while a row lock this test holds keeps it in PostgreSQL; the
    same request meanwhile is 409 (nothing written); released, the first writes once and the key
    replays it."""
    path, u = new_row(s, "users")
    key, answers = uniq("k"), []
    with closing(primary(schema)) as locker:
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (u["id"],))
        first = threading.Thread(target=lambda: answers.append(keyed(s, "PATCH", path, key, body={"name": "held"})))
        first.start()
        try:
            wait_until(lambda: sql(schema, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                           "AND query LIKE '%pgapi_idempotency_keys%'") == [(1,)], 15,
                       "the keyed PATCH waiting on the row lock")
            for body in ({"name": "held"}, {"name": "another"}):
                r = keyed(s, "PATCH", path, key, body=body)
                assert r.status == 409 and code(r) == "idempotency_key_in_use" and r.headers.get("retry-after"), \
                    f"the key in flight: expected 409 idempotency_key_in_use with Retry-After, got {r} {r.headers}"
        finally:
            locker.rollback()
    first.join(30)
    assert answers and answers[0].status == 200 and replayed(answers[0]) is None, answers
    r = keyed(s, "PATCH", path, key, body={"name": "held"})
    assert r.status == 200 and replayed(r) == "true" and r.body == answers[0].body, r
    assert version(schema, "users", u["id"]) == 2, "expected exactly one write"


# ---- expiry -----------------------------------------------------------------------------------------------

def expire(schema, key):
    sql(schema, "UPDATE pgapi_idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = %s", (key,))


def test_an_expired_key_is_used_again(s, schema):
    path, u = new_row(s, "users")
    key = uniq("k")
    assert keyed(s, "PATCH", path, key, body={"name": "first"}).status == 200
    expire(schema, key)
    # the purge may or may not have taken it yet: either way the key is free
    r = keyed(s, "PATCH", path, key, body={"name": "second"})
    assert r.status == 200 and replayed(r) is None and r.json()["version"] == 3, \
        f"an expired key with another request: expected a new write, got {r}"
    r = keyed(s, "PATCH", path, key, body={"name": "second"})
    assert r.status == 200 and replayed(r) == "true" and r.json()["name"] == "second", r


def test_expired_keys_are_purged(s, schema):
    path, _ = new_row(s, "users")
    old, young = uniq("k"), uniq("k")
    assert keyed(s, "PATCH", path, old, body={"name": "a"}).status == 200
    assert keyed(s, "PATCH", path, young, body={"name": "b"}).status == 200
    expire(schema, old)
    wait_until(lambda: stored(schema, old) == [], 10, "the expired key purged (purge_interval 200ms)")
    assert stored(schema, young), "a key within its ttl stays"


# ---- bad keys ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["k" * 256, "", "has space", "k\tk", "caf\u00e9"],
                         ids=["256-bytes", "empty", "space", "tab", "non-ascii"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_malformed_key_is_400(s, schema, method, value):
    path, u = new_row(s, "users")
    target = "/users" if method == "POST" else path
    body = None if method == "DELETE" else {"name": "bad", "email": f"{uniq('m')}@example.com"}
    payload = json.dumps(body).encode() if body else b""
    head = (f"{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n").encode() + b"Idempotency-Key: " + value.encode() + b"\r\n\r\n"
    raw = s.raw(head + payload)
    status = int(raw.split(b" ", 2)[1])
    assert status == 400 and b'"invalid_header"' in raw and b"Idempotency-Key" in raw, \
        f"{method} with Idempotency-Key {value[:20]!r}: expected 400 invalid_header, got {raw[:300]!r}"
    assert version(schema, "users", u["id"]) == 1, "a refused key must write nothing"


@pytest.mark.parametrize("value", [b"ctl\x01", b"del\x7f"])
def test_control_bytes_in_a_key_are_400(s, value):
    raw = s.raw(b"DELETE /users/" + str(MISSING).encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Idempotency-Key: " + value + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400"), f"a control byte in the key: expected 400, got {raw[:300]!r}"


def test_two_key_fields_and_the_longest_key(s, schema):
    path, u = new_row(s, "users")
    raw = s.raw(f"PATCH {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: 13\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n"
                '{"name":"x"}\n'.encode())
    assert raw.startswith(b"HTTP/1.1 400") and b"invalid_header" in raw, raw[:300]
    key = "K" * 255
    r = keyed(s, "PATCH", path, key, body={"name": "long"})
    assert r.status == 200, f"a key of 255 bytes is valid: {r}"
    assert replayed(keyed(s, "PATCH", path, key, body={"name": "long"})) == "true"
    assert version(schema, "users", u["id"]) == 2


# ---- write_outcome_unknown -----------------------------------------------------------------------------

# Names "pgapi-idem-refuse|SQLSTATE" are refused by the database with that SQLSTATE: 57P01 (the session ended
# while the write ran) is what the server answers write_outcome_unknown, produced here deterministically.
REFUSE = """
CREATE OR REPLACE FUNCTION pgapi_idem_refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF NEW.name LIKE 'pgapi-idem-refuse|%' THEN
        RAISE EXCEPTION USING ERRCODE = split_part(NEW.name, '|', 2), MESSAGE = 'refused for a test';
    END IF;
    RETURN NEW;
END $f$;
DROP TRIGGER IF EXISTS pgapi_idem_refuse ON users;
CREATE TRIGGER pgapi_idem_refuse BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION pgapi_idem_refuse();
"""


def test_write_outcome_unknown_says_a_keyed_resend_is_safe(s, schema):
    email = f"{uniq('m')}@example.com"
    body = {"name": "pgapi-idem-refuse|57P01", "email": email}
    key = uniq("k")
    sql(schema, REFUSE)
    try:
        r = keyed(s, "POST", "/users", key, body=body)
        assert r.status == 503 and code(r) == "write_outcome_unknown", r
        msg = r.json()["error"]["message"]
        assert "same Idempotency-Key is safe" in msg, f"expected the message to say a keyed resend is safe: {msg!r}"
        r = s.request("POST", "/users", body=body)
        assert r.status == 503 and code(r) == "write_outcome_unknown", r
        msg = r.json()["error"]["message"]
        assert "read the resource before retrying" in msg and "Idempotency-Key" in msg, \
            f"without a key: expected the advice to read first or send a key, got {msg!r}"
    finally:
        sql(schema, "DROP TRIGGER IF EXISTS pgapi_idem_refuse ON users; DROP FUNCTION IF EXISTS pgapi_idem_refuse()")
    # that one was not applied (nothing stored): the resend with the key writes, once
    assert stored(schema, key) == []
    first = keyed(s, "POST", "/users", key, body=body)
    again = keyed(s, "POST", "/users", key, body=body)
    assert first.status == 201 and replayed(again) == "true" and again.json()["id"] == first.json()["id"], (first, again)
    assert sql(schema, "SELECT count(*) FROM users WHERE email = %s", (email,)) == [(1,)]


# ---- the cache ----------------------------------------------------------------------------------------

def test_a_replay_invalidates_nothing_and_a_keyed_write_invalidates_like_any(server, schema):
    c = cached_server(server, schema, redis={"write_through": "off"})  # the invalidation itself
    path, _ = new_row(c, "users")
    wait_until(lambda: c.get(path).headers.get("x-cache") == "HIT", 10, "the user cached")
    key = uniq("k")
    w = keyed(c, "PATCH", path, key, body={"name": "keyed"})
    assert w.status == 200 and w.headers.get("pgapi-lsn"), w
    r = c.get(path)
    assert r.headers.get("x-cache") != "HIT" and r.json()["name"] == "keyed", \
        f"a keyed write invalidates like any write: got X-Cache={r.headers.get('x-cache')} {r}"
    wait_until(lambda: c.get(path).headers.get("x-cache") == "HIT", 10, "the written user cached again")
    again = keyed(c, "PATCH", path, key, body={"name": "keyed"})
    assert replayed(again) == "true" and again.headers.get("pgapi-lsn"), again
    r = c.get(path)
    assert r.headers.get("x-cache") == "HIT" and r.json()["version"] == 2, \
        f"a replay writes nothing and invalidates nothing: got X-Cache={r.headers.get('x-cache')} {r}"


def test_a_write_committed_without_its_answer_is_replayed_on_resend(server, schema, tmp_path):
    """The write commits but its fences cannot reach a frozen Redis: 503 write_outcome_unknown, though its
    key and answer committed with it. Once Redis answers again, the resend with the same key gets that
    answer and writes nothing (polling with it is safe: that is the point)."""
    own = OwnRedis(tmp_path)
    own.start()
    try:
        c = cached_server(server, schema, redis_port=own.port)
        path, u = new_row(c, "users")
        key = uniq("k")
        own.signal(signal.SIGSTOP)
        try:
            r = keyed(c, "PATCH", path, key, body={"name": "unconfirmed"})
            assert r.status == 503 and code(r) == "write_outcome_unknown", r
            assert "same Idempotency-Key is safe" in r.json()["error"]["message"], r
        finally:
            own.signal(signal.SIGCONT)
        assert stored(schema, key) == [(200, str(u["id"]))], "the key committed with the write"
        again = c.wait_for(lambda: (lambda a: a if a.status == 200 else None)(
            keyed(c, "PATCH", path, key, body={"name": "unconfirmed"})), 15, "the resend answered once Redis is back")
        assert replayed(again) == "true" and again.json()["name"] == "unconfirmed", again
        assert version(schema, "users", u["id"]) == 2, "expected the write applied once"
    finally:
        own.stop()
