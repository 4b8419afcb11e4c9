"""The consistency token (docs/consistency.md, "Several servers", R5): every acknowledged write answers
`Pgapi-Lsn: <position>`, and a read that sends it back sees at least that position, on any server, even
one of another deployment that shares no Redis and none of the writer's fences."""

import uuid

from lib.bouncer import replay_pause, replay_resume
from lib.builders import create_user
from lib.consistency import wait_replica_caught_up


def deployment(server, schema):
    """A server of its own deployment: its own Redis prefix, its local cache on (the defaults)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    s = server(workers=2, topology=schema, overrides={"redis": {"prefix": prefix},
                                                       "database": {"health_interval": "200ms"}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("redis") == "up", 15, "redis up")
    return s


def name_on(s, uid, token=None):
    r = s.request("GET", f"/users/{uid}", headers={"Pgapi-Lsn": token} if token else None)
    assert r.status == 200, r
    return r.json()["name"], r.headers.get("x-cache")


def test_a_token_carries_a_write_to_a_deployment_that_never_saw_it(server, schema):
    a, b = deployment(server, schema), deployment(server, schema)
    u = create_user(a)
    uid = u["id"]
    wait_replica_caught_up(schema)  # b, another deployment, knows nothing of the create: it may read the replica
    for _ in range(6):  # b caches the row (Redis and its workers' memory)
        name_on(b, uid)
    replay_pause(schema)
    try:
        w = a.request("PATCH", f"/users/{uid}", body={"name": "after-token"})
        assert w.status == 200, w
        token = w.headers.get("pgapi-lsn")
        assert token and "/" in token, w.headers
        stale = [name_on(b, uid) for _ in range(4)]
        assert all(n == u["name"] for n, _ in stale), \
            f"expected b, another deployment, to serve its old copy without the token (the control): {stale}"
        for _ in range(6):
            name, xc = name_on(b, uid, token)
            assert name == "after-token", f"a read with the write's token saw {name!r} ({xc})"
    finally:
        replay_resume(schema)


def test_a_malformed_token_is_refused(server, schema):
    s = deployment(server, schema)
    u = create_user(s)
    for bad in ("nope", "1/2/3", "G/0", "1/"):
        r = s.request("GET", f"/users/{u['id']}", headers={"Pgapi-Lsn": bad})
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_header", (bad, r)
    r = s.request("GET", f"/users/{u['id']}", headers={"Pgapi-Lsn": "0/0"})
    assert r.status == 200, r
