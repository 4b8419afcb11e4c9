"""The cache side of the tests: servers with the Redis cache on, a redis-server of the test's own (to
freeze, stop and restart), the cache epoch, and the bytes waiting unread in a frozen Redis."""

import signal
import subprocess
import time
import uuid

import redis as redis_lib

from .pgapi_server import free_port
from .topology import own_redis_conf


def redis_start(port, tmp_path):
    p = subprocess.Popen(["redis-server", own_redis_conf(tmp_path, port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis_lib.Redis(port=port).ping():
                return p
        except redis_lib.ConnectionError:
            time.sleep(0.05)
    raise AssertionError("test redis did not start")


class OwnRedis:
    """A redis-server of the test's own, so it can be frozen, stopped and restarted; stopped by PID."""

    def __init__(self, tmp_path):
        self.port, self.dir, self.proc = free_port(), tmp_path, None

    def start(self):
        self.proc = redis_start(self.port, self.dir)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)

    def signal(self, sig):
        self.proc.send_signal(sig)


def epoch_of(s, redis_port):
    """The cache epoch of the server's prefix in the Redis on redis_port."""
    return int(redis_lib.Redis(port=redis_port).get(f"{s.prefix}:epoch") or 0)


def cached_server(server, schema, redis_port=None, local_entries="0", redis=None, **db):
    """The tests of the Redis tier run without the workers' local cache (X-Cache then tells Redis's
    answer); the local cache has its own tests in test_cache.py. `redis`: more [redis] keys."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    overrides = {"redis": {"enabled": "on", "prefix": prefix, "command_timeout": "200ms",
                           "local_entries": local_entries, **(redis or {})},
                 "database": {"health_interval": "200ms", **db}}
    if redis_port:
        overrides["redis"]["port"] = redis_port
    s = server(workers=2, topology=schema, overrides=overrides).start()
    s.wait_for(lambda: s.get("/readyz").json().get("redis") == "up", 15, "redis up")
    s.prefix = prefix
    return s


def tcp_receive_queue(port, end="local"):
    """Bytes received but not read yet over the established TCP connections whose `end` ("local": this
    side listens on port; "remote": its peer does) is port, from /proc/net/tcp."""
    column = 1 if end == "local" else 2
    total = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            address, state, queues = fields[column], fields[3], fields[4]
            if state == "01" and int(address.split(":")[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


def redis_receive_queue(port):
    """Bytes that reached the (frozen) Redis listening on port but were not read, over its connections."""
    return tcp_receive_queue(port, "local")


PING_BYTES = len(b"*1\r\n$4\r\nPING\r\n")   # one health PING may wait in Redis too (never two at once)


def server_on_own_redis(schema, server, own, command_timeout):
    """One worker on `own` Redis, no local cache, health checks rare (no PING queued behind a test's
    lookup), serving with Redis up."""
    s = server(workers=1, topology=schema,
               overrides={"redis": {"enabled": "on", "port": own.port, "prefix": f"t{uuid.uuid4().hex[:8]}",
                                    "command_timeout": command_timeout, "local_entries": "0"},
                          "database": {"health_interval": "10s"}}).start()
    s.wait_for(lambda: s.get("/readyz").json().get("redis") == "up", 15, "redis up")
    return s
