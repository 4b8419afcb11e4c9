"""Rows made through the HTTP API for a test: users and posts with unique names and emails. Every test
module makes its users here."""

import json
import uuid


def uniq(prefix="u"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def post_user(s, name=None, email=None):
    """POST /users and return the response as it came (for tests where a refusal is a possible answer)."""
    name = name or uniq("name")
    email = email or f"{uniq('mail')}@example.com"
    return s.request("POST", "/users", body={"name": name, "email": email})


def create_user(s, name=None, email=None):
    """A new user (the JSON the server returned); asserts the 201."""
    name = name or uniq("name")
    r = post_user(s, name, email)
    assert r.status == 201, f"expected 201 creating {name!r}, got {r}"
    return r.json()


def create_post(s, user_id, title=None, content="some content"):
    """A new post of user_id (the JSON the server returned); asserts the 201."""
    title = title or uniq("title")
    body = json.dumps({"title": title, "content": content}, ensure_ascii=False).encode()  # UTF-8 as is
    r = s.request("POST", f"/users/{user_id}/posts", body=body, headers={"Content-Type": "application/json"})
    assert r.status == 201, f"expected 201 creating post {title!r} for user {user_id}, got {r}"
    return r.json()


def create_user_with_post(s):
    """A new user with one post, the post under the user's "post" key."""
    u = create_user(s)
    u["post"] = create_post(s, u["id"], "first", "c")
    return u
