"""Issue 18, authentication: JWT bearer tokens ([auth] mode = required) made here with PyJWT and
`cryptography`: HS256 with a secret file, RS256 with a PEM public key, RS256 and ES256 from a JWKS chosen by
kid; every bad token of the issue (malformed, alg none, HS/RS confusion both ways, expired, future nbf, wrong
aud and iss, bad signature, a kid of the wrong type, too long), the scopes of each route (read, write, admin
for deleting a user), RFC 6750's 401/403 with WWW-Authenticate in the one error shape, the routes that stay
open, the subject in the access log (text and JSON) and pgapi_auth_total; a bad JWKS at a SIGHUP keeps the
old keys (the log says why) and a new key serves after the next; mode = off refused on 0.0.0.0; the secret
in no output."""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lib.builders import create_post, create_user
from lib.metrics import scrape, total
from lib.pgapi_fixtures import module_server
from lib.pgapi_server import BINARY, REPO_ROOT

SECRET = "hs256-test-secret-" + "7f3a9c" * 6  # 54 bytes; must never reach an output
AUDIENCE = "pgapi-test"
ISSUER = "https://issuer.test"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwk(key, kid, **extra):
    pub = key.public_key()
    d = json.loads(RSAAlgorithm.to_jwk(pub) if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm.to_jwk(pub))
    d.update(kid=kid, **extra)
    return d


class Keys:
    """The module's key material: an HS256 secret, an RSA key whose PEM is public_key_file, and a JWKS of an
    EC P-256 key (kid ec-1) and another RSA key (kid rs-2)."""

    def __init__(self, d):
        self.rsa_pem_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_jwks_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.secret_file = os.path.join(d, "secret")
        with open(os.open(self.secret_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(SECRET + "\n")
        self.pem_file = os.path.join(d, "public.pem")
        with open(self.pem_file, "w") as f:
            f.write(pem_public(self.rsa_pem_key))
        self.jwks_file = os.path.join(d, "jwks.json")
        with open(self.jwks_file, "w") as f:
            json.dump({"keys": [jwk(self.ec_key, "ec-1", alg="ES256", use="sig"), jwk(self.rsa_jwks_key, "rs-2"),
                                {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"}]}, f)


def claims(sub="alice@example.test", scope="read write", ttl=300, **extra):
    now = int(time.time())
    c = {"sub": sub, "exp": now + ttl, "iat": now, "aud": AUDIENCE, "iss": ISSUER}
    if scope is not None:
        c["scope"] = scope
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def hs256(payload=None, secret=SECRET, headers=None):
    return jwt.encode(payload or claims(), secret, algorithm="HS256", headers=headers)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def manual(header, payload, key_bytes):
    """A token signed by hand with HMAC-SHA256 over whatever key bytes (PyJWT refuses a PEM as HMAC key)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(key_bytes, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


class As:
    """A server seen by a client that sends a token with every request (for lib.builders)."""

    def __init__(self, s, token):
        self.s, self.token = s, token

    def request(self, method, path, body=None, headers=None, **kw):
        return self.s.request(method, path, body=body, headers={**(headers or {}), **bearer(self.token)}, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)


def assert_401(r, code, description=None):
    assert r.status == 401, f"expected 401 {code}, got {r}"
    assert r.json()["error"]["code"] == code, r
    www = r.headers.get("www-authenticate", "")
    if code == "missing_token":
        assert www == "Bearer", f"expected WWW-Authenticate: Bearer, got {www!r}"
    else:
        assert www.startswith('Bearer error="invalid_token", error_description="'), www
        if description:
            assert description in www and description in r.json()["error"]["message"], (www, r)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(str(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="module")
def auth(schema, tmp_path_factory, keys):
    yield from module_server(tmp_path_factory, "auth", schema, {
        "auth": {"mode": "required", "hs256_secret_file": keys.secret_file, "public_key_file": keys.pem_file,
                 "jwks_file": keys.jwks_file, "audience": AUDIENCE, "issuer": ISSUER},
        "redis": {"enabled": "off"}, "database": {"health_interval": "200ms"}})


# ---- tokens that pass ------------------------------------------------------------------------------

def test_hs256_token_reads_and_writes(auth):
    a = As(auth, hs256(claims(scope="read write")))
    u = create_user(a)
    r = a.get(f"/users/{u['id']}")
    assert r.status == 200 and r.json()["id"] == u["id"], r
    assert auth.get(f"/users/{u['id']}").status == 401, "the same read without a token"


@pytest.mark.parametrize("kind", ["pem-rs256", "jwks-rs256", "jwks-es256", "pem-rs256-unknown-kid"])
def test_public_key_tokens(auth, keys, kind):
    key, alg, headers = {
        "pem-rs256": (keys.rsa_pem_key, "RS256", None),
        "jwks-rs256": (keys.rsa_jwks_key, "RS256", {"kid": "rs-2"}),
        "jwks-es256": (keys.ec_key, "ES256", {"kid": "ec-1"}),
        # a kid no JWKS key has: the PEM key (which has none) is tried, as identity providers send kids
        "pem-rs256-unknown-kid": (keys.rsa_pem_key, "RS256", {"kid": "from-the-idp"}),
    }[kind]
    token = jwt.encode(claims(scope=["read"]), key, algorithm=alg, headers=headers)
    r = auth.get("/users?limit=1", headers=bearer(token))
    assert r.status == 200, f"{kind}: expected 200, got {r} {r.headers.get('www-authenticate')}"


def test_leeway_and_audience_forms(auth):
    now = int(time.time())
    for c in (claims(exp=now - 10),                  # expired 10 s ago: inside the 30 s leeway
              claims(nbf=now + 10),                  # valid in 10 s: inside the leeway
              claims(aud=["other", AUDIENCE]),       # aud as an array
              claims(exp=float(now + 60))):          # NumericDate as a JSON number with a fraction
        r = auth.get("/users?limit=1", headers=bearer(hs256(c)))
        assert r.status == 200, f"claims {c}: expected 200, got {r}"


# ---- bad tokens --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "Basic dXNlcjpwYXNz", "Bearer", "Token abc"])
def test_no_bearer_token_is_401_missing(auth, value):
    r = auth.get("/users?limit=1", headers={"Authorization": value} if value else {})
    assert_401(r, "missing_token")


def test_malformed_tokens(auth):
    good = hs256()
    h, p, s = good.split(".")
    for token in ["abc", "a.b", "a.b.c", "a.b.c.d", h + "." + p, h + "." + p + ".", "." + p + "." + s,
                  h + "!." + p + "." + s, b64(b"not json") + "." + p + "." + s, b64(b"[1]") + "." + p + "." + s,
                  h + "." + b64(b"not json") + "." + s, good + "=", "Bearer " + good]:
        assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token")
    crit = manual({"alg": "HS256", "crit": ["exp"]}, claims(), SECRET.encode())
    assert_401(auth.get("/users?limit=1", headers=bearer(crit)), "invalid_token", "well-formed")


def test_alg_none_is_refused(auth):
    for alg in ("none", "None", "NONE"):
        token = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."
        assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token")
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert_401(auth.get("/users?limit=1", headers=bearer(unsigned)), "invalid_token")
    for alg in ("HS512", "RS384", "PS256", "EdDSA"):
        token = manual({"alg": alg}, claims(), SECRET.encode())
        assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token", "alg is refused")


def test_hs_rs_confusion_on_this_server(auth, keys):
    """An HS256 token whose HMAC key is the RSA public key's PEM (the classic confusion): the PEM is an RS256
    key only, never an HMAC secret."""
    pem = pem_public(keys.rsa_pem_key).encode()
    for key_bytes in (pem, pem.strip()):
        assert_401(auth.get("/users?limit=1", headers=bearer(manual({"alg": "HS256"}, claims(), key_bytes))),
                   "invalid_token", "signature")
    # an RS256 token presenting a JWKS kid of an EC key: the kid's type decides, not the token
    token = jwt.encode(claims(), keys.rsa_jwks_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token", "alg is refused")
    # an ES256 token with a kid no key has (no EC key without a kid to fall back to)
    token = jwt.encode(claims(), keys.ec_key, algorithm="ES256", headers={"kid": "nope"})
    assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token", "kid")
    # the JWKS's encryption key is not a signing key
    token = jwt.encode(claims(), keys.rsa_jwks_key, algorithm="RS256", headers={"kid": "enc-1"})
    assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token", "signature")


def test_claims_refused(auth, keys):
    now = int(time.time())
    cases = [
        (claims(exp=now - 120), "expired"),
        (claims(nbf=now + 120), "not valid yet"),
        (claims(aud="someone-else"), "audience"),
        (claims(aud=["a", "b"]), "audience"),
        (claims(aud=None), "audience"),
        (claims(iss="https://evil.test"), "issuer"),
        (claims(iss=None), "issuer"),
        (claims(exp=None), "claim"),
        (claims(exp="tomorrow"), "claim"),
        (claims(sub=None), "claim"),
        (claims(sub="with space"), "claim"),
        (claims(sub="x" * 129), "claim"),
        (claims(scope=42), "claim"),
    ]
    for c, why in cases:
        r = auth.get("/users?limit=1", headers=bearer(hs256(c)))
        assert_401(r, "invalid_token", why)
    wrong = hs256(secret="another-secret-of-enough-length-0123456789")
    assert_401(auth.get("/users?limit=1", headers=bearer(wrong)), "invalid_token", "signature")
    other_ec = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), other_ec, algorithm="ES256", headers={"kid": "ec-1"})
    assert_401(auth.get("/users?limit=1", headers=bearer(token)), "invalid_token", "signature")


def test_overlong_token_is_refused(auth):
    big = hs256(claims(pad="x" * 5000))
    assert len(big) > 4096
    assert_401(auth.get("/users?limit=1", headers=bearer(big)), "invalid_token", "longer than 4096")


def test_two_authorization_headers_are_refused(auth):
    good = hs256()
    raw = auth.raw(f"GET /users?limit=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n"
                   f"Authorization: Bearer {good}\r\nConnection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 401 ") and b"more than one Authorization header" in raw, raw[:300]


# ---- scopes and open routes ---------------------------------------------------------------------

def test_scopes_per_route(auth):
    writer = As(auth, hs256(claims(scope="read write")))
    u = create_user(writer)
    p = create_post(writer, u["id"])
    r = writer.request("DELETE", f"/users/{u['id']}")
    assert r.status == 403 and r.json()["error"]["code"] == "insufficient_scope", r
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="admin"', r.headers
    assert writer.request("DELETE", f"/posts/{p['id']}").status == 204, "deleting a post needs write"
    reader = As(auth, hs256(claims(scope=["read"])))
    assert reader.get(f"/users/{u['id']}").status == 200
    for method, path, body in (("POST", "/users", {"name": "n", "email": "e@x.test"}),
                               ("PATCH", f"/users/{u['id']}", {"name": "m"}),
                               ("POST", f"/users/{u['id']}/posts", {"title": "t", "content": "c"})):
        r = reader.request(method, path, body=body)
        assert r.status == 403 and 'scope="write"' in r.headers["www-authenticate"], (method, path, r)
    writer_only = As(auth, hs256(claims(scope="write")))
    r = writer_only.get(f"/users/{u['id']}")  # a cached token too: the scope is checked every time
    r2 = writer_only.get(f"/users/{u['id']}")
    assert r.status == r2.status == 403 and 'scope="read"' in r2.headers["www-authenticate"], (r, r2)
    none = As(auth, hs256(claims(scope=None)))
    assert none.get(f"/users/{u['id']}").status == 403
    admin = As(auth, hs256(claims(scope="admin")))
    assert admin.request("DELETE", f"/users/{u['id']}").status == 204
    assert reader.get(f"/users/{u['id']}").status == 404


def test_open_routes_need_no_token(auth):
    for path in ("/", "/healthz", "/readyz", "/openapi.yaml"):
        r = auth.get(path)
        assert r.status == 200, f"{path}: expected 200 without a token, got {r}"
    r = auth.request("OPTIONS", "/users")
    assert r.status == 204, r
    assert auth.get("/nowhere").status == 404, "an unknown path is a 404, not a 401"
    fams = scrape(auth)  # the metrics listener
    assert "pgapi_auth_total" in fams


def test_metrics_count_results(auth):
    before = scrape(auth)
    good = hs256(claims(scope="read"))
    auth.get("/users?limit=1", headers=bearer(good))
    auth.get("/users?limit=1")
    auth.get("/users?limit=1", headers=bearer(hs256(claims(exp=int(time.time()) - 600))))
    auth.get("/users?limit=1", headers=bearer("a.b.c"))
    auth.request("POST", "/users", body={"name": "n", "email": "m@x.test"}, headers=bearer(good))
    after = scrape(auth)
    for result in ("ok", "missing", "expired", "invalid", "insufficient_scope"):
        delta = total(after, "pgapi_auth_total", result=result) - total(before, "pgapi_auth_total", result=result)
        assert delta == 1, f"pgapi_auth_total{{result={result}}} moved by {delta}, expected 1"
    labels = {l["result"] for _, l, _ in after["pgapi_auth_total"]["samples"]}
    assert labels == {"ok", "missing", "invalid", "expired", "insufficient_scope"}, labels


def test_subject_in_access_log_and_no_secret_anywhere(auth):
    token = hs256(claims(sub="carol-42", scope="read"))
    r = auth.get("/users?limit=1", headers={**bearer(token), "X-Request-Id": "auth-sub-1"})
    assert r.status == 200
    anon = auth.get("/healthz", headers={"X-Request-Id": "auth-sub-2"})
    assert anon.status == 200
    auth.wait_for(lambda: "rid=auth-sub-2" in auth.log_text(), 10, "the access lines")
    lines = auth.log_text().splitlines()
    mine = [l for l in lines if "rid=auth-sub-1" in l]
    assert len(mine) == 1 and re.search(r" sub=carol-42( |$)", mine[0]), mine
    theirs = [l for l in lines if "rid=auth-sub-2" in l]
    assert len(theirs) == 1 and re.search(r" sub=-( |$)", theirs[0]), theirs
    text = auth.log_text()
    assert SECRET not in text and token not in text and token.split(".")[2] not in text
    assert "auth: bearer tokens required; keys: HS256, RS256, ES256 (kid ec-1), RS256 (kid rs-2)" in text, \
        [l for l in lines if "auth:" in l]


# ---- configuration ---------------------------------------------------------------------------------

def check_config(tmp_path, ini, env_extra=None):
    path = tmp_path / "check.ini"
    path.write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGAPI_")}
    env.update(env_extra or {})
    return subprocess.run([BINARY, "--config", str(path), "--check-config"], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=30, stdin=subprocess.DEVNULL)


def test_mode_off_refused_on_a_public_address(tmp_path):
    p = check_config(tmp_path, "[server]\nlisten = 0.0.0.0:3999\n")
    assert p.returncode == 1 and "[auth] mode = off on the non-loopback address 0.0.0.0" in p.stderr, p
    ok = check_config(tmp_path, "[server]\nlisten = 0.0.0.0:3999\n[auth]\nallow_anonymous = on\n")
    assert ok.returncode == 0, ok
    # serving refuses the same way, before it binds anything
    (tmp_path / "serve.ini").write_text("[server]\nlisten = 0.0.0.0:3999\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGAPI_")}
    serve = subprocess.run([BINARY, "--config", str(tmp_path / "serve.ini")], capture_output=True, text=True,
                           env=env, cwd=REPO_ROOT, timeout=30, stdin=subprocess.DEVNULL)
    assert serve.returncode == 1 and "non-loopback" in serve.stderr, serve


# systemd's part in socket activation (as test_socket_activation.py plays it): the held socket becomes fd 3
ACTIVATE = ('exec 3<&{fd} {fd}<&-; LISTEN_PID=$$; LISTEN_FDS=1; LISTEN_FDNAMES=http; '
            'export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; exec "$0" "$@"')


def test_mode_off_refused_on_a_public_socket_systemd_passed(server, keys):
    """The socket unit's address is not [server] listen: a passed socket on 0.0.0.0 is checked too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)
    sock.set_inheritable(True)
    try:
        def activated(overrides):
            s = server(workers=1, overrides=overrides, wrapper=["bash", "-c", ACTIVATE.format(fd=sock.fileno())])
            s.pass_fds = (sock.fileno(),)
            s.port = sock.getsockname()[1]
            return s
        off = activated({})
        with open(off.log_path, "ab") as log:  # start() would wait for workers that never come
            off.proc = subprocess.Popen(off.wrapper + [off.binary, "--config", off.ini_path], env=off.env(),
                                        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        pass_fds=off.pass_fds)
        assert off.proc.wait(20) == 1, off.log_tail()
        assert "mode = off on the non-loopback socket systemd passed" in off.log_text(), off.log_tail()
        on = activated({"auth": {"mode": "required", "hs256_secret_file": keys.secret_file}}).start()
        assert_401(on.get("/users?limit=1"), "missing_token")
    finally:
        sock.close()


def test_secret_never_printed(tmp_path, keys):
    p = check_config(tmp_path, f"[auth]\nmode = required\nhs256_secret_file = {keys.secret_file}\n")
    assert p.returncode == 0, p
    assert SECRET not in p.stdout + p.stderr and "mode = required" in p.stdout, p
    e = check_config(tmp_path, "[auth]\nmode = required\n", {"PGAPI_AUTH_HS256_SECRET": SECRET})
    assert e.returncode == 0 and SECRET not in e.stdout + e.stderr, e
    assert "PGAPI_AUTH_HS256_SECRET (not shown)" in e.stdout, e.stdout


@pytest.mark.parametrize("what,content,why", [
    ("jwks_file", "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"AAAA\", \"y\": \"AAAA\"}]}",
     "not a valid EC P-256 public key"),
    ("jwks_file", "{\"keys\": []}", "no RS256 or ES256 signing key"),
    ("jwks_file", "not json", "not a JSON object"),
    ("public_key_file", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    ("hs256_secret_file", "too-short\n", "HS256 secret of 9 bytes"),
])
def test_bad_key_material_refused(tmp_path, what, content, why):
    f = tmp_path / "keyfile"
    f.write_text(content)
    f.chmod(0o600)
    p = check_config(tmp_path, f"[auth]\nmode = required\n{what} = {f}\n")
    assert p.returncode == 1 and why in p.stderr, f"expected {why!r}; got {p.returncode} {p.stderr}"


def test_alg_confusion_across_key_kinds(server, keys):
    """Only a public key: an HS256 token is refused before any HMAC (whatever its key); only a secret: an
    RS256 token is refused. No database needed: the token is checked before any statement."""
    rs_only = server(workers=1, overrides={"auth": {"mode": "required", "public_key_file": keys.pem_file}}).start()
    pem = pem_public(keys.rsa_pem_key).encode()
    for key_bytes in (pem, SECRET.encode()):
        r = rs_only.get("/users?limit=1", headers=bearer(manual({"alg": "HS256"}, claims(), key_bytes)))
        assert_401(r, "invalid_token", "alg is refused")
    hs_only = server(workers=1, overrides={"auth": {"mode": "required", "hs256_secret_file": keys.secret_file}})
    hs_only.start()
    token = jwt.encode(claims(), keys.rsa_pem_key, algorithm="RS256")
    assert_401(hs_only.get("/users?limit=1", headers=bearer(token)), "invalid_token", "alg is refused")
    # aud and iss are not checked when not configured here
    assert hs_only.get("/users?limit=1", headers=bearer(hs256(claims(aud="x", iss="y")))).status != 401


# ---- reload ---------------------------------------------------------------------------------------------

def write_jwks(path, *entries):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(entries[0] if isinstance(entries[0], str) else json.dumps({"keys": list(entries)}))
    os.replace(tmp, path)


def test_sighup_rotates_keys_and_a_bad_jwks_keeps_the_old(server, schema, tmp_path):
    k1 = ec.generate_private_key(ec.SECP256R1())
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = str(tmp_path / "jwks.json")
    write_jwks(jwks, jwk(k1, "k1"))
    s = server(workers=1, topology=schema, overrides={
        "auth": {"mode": "required", "jwks_file": jwks, "leeway": "0s"},
        "redis": {"enabled": "off"}, "log": {"format": "json"}}).start()
    t1 = jwt.encode(claims(sub="dave", scope="read"), k1, algorithm="ES256", headers={"kid": "k1"})
    t2 = jwt.encode(claims(sub="erin", scope="read"), k2, algorithm="RS256", headers={"kid": "k2"})
    assert s.get("/users?limit=1", headers=bearer(t1)).status == 200
    assert_401(s.get("/users?limit=1", headers=bearer(t2)), "invalid_token", "alg is refused")  # no RSA key yet

    write_jwks(jwks, '{"keys": [{"kty": "RSA", "kid": "k2", "n": "broken", "e": "AQAB"}]}')
    s.signal(signal.SIGHUP)
    s.wait_for(lambda: "reload refused" in s.log_text(), 20, "the reload refused")
    refused = [l for l in s.log_text().splitlines() if "reload refused" in l]
    assert "jwks" in refused[0] and "keys[0]" in refused[0], refused
    assert s.get("/users?limit=1", headers=bearer(t1)).status == 200, "the old key must still serve"

    write_jwks(jwks, jwk(k2, "k2"))
    old = s.worker_pids()
    s.signal(signal.SIGHUP)
    s.wait_for(lambda: "reload complete" in s.log_text(), 30, "the reload with the new key")
    s.wait_for(lambda: s.workers_replaced(old, 1), 30, "the old generation gone")  # none accepts any more
    assert s.get("/users?limit=1", headers=bearer(t2)).status == 200, "the new key serves"
    # new workers, new cache: k1 is gone, and with it every ES256 key
    assert_401(s.get("/users?limit=1", headers=bearer(t1)), "invalid_token", "alg is refused")

    # the subject in the JSON access line
    access = [json.loads(l) for l in s.log_text().splitlines() if l.startswith("{") and '"msg":"access"' in l]
    assert any(a.get("sub") == "erin" for a in access), access[-3:]
    assert all("sub" in a for a in access), [a for a in access if "sub" not in a][:2]

    # a cached token stops serving at its exp (leeway 0 here)
    exp = int(time.time()) + 3
    short = jwt.encode(claims(sub="frank", scope="read", exp=exp), k2, algorithm="RS256", headers={"kid": "k2"})
    assert s.get("/users?limit=1", headers=bearer(short)).status == 200
    s.wait_for(lambda: time.time() > exp + 1.1, 10, "the token's exp to pass")
    assert_401(s.get("/users?limit=1", headers=bearer(short)), "invalid_token", "expired")
