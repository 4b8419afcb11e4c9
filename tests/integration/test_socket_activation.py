"""Issue 19, restarts and upgrades that refuse no connection: pgapi takes its listening socket from
systemd (socket activation: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, fd 3 on) and falls back to binding
it itself. The test plays systemd's part: it holds the listening socket, as pgapi.socket does, and
starts each pgapi with it. A binary upgrade under load, with the new server started while the old one
drains, and a restart with no server at all for a moment (systemctl restart's order), refuse no
connection and fail no request: the kernel queues connections on the held socket."""

import signal
import socket
import time

from lib.clients import finish_clients, run_clients
from lib.pgapi_server import free_port

# systemd's part, in the shell that execs pgapi (bash: dash takes one-digit descriptors only): the held
# socket becomes fd 3, and the variables name this very process (exec keeps the shell's pid)
ACTIVATE = ('exec 3<&{fd} {fd}<&-; LISTEN_PID=$$; LISTEN_FDS=1; LISTEN_FDNAMES={name}; '
            'export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; exec "$0" "$@"')


def held_socket():
    """The socket unit's socket: bound, listening, kept open by the test across servers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def activated(server, sock, name="http", **kw):
    """A server (not started) that gets sock as systemd would pass it. Its ini's listen is another,
    unbound port: the passed socket wins."""
    s = server(wrapper=["bash", "-c", ACTIVATE.format(fd=sock.fileno(), name=name)], **kw)
    s.pass_fds = (sock.fileno(),)
    s.port = sock.getsockname()[1]  # where its clients connect; the ini keeps its own unused port
    return s


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_the_passed_socket_is_served_and_listen_is_not_bound(server):
    sock = held_socket()
    try:
        s = activated(server, sock, workers=2)
        ini_port = int(s.settings["server"]["listen"].rsplit(":", 1)[1])
        s.start()
        assert s.get("/").status == 200
        assert "serving on systemd's socket with 2 workers" in s.log_text(), s.log_tail()
        assert refused(ini_port), f"[server] listen (port {ini_port}) was bound as well"
    finally:
        sock.close()


def test_a_passed_socket_that_does_not_listen_is_refused_at_start(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # not listening
    sock.set_inheritable(True)
    try:
        s = activated(server, sock, workers=1)
        try:
            s.start(timeout=5)
            raise AssertionError("a server started on a socket that is not listening")
        except AssertionError as e:
            assert "exited" in str(e), e
        assert "is not a listening stream socket" in s.log_text(), s.log_tail()
    finally:
        sock.close()


def wait_exit(s, timeout=20):
    s.proc.wait(timeout)
    assert s.proc.returncode == 0, f"exit {s.proc.returncode}: {s.log_tail()}"


def test_upgrade_and_restart_under_load_refuse_no_connection(server):
    """Old A serving; new B started on the same socket while A still runs, then A drained (an upgrade,
    nginx's USR2 order); then B stopped and C started only after B has exited (systemctl restart's
    order: for a moment no pgapi runs). Clients with and without keep-alive see no failure, and each
    server's workers answered some of them."""
    sock = held_socket()
    try:
        a = activated(server, sock, workers=2).start()
        pids = {"old": set(a.worker_pids())}
        stop, results, threads = run_clients(a.port, 3, False)
        ka = run_clients(a.port, 3, True)
        try:
            time.sleep(0.5)
            b = activated(server, sock, workers=2).start()   # both serve now
            pids["new"] = set(b.worker_pids())
            time.sleep(0.3)
            a.signal(signal.SIGTERM)
            wait_exit(a)
            time.sleep(0.5)
            b.signal(signal.SIGTERM)
            wait_exit(b)
            time.sleep(0.3)                                   # nobody accepts: connections queue
            c = activated(server, sock, workers=2).start()
            pids["restarted"] = set(c.worker_pids())
            time.sleep(0.5)
        finally:
            n = finish_clients(stop, results, threads) + finish_clients(*ka)
        served = {pid for _, _, pid in results + ka[1]}
        for name, workers in pids.items():
            assert served & workers, f"the {name} server's workers answered none of the {n} requests"
        assert n > 100, n
        c.stop()
        print(f"socket activation: {n} requests across an upgrade and a restart, none failed")
    finally:
        sock.close()
