#!/usr/bin/python3
"""Medians of test_ha.py's HA-FIGURES lines, per case: `tests/ha_figures.py < LOG` (a `make test` or
tests/run.sh log; run with PGAPI_HA_ROUNDS=3 for three rounds of the switchover and the failover). A
line that appears twice (printed by the test, repeated in the session summary) counts once."""

import collections
import json
import statistics
import sys

FIGURES = ("unavailable_s", "writes_back_after_s", "write_outcome_unknown", "violations", "lost")


def main():
    runs = {}
    for line in sys.stdin:
        at = line.find("HA-FIGURES {")
        if at >= 0:
            f = json.loads(line[at + len("HA-FIGURES "):])
            runs[(f["case"], f["round"], f["seed"])] = f
    by_case = collections.defaultdict(list)
    for (case, _, _), f in sorted(runs.items()):
        by_case[case].append(f)
    for case, fs in by_case.items():
        parts = []
        for name in FIGURES:
            values = [f[name] for f in fs if name in f]
            if values:
                parts.append(f"{name} median {statistics.median(values)} of {values}")
        print(f"{case} ({len(fs)} run{'s' if len(fs) > 1 else ''}): " + "; ".join(parts))


if __name__ == "__main__":
    main()
