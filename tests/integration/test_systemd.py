"""Issue 3 (systemd) and issue 9 (packaging): the binary speaks sd_notify the way a Type=notify unit needs
(READY=1 once the workers serve, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1); `make install` honours
PREFIX, DESTDIR, SYSCONFDIR and UNITDIR and installs a unit whose command lines work when run the way
systemd runs them; the man page documents every option, command, ini key and route the binary has; and
`make dist` makes a tarball that builds on its own."""

import ctypes
import grp
import gzip
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

from lib.topology import pid_alive, wait_until
from lib.pgapi_server import BAD_LOG_MARKERS, PgapiServer, REPO_ROOT, children_of, free_port

BUILD_BINARY = os.path.join(REPO_ROOT, "build", "pgapi")
MAN_SOURCE = os.path.join(REPO_ROOT, "docs", "pgapi.8")
# What systemd gives a service before Environment= (systemd.exec(5), "Environment variables in spawned
# processes"): no inherited environment, so nothing of the test's own environment may leak in.
SYSTEMD_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout, **kw)


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
    for f in ["usr/share/man/man8/pgapi.8.gz", "usr/share/doc/pgapi/README.md", "usr/share/doc/pgapi/openapi.yaml",
              "usr/lib/sysusers.d/pgapi.conf", "usr/lib/tmpfiles.d/pgapi.conf", "etc/logrotate.d/pgapi",
              "lib/systemd/system/pgapi.socket"]:
        assert (dest / f).is_file(), f"expected {dest / f} after make install PREFIX=/usr DESTDIR={dest}"
    # a DESTDIR is another system: its group ids are unknown here, so the example keeps the installer's
    # group and the tmpfiles.d file (with the target's paths) gives it the pgapi group there
    st = os.stat(dest / "etc/pgapi/pgapi.ini.example")
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, os.getgid()), \
        f"expected the example mode 640 with the installer's group {os.getgid()}, got {oct(st.st_mode)} {st.st_gid}"
    lines = tmpfiles_lines(dest / "usr/lib/tmpfiles.d/pgapi.conf")
    assert ["z", "/etc/pgapi/pgapi.ini.example", "0640", "root", "pgapi", "-"] in lines, lines
    text = unit.read_text()
    for want in ["Type=notify", "ExecStart=/usr/bin/pgapi --config /etc/pgapi/pgapi.ini",
                 "ExecReload=/bin/kill -HUP $MAINPID", "User=pgapi", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes",
                 "Documentation=man:pgapi(8) file:///usr/share/doc/pgapi/README.md"]:
        assert want in text, f"unit lacks {want!r}:\n{text}"
    assert not re.search(r"@[A-Z]+@", text), f"unsubstituted placeholder in unit:\n{text}"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("pgapi")

    # make uninstall, same variables: every file install put there is gone (directories may stay)
    p = run(["make", "-s", "uninstall", "PREFIX=/usr", f"DESTDIR={dest}"], cwd=REPO_ROOT)
    assert p.returncode == 0, f"make uninstall exited {p.returncode}, expected 0:\n{p.stderr}"
    left = sorted(str(f.relative_to(dest)) for f in dest.rglob("*") if not f.is_dir())
    assert left == [], f"expected no file left after make uninstall, got {left}"


# ---------------------------------------------------------------------------------------- the unit

def tmpfiles_lines(path):
    with open(path) as f:
        return [l.split() for l in f if l.strip() and not l.startswith("#")]


def unit_parse(text):
    """A unit file -> {section: {key: [values in order]}} (systemd.syntax(7): comments, continuations)."""
    sections, current, pending = {}, None, ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"unit line {raw!r} is neither a section nor Key=Value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_one(service, key):
    values = service.get(key, [])
    assert len(values) == 1, f"expected exactly one {key}= in [Service], got {values}"
    return values[0]


def unit_environment(service):
    """Environment= lines as systemd applies them: each a list of (quoted) VAR=value words."""
    env = {}
    for line in service.get("Environment", []):
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"bad Environment= word {word!r}"
            env[name] = value
    return env


def exec_argv(line, env):
    """An Exec*= line -> argv, expanded the way systemd.service(5) describes: "$VAR" as a whole word
    splits into words, "${VAR}" is replaced in place. Prefixes ("-", "+", "!", ":") are stripped: the
    test demands exit 0 anyway, so "-" (failure ignored) only makes it stricter."""
    assert "%" not in line, f"specifiers are not emulated by this test: {line!r}"
    line = line.lstrip("-+!:")
    assert not line.startswith("@"), f"'@' (argv[0] override) is not emulated by this test: {line!r}"
    argv = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            assert whole.group(1) in env, f"{line!r} uses ${whole.group(1)}, which systemd would not set here"
            argv.extend(env[whole.group(1)].split())
            continue

        def braced(m):
            assert m.group(1) in env, f"{line!r} uses ${{{m.group(1)}}}, which systemd would not set here"
            return env[m.group(1)]
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", braced, word))
    assert argv and os.path.isabs(argv[0]), f"systemd needs an absolute executable path, got {line!r}"
    assert os.access(argv[0], os.X_OK), f"{argv[0]} (from {line!r}) is not an executable file"
    return argv


def seconds_parse(value):
    """A systemd time span such as 30, 30s, 1min 30s or 500ms -> seconds."""
    units = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        assert unit in units, f"time span {value!r}: unit {unit!r} not handled by this test"
        total += float(number) * units[unit]
    assert total > 0, f"expected a positive time span, got {value!r}"
    return total


def ini_rewrite(text, values):
    """The example ini with `key = value` lines replaced per section; every key must be in the example."""
    out, section, done = [], None, set()
    for line in text.splitlines():
        m = re.match(r"\s*\[(\w+)\]", line)
        if m:
            section = m.group(1)
        m = re.match(r"(\w+)\s*=", line)
        if m and m.group(1) in values.get(section, {}):
            line = f"{m.group(1)} = {values[section][m.group(1)]}"
            done.add((section, m.group(1)))
        out.append(line)
    wanted = {(s, k) for s, keys in values.items() for k in keys}
    assert done == wanted, f"the example ini lacks the keys {sorted(wanted - done)}"
    return "\n".join(out) + "\n"


class Installed:
    """A `make install` into a temp tree without DESTDIR, so the unit names real paths."""

    def __init__(self, root):
        self.root = root
        self.prefix = os.path.join(root, "usr")
        self.sysconfdir = os.path.join(root, "etc")
        self.unitdir = os.path.join(root, "unit")
        self.unit_path = os.path.join(self.unitdir, "pgapi.service")
        self.man = os.path.join(self.prefix, "share", "man", "man8", "pgapi.8.gz")
        self.sysusers = os.path.join(self.prefix, "lib", "sysusers.d", "pgapi.conf")
        self.tmpfiles = os.path.join(self.prefix, "lib", "tmpfiles.d", "pgapi.conf")
        self.example = os.path.join(self.sysconfdir, "pgapi", "pgapi.ini.example")

    def install(self):
        p = run(["make", "-s", "install", f"PREFIX={self.prefix}", f"SYSCONFDIR={self.sysconfdir}",
                 f"UNITDIR={self.unitdir}"], timeout=600, cwd=REPO_ROOT)
        assert p.returncode == 0, f"make install exited {p.returncode}, expected 0:\n{p.stdout}\n{p.stderr}"
        with open(self.unit_path) as f:
            self.unit_text = f.read()
        self.unit = unit_parse(self.unit_text)
        return self


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return Installed(str(tmp_path_factory.mktemp("install"))).install()


def test_installed_unit_files_and_user(installed, tmp_path):
    unit, svc = installed.unit, installed.unit["Service"]
    # Documentation= names the installed man page and files that exist
    docs = " ".join(unit["Unit"].get("Documentation", [])).split()
    assert "man:pgapi(8)" in docs, f"expected man:pgapi(8) in Documentation=, got {docs}"
    files = [d[len("file://"):] for d in docs if d.startswith("file://")]
    assert files, f"expected file:// documentation, got {docs}"
    for f in files:
        assert os.path.isfile(f), f"Documentation= names {f}, which make install did not install"
    assert os.path.isfile(installed.man), f"expected the man page at {installed.man}"
    with gzip.open(installed.man, "rb") as f, open(MAN_SOURCE, "rb") as src:
        assert f.read() == src.read(), f"{installed.man} is not docs/pgapi.8"
    p = run(["man", "-w", "pgapi"], env=dict(os.environ, MANPATH=os.path.join(installed.prefix, "share", "man")))
    assert p.stdout.strip() == installed.man, f"`man -w pgapi` with MANPATH=PREFIX/share/man: expected " \
                                              f"{installed.man}, got {p.stdout!r} {p.stderr!r}"
    mode = os.stat(installed.example).st_mode & 0o777
    assert mode == 0o640, f"expected the example ini installed mode 640, got {oct(mode)}"
    # readable by the unit's group: make install sets it where the group exists (a real install), and the
    # tmpfiles.d file sets it once systemd-sysusers has created it (checked in a root of its own below)
    group = unit_one(installed.unit["Service"], "Group")
    try:
        want_gid = grp.getgrnam(group).gr_gid
    except KeyError:
        want_gid = os.getgid()
    gid = os.stat(installed.example).st_gid
    assert gid == want_gid, f"expected the example ini's group {want_gid} ({group} if it exists here), got {gid}"
    lines = tmpfiles_lines(installed.tmpfiles)
    assert ["z", installed.example, "0640", "root", group, "-"] in lines, \
        f"expected a tmpfiles.d line giving {installed.example} 0640 root:{group}, got {lines}"
    # the example lists every key the binary has, with its default, so it can be edited in place
    _, _, keys, _ = help_parse(run([BUILD_BINARY, "--help"]).stdout)
    with open(installed.example) as f:
        example = f.read()
    have, section = set(), None
    for line in example.splitlines():
        m = re.match(r"\s*\[(\w+)\]", line) or re.match(r"(\w+)\s*=\s*(.*?)\s*$", line)
        if m and m.lastindex == 1:
            section = m.group(1)
        elif m:
            have.add((section, m.group(1), m.group(2)))
    lacking = [f"[{section}] {key} = {default}" for section, key, default, _ in keys
               if (section, key, default) not in have]
    assert not lacking, f"expected these keys with their defaults in {installed.example}: {lacking}"

    # WorkingDirectory= holds the migrations, so the default relative migrations_dir finds them there
    workdir = unit_one(svc, "WorkingDirectory")
    migrations = sorted(os.listdir(os.path.join(workdir, "migrations")))
    assert migrations == sorted(f for f in os.listdir(os.path.join(REPO_ROOT, "migrations")) if f.endswith(".sql")), \
        f"expected every migration under {workdir}/migrations, got {migrations}"

    # the sysusers.d file creates the User= and Group= the unit runs as
    user, group = unit_one(svc, "User"), unit_one(svc, "Group")
    with open(installed.sysusers) as f:
        entries = [l.split() for l in f if l.strip() and not l.startswith("#")]
    assert ["u", user] in [e[:2] for e in entries], \
        f"expected a 'u {user} ...' line in {installed.sysusers}, got {entries}"
    if shutil.which("systemd-sysusers"):  # otherwise the file is checked by its syntax only
        root = tmp_path / "sysroot"
        (root / "etc").mkdir(parents=True)
        p = run(["systemd-sysusers", f"--root={root}", installed.sysusers])
        assert p.returncode == 0, f"systemd-sysusers exited {p.returncode}, expected 0:\n{p.stderr}"
        passwd = {l.split(":")[0]: l.split(":") for l in (root / "etc/passwd").read_text().splitlines()}
        groups = {l.split(":")[0]: l.split(":") for l in (root / "etc/group").read_text().splitlines()}
        assert user in passwd and group in groups, \
            f"expected user {user} and group {group}; got passwd {passwd}, group {groups}"
        assert passwd[user][3] == groups[group][2], f"expected {user}'s primary group to be {group}: {passwd[user]}"
        assert int(passwd[user][2]) < 1000, f"expected a system uid, got {passwd[user]}"

        # then the tmpfiles.d file, as a package's postinst runs it after systemd-sysusers, gives the example
        # (copied into that root as make install left it) mode 640, owner root, group pgapi of that root
        assert shutil.which("systemd-tmpfiles"), "systemd-sysusers without systemd-tmpfiles"
        example = root / installed.example.lstrip("/")
        example.parent.mkdir(parents=True)
        shutil.copy2(installed.example, example)
        os.chmod(example, 0o600)
        p = run(["systemd-tmpfiles", f"--root={root}", "--create", installed.tmpfiles])
        assert p.returncode == 0, f"systemd-tmpfiles exited {p.returncode}, expected 0:\n{p.stderr}"
        st = os.stat(example)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, int(groups[group][2])), \
            f"expected the example 0640 root:{group} ({groups[group][2]}) after systemd-tmpfiles, got " \
            f"{oct(st.st_mode & 0o777)} {st.st_uid}:{st.st_gid}"

    # systemd's own checker: directives, executables, man:pgapi(8) resolvable
    if shutil.which("systemd-analyze"):
        p = run(["systemd-analyze", "verify", installed.unit_path, os.path.join(installed.unitdir, "pgapi.socket")],
                env=dict(os.environ, MANPATH=os.path.join(installed.prefix, "share", "man")))
        assert p.returncode == 0 and not p.stderr.strip(), \
            f"systemd-analyze verify: expected exit 0 and no complaint, got {p.returncode}:\n{p.stderr}"


def unit_security(unit_path):
    """`systemd-analyze security --offline=yes` of a unit file: (exposure score, names of the failed checks)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed to rate the unit (Debian: systemd)"
    p = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit_path])
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, f"systemd-analyze security exited {p.returncode} without a score:\n{p.stdout}\n{p.stderr}"
    failed = [line.split()[1] for line in p.stdout.splitlines() if line.startswith("\u2717")]
    return float(m.group(1)), failed


# the unit scored 1.8 before issue 14; ProtectProc, ProcSubset, RemoveIPC, PrivateMounts and the narrower
# SystemCallFilter bring it to 1.2
UNIT_EXPOSURE_MAX = 1.2


def test_unit_hardening_as_systemd_rates_it(installed):
    score, failed = unit_security(installed.unit_path)
    wanted = ["ProtectProc=", "ProcSubset=", "RemoveIPC=", "PrivateMounts=", "SystemCallFilter=~@privileged",
              "SystemCallFilter=~@resources", "NoNewPrivileges=", "ProtectSystem=", "CapabilityBoundingSet=~CAP_SYS_ADMIN"]
    lacking = [w for w in wanted if w in failed]
    assert not lacking, f"systemd-analyze security: expected these checks passed, they failed: {lacking}"
    assert score <= UNIT_EXPOSURE_MAX, f"expected an exposure level of at most {UNIT_EXPOSURE_MAX}, got {score} " \
                                       f"(failed checks: {failed})"
    assert unit_one(installed.unit["Service"], "ProtectProc") == "invisible"
    assert unit_one(installed.unit["Service"], "ProcSubset") == "pid"


# ---- the unit's SystemCallFilter=, applied for real with libseccomp (systemd itself cannot run units
# here: PID 1 is not systemd), so a system call outside it kills the process with SIGSYS as under systemd

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000


def syscall_groups():
    """`systemd-analyze syscall-filter`: {"@group": [members: names and "@groups"]}."""
    p = run(["systemd-analyze", "syscall-filter", "--no-pager"])
    groups, current = {}, None
    for line in p.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    assert "@system-service" in groups and "@default" in groups, f"cannot read systemd's groups:\n{p.stdout[:500]}"
    return groups


def syscalls_of(items, groups):
    out = set()
    for item in items:
        if item.startswith("@"):
            assert item in groups, f"unknown system call group {item}"
            out |= syscalls_of(groups[item], groups)
        else:
            out.add(item)
    return out


def unit_syscalls(service):
    """The system calls SystemCallFilter= lines allow, as systemd.exec(5) combines them: an allow list
    (which always holds @default), then "~" lines remove from it."""
    groups = syscall_groups()
    allowed = syscalls_of(["@default"], groups)
    lines = service.get("SystemCallFilter", [])
    assert lines and not lines[0].startswith("~"), f"expected an allow list first, got {lines}"
    for line in lines:
        names = syscalls_of(line.lstrip("~").split(), groups)
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


def seccomp_preexec(allowed):
    """A preexec_fn that loads a filter allowing exactly `allowed` (the rest: SIGSYS) before exec."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
    assert ctx, "seccomp_init failed"
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:  # names of other architectures resolve to nothing here
            assert lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0, f"seccomp_rule_add({name}) failed"

    def preexec():
        if lib.seccomp_load(ctx) != 0:
            os._exit(126)
    return preexec


def test_syscall_filter_kills_what_it_does_not_allow(installed, tmp_path):
    """The filter harness above really filters: a call the unit refuses (setpriority, in @resources) kills
    the process with SIGSYS, one it allows (getpriority) does not."""
    preexec = seccomp_preexec(unit_syscalls(installed.unit["Service"]))
    code = "import os; os.{}(os.PRIO_PROCESS, 0{}); print('alive')"
    p = subprocess.run([sys.executable, "-c", code.format("getpriority", "")], preexec_fn=preexec,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "alive" in p.stdout, f"getpriority under the filter: {p.returncode} {p.stderr}"
    p = subprocess.run([sys.executable, "-c", code.format("setpriority", ", 1")], preexec_fn=preexec,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGSYS, f"expected setpriority to be killed by SIGSYS, got {p.returncode}"


def notify_socket(kind, tmp_path):
    """A datagram socket like the one systemd listens on, with SO_PASSCRED so each message carries its
    sender's pid; returns (socket, $NOTIFY_SOCKET value)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if kind == "abstract":
        name = f"pgapi-test-notify-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        return sock, "@" + name
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    return sock, path


def notify_recv(sock, until, proc, log_path, timeout=30):
    """[(sender pid, text)] until a message contains `until`; fails (with the server's log) on a timeout or
    when proc exits first, unless `until` came before."""
    deadline = time.monotonic() + timeout
    got = []
    while True:
        sock.settimeout(0.2)
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except socket.timeout:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"the server exited {proc.returncode}" if proc.poll() is not None else f"{timeout}s passed"
                raise AssertionError(f"expected a notification with {until!r}, got {got} before {why}; "
                                     f"log:\n{log_tail(log_path)}")
            continue
        pid = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", cdata[:struct.calcsize("3i")])[0]
        got.append((pid, data.decode()))
        if until in data.decode():
            return got


def notify_none_pending(sock):
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return None
    finally:
        sock.setblocking(True)
    return data


def http_status(port, path):
    return http_answer(port, path)[0]


def http_answer(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def ready_with_redis(port):
    """/readyz 200 with Redis up: the database and the cache (its AUTH included) both in use."""
    status, body = http_answer(port, "/readyz")
    return status == 200 and json.loads(body).get("redis") == "up"


def log_tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def api_round(port):
    """Writes, reads (database, Redis and the local cache), a list, errors: every path a worker serves."""
    def call(method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
    status, body = call("POST", "/users", f'{{"name":"sc","email":"sc-{uuid.uuid4().hex[:12]}@example.com"}}')
    assert status == 201, f"POST /users under the unit: expected 201, got {status} {body!r}"
    uid = re.search(rb'"id":\s*(\d+)', body).group(1).decode()
    got = [call("GET", f"/users/{uid}")[0], call("GET", f"/users/{uid}")[0],
           call("PATCH", f"/users/{uid}", '{"name":"sc2"}')[0], call("GET", "/users?limit=5")[0],
           call("POST", f"/users/{uid}/posts", '{"title":"t","content":"c"}')[0],
           call("GET", f"/users/{uid}?include=posts")[0], call("POST", "/users", '{"x":')[0],
           call("DELETE", f"/users/{uid}")[0]]
    assert got[:6] == [200, 200, 200, 200, 201, 200] and got[6:8] == [400, 204], f"statuses under the unit: {got}"


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_installed_unit_lifecycle_as_systemd_runs_it(installed, schema, tmp_path, kind):
    """ExecStartPre, ExecStart with $NOTIFY_SOCKET and Environment=, ExecReload with $MAINPID, KillSignal and
    TimeoutStopSec, all from the installed unit: READY=1, RELOADING=1 + READY=1 and STOPPING=1 come from the
    main pid (NotifyAccess=main drops anything else), and the stop exits 0 in time. Each command runs under
    the unit's SystemCallFilter= (seccomp_preexec), and the workers serve API requests before and after the
    reload: no process of it may be killed by the filter."""
    topology = schema
    svc = installed.unit["Service"]
    preexec = seccomp_preexec(unit_syscalls(svc))
    assert unit_one(svc, "Type") == "notify", f"expected Type=notify, got {svc.get('Type')}"
    assert unit_one(svc, "NotifyAccess") == "main"
    env = dict(SYSTEMD_BASE_ENV)
    env.update(unit_environment(svc))
    workdir = unit_one(svc, "WorkingDirectory")
    start = exec_argv(unit_one(svc, "ExecStart"), env)
    pre = exec_argv(unit_one(svc, "ExecStartPre"), env)
    assert "--config" in start, f"expected ExecStart to name its --config, got {start}"
    ini_path = start[start.index("--config") + 1]
    assert pre[pre.index("--config") + 1] == ini_path, f"ExecStartPre checks another file than ExecStart: {pre}"
    assert ini_path.startswith(installed.sysconfdir + "/"), f"expected the ini under SYSCONFDIR, got {ini_path}"
    kill_signal = getattr(signal, unit_one(svc, "KillSignal"))
    stop_timeout = seconds_parse(unit_one(svc, "TimeoutStopSec"))

    # The administrator's part: the ini at the unit's path, from the example, pointed at the topology, and
    # the libpq password file where the unit's PGPASSFILE says.
    port = free_port()
    t = topology
    settings = {
        "server": {"listen": f"127.0.0.1:{port}", "workers": 2},
        "database": {"primary": f"host=127.0.0.1 port={t.bouncer_port} dbname=pgapi_rw user=app",
                     "replica": f"host=127.0.0.1 port={t.bouncer_port} dbname=pgapi_ro user=app"},
        "redis": {"port": t.redis_port, "username": t.vars["PGAPI_REDIS_USERNAME"],
                  "password_file": os.path.join(os.path.dirname(ini_path), "redis.password")},
    }
    # any other listening address the binary has (e.g. [metrics] listen) gets a free port too, so that
    # the example's fixed defaults never collide with another server on this machine
    _, _, keys, _ = help_parse(run([start[0], "--help"]).stdout)
    for section, key, _, _ in keys:
        if key == "listen" and section != "server":
            settings.setdefault(section, {})[key] = f"127.0.0.1:{free_port()}"
    with open(installed.example) as f:
        example = f.read()
    with open(ini_path, "w") as f:
        f.write(ini_rewrite(example, settings))
    os.chmod(ini_path, 0o640)
    assert "PGPASSFILE" in env, f"expected the unit to set PGPASSFILE, got Environment={svc.get('Environment')}"
    with open(os.path.join(t.dir, "pgpass")) as src, open(env["PGPASSFILE"], "w") as dst:
        dst.write(src.read())
    os.chmod(env["PGPASSFILE"], 0o600)
    with open(t.vars["PGAPI_REDIS_PASSWORD_FILE"]) as src, open(settings["redis"]["password_file"], "w") as dst:
        dst.write(src.read())
    os.chmod(settings["redis"]["password_file"], 0o600)

    sock, notify_addr = notify_socket(kind, tmp_path)
    env["NOTIFY_SOCKET"] = notify_addr
    log_path = str(tmp_path / "pgapi.log")
    proc, workers = None, []
    try:
        p = run(pre, env=env, cwd=workdir, preexec_fn=preexec)
        assert p.returncode == 0, f"ExecStartPre {pre}: expected exit 0, got {p.returncode}:\n{p.stderr}"
        assert f"listen = 127.0.0.1:{port}" in p.stdout, f"--check-config did not print the ini's listen:\n{p.stdout}"
        drain = re.search(r"^drain_timeout = (\d+)ms$", p.stdout, re.M)
        assert drain and stop_timeout > int(drain.group(1)) / 1000 + 2, \
            f"expected TimeoutStopSec ({stop_timeout}s) above drain_timeout + 2 s, got {drain and drain.group(0)}"
        stray = notify_none_pending(sock)
        assert stray is None, f"expected no notification from ExecStartPre, got {stray!r}"

        with open(log_path, "ab") as log:
            proc = subprocess.Popen(start, env=env, cwd=workdir, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    preexec_fn=preexec)
        main_pid = proc.pid
        got = notify_recv(sock, "READY=1", proc, log_path)
        assert all(pid == main_pid for pid, _ in got), \
            f"expected every notification from the main pid {main_pid}, got {got}\n{log_tail(log_path)}"
        status = http_status(port, "/healthz")
        assert status == 200, f"expected GET /healthz 200 once READY=1 was sent, got {status}"
        # the database through the installed PGPASSFILE: /readyz is 200 once the primary answers
        wait_until(lambda: ready_with_redis(port), 20, "GET /readyz 200 with Redis up (the primary reachable "
                   "with the unit's PGPASSFILE, Redis with the password file)")
        workers = children_of(main_pid)
        assert len(workers) == 2, f"expected 2 workers, got {workers}"
        api_round(port)

        env_reload = dict(env, MAINPID=str(main_pid))
        reload = exec_argv(unit_one(svc, "ExecReload"), env_reload)
        assert str(main_pid) in reload, f"expected ExecReload to address $MAINPID {main_pid}, got {reload}"
        p = run(reload, env=env_reload, cwd=workdir, preexec_fn=preexec)
        assert p.returncode == 0, f"ExecReload {reload}: expected exit 0, got {p.returncode}:\n{p.stderr}"
        got = notify_recv(sock, "READY=1", proc, log_path)
        assert "RELOADING=1" in got[0][1], f"expected RELOADING=1 first, then READY=1, got {got}"
        assert all(pid == main_pid for pid, _ in got), f"expected every notification from {main_pid}, got {got}"
        status = http_status(port, "/healthz")
        assert status == 200, f"expected GET /healthz 200 after the reload, got {status}"
        wait_until(lambda: ready_with_redis(port), 20, "GET /readyz 200 with Redis up after the reload")
        api_round(port)
        workers = sorted(set(workers) | set(children_of(main_pid)))

        t0 = time.monotonic()
        os.kill(main_pid, kill_signal)
        got = notify_recv(sock, "STOPPING=1", proc, log_path, timeout=stop_timeout)
        assert all(pid == main_pid for pid, _ in got), f"expected every notification from {main_pid}, got {got}"
        try:
            rc = proc.wait(max(0.1, stop_timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"expected exit within TimeoutStopSec={stop_timeout}s after {kill_signal!r}; "
                                 f"still running\n{log_tail(log_path)}")
        assert rc == 0, f"expected exit 0 after {kill_signal!r}, got {rc}\n{log_tail(log_path)}"
        left = [w for w in workers if pid_alive(w)]
        assert not left, f"expected no worker left after the main pid exited (KillMode=mixed would SIGKILL " \
                         f"them), got {left}"
    finally:
        sock.close()
        if proc is not None and proc.poll() is None:
            for pid in children_of(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
    with open(log_path, errors="replace") as f:
        bad = [l for l in f if any(m in l for m in BAD_LOG_MARKERS + ("killed by signal",))]
    assert not bad, f"expected no alert/sanitizer line and no worker killed (SIGSYS: the filter) in the log, " \
                    f"got:\n{''.join(bad)}"


# ------------------------------------------------------------------------------------- the man page

def man_render():
    """docs/pgapi.8 as plain text, one line per paragraph (no wrapping, so no hyphenation)."""
    p = run(["groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-u", "-rLL=3000n", MAN_SOURCE])
    assert p.returncode == 0, f"groff exited {p.returncode}:\n{p.stderr}"
    return p.stdout


def man_sections(text):
    """{SECTION: {subsection or "": [(tag, body)]}}: .SH headings start in column 0, .SS at 3, .TP tags at 7
    (a short tag shares its line with the body, two blanks apart), bodies at 14."""
    out, section, sub, entry = {}, None, "", None
    for line in text.splitlines():
        if re.match(r"^[A-Z][A-Z ]+$", line):
            section, sub, entry = line.strip(), "", None
            out.setdefault(section, {"": []})
        elif section and re.match(r"^ {3}\S", line):
            sub, entry = line.strip(), None
            out[section].setdefault(sub, [])
        elif section and re.match(r"^ {7}\S", line):
            tag, _, rest = line.strip().partition("  ")
            entry = [tag, rest.strip()]
            out[section][sub].append(entry)
        elif section and entry is not None and re.match(r"^ {14}\S", line):
            entry[1] += " " + line.strip()
    return out


def help_parse(text):
    """`pgapi --help` -> (usage lines, [(short, long)], [(section, key, default, env)], signal names)."""
    usage = [re.sub(r"^(usage:)?\s*pgapi\s*", "", l.strip().split("  ")[0]) for l in text.splitlines()
             if re.match(r"^(usage:|\s+)\s*pgapi ", l)]
    options = re.findall(r"^\s+(-\w), (--[\w-]+)", text, re.M)
    keys, section = [], None
    for line in text.split("ini keys:", 1)[1].splitlines():
        m = re.match(r"^  \[(\w+)\]$", line)
        if m:
            section = m.group(1)
        m = re.match(r'^    (\w+)\s+default "(.*)" \(env (\w+)\)$', line)
        if m:
            keys.append((section, m.group(1), m.group(2), m.group(3)))
    signals = re.findall(r"\b(HUP|TERM|INT|QUIT|USR1|USR2|WINCH)\b", text.split("signals", 1)[1].split("\n\n")[0])
    return usage, options, keys, signals


def usage_commands(usage):
    """Usage lines -> command tags ("serve", "migrate up", ...) with the --options each one takes."""
    commands = {}
    for line in usage:
        line = line.replace("[--config PATH]", "").strip()
        alternatives = [a.strip() for a in line.split(" | ")]
        words = alternatives[0].strip("[]").split()
        if not words or words[0].startswith("-"):
            continue
        head = words[0]
        if len(alternatives) == 1:
            commands[head] = re.findall(r"--[\w-]+", line)
            continue
        commands[f"{head} {words[1]}"] = []
        for alt in alternatives[1:]:
            commands[f"{head} {alt.split()[0]}"] = []
    return commands


def test_man_page_documents_every_option_key_and_route(installed):
    for argv in (["groff", "-man", "-Tutf8", "-ww", "-z", MAN_SOURCE],
                 ["man", "--warnings", "-E", "UTF-8", "-l", MAN_SOURCE]):
        p = run(argv, env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
        assert p.returncode == 0 and not p.stderr.strip(), \
            f"{' '.join(argv)}: expected exit 0 and no warning, got {p.returncode}:\n{p.stderr}"
    assert os.path.isfile(installed.man), f"expected make install to put the man page at {installed.man}"

    helptext = run([BUILD_BINARY, "--help"]).stdout
    usage, options, keys, signals = help_parse(helptext)
    assert options and keys and len(usage) >= 4 and all(usage), f"could not parse `pgapi --help`:\n{helptext}"
    rendered = man_render()
    man = man_sections(rendered)
    problems = []

    version = run([BUILD_BINARY, "--version"]).stdout.strip()
    if version not in rendered:
        problems.append(f"the man page's footer should name {version!r} (the .TH line)")

    tags = [t for t, _ in man.get("OPTIONS", {}).get("", [])]
    for short, long in options:
        if not any(t.startswith(f"{short}, {long}") for t in tags):
            problems.append(f"OPTIONS: expected an entry '{short}, {long}', have {tags}")

    tags = [t for t, _ in man.get("COMMANDS", {}).get("", [])]
    for command, opts in usage_commands(usage).items():
        tag = next((t for t in tags if t == command or t.startswith(command + " ")), None)
        if tag is None:
            problems.append(f"COMMANDS: expected an entry for '{command}', have {tags}")
            continue
        problems += [f"COMMANDS: expected {o} in the entry '{tag}'" for o in opts if o not in tag]

    synopsis = " ".join(t + " " + b for t, b in man.get("SYNOPSIS", {}).get("", []))
    for word in set(re.findall(r"--[\w-]+|\b[a-z]{4,}\b", " ".join(usage))):
        if word not in synopsis:
            problems.append(f"SYNOPSIS: expected {word!r} (from `pgapi --help`'s usage)")

    sig_text = " ".join(t + " " + b for t, b in man.get("SIGNALS", {}).get("", []))
    problems += [f"SIGNALS: expected SIG{s}" for s in signals if f"SIG{s}" not in sig_text]

    config = man.get("CONFIGURATION", {})
    documented = {(sub[1:-1], t.split(" =")[0]) for sub, entries in config.items() if sub.startswith("[")
                  for t, _ in entries}
    for section, key, default, env in keys:
        entry = next((e for e in config.get(f"[{section}]", []) if e[0].split(" =")[0] == key), None)
        if entry is None:
            problems.append(f"CONFIGURATION: expected an entry '{key} = ...' under the subsection [{section}] "
                            f"(default {default!r}, env {env})")
            continue
        defaults = [f"Default: {default}."] + (['Default: "".', "Default: none.", "Default: empty."]
                                               if default == "" else [])
        if not any(d in entry[1] for d in defaults):
            problems.append(f"[{section}] {key}: expected {defaults[0]!r} in {entry[1]!r}")
        if f"Environment: {env}." not in entry[1]:
            problems.append(f"[{section}] {key}: expected 'Environment: {env}.' in {entry[1]!r}")
    stale = documented - {(s, k) for s, k, _, _ in keys}
    problems += [f"CONFIGURATION: [{s}] {k} is documented but `pgapi --help` has no such key" for s, k in sorted(stale)]

    # every route of the router is in HTTP API ("GET /users/:id", "PUT, PATCH, DELETE /users/:id"), and no other
    routes = set(re.findall(r"^([A-Z]+) (/\S*)$", run([BUILD_BINARY, "routes"]).stdout, re.M))
    assert routes, "could not read the routes `pgapi routes` prints"
    documented = set()
    for tag, _ in man.get("HTTP API", {}).get("", []):
        m = re.fullmatch(r"((?:[A-Z]+, )*[A-Z]+) (/\S*)", tag)
        if m:
            documented |= {(method, m.group(2)) for method in m.group(1).split(", ")}
    problems += [f"HTTP API: expected an entry for {m} {p}" for m, p in sorted(routes - documented)]
    problems += [f"HTTP API: {m} {p} is documented but `pgapi routes` has no such route"
                 for m, p in sorted(documented - routes)]

    for wanted in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "SIGNALS", "CONFIGURATION",
                   "HTTP API", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO"]:
        if wanted not in man:
            problems.append(f"expected a section {wanted}, have {list(man)}")
    env_tags = " ".join(t for t, _ in man.get("ENVIRONMENT", {}).get("", []))
    problems += [f"ENVIRONMENT: expected {v}" for v in ["PGAPI_CONFIG", "PGPASSFILE", "PGPASSWORD", "NOTIFY_SOCKET"]
                 if v not in env_tags]
    assert not problems, "docs/pgapi.8 is out of step with the binary:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------- make dist

def test_make_dist_tarball_builds_on_its_own(tmp_path):
    if run(["git", "-C", REPO_ROOT, "rev-parse", "--git-dir"]).returncode != 0:
        pytest.skip("not a git checkout (make dist archives a commit)")
    p = run(["make", "-s", "dist"], cwd=REPO_ROOT)
    assert p.returncode == 0, f"make dist exited {p.returncode}, expected 0:\n{p.stderr}"
    tarball = os.path.join(REPO_ROOT, p.stdout.strip().splitlines()[-1])
    version = run([BUILD_BINARY, "--version"]).stdout.split()[-1]
    top = f"pgapi-{version}"
    assert os.path.basename(tarball) == f"{top}.tar.gz", f"expected build/{top}.tar.gz, got {tarball}"
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        outside = [n for n in names if n != top and not n.startswith(top + "/")]
        assert not outside, f"expected every member under {top}/, got {outside[:10]}"
        unwanted = [n for n in names if n.split("/")[1:2] in (["var"], ["build"]) or ".git" in n.split("/")]
        assert not unwanted, f"expected no var/, build/ or .git in the tarball, got {unwanted[:10]}"
        files = {m.name[len(top) + 1:] for m in members if m.isfile() or m.issym()}
        needed = ["Makefile", "README.md", "conf/pgapi.ini", "docs/pgapi.8", "docs/openapi.yaml",
                  "systemd/pgapi.service.in", "systemd/pgapi.sysusers", "scripts/deps.sh", "scripts/topology.sh",
                  "tests/run.sh", "tests/integration/conftest.py", "master/main.c"]
        missing = [f for f in needed if f not in files]
        assert not missing, f"expected {missing} in the tarball"
        committed = set(run(["git", "-C", REPO_ROOT, "ls-tree", "-r", "--name-only", "HEAD"]).stdout.split())
        assert files == committed, f"expected the tarball to hold exactly HEAD's files; only in the tarball: " \
                                   f"{sorted(files - committed)[:10]}, only in HEAD: {sorted(committed - files)[:10]}"
        tar.extractall(tmp_path)
    src = tmp_path / top
    p = run(["make", "-s", f"-j{os.cpu_count() or 2}", "all"], cwd=src, timeout=900)
    assert p.returncode == 0, \
        f"make all in the extracted tarball exited {p.returncode}, expected 0:\n{p.stderr[-3000:]}"
    p = run([str(src / "build" / "pgapi"), "--version"])
    assert p.returncode == 0 and p.stdout.strip() == f"pgapi {version}", \
        f"expected 'pgapi {version}' from the tarball's build, got {p.returncode} {p.stdout!r}"
