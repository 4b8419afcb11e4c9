#!/usr/bin/env bash
# Runs the test tiers and prints one closing line "N passed, N failed":
#   unit        cmocka binaries under build/asan/tests (each links every ASan+UBSan object but master/main.o)
#   fuzz        build/fuzz/fuzz_request (tests/fuzz): replays its corpus, then fuzzes FUZZ_SECONDS
#               (default 60); each is one test
#   integration pytest against real PostgreSQL primary+replica, PgBouncer and Redis (tests/integration)
#   style       every C file as .clang-format lays it out (one test; `make format` fixes it)
# Usage: tests/run.sh [unit|fuzz|integration|style|all] [pytest args or test files...]
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

# One libFuzzer invocation as one test; its output goes to build/fuzz/NAME.log, its tail to the screen.
fuzz_step() {
    local name=$1 log=build/fuzz/$1.log
    shift
    "$@" >"$log" 2>&1
    local status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$log"
    grep -Eo 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' "$log"
    if [ "$status" -ne 0 ]; then
        # the input (replay) and, from its first line on, the report (sanitizer, libFuzzer, the target)
        local report='ERROR|runtime error|libFuzzer: |^fuzz_request: '
        grep -E '^Running: ' "$log" | tail -n 1
        { grep -q -E "$report" "$log" && awk -v re="$report" '$0 ~ re {p=1} p' "$log" | head -n 60; } ||
            tail -n 30 "$log"
        grep -h 'Test unit written to' "$log"
        echo "fuzz: $name failed (exit $status); whole output in $log"
        failed=$((failed + 1))
        rc=1
    else
        echo "fuzz: $name passed"
        passed=$((passed + 1))
    fi
}

run_fuzz() {
    local bin=build/fuzz/fuzz_request
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin is missing (make fuzz)"
        failed=$((failed + 1))
        rc=1
        return
    fi
    mkdir -p build/fuzz/corpus
    # stderr closed: the server's log lines would flood it; libFuzzer still prints its reports
    local opts=(-close_fd_mask=2 -timeout=10 -rss_limit_mb=2048 -artifact_prefix=build/fuzz/)
    fuzz_step corpus-replay "$bin" "${opts[@]}" tests/fuzz/corpus/*
    fuzz_step timed-run "$bin" "${opts[@]}" -max_total_time="${FUZZ_SECONDS:-60}" -max_len=12000 \
        -dict=tests/fuzz/http.dict -print_final_stats=1 build/fuzz/corpus tests/fuzz/corpus
}

run_integration() {
    local xml=build/pytest-junit.xml
    mkdir -p build
    rm -f "$xml"
    # the whole directory unless the arguments name test files or directories themselves (pytest would
    # otherwise collect the directory and then those files a second time)
    local where=tests/integration arg
    for arg in "$@"; do
        [ -e "${arg%%::*}" ] && where=
    done
    /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfE --junitxml="$xml" $where "$@" </dev/null
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

# The layout of every C file as .clang-format says; one test, naming the files it would change.
run_style() {
    local files bad=()
    mapfile -t files < <(git ls-files '*.c' '*.h')
    local f
    for f in "${files[@]}"; do
        clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
    done
    if [ "${#bad[@]}" -eq 0 ]; then
        echo "style: ${#files[@]} C files laid out as .clang-format says"
        passed=$((passed + 1))
    else
        echo "style: not as .clang-format lays them out (make format): ${bad[*]}"
        failed=$((failed + 1))
        rc=1
    fi
}

case "$tier" in
    unit) run_unit ;;
    integration) run_integration "$@" ;;
    fuzz) run_fuzz ;;
    style) run_style ;;
    all) run_style; run_unit; run_fuzz; run_integration "$@" ;;
    *) echo "usage: $0 [unit|fuzz|integration|style|all] [pytest args]" >&2; exit 2 ;;
esac
echo "$passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
