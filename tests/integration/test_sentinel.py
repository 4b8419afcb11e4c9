"""pgapi follows Redis Sentinel ([redis] sentinels, master_name): a Redis master and its replica of the
test's own, three real redis-sentinel processes, and one pgapi server on the session topology.

The replica streams from the master through a relay the test can cut, so that the master can acknowledge
writes (their invalidations and fences) that the replica never gets; then the master is SIGKILLed and
the Sentinels promote that replica. Its store holds the old value still cached, the old fences and the
old verification marker: pgapi must notice the master change (a store whose run_id is not the one
verified) and verify before it trusts it, so the write acknowledged just before the kill is what every
read returns."""

import os
import signal
import subprocess
import time

import pytest
import redis as redis_lib

from lib.builders import create_user
from lib.cache import OwnRedis, cached_server
from lib.metrics import scrape, total
from lib.pgapi_server import free_port
from lib.relay import Relay
from lib.topology import OWN_REDIS_ADMIN_PASSWORD, own_redis_conf, wait_until

MASTER_NAME = "pgapi"
FAILOVER_S = 30          # the Sentinels' failover (down-after 1000 ms, then the election) and pgapi following


class Sentinels:
    """Three redis-sentinel processes monitoring MASTER_NAME, each with its own writable config file
    (Sentinel rewrites it); stopped by PID."""

    def __init__(self, tmp_path, master_port):
        self.ports = [free_port() for _ in range(3)]
        self.procs = []
        for port in self.ports:
            path = os.path.join(str(tmp_path), f"sentinel-{port}.conf")
            text = (f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                    f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                    f"sentinel auth-pass {MASTER_NAME} {OWN_REDIS_ADMIN_PASSWORD}\n")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.procs.append(subprocess.Popen(["redis-sentinel", path], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda: self.master(port) is not None, 10, f"sentinel {port} up")

    def master(self, port):
        try:
            r = redis_lib.Redis(port=port, password=None, socket_timeout=2, decode_responses=True)
            addr = r.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            return int(addr[1]) if addr else None
        except redis_lib.RedisError:
            return None

    def agree_on(self, port):
        return all(self.master(p) == port for p in self.ports)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)


@pytest.fixture
def sentinel_redis(tmp_path, schema):
    master = OwnRedis(tmp_path)
    master.start()
    replica_port = free_port()
    relay = Relay(free_port(), master.port).start()
    conf = own_redis_conf(tmp_path, replica_port)
    with open(conf, "a") as f:
        f.write(f"replicaof 127.0.0.1 {relay.port}\nmasteruser default\nmasterauth {OWN_REDIS_ADMIN_PASSWORD}\n"
                f"replica-announce-ip 127.0.0.1\nreplica-announce-port {replica_port}\n")
    replica = subprocess.Popen(["redis-server", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_until(lambda: redis_lib.Redis(port=replica_port).info("replication").get("master_link_status") == "up",
               10, "the replica streaming")
    sentinels = Sentinels(tmp_path, master.port)
    try:
        yield master, replica_port, relay, sentinels
    finally:
        sentinels.stop()
        relay.kill()
        if replica.poll() is None:
            replica.terminate()
            replica.wait(10)
        master.stop()


def every_worker(s, predicate, what, timeout=FAILOVER_S, workers=2):
    seen = set()

    def check():
        body = s.get("/readyz").json()
        (seen.add if predicate(body) else seen.discard)(body["worker"])
        return len(seen) == workers
    s.wait_for(check, timeout, what)


def read(s, path):
    r = s.get(path)
    return r.status, r.headers.get("x-cache"), r.json()


def test_a_sentinel_failover_is_followed_and_the_new_store_verified(server, schema, sentinel_redis):
    master, replica_port, relay, sentinels = sentinel_redis
    dead = free_port()  # the first Sentinel named does not answer: the next ones are asked
    names = ",".join(f"127.0.0.1:{p}" for p in [dead] + sentinels.ports)
    s = cached_server(server, schema, redis={"sentinels": names, "master_name": MASTER_NAME})
    every_worker(s, lambda b: b.get("redis_master") == f"127.0.0.1:{master.port}" and b["redis"] == "up",
                 "every worker on the master the Sentinels name", timeout=15)

    u = create_user(s)
    path = f"/users/{u['id']}"
    s.wait_for(lambda: read(s, path)[1] == "HIT", 10, "a cached value")
    assert s.request("PATCH", path, body={"name": "v1"}).status == 200
    s.wait_for(lambda: read(s, path)[1] == "HIT", 10, "v1 cached")
    wait_until(lambda: redis_lib.Redis(port=replica_port).info("replication").get("master_repl_offset")
               == redis_lib.Redis(port=master.port).info("replication").get("master_repl_offset"), 10,
               "the replica has everything so far")

    # the replica is cut off: the master acknowledges a write the replica never sees, then dies
    relay.kill()
    acked = s.request("PATCH", path, body={"name": "v2"})
    assert acked.status == 200, acked.text
    master.signal(signal.SIGKILL)
    master.proc.wait(5)
    assert redis_lib.Redis(port=replica_port).keys("*:v:*"), "the replica still holds cached values"

    wait_until(lambda: sentinels.agree_on(replica_port), FAILOVER_S, "the Sentinels promote the replica")
    every_worker(s, lambda b: b.get("redis_master") == f"127.0.0.1:{replica_port}" and b["redis"] == "up",
                 "every worker follows the new master")

    # never the value the promoted replica still holds: the write acknowledged before the kill
    for _ in range(40):
        status, _, body = read(s, path)
        assert status == 200 and body["name"] == "v2", body
    s.wait_for(lambda: read(s, path)[1] == "HIT", 15, "the cache serves again after the verification")
    assert read(s, path)[2]["name"] == "v2"
    assert s.request("PATCH", path, body={"name": "v3"}).status == 200
    for _ in range(10):
        assert read(s, path)[2]["name"] == "v3"

    m = scrape(s)
    assert total(m, "pgapi_redis_master_changes_total") >= 2, "each worker saw the master change"
    assert total(m, "pgapi_cache_deployment_events_total", event="verification") >= 1
    log = s.log_text()
    assert f"redis sentinel: master {MASTER_NAME} is 127.0.0.1:{replica_port} (was 127.0.0.1:{master.port})" in log
    assert f"127.0.0.1:{dead}" in log, "the Sentinel that did not answer is named in the log"


def test_sentinels_that_name_no_master_leave_the_cache_bypassed(server, schema, sentinel_redis):
    """A master_name the Sentinels do not monitor: nothing to connect to; reads go to PostgreSQL, writes
    are refused (their fences could not be made visible), the reason is logged."""
    _, _, _, sentinels = sentinel_redis
    names = ",".join(f"127.0.0.1:{p}" for p in sentinels.ports)
    overrides = {"redis": {"enabled": "on", "sentinels": names, "master_name": "nosuch"}}
    s = server(workers=1, topology=schema, overrides=overrides).start()
    time.sleep(1.0)
    u_status = s.request("POST", "/users", body={"name": "x", "email": "x@example.com"})
    assert u_status.status == 503 and u_status.json()["error"]["code"] == "redis_unavailable"
    assert s.get("/readyz").json()["redis"] != "up"
    s.wait_for(lambda: "monitors no master of that name" in s.log_text(), 10, "the reason logged")
    assert "no Sentinel named the master" in s.log_text()
