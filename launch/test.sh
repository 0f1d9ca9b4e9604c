#!/usr/bin/env bash
# test.sh — install what is missing, build, and run every test: the Swift tests (XCTest; parity fixtures are
# committed, no Python needed) including the launch tests that start real MPI jobs with launch/local.sh.
#
# Usage: launch/test.sh [--filter PATTERN]     (PATTERN as for `swift test --filter`, e.g. IOTests or PhiloxTests)
# Ends with one line "tests: N passed, N failed"; exit status non-zero when anything failed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

filter=()
while (($#)); do
  case "$1" in
    --filter) filter=(--filter "$2"); shift 2 ;;
    --filter=*) filter=(--filter "${1#--filter=}"); shift ;;
    -h|--help) sed -n '2,6{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test.sh: error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

"$root/launch/install-deps.sh"
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

# XCTest's last summary line counts every test: "Executed N tests, with F failures (U unexpected) in …".
summary=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -n 1 || true)
total=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")
failures=$(sed -E 's/.*with ([0-9]+) failures?.*/\1/' <<<"$summary")
failed_cases=$(grep -cE "^Test Case .* failed \(" "$log" || true)
if [[ -z "$summary" ]]; then
  echo "test.sh: swift test printed no summary (exit status $status)" >&2
  echo "tests: 0 passed, 1 failed"
  exit 1
fi
passed=$((total - failed_cases))
echo "tests: $passed passed, $failed_cases failed"
if ((status != 0 || failures != 0)); then exit 1; fi
