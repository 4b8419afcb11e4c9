"""docs/openapi.yaml against the real server: every documented operation is called with real ids (a
valid request, then the invalid ones its parameters and body schema describe); every status must be one
the operation documents, every documented status but 503 must be seen, and JSON bodies must have the
documented required properties and types. Every route the server has (`pgapi routes`: the router's,
generated from the resource declarations) is documented, and the document has no operation it lacks.
The 401 and 403 of the operations with `security` are seen on a second server that requires bearer tokens,
with tokens lacking the operation's `x-scopes` and holding only them."""

import json
import os
import re
import subprocess
import uuid

import time

import jwt
import pytest
import yaml

from lib.builders import create_post, create_user
from lib.pgapi_fixtures import module_server
from lib.pgapi_server import BINARY, REPO_ROOT

DOC_PATH = os.path.join(REPO_ROOT, "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch")
UNTRIGGERABLE = {"503", "429"}  # a healthy topology never answers 503 on purpose; 429 needs [ratelimit] on (test_ratelimit.py)
AUTH_STATUSES = {"401", "403"}  # seen by test_security_answers_as_documented, on a server requiring tokens
SCOPES = ("read", "write", "admin")
SECRET = "openapi-test-hs256-secret-0123456789abcdef"

with open(DOC_PATH) as f:
    DOC = yaml.safe_load(f)


def resolve(node):
    """Follows local $refs ("#/components/...") to the node they name."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local $refs are used, got {ref!r}"
        node = DOC
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"$ref {ref!r} does not resolve (at {part!r})"
            node = node[part]
    return node


def operations():
    return [(path, method) for path, item in DOC["paths"].items() for method in item if method in METHODS]


def router_routes():
    """(METHOD, /path/{id}) of every route `pgapi routes` prints (METHOD PATTERN per line)."""
    out = subprocess.run([BINARY, "routes"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=60)
    assert out.returncode == 0, f"pgapi routes failed: {out.stderr}"
    rows = re.findall(r"^([A-Z]+) (/\S*)$", out.stdout, re.M)
    assert rows, f"pgapi routes printed no route the regex understands: {out.stdout!r}"
    return {(m, re.sub(r":(\w+)", r"{\1}", p)) for m, p in rows}


# ---- a minimal schema check: types, required, properties, items, maxItems, allOf/anyOf, enum, nullable ---

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def schema_problems(schema, value, where="body"):
    s = resolve(schema)
    if value is None:
        return [] if s.get("nullable") else [f"{where}: null but the schema is not nullable"]
    problems = []
    for sub in s.get("allOf", []):
        problems += schema_problems(sub, value, where)
    if "anyOf" in s and all(schema_problems(sub, value, where) for sub in s["anyOf"]):
        problems.append(f"{where}: matches none of anyOf")
    t = s.get("type")
    if t and not TYPES[t](value):
        return problems + [f"{where}: expected {t}, got {type(value).__name__} {str(value)[:60]!r}"]
    if "enum" in s and value not in s["enum"]:
        problems.append(f"{where}: {value!r} is not one of {s['enum']}")
    if isinstance(value, dict):
        problems += [f"{where}: required property {k!r} missing" for k in s.get("required", []) if k not in value]
        for k, sub in s.get("properties", {}).items():
            if k in value:
                problems += schema_problems(sub, value[k], f"{where}.{k}")
    if isinstance(value, list) and len(value) > s.get("maxItems", len(value)):
        problems.append(f"{where}: {len(value)} items, more than maxItems {s['maxItems']}")
    if isinstance(value, list) and "items" in s:
        for i, item in enumerate(value):
            problems += schema_problems(s["items"], item, f"{where}[{i}]")
    return problems


def check_response(op, what, r, responses=None):
    """Asserts r is documented by op (or by `responses`); checks its headers and JSON body; returns status."""
    responses = responses or op["responses"]
    status = str(r.status)
    assert status in responses, (f"{what}: expected one of the documented statuses "
                                 f"{sorted(k for k in responses if k != 'default')}, got {r}")
    doc = resolve(responses[status])
    for name, header in doc.get("headers", {}).items():
        if resolve(header).get("required"):
            assert name.lower() in r.headers, f"{what}: expected header {name}, got {sorted(r.headers)}"
    content = doc.get("content", {})
    if not content:
        assert r.body == b"", f"{what}: {status} documents no body, got {r.body[:100]!r}"
        return status
    ctype = r.headers.get("content-type", "").split(";")[0].strip()
    assert ctype in content, f"{what}: expected a body of {sorted(content)}, got {ctype!r}"
    if ctype == "application/json":
        problems = schema_problems(content[ctype]["schema"], r.json())
        assert not problems, f"{what}: body does not match the documented schema:\n" + "\n".join(problems[:10])
        code = r.json().get("error", {}).get("code") if isinstance(r.json(), dict) else None
        if code is not None:  # every error code is named where its status is documented (or at the top)
            assert f"`{code}`" in doc.get("description", "") + DOC["info"]["description"], \
                f"{what}: error code {code!r} is documented neither for {status} nor at the top"
    return status


# ---- requests derived from the document -----------------------------------------------------------------

def body_schema(op):
    if "requestBody" not in op:
        return None
    return resolve(resolve(op["requestBody"])["content"]["application/json"]["schema"])


def example_body(schema):
    """The schema's example, with unique values for email fields (emails are unique)."""
    body = dict(schema["example"])
    for k, prop in schema.get("properties", {}).items():
        if k in body and resolve(prop).get("format") == "email":
            body[k] = f"oa-{uuid.uuid4().hex[:12]}@example.com"
    return body


def parameters(path, method):
    params = DOC["paths"][path].get("parameters", []) + DOC["paths"][path][method].get("parameters", [])
    return [resolve(p) for p in params]


def invalid_queries(params):
    """Query strings each of which breaks one documented constraint."""
    out = []
    for p in params:
        if p["in"] != "query":
            continue
        s = resolve(p["schema"])
        if "maximum" in s:
            out.append(f"{p['name']}={s['maximum'] + 1}")
        if "minimum" in s:
            out.append(f"{p['name']}={s['minimum'] - 1}")
        if "enum" in s:
            out.append(f"{p['name']}=not-{s['enum'][0]}")
    return out


def invalid_headers(params, fx, key_in_flight):
    """Header sets each of which breaks a documented precondition header: If-Match not an entity-tag list
    (400), and one that matches no row (version 0 never exists: 412); an empty Idempotency-Key (400), the
    key of another request (422) and one whose request is in flight (its lock held: 409)."""
    names = {p["name"] for p in params if p["in"] == "header"}
    out = []
    if "If-Match" in names:
        out += [{"If-Match": "not-quoted"}, {"If-Match": '"0"'}]
    if "Idempotency-Key" in names:
        out += [{"Idempotency-Key": ""}, {"Idempotency-Key": fx.used_key}, {"Idempotency-Key": key_in_flight}]
    return out


def valid_queries(params):
    out = [""]
    for p in params:
        s = resolve(p["schema"]) if p["in"] == "query" else {}
        out += [f"?{p['name']}={v}" for v in s.get("enum", [])]
        if "maximum" in s and p["name"] == "limit":
            out.append(f"?{p['name']}={s['maximum']}")
    return out


def invalid_bodies(schema, other_email):
    """(bytes, content type) pairs: malformed, not JSON, too large, empty, a member the schema does not allow,
    each field too long, a taken email."""
    example = example_body(schema)
    out = [(b'{"x":', "application/json"), (json.dumps(example).encode(), "text/plain"),
           (b'{"x":"' + b"y" * 70000 + b'"}', "application/json"), (b"{}", "application/json"),
           (b"[]", "application/json")]
    if schema.get("additionalProperties") is False:  # a member the schema does not list
        out.append((json.dumps(dict(example, undocumented_member=1)).encode(), "application/json"))
    for k, prop in schema.get("properties", {}).items():
        prop = resolve(prop)
        if "maxLength" in prop:
            out.append((json.dumps(dict(example, **{k: "x" * (prop["maxLength"] + 1)})).encode(), "application/json"))
        if prop.get("format") == "email":
            out.append((json.dumps(dict(example, **{k: other_email})).encode(), "application/json"))
    return out


class Fixtures:
    """A fresh user with one post, and another user whose email is taken, created with an Idempotency-Key
    (used_key: any other request with it is 422)."""

    def __init__(self, api):
        self.api = api
        self.user = create_user(api)
        self.used_key = f"oa-{uuid.uuid4().hex}"
        r = api.request("POST", "/users", body={"name": "other", "email": f"oa-{uuid.uuid4().hex[:12]}@example.com"},
                        headers={"Idempotency-Key": self.used_key})
        assert r.status == 201, r
        self.other = r.json()
        self.post = create_post(api, self.user["id"], "oa", "c")

    def url(self, path, missing=False):
        """The path with real ids ({id} after /users is the user's, after /posts the post's)."""
        max_id = resolve(DOC["components"]["parameters"]["Id"])["schema"]["maximum"]
        ids = {"users": self.user["id"], "posts": self.post["id"]}
        return re.sub(r"/(\w+)/\{id\}", lambda m: f"/{m.group(1)}/{max_id if missing else ids[m.group(1)]}", path)


# ---- the tests ------------------------------------------------------------------------------------------

def test_document_is_openapi_3_0_3_and_self_consistent():
    assert DOC["openapi"] == "3.0.3", f"expected openapi 3.0.3, got {DOC.get('openapi')!r}"
    assert DOC["info"]["title"] and DOC["info"]["version"], DOC["info"]

    def walk(node):
        if isinstance(node, dict):
            resolve(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(DOC)
    ids = [DOC["paths"][p][m]["operationId"] for p, m in operations()]
    assert len(ids) == len(set(ids)), f"operationIds must be unique: {sorted(ids)}"
    for path, method in operations():
        declared = {p["name"] for p in parameters(path, method) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}: path parameters {declared}"
        codes = [c for c in DOC["paths"][path][method]["responses"] if c != "default"]
        assert codes, f"{method} {path} documents no status code"


def test_router_table_and_document_list_the_same_routes():
    documented = {(m.upper(), p) for p, m in operations()}
    routes = router_routes()
    assert routes - documented == set(), f"routes in router.c missing from the document: {sorted(routes - documented)}"
    assert documented - routes == set(), f"documented operations the server lacks: {sorted(documented - routes)}"


@pytest.fixture(scope="module")
def key_in_flight(schema):
    """An Idempotency-Key whose first request looks in flight to the server: the transaction advisory lock
    a keyed write takes (resource.h, RESOURCE_SQL_KEYED: class 1885825380, hashtext of the anonymous
    scope and the key) is held by this session on the primary."""
    key = f"oa-in-flight-{uuid.uuid4().hex}"
    conn = schema._pg(host=schema.vars["PGAPI_PRIMARY_SOCKET_DIR"], port=schema.primary_port, dbname="pgapi",
                      user="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(1885825380, hashtext('0:' || %s))", (key,))
    yield key
    conn.close()


@pytest.mark.parametrize("path,method", operations())
def test_operation_answers_as_documented(api, key_in_flight, path, method):
    op = DOC["paths"][path][method]
    fx = Fixtures(api)
    seen = set()
    params = parameters(path, method)
    schema = body_schema(op)
    has_id = "{id}" in path

    def call(what, url, body=None, ctype=None):
        headers = {"Content-Type": ctype} if ctype else None
        r = api.request(method.upper(), url, body=body, headers=headers)
        seen.add(check_response(op, f"{method.upper()} {url} ({what})", r))
        return r

    for q in invalid_queries(params):
        call("invalid query", f"{fx.url(path)}?{q}")
    if schema is not None:
        for body, ctype in invalid_bodies(schema, fx.other["email"]):
            call(f"invalid body {body[:40]!r} as {ctype}", fx.url(path), body, ctype)
    valid = json.dumps(example_body(schema)).encode() if schema is not None else None
    ctype = "application/json" if schema is not None else None
    for h in invalid_headers(params, fx, key_in_flight):
        r = api.request(method.upper(), fx.url(path), body=valid, headers=dict(h, **({"Content-Type": ctype}
                                                                                  if ctype else {})))
        seen.add(check_response(op, f"{method.upper()} {fx.url(path)} (headers {h})", r))
    if has_id:
        call("unknown id", fx.url(path, missing=True), valid, ctype)
    for q in valid_queries(params) if method == "get" else [""]:
        r = call("valid request", fx.url(path) + q, valid, ctype)
        assert 200 <= r.status < 300, f"{method.upper()} {fx.url(path)}{q}: expected success, got {r}"
    documented = {c for c in op["responses"] if c != "default"}
    unseen = documented - seen - UNTRIGGERABLE - AUTH_STATUSES
    assert not unseen, f"{method.upper()} {path}: documented statuses never produced: {sorted(unseen)} (saw {sorted(seen)})"


@pytest.mark.parametrize("path", list(DOC["paths"]))
def test_other_methods_answer_405_with_allow(api, path):
    fx = Fixtures(api)
    documented = {m.upper() for m in DOC["paths"][path] if m in METHODS}
    expected_allow = documented | ({"HEAD"} if "GET" in documented else set())
    others = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m not in documented]
    assert others, f"{path} documents every method"
    for m in others:
        r = api.request(m, fx.url(path), body={})
        what = f"{m} {fx.url(path)}"
        check_response(None, what, r, {"405": DOC["components"]["responses"]["MethodNotAllowed"]})
        allow = {x.strip() for x in r.headers["allow"].split(",")}
        assert allow == expected_allow, f"{what}: expected Allow {sorted(expected_allow)}, got {sorted(allow)}"


def test_documented_bounds_hold(api):
    """The bounds the document states (issue 14): a user with more posts than `posts` may hold embeds
    maxItems of them and links the rest with posts_next, as the UserWithPosts schema says."""
    fx = Fixtures(api)
    uid = fx.user["id"]
    embed = resolve(DOC["components"]["schemas"]["UserWithPosts"])["allOf"][1]["properties"]["posts"]["maxItems"]
    for i in range(embed + 10):
        r = api.request("POST", f"/users/{uid}/posts", body={"title": f"b{i}", "content": "c"})
        assert r.status == 201, r
    op = DOC["paths"]["/users/{id}"]["get"]
    r = api.get(f"/users/{uid}?include=posts")
    check_response(op, f"GET /users/{uid}?include=posts", r)
    body = r.json()
    assert not schema_problems(DOC["components"]["schemas"]["UserWithPosts"], body), schema_problems(
        DOC["components"]["schemas"]["UserWithPosts"], body)
    assert len(body["posts"]) == embed and body["posts_next"], (len(body["posts"]), body["posts_next"])
    rest = api.get(body["posts_next"])
    check_response(DOC["paths"]["/users/{id}/posts"]["get"], body["posts_next"], rest)
    assert len(rest.json()["data"]) == 11 and rest.json()["next"] is None, rest


def test_served_document_is_the_file(api):
    """GET /openapi.yaml serves this very file (built into the binary), as YAML, with its ETag for a 304."""
    with open(DOC_PATH, "rb") as f:
        on_disk = f.read()
    r = api.get("/openapi.yaml")
    assert r.status == 200, r
    assert r.body == on_disk, (f"expected docs/openapi.yaml as built in ({len(on_disk)} bytes), got {len(r.body)} "
                               f"bytes: rebuild after editing the document")
    assert r.headers.get("content-type") == "application/yaml", r.headers
    assert r.headers.get("cache-control") == "no-cache", r.headers
    assert yaml.safe_load(r.body) == DOC
    tag = r.headers.get("etag")
    assert tag and tag.startswith('"'), r.headers
    again = api.get("/openapi.yaml", headers={"If-None-Match": tag})
    assert again.status == 304 and again.body == b"" and again.headers.get("etag") == tag, again
    head = api.request("HEAD", "/openapi.yaml")
    assert head.status == 200 and head.body == b"" and head.headers.get("content-length") == str(len(on_disk)), head


# ---- bearer tokens ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def authed(schema, tmp_path_factory):
    """A server with [auth] mode = required and an HS256 secret."""
    secret = tmp_path_factory.mktemp("oa-keys") / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    yield from module_server(tmp_path_factory, "oa-auth", schema,
                             {"auth": {"mode": "required", "hs256_secret_file": str(secret)},
                              "redis": {"enabled": "off"}, "database": {"health_interval": "200ms"}})


def token(scopes):
    return jwt.encode({"sub": "openapi", "exp": int(time.time()) + 600, "scope": " ".join(scopes)}, SECRET,
                      algorithm="HS256")


class Bearer:
    """The server as a client holding a token sees it (for Fixtures and lib.builders)."""

    def __init__(self, s, scopes):
        self.s, self.auth = s, {"Authorization": f"Bearer {token(scopes)}"}

    def request(self, method, path, body=None, headers=None, **kw):
        return self.s.request(method, path, body=body, headers={**(headers or {}), **self.auth}, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)


@pytest.mark.parametrize("path,method", operations())
def test_security_answers_as_documented(authed, path, method):
    op = DOC["paths"][path][method]
    fx = Fixtures(Bearer(authed, SCOPES))
    schema = body_schema(op)
    body = json.dumps(example_body(schema)).encode() if schema is not None else None
    headers = {"Content-Type": "application/json"} if schema is not None else {}
    if "security" not in op:  # open: no token needed
        r = authed.request(method.upper(), fx.url(path), body=body, headers=headers)
        assert r.status == 200, f"{method.upper()} {path} is documented open but answered {r}"
        return
    need = op.get("x-scopes")
    assert op["security"] == [{"bearerAuth": []}] and need and set(need) <= set(SCOPES), (path, method, op)
    seen = set()
    for what, client, extra in (("no token", authed, {}), ("bad token", authed, {"Authorization": "Bearer x.y.z"}),
                                ("without " + need[0], Bearer(authed, [s for s in SCOPES if s not in need]), {})):
        r = client.request(method.upper(), fx.url(path), body=body, headers={**headers, **extra})
        seen.add(check_response(op, f"{method.upper()} {path} ({what})", r))
    assert seen == AUTH_STATUSES, f"{method.upper()} {path}: expected 401 and 403, saw {sorted(seen)}"
    r = Bearer(authed, need).request(method.upper(), fx.url(path), body=body, headers=headers)
    check_response(op, f"{method.upper()} {path} (with {need})", r)
    assert 200 <= r.status < 300, f"{method.upper()} {path} with a token holding {need}: expected success, got {r}"
