#!/usr/bin/env bash
# check-command-docs.sh — every command of `hgdpo --help` has an example in docs/commands.md, and every option an
# example uses is in that command's `--help`, so the reference cannot go stale unnoticed.
#
# Usage: scripts/check-command-docs.sh [DOC …]   (default docs/commands.md; the binary: $HGDPO_BIN or
#        .build/release/hgdpo). Examples are the indented code lines (4+ spaces) that run `hgdpo <command>`, with
#        `\` continuations joined and `&&` / `|` chains split. Prints each problem; exit 1 if there is one.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${HGDPO_BIN:-$root/.build/release/hgdpo}
[[ -x $bin ]] || { echo "check-command-docs: no binary at $bin (swift build -c release, or set HGDPO_BIN)" >&2; exit 2; }
docs=("$@")
((${#docs[@]})) || docs=("$root/docs/commands.md")

mapfile -t commands < <("$bin" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { sub(/^  /, ""); split($0, f, /  +/); print f[1] } on && /^$/ { exit }')
((${#commands[@]})) || { echo "check-command-docs: no commands in '$bin --help'" >&2; exit 2; }
declare -A help used
for c in "${commands[@]}"; do
  # shellcheck disable=SC2086  # the command's words
  help[$c]=$("$bin" $c --help)
done

problems=0 examples=0
for doc in "${docs[@]}"; do
  # One example per line: code lines joined over trailing backslashes, split at && and |.
  while IFS= read -r example; do
    read -r -a words <<<"${example#*hgdpo }"
    command=""
    for c in "${commands[@]}"; do
      read -r -a cw <<<"$c"
      [[ "${words[*]:0:${#cw[@]}}" == "$c" && ${#c} -gt ${#command} ]] && command=$c
    done
    if [[ -z $command ]]; then
      echo "$doc: unknown command in: hgdpo ${example#*hgdpo }"; problems=$((problems + 1)); continue
    fi
    examples=$((examples + 1))
    used[$command]=1
    for w in "${words[@]}"; do
      [[ $w == --* ]] || continue
      option=${w%%=*}
      if ! grep -qE -- "^  (-[a-z], )?$option( |,|$)" <<<"${help[$command]}"; then
        echo "$doc: 'hgdpo $command' has no option $option (example: hgdpo ${example#*hgdpo })"; problems=$((problems + 1))
      fi
    done
  done < <(awk '/^    / { line = line $0; if (sub(/\\$/, "", line)) next; print line; line = ""; next } { line = "" }' "$doc" \
             | sed 's/&&/\n/g; s/ | /\n/g' | grep -E '(^|[ /])hgdpo [a-z]' | sed -E 's/^.*(^|[ /])hgdpo /hgdpo /')
done
for c in "${commands[@]}"; do
  [[ -n ${used[$c]:-} ]] || { echo "no example of 'hgdpo $c' in ${docs[*]}"; problems=$((problems + 1)); }
done
echo "check-command-docs: ${#commands[@]} commands, $examples examples, $problems problems"
((problems == 0))
