"""Issue 3 (systemd): the binary speaks sd_notify the way a Type=notify unit needs (READY=1 once the
workers serve, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1), and `make install` honours PREFIX and
DESTDIR, producing a unit whose ExecStart/ExecReload are right."""

import os
import signal
import socket
import subprocess

from pgapi_server import REPO_ROOT, PgapiServer


def notify_messages(sock, until, timeout=20):
    """Collect datagrams until one contains `until`."""
    sock.settimeout(timeout)
    got = []
    while True:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if until in msg:
            return got


def test_sd_notify_ready_reloading_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    s = PgapiServer(str(tmp_path), workers=2)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        s.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        got = notify_messages(sock, "READY=1")
        assert any("READY=1" in m for m in got), got
        s.signal(signal.SIGHUP)
        got = notify_messages(sock, "READY=1")
        assert "RELOADING=1" in got[0], f"expected RELOADING=1 before READY=1, got {got}"
        # a refused reload still ends with READY=1 (systemd waits for it)
        s.write_ini(text="[server]\nworkers = nope\n")
        s.signal(signal.SIGHUP)
        got = notify_messages(sock, "READY=1")
        assert "RELOADING=1" in got[0] and "refused" in got[-1], got
        s.signal(signal.SIGTERM)
        got = notify_messages(sock, "STOPPING=1")
        assert any("STOPPING=1" in m for m in got), got
        assert s.proc.wait(20) == 0
    finally:
        sock.close()
        if s.alive():
            s.stop()
    assert not s.bad_log_lines(), s.log_tail()


def test_make_install_honours_prefix_and_destdir(tmp_path):
    dest = tmp_path / "root"
    p = subprocess.run(["make", "-s", "install", "PREFIX=/usr", f"DESTDIR={dest}"], cwd=REPO_ROOT,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, p.stderr
    binary = dest / "usr/bin/pgapi"
    unit = dest / "lib/systemd/system/pgapi.service"
    assert binary.exists() and os.access(binary, os.X_OK)
    assert (dest / "usr/share/pgapi/migrations/0001_create_users.sql").exists()
    assert (dest / "etc/pgapi/pgapi.ini.example").exists()
    text = unit.read_text()
    for want in ["Type=notify", "ExecStart=/usr/bin/pgapi --config /etc/pgapi/pgapi.ini",
                 "ExecReload=/bin/kill -HUP $MAINPID", "User=pgapi", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes"]:
        assert want in text, f"unit lacks {want!r}:\n{text}"
    assert "@" not in text.replace("@system-service", ""), f"unsubstituted placeholder in unit:\n{text}"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("pgapi")
