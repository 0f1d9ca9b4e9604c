#!/usr/bin/env bash
# test.sh — install what is missing, build, and run every test: the Swift tests (XCTest; parity fixtures are
# committed, no Python needed) including the launch tests that start real MPI jobs with launch/local.sh, then
# the launch tests of launch/tests/run-all.sh (multi-host over network namespaces, Slurm, preemption, failures;
# with the debug binary just built) — each of their PASS/FAIL checks counts as one test.
#
# Usage: launch/test.sh [--filter PATTERN] [--no-launch-tests]
#   --filter PATTERN   only the Swift tests matching PATTERN (as for `swift test --filter`, e.g. IOTests);
#                      the launch tests are then not run.
#   --no-launch-tests  skip launch/tests/run-all.sh.
# As root, the cluster tools the launch tests need (openssh-server, iproute2, slurm-wlm) are installed too.
# Ends with the skipped tests and their reasons, then one line "tests: N passed, N failed, N skipped"; exit status
# non-zero when anything failed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

filter=()
launch_tests=1
while (($#)); do
  case "$1" in
    --filter) filter=(--filter "$2"); launch_tests=0; shift 2 ;;
    --filter=*) filter=(--filter "${1#--filter=}"); launch_tests=0; shift ;;
    --no-launch-tests) launch_tests=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test.sh: error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

deps=()
((launch_tests && EUID == 0)) && deps=(--with-cluster-tools)
"$root/launch/install-deps.sh" "${deps[@]}"
[[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"

echo "== build (debug, with tests)"
swift build --build-tests

echo "== swift test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift test --skip-build --disable-swift-testing "${filter[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# Counts from XCTest's summary line, skipped tests listed with their reasons (launch/xctest-summary.sh).
if ! counts=$(bash "$root/launch/xctest-summary.sh" "$log"); then
  echo "test.sh: swift test printed no summary (exit status $status)" >&2
  echo "tests: 0 passed, 1 failed, 0 skipped"
  exit 1
fi
eval "$(head -n 1 <<<"$counts")"   # total= passed= failed= skipped=
skipped_list=$(tail -n +2 <<<"$counts")

launch_passed=0
launch_failed=0
launch_skipped=0
launch_status=0
if ((launch_tests)); then
  echo "== launch tests (launch/tests/run-all.sh)"
  set +e
  HGDPO_BIN="$root/.build/debug/hgdpo" bash "$root/launch/tests/run-all.sh" 2>&1 | tee "$log"
  launch_status=${PIPESTATUS[0]}
  set -e
  launch_summary=$(grep -E "^launch tests: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1 || true)
  if [[ -n "$launch_summary" ]]; then
    launch_passed=$(sed -E 's/^launch tests: ([0-9]+) passed.*/\1/' <<<"$launch_summary")
    launch_failed=$(sed -E 's/^launch tests: [0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$launch_summary")
    launch_skipped=$(sed -nE 's/^launch tests: .* ([0-9]+) skipped.*/\1/p' <<<"$launch_summary")
    skipped_list+=$(sed -nE 's/^SKIP (.*)$/\nskipped: launch test \1/p' "$log")
  fi
  if ((launch_status != 0 && launch_failed == 0)); then launch_failed=1; fi
fi

echo "swift tests: $passed passed, $failed failed, $skipped skipped; launch tests: $launch_passed passed, $launch_failed failed, $launch_skipped skipped"
[[ -n "$skipped_list" ]] && sed '/^$/d' <<<"$skipped_list"
echo "tests: $((passed + launch_passed)) passed, $((failed + launch_failed)) failed, $((skipped + launch_skipped)) skipped"
if ((status != 0 || failed != 0 || launch_failed != 0)); then exit 1; fi
