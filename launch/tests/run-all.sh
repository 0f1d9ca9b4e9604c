#!/usr/bin/env bash
# run-all.sh — run the launch tests (real MPI, multi-host, Slurm, preemption and failure runs of `hgdpo train`).
#
# Usage: launch/tests/run-all.sh [TEST...]      (TEST: summary docs preempt failures lock killloop diskfull multinode slurm report-browser; default all, in this order,
#                                               or the ones listed in HGDPO_LAUNCH_TESTS)
#
# Each test runs under `timeout -k 10 ${HGDPO_LAUNCH_TEST_TIMEOUT:-600}` (its own traps clean up on the SIGTERM),
# prints PASS/FAIL/SKIP lines, and this script ends with "launch tests: N passed, M failed, K skipped, S s" and
# exit status 1 if any check failed or a test did not finish. diskfull, multinode, slurm and the node-loss cases of failures
# need root and the cluster tools (launch/install-deps.sh --with-cluster-tools); without them they print SKIP.
# The binary: HGDPO_BIN, else .build/release/hgdpo, else .build/debug/hgdpo. HGDPO_TEST_KEEP=1 keeps temp dirs.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tests=("$@")
((${#tests[@]})) || read -r -a tests <<<"${HGDPO_LAUNCH_TESTS:-summary docs preempt failures lock killloop diskfull multinode slurm report-browser}"
limit="${HGDPO_LAUNCH_TEST_TIMEOUT:-600}"

passed=0 failed=0 skipped=0
log=""
trap 'rm -f "$log" "$log.err"' EXIT
start=$(date +%s)
for t in "${tests[@]}"; do
  script="$here/$t.sh"
  if [[ ! -f "$script" ]]; then
    echo "FAIL $t: no such launch test ($script)"
    failed=$((failed + 1))
    continue
  fi
  echo "== launch test: $t"
  t0=$(date +%s)
  log="$(mktemp "${TMPDIR:-/tmp}/hgdpo-launch-$t.XXXXXX")"
  rc=0
  # Its own process group is not needed: timeout signals the script, whose traps end what it started.
  timeout -k 10 "$limit" bash "$script" 2>"$log.err" | tee "$log" || rc=${PIPESTATUS[0]}
  p=$(grep -c '^PASS ' "$log")
  f=$(grep -c '^FAIL ' "$log")
  s=$(grep -c '^SKIP ' "$log")
  if ((rc != 0 && f == 0)); then
    # Ended without a FAIL line: timed out (124/137) or crashed; count it as a failure and show why.
    echo "FAIL $t: ended with exit status $rc$( ((rc == 124 || rc == 137)) && echo " (timed out after ${limit}s)")"
    tail -n 15 "$log.err" | sed 's/^/  | /'
    f=1
  elif ((f > 0)); then
    echo "-- $t: stderr (last lines):"
    tail -n 15 "$log.err" | sed 's/^/  | /'
  fi
  echo "-- $t: $p passed, $f failed$( ((s > 0)) && echo ", skipped") in $(($(date +%s) - t0)) s"
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  rm -f "$log" "$log.err"
done
echo "launch tests: $passed passed, $failed failed, $skipped skipped, $(($(date +%s) - start)) s"
((failed == 0))
