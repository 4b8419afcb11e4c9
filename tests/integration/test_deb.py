"""Issue 19, a Debian package: `make deb` builds build/deb/pgapi_VERSION_ARCH.deb with dpkg-buildpackage
and lintian reports no error and no warning; `apt-get install ./pgapi_*.deb` on this machine puts the
files where they belong (the binary, the ini as a conffile readable by the pgapi group only, the
migrations, the units, the man page, the docs, the alert rules and the logrotate snippet), creates the
pgapi system user and enables the socket unit; `apt-get purge` then leaves nothing but what Debian policy
keeps (the system user: policy never removes one, its files may outlive the package)."""

import glob
import grp
import os
import pwd
import subprocess

import pytest

from lib.pgapi_server import REPO_ROOT

EXPECTED = [
    "/usr/bin/pgapi",
    "/etc/pgapi/pgapi.ini",
    "/usr/share/pgapi/migrations/0001_create_users.sql",
    "/lib/systemd/system/pgapi.service",
    "/lib/systemd/system/pgapi.socket",
    "/usr/lib/sysusers.d/pgapi.conf",
    "/usr/lib/tmpfiles.d/pgapi.conf",
    "/usr/share/man/man8/pgapi.8.gz",
    "/usr/share/doc/pgapi/copyright",
    "/usr/share/doc/pgapi/prometheus-rules.yml",
    "/usr/share/doc/pgapi/grafana-dashboard.json.gz",
    "/usr/share/doc/pgapi/operations.md.gz",
    "/etc/logrotate.d/pgapi",
]
SOCKET_LINK = "/etc/systemd/system/sockets.target.wants/pgapi.socket"


def run(argv, timeout=600):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                       cwd=REPO_ROOT, env=env)
    return p.returncode, p.stdout + p.stderr


def installed_version():
    rc, out = run(["dpkg-query", "-W", "-f=${Status}", "pgapi"])
    return rc == 0 and "ok installed" in out


def purge():
    return run(["apt-get", "purge", "-y", "pgapi"])


@pytest.fixture(scope="module")
def deb():
    if os.geteuid() != 0:
        pytest.fail("installing a package needs root (CI runs as root)")
    rc, out = run(["make", "deb"])
    assert rc == 0, f"make deb failed ({rc}):\n{out[-6000:]}"
    debs = glob.glob(os.path.join(REPO_ROOT, "build", "deb", "pgapi_*.deb"))
    assert len(debs) == 1, f"expected one .deb, got {debs}"
    return debs[0], out


def test_lintian_reports_no_error_and_no_warning(deb):
    """make deb ends with lintian --fail-on error,warning (a complaint fails it, above); none printed."""
    _, out = deb
    assert "lintian --fail-on error,warning" in out, out[-2000:]
    lines = [l for l in out.splitlines() if l[:2] in ("E:", "W:")]
    assert not lines, lines


def test_apt_install_then_purge(deb):
    deb, _ = deb
    if installed_version():
        purge()  # a previous run cut short
    owned = []
    rc, out = run(["apt-get", "install", "-y", "--no-install-recommends", deb])
    try:
        assert rc == 0, f"apt-get install failed ({rc}):\n{out[-3000:]}"
        rc, files = run(["dpkg", "-L", "pgapi"])
        owned = [f for f in files.splitlines() if f.startswith("/")]
        for path in EXPECTED:
            assert os.path.exists(path), f"{path} is not installed"
            assert path in owned, f"{path} is not the package's"
        rc, version = run(["/usr/bin/pgapi", "--version"])
        assert rc == 0 and "0.1.0" in version, version
        user = pwd.getpwnam("pgapi")
        assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false"), user
        st = os.stat("/etc/pgapi/pgapi.ini")
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, grp.getgrnam("pgapi").gr_gid), \
            f"expected the ini 0640 root:pgapi, got {oct(st.st_mode & 0o777)} {st.st_uid}:{st.st_gid}"
        rc, conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "pgapi"])
        assert "/etc/pgapi/pgapi.ini" in conffiles and "/etc/logrotate.d/pgapi" in conffiles, conffiles
        assert os.path.islink(SOCKET_LINK), "the socket unit is not enabled"
        # the installed files work together: the shipped ini is valid for the shipped binary
        rc, out = run(["/usr/bin/pgapi", "--config", "/etc/pgapi/pgapi.ini", "--check-config"])
        assert rc == 0, out
    finally:
        prc, pout = purge()
    assert prc == 0, f"apt-get purge failed ({prc}):\n{pout[-3000:]}"
    assert not installed_version()
    left = [p for p in owned + [SOCKET_LINK] if os.path.lexists(p) and not os.path.isdir(p)]
    left += [d for d in ("/etc/pgapi", "/usr/share/pgapi", "/usr/share/doc/pgapi") if os.path.exists(d)]
    assert not left, f"left after purge: {left}"
    # kept by policy: the system user and its group (files elsewhere may still belong to them)
    assert pwd.getpwnam("pgapi") and grp.getgrnam("pgapi"), "the pgapi user went with the purge"
    print(f"deb: {os.path.basename(deb)}, {len(owned)} paths installed, none left after purge")
