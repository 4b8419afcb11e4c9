"""Shared code of the integration tests: topologies, the pgapi server, its fixtures, clients, builders,
the consistency load and history checker. Test modules import from here, never from each other."""
