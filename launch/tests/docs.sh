#!/usr/bin/env bash
# docs.sh — the command reference against the binary (scripts/check-command-docs.sh): every command of
# `hgdpo --help` has an example in docs/commands.md or README.md, and every option the examples use exists; and the
# checker itself catches a misspelt option and a missing command (so this test can fail).
#
# Usage: launch/tests/docs.sh      (no MPI, a few seconds)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init docs

check="$T_ROOT/scripts/check-command-docs.sh"
if out=$("$check" "$T_ROOT/docs/commands.md" "$T_ROOT/README.md" 2>&1); then
  t_pass "docs/commands.md and README.md: $(tail -n 1 <<<"$out")"
else
  t_fail "docs/commands.md and README.md" "$(tr '\n' ';' <<<"$out")"
fi

printf 'An example with a misspelt option:\n\n    $ hgdpo select --pool pool --by toy --loser-rnk 2 --out t\n' > "$T/bad.md"
out=$("$check" "$T/bad.md" 2>&1) && status=0 || status=$?
if ((status == 1)) && grep -q "'hgdpo select' has no option --loser-rnk" <<<"$out" && grep -q "no example of 'hgdpo train'" <<<"$out"; then
  t_pass "the checker names a misspelt option and a command without an example"
else
  t_fail "the checker on a bad document" "exit $status: $(tr '\n' ';' <<<"$out")"
fi
t_finish
