#!/usr/bin/env bash
# xctest-summary.sh LOG — reads the output of `swift test` (XCTest) and prints its counts as shell assignments:
#   total=N passed=P failed=F skipped=S
# then one line per skipped test, "skipped: Class.testName: reason". Exit status 1 when LOG has no summary line.
# XCTest's last summary line counts every test and has two forms:
#   Executed 274 tests, with 0 failures (0 unexpected) in 12.3 (12.4) seconds
#   Executed 274 tests, with 1 test skipped and 0 failures (0 unexpected) in 12.3 (12.4) seconds
# Its failure count is of failed assertions, so failed tests are counted from "Test Case '…' failed (" lines.
# A test that started and never ended (the process crashed, e.g. signal 11) counts as failed, and the counts come
# from the per-test lines (the last "Executed" line is then only some earlier class's): "crashed: Class.testName".
# Used by launch/test.sh; launch/tests/summary.sh feeds it both forms.
set -euo pipefail
log=${1:?usage: xctest-summary.sh LOG}
failed=$(grep -cE "^Test Case '.*' failed \(" "$log" || true)
last=$(sed -nE "s/^Test Case '(.*)' started.*/\1/p" "$log" | tail -n 1)
if [[ -n "$last" ]] && ! grep -qF "Test Case '$last' passed (" "$log" && ! grep -qF "Test Case '$last' failed (" "$log" &&
  ! grep -qF "Test Case '$last' skipped (" "$log"; then
  passed=$(grep -cE "^Test Case '.*' passed \(" "$log" || true)
  skipped=$(grep -cE "^Test Case '.*' skipped \(" "$log" || true)
  failed=$((failed + 1))
  echo "total=$((passed + failed + skipped)) passed=$passed failed=$failed skipped=$skipped"
  echo "crashed: $last: started and never ended (the test process died)"
else
  summary=$(grep -E "Executed [0-9]+ tests?, with " "$log" | tail -n 1 || true)
  [[ -n "$summary" ]] || exit 1
  total=$(sed -E 's/.*Executed ([0-9]+) tests?,.*/\1/' <<<"$summary")
  skipped=0
  if [[ "$summary" =~ with\ ([0-9]+)\ tests?\ skipped ]]; then skipped=${BASH_REMATCH[1]}; fi
  echo "total=$total passed=$((total - failed - skipped)) failed=$failed skipped=$skipped"
fi
# "/path/File.swift:12: Class.testName : Test skipped - reason"
sed -nE "s/^.*: ([A-Za-z0-9_]+\.[A-Za-z0-9_]+) : Test skipped( - (.*))?$/skipped: \1: \3/p" "$log" | sed -E 's/: $/: (no reason given)/'
