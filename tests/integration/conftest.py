"""Fixtures for the integration tests.

`topology` (session scope) brings up a throw-away topology with
scripts/topology.sh in a fresh temp dir under /tmp on private ports:
PGAPI_TEST_PORT_BASE (default 27000, below the ephemeral port range so no client socket in TIME-WAIT can hold one) + 0 primary, +1 replica, +2 pgbouncer,
+3 redis (+4 a second replica, after `topology.sh add-replica`); teardown runs
`topology.sh down --purge` for that dir. Tests that need more topologies use base+10 and up,
in steps of 10.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.topology import Topology, TopologyError, port_base, start_topology, stop_topology  # noqa: E402


@pytest.fixture(scope="session")
def topology_port_base():
    return port_base()


@pytest.fixture(scope="session")
def topology(topology_port_base):
    if os.geteuid() != 0:
        pytest.skip("the local topology needs root (PostgreSQL runs as postgres via runuser)")
    topo = start_topology(topology_port_base)
    yield topo
    stop_topology(topo)


@pytest.fixture
def make_topology(topology_port_base):
    """Factory for extra topologies: make_topology(offset) -> Topology (not up yet).
    Every topology made here is taken down and purged after the test."""
    made = []

    def make(offset):
        topo = Topology.in_temp_dir(topology_port_base + offset)
        made.append(topo)
        return topo

    yield make
    errors = []
    for topo in made:
        try:
            stop_topology(topo)
        except TopologyError as exc:
            errors.append(str(exc))
    if errors:
        raise TopologyError("teardown of extra topologies failed:\n" + "\n".join(errors))


# Figures a test records with record_property("figures", line): pytest drops a passing test's stdout, so
# they are repeated in the session's closing summary (make test's log) and are in the JUnit report too.
_figures = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _figures.extend(value for name, value in report.user_properties if name == "figures")


def pytest_terminal_summary(terminalreporter):
    if _figures:
        terminalreporter.section("figures")
        for line in _figures:
            terminalreporter.write_line(line)


# The pgapi binary's fixtures (server factory); imported here so every test module sees them.
from lib.pgapi_fixtures import api, schema, server  # noqa: E402,F401
