"""A TCP relay a test can kill: socat forwarding a port of ours to a target port, one forked child per
stream, started and killed by PID (its children too). Put between a server and what it talks to, it cuts
that server off while everything else keeps reaching the target."""

import os
import signal
import subprocess

from .pgapi_server import children_of
from .topology import listening_ports, wait_until


class Relay:
    def __init__(self, port, target_port):
        self.port, self.target_port, self.proc = port, target_port, None

    def start(self):
        self.proc = subprocess.Popen(["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr",
                                      f"TCP:127.0.0.1:{self.target_port}"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.port in listening_ports(), 5, f"socat listening on {self.port}")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def streams(self):
        """PIDs of the children relaying a stream each."""
        return children_of(self.proc.pid) if self.alive() else []

    def kill(self):
        """Stops the listener first (so no new stream is forked meanwhile), then SIGKILLs every relayed
        stream and the listener: every connection through the relay breaks at once. Returns how many
        streams were cut."""
        if not self.alive():
            return 0
        self.proc.send_signal(signal.SIGSTOP)
        streams = children_of(self.proc.pid)
        for pid in streams:
            os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(5)
        return len(streams)
