"""Read-your-writes under load, checked on a recorded history (lib/history.py; the guarantee is in
docs/consistency.md, the load and its checks in lib/consistency.py): writer threads update, create and
delete users and posts on a few hot keys, reader threads read them through every read route, while WAL
replay on the replica is paused and resumed at random (or delayed by recovery_min_apply_delay).
Afterwards: no read may contradict an acknowledged write, the replica must really have served reads and
really have been behind, and the primary must hold every acknowledged version."""

import random

from lib.bouncer import replay_resume
from lib.consistency import (LOAD_SECONDS, ReplicaWatch, Schedule, delayed_schedule, replica_apply_delay,
                             run_and_check, seed_of_run, start_server, wait_replica_caught_up)
from lib.history import CREATE, DELETE, History, UPDATE, check, check_final


def test_read_your_writes_while_replay_pauses_at_random(server, schema):
    seed = seed_of_run()
    srv = start_server(server, schema)
    schedule = Schedule(random.Random(seed), LOAD_SECONDS, 0.15, 0.6, (3, 3, 1.5, 2))
    watch = ReplicaWatch(schema, seed, pause=True)
    try:
        run_and_check(srv, schema, watch, schedule, seed)
        assert watch.confirmed >= 1 and watch.frozen >= 1, \
            f"expected replay to be paused (and its position frozen) at least once, got {watch.numbers()}"
    finally:
        replay_resume(schema)
        wait_replica_caught_up(schema)


def test_read_your_writes_with_steady_replica_delay(server, schema):
    seed = seed_of_run()
    srv = start_server(server, schema)
    watch = ReplicaWatch(schema, seed, pause=False)
    with replica_apply_delay(schema, "1s"):
        run_and_check(srv, schema, watch, delayed_schedule(seed), seed)


# -- the checker itself, on small hand-made histories (no server): each rule fires, and only when it must --

def kinds(h):
    return sorted(v.kind for v in check(h).violations)


def test_consistency_checker_flags_a_stale_read_and_only_after_the_ack():
    h = History()
    u = ("user", 1)
    h.write(u, CREATE, "POST /users", 0.0, 0.1, 201)
    h.write(u, UPDATE, "PATCH /users/:id", 1.0, 1.2, 200, 2)
    h.read("GET /users/:id", 1.1, 1.3, 200, {u: 1})   # concurrent with the update: may see either
    h.read("GET /users/:id", 1.19, 1.4, 200, {u: 1})  # began before the ack: still allowed
    assert kinds(h) == []
    h.read("GET /users/:id", 1.21, 1.4, 200, {u: 1})  # began after the ack of version 2
    result = check(h)
    assert [v.kind for v in result.violations] == ["stale"], result.report()
    v = result.violations[0]
    assert (v.key, v.seen, v.write.version) == (u, 1, 2) and "expected version >= 2" in v.describe(), v.describe()


def test_consistency_checker_flags_lost_creates_and_resurrections():
    h = History()
    u, p = ("user", 1), ("post", 9)
    h.write(u, CREATE, "POST /users", 0.0, 0.1, 201)
    h.read("GET /users/:id", 0.05, 0.2, 404, {u: None})           # began before the ack: fine
    h.read("GET /users/:id", 0.2, 0.3, 404, {u: None})            # lost_create
    h.write(u, DELETE, "DELETE /users/:id", 1.0, 1.1, 204)
    h.read("GET /users/:id", 0.9, 1.05, 404, {u: None})           # the delete was in flight: fine
    h.read("GET /users/:id", 1.05, 1.2, 200, {u: 1})              # began before the delete's ack: fine
    h.read("GET /users/:id", 1.2, 1.3, 200, {u: 1})               # resurrected
    h.write(p, CREATE, "POST /users/:id/posts", 0.0, 0.1, 201)
    h.member(("posts_of", 2), p)
    h.read("GET /users/:id?include=posts", 0.5, 0.6, 200, {("user", 2): 1}, covers=("posts_of", 2))  # p missing
    assert kinds(h) == ["lost_create", "lost_create", "resurrected"], check(h).report()


def test_consistency_checker_flags_write_anomalies_and_impossible_versions():
    h = History()
    u = ("user", 1)
    h.write(u, CREATE, "POST /users", 0.0, 0.1, 201)
    h.write(u, UPDATE, "PATCH /users/:id", 0.2, 0.3, 200, 2)
    h.write(u, UPDATE, "PATCH /users/:id", 0.4, 0.5, 200, 2)      # same version, sent after the first ack
    h.read("GET /users/:id", 0.6, 0.7, 200, {u: 7})                # only 2 updates were ever sent
    assert kinds(h) == ["duplicate_version", "future", "write_regression"], check(h).report()


def test_consistency_checker_final_state():
    h = History()
    a, b, c = ("user", 1), ("user", 2), ("user", 3)
    for k in (a, b, c):
        h.write(k, CREATE, "POST /users", 0.0, 0.1, 201)
    h.write(a, UPDATE, "PATCH /users/:id", 0.2, 0.3, 200, 2)
    h.write(a, UPDATE, "PATCH /users/:id", 0.4, 5.0, None)        # timed out: may or may not have run
    h.write(b, DELETE, "DELETE /users/:id", 0.2, 0.3, 204)
    assert check_final(h, {a: 2, b: None, c: 1}) == []
    assert check_final(h, {a: 3, b: None, c: 1}) == []
    problems = check_final(h, {a: 1, b: 1, c: None})
    assert len(problems) == 3 and "user:1: expected a version in 2..3" in problems[0], problems
