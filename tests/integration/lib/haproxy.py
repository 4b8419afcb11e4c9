"""A real HAProxy (Debian's package) in front of pgapi servers, as a deployment runs it: round-robin over
the servers, each health-checked with GET /readyz. Its configuration and admin socket live in a temp
dir; it runs in the foreground (-db) as our child and is stopped by PID."""

import os
import signal
import socket
import subprocess

from .pgapi_server import free_port
from .topology import wait_until

BACKEND = "pgapi"
CHECK_INTERVAL = "500ms"


def config_text(port, admin_socket, servers, server_options=""):
    """servers: [(name, port)]. Requests are balanced one by one (HTTP mode). http-server-close closes
    the server side after each answer: a kept-alive connection to pgapi could be closed by its
    keepalive_timeout just as HAProxy sends on it (a 502 that no client caused). server_options go on
    every server line (e.g. "send-proxy-v2 source 127.0.0.9")."""
    lines = [
        "global",
        f"    stats socket {admin_socket} mode 600 level admin",
        "defaults",
        "    mode http",
        "    option http-server-close",
        "    retries 3",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "frontend api",
        f"    bind 127.0.0.1:{port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
    ]
    lines += [f"    server {name} 127.0.0.1:{p} check inter {CHECK_INTERVAL} fall 2 rise 1 {server_options}".rstrip()
              for name, p in servers]
    return "\n".join(lines) + "\n"


class HAProxy:
    def __init__(self, workdir, servers, server_options=""):
        self.dir = str(workdir)
        self.port = free_port()
        self.names = [name for name, _ in servers]
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        self.admin_socket = os.path.join(self.dir, "haproxy.sock")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = None
        with open(self.cfg, "w") as f:
            f.write(config_text(self.port, self.admin_socket, servers, server_options))

    def start(self):
        check = subprocess.run(["haproxy", "-c", "-q", "-f", self.cfg], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=30)
        assert check.returncode == 0, f"expected haproxy to accept {self.cfg}, got:\n{check.stdout}{check.stderr}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["haproxy", "-f", self.cfg, "-db"], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        wait_until(lambda: self.servers_up() == set(self.names), 20,
                   f"haproxy to see {self.names} UP (last log: {self.log_tail()!r})")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGUSR1: stop listening, finish what is in flight, exit; SIGKILL if that takes over 10 s."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGUSR1)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def admin(self, command):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.admin_socket)
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def servers(self):
        """{server name: its row of `show stat`} for our backend's servers."""
        lines = [l for l in self.admin("show stat").splitlines() if l.strip()]
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, l.split(","))) for l in lines[1:]]
        return {r["svname"]: r for r in rows if r["pxname"] == BACKEND and r["svname"] in self.names}

    def servers_up(self):
        return {name for name, row in self.servers().items() if row["status"].startswith("UP")}

    def requests_by_server(self):
        """{server name: sessions it was given} (stot): how evenly HAProxy spread the requests."""
        return {name: int(row["stot"] or 0) for name, row in self.servers().items()}

    def log_tail(self, n=10):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""
