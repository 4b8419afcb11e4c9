#!/usr/bin/env bash
# Runs the test tiers and prints one closing line "N passed, N failed":
#   unit        cmocka binaries under build/asan/tests (each links one module, ASan+UBSan)
#   integration pytest against real PostgreSQL primary+replica, PgBouncer and Redis (tests/integration)
# Usage: tests/run.sh [unit|integration|all] [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
shift || true
passed=0 failed=0 rc=0

run_unit() {
    local bin out p f
    for bin in build/asan/tests/test_*; do
        [ -x "$bin" ] || continue
        out=$(ASAN_OPTIONS=detect_leaks=1 "$bin" 2>&1)
        local status=$?
        printf '%s\n' "$out"
        p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
        f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0}))
        if [ "$status" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then
            echo "unit: $bin exited $status without a cmocka failure count (crash or sanitizer report)"
            failed=$((failed + 1))
        fi
        [ "$status" -eq 0 ] || rc=1
    done
}

run_integration() {
    local xml=build/pytest-junit.xml
    mkdir -p build
    rm -f "$xml"
    /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE --junitxml="$xml" tests/integration "$@" </dev/null
    local status=$?
    if [ ! -f "$xml" ]; then
        echo "integration: pytest wrote no report (exit $status)"
        failed=$((failed + 1))
        rc=1
        return
    fi
    read -r t f e s < <(/usr/bin/python3 - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tot = lambda k: sum(int(x.get(k, 0)) for x in suites)
print(tot("tests"), tot("failures"), tot("errors"), tot("skipped"))
PY
)
    passed=$((passed + t - f - e - s))
    failed=$((failed + f + e))
    # exit 5 = no test collected: that is a failure of the suite, not a pass
    [ "$status" -eq 0 ] || rc=1
}

case "$tier" in
    unit) run_unit ;;
    integration) run_integration "$@" ;;
    all) run_unit; run_integration "$@" ;;
    *) echo "usage: $0 [unit|integration|all] [pytest args]" >&2; exit 2 ;;
esac
echo "$passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
