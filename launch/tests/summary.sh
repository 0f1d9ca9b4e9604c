#!/usr/bin/env bash
# summary.sh — launch/xctest-summary.sh, which launch/test.sh uses to count the Swift tests, on both forms of XCTest's
# summary line (with and without skipped tests), on a log with failures, as swift test prints them on Linux, and on
# a crashed run (a test started and never ended).
#
# Usage: launch/tests/summary.sh      (no MPI, < 1 s)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init summary

check() {   # check NAME EXPECTED-OUTPUT (the log is in $T/log)
  local got
  got=$(bash "$T_ROOT/launch/xctest-summary.sh" "$T/log" 2>&1) || got="exit $?: $got"
  if [[ "$got" == "$2" ]]; then t_pass "$1"; else t_fail "$1" "expected [$2], got [$got]"; fi
}

cat >"$T/log" <<'LOG'
Test Case 'AttentionTests.testAVX512' started at 2026-12-07 01:51:25.637
Test Case 'AttentionTests.testAVX512' passed (0.063 seconds)
Test Suite 'All tests' passed at 2026-12-07 01:51:25.700
	 Executed 274 tests, with 0 failures (0 unexpected) in 60.1 (60.2) seconds
LOG
check "all passed" "total=274 passed=274 failed=0 skipped=0"

cat >"$T/log" <<'LOG'
Test Case 'AttentionTests.testAVX512' started at 2026-12-07 01:51:25.637
/work/main/Tests/LayersTests/AttentionTests.swift:191: AttentionTests.testAVX512 : Test skipped - no AVX-512F on this CPU
Test Case 'AttentionTests.testAVX512' skipped (0.063 seconds)
Test Case 'KernelTests.testPortable' passed (0.0 seconds)
Test Suite 'debug.xctest' passed at 2026-12-07 01:51:25.700
	 Executed 274 tests, with 1 test skipped and 0 failures (0 unexpected) in 0.063 (0.063) seconds
Test Suite 'All tests' passed at 2026-12-07 01:51:25.700
	 Executed 274 tests, with 1 test skipped and 0 failures (0 unexpected) in 0.063 (0.063) seconds
LOG
check "one skipped, with its reason" "total=274 passed=273 failed=0 skipped=1
skipped: AttentionTests.testAVX512: no AVX-512F on this CPU"

cat >"$T/log" <<'LOG'
/tmp/x/Tests/XTests/T.swift:3: T.testA : Test skipped
Test Case 'T.testA' skipped (0.063 seconds)
/tmp/x/Tests/XTests/T.swift:5: error: T.testC : XCTAssertEqual failed: ("1") is not equal to ("2") - 
/tmp/x/Tests/XTests/T.swift:6: error: T.testC : XCTAssertEqual failed: ("3") is not equal to ("4") - 
Test Case 'T.testC' failed (0.0 seconds)
Test Case 'T.testD' failed (0.1 seconds)
	 Executed 5 tests, with 2 tests skipped and 3 failures (0 unexpected) in 0.063 (0.063) seconds
LOG
check "failures and skips" "total=5 passed=1 failed=2 skipped=2
skipped: T.testA: (no reason given)"

cat >"$T/log" <<'LOG'
Test Case 'A.testOne' started at 2026-12-07 05:50:00.000
Test Case 'A.testOne' passed (0.1 seconds)
Test Suite 'A' passed at 2026-12-07 05:50:00.100
	 Executed 6 tests, with 0 failures (0 unexpected) in 0.1 (0.1) seconds
Test Case 'B.testSkip' started at 2026-12-07 05:50:00.200
Test Case 'B.testSkip' skipped (0.0 seconds)
Test Case 'B.testCrash' started at 2026-12-07 05:50:00.300
LOG
check "a crash counts as a failure" "total=3 passed=1 failed=1 skipped=1
crashed: B.testCrash: started and never ended (the test process died)"

echo "Compiling..." >"$T/log"
check "no summary line" "exit 1: "
t_finish
