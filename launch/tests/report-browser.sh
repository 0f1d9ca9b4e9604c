#!/usr/bin/env bash
# report-browser.sh — hgdpo's two HTML pages in a real browser. A short `hgdpo train` with validation images on the
# random-weight fixture pipeline, `hgdpo eval` of its LoRA on 2 ranks (prompts with <script>, quotes and ampersands),
# and `hgdpo report RUN --eval EVAL`; then headless Chromium (Debian's `chromium`, installed here when missing) opens
# both pages from file:// with no network and
#   - prints no console message at all (--enable-logging=stderr --v=0 shows every console call as ":CONSOLE"),
#   - has every chart in the DOM (one <svg class="chart"> per metric group, the win-rate and HSV charts),
#   - draws them: in a screenshot, each chart's plot area (found by its fill colour) holds drawn pixels
#     (launch/tests/chart_pixels.py, standard-library Python),
#   - and no prompt became markup.
# Two negative controls show the checks can fail: a page calling console.error, and a chart with an empty plot area.
# The eval is scored by HGDPO_REPORT_TEST_SCORER (a --scorer spec) if set, else by the external scorer kind with
# scripts/example_scorer.py when this build has it; with none, the win-rate chart is absent and that check
# is skipped (SKIP line), the rest still runs. HGDPO_SCREENSHOTS=DIR keeps the two screenshots (docs/report.png).
#
# Usage: launch/tests/report-browser.sh      (~40 s in a debug build, plus the chromium install the first time)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init report-browser
t_need_cmd python3

if ! command -v chromium >/dev/null 2>&1; then
  ((EUID == 0)) || t_skip "chromium is not installed and installing it needs root (apt-get install -y chromium)"
  t_log "installing chromium (apt-get install -y chromium)"
  if ! { apt-get install -y chromium >"$T/apt.log" 2>&1 || { apt-get update >>"$T/apt.log" 2>&1 && apt-get install -y chromium >>"$T/apt.log" 2>&1; }; }; then
    t_fail "install chromium" "$(tail -n 3 "$T/apt.log")"
    t_finish
  fi
fi
chrome=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
  --disable-background-networking --user-data-dir="$T/chrome-profile")

fixtures="$T_ROOT/Tests/SamplingTests/Fixtures"
model="$fixtures/pipeline"
printf '%s\n' 'a photo of a young woman, smiling' 'three people <script>console.error("injected")</script> & "friends"' \
  "an old man's portrait, (bust shot:1.2)" >"$T/prompts.txt"

# --- a run, an evaluation, the two pages ------------------------------------------------------------------
"$HGDPO_BIN" make-cache --count 16 --latent 4,8,8 --context 77,16 --out "$T/cache" >/dev/null
t_job 200 "$HGDPO_BIN" train --model "$model" --data "$T/cache" --out "$T/run" --global-batch 4 --local-batch 2 --max-steps 12 \
  --lr 3e-3 --optimizer adamw --threads 1 --checkpoint-every 12 --validation-prompts "$T/prompts.txt" --validation-every 4 \
  --validation-steps 4 >"$T/train.log" 2>&1
if ((T_RC == 0)) && grep -q "^report: hgdpo report $T/run\$" "$T/train.log"; then
  t_pass "train: 12 steps with validation images, last line names the report command (${T_SECONDS}s)"
else
  t_fail "train" "exit $T_RC: $(tail -n 3 "$T/train.log")"
  t_finish
fi

scorer="${HGDPO_REPORT_TEST_SCORER:-}"
if [[ -z "$scorer" ]]; then
  known="$("$HGDPO_BIN" eval --model "$model" --lora x --prompts "$T/prompts.txt" --out "$T/x" --scorer probe=no-such-kind 2>&1 |
    sed -n 's/.*(known: \(.*\)).*/\1/p' || true)"
  # The prompts are the fixture pipeline's, not the toy world's grammar: toy-human would refuse them.
  if [[ "$known" == *external* && -f "$T_ROOT/scripts/example_scorer.py" ]]; then
    scorer="colourful=external:python3 $T_ROOT/scripts/example_scorer.py"
  fi
fi
eval_args=(eval --model "$model" --lora "$T/run/step-000012/pytorch_lora_weights.safetensors" --lora-scale 1
  --prompts "$T/prompts.txt" --images-per-prompt 2 --steps 4 --height 64 --width 64 --threads 1 --out "$T/eval"
  --collective-timeout 60)
[[ -n "$scorer" ]] && eval_args+=(--scorer "$scorer")
t_job 200 "$T_ROOT/launch/local.sh" --timeout 180 2 hgdpo "${eval_args[@]}" >"$T/eval.log" 2>&1
if ((T_RC == 0)) && [[ -s "$T/eval/report.html" && -s "$T/eval/results.json" ]]; then
  t_pass "eval on 2 ranks${scorer:+ with --scorer $scorer} (${T_SECONDS}s)"
else
  t_fail "eval" "exit $T_RC: $(tail -n 3 "$T/eval.log")"
  t_finish
fi
t_job 60 "$HGDPO_BIN" report "$T/run" --eval "$T/eval" >"$T/report.log" 2>&1
if ((T_RC == 0)) && [[ -s "$T/run/report.html" ]]; then
  t_pass "report: $T/run/report.html"
else
  t_fail "report" "exit $T_RC: $(tail -n 3 "$T/report.log")"
  t_finish
fi

# --- checks in the browser ----------------------------------------------------------------------------------
# console_messages PAGE: the page's console messages (none expected); the DOM goes to PAGE.dom.
console_messages() {
  timeout -k 5 60 "${chrome[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$1" >"$1.dom" 2>"$1.log" || true
  grep ':CONSOLE' "$1.log" || true
}
# charts_drawn PAGE HEIGHT EXPECTED: screenshot, then every plot area must hold drawn pixels.
charts_drawn() {
  local page="$1" height="$2" expected="$3" shot="$1.png"
  rm -f "$shot"
  timeout -k 5 60 "${chrome[@]}" --screenshot="$shot" --window-size="1280,$height" "file://$page" >/dev/null 2>"$page.shot.log" || true
  [[ -s "$shot" ]] || { echo "no screenshot: $(tail -n 2 "$page.shot.log")"; return 1; }
  python3 "$T_ROOT/launch/tests/chart_pixels.py" "$shot" >"$shot.txt"
  local found blank
  found=$(sed -n 's/^charts //p' "$shot.txt")
  blank=$(awk '$1 == "chart" && $6 < 100' "$shot.txt" | wc -l)
  if [[ "$found" == "$expected" && "$blank" == 0 ]]; then
    echo "$found charts, drawn pixels per plot area: $(awk '$1 == "chart" { printf "%s ", $6 }' "$shot.txt")"
    return 0
  fi
  echo "found $found plot areas (expected $expected), $blank without drawn pixels: $(tr '\n' ';' <"$shot.txt")"
  return 1
}

# Negative controls first: the checks must see a console error and an empty chart.
printf '<!DOCTYPE html><html><body><script>console.error("control")</script></body></html>' >"$T/console.html"
if [[ -n "$(console_messages "$T/console.html")" ]]; then
  t_pass "control: a console.error is seen"
else
  t_fail "control: a console.error is not seen" "$(tail -n 3 "$T/console.html.log")"
fi
{
  sed -n '1,/<body>/p' "$T/eval/report.html"
  printf '<div class="charts"><svg class="chart" xmlns="http://www.w3.org/2000/svg" width="560" height="280">'
  printf '<rect x="66.5" y="30.5" width="480" height="204" fill="#fbfbfe" stroke="#b8b8c4"/></svg></div></body></html>\n'
} >"$T/empty.html"
if out="$(charts_drawn "$T/empty.html" 800 1)"; then
  t_fail "control: an empty chart passes the pixel check" "$out"
else
  t_pass "control: an empty chart is caught ($out)"
fi

for page in "$T/eval/report.html" "$T/run/report.html"; do
  name="${page#"$T"/}"
  messages="$(console_messages "$page")"
  if [[ -z "$messages" ]] && grep -q '</html>' "$page.dom"; then
    t_pass "$name: loads with no console message"
  else
    t_fail "$name: console messages or no DOM" "$(echo "$messages" | head -n 3)"
  fi
  expected=$(grep -o '<svg class="chart"' "$page.dom" | wc -l)
  if grep -q '<script' "$page.dom"; then
    t_fail "$name: a prompt became markup" "$(grep -o '.\{40\}<script.\{40\}' "$page.dom" | head -n 1)"
  elif [[ "$name" == eval/* ]] && ! grep -q 'three people &lt;script&gt;console.error(&quot;injected&quot;)&lt;/script&gt; &amp; &quot;friends&quot;' "$page.dom"; then
    t_fail "$name: the prompt with markup is not shown as text"
  else
    t_pass "$name: no markup from prompts or config"
  fi
  height=$((2400 + expected * 150))
  if out="$(charts_drawn "$page" "$height" "$expected")"; then
    t_pass "$name: $out"
  else
    t_fail "$name: charts not drawn" "$out"
  fi
  if [[ -n "${HGDPO_SCREENSHOTS:-}" ]]; then
    mkdir -p "$HGDPO_SCREENSHOTS" && cp "$page.png" "$HGDPO_SCREENSHOTS/$(echo "$name" | tr / -)"
  fi
done

# The win-rate chart is in the eval page when the eval had a scorer.
if [[ -n "$scorer" ]]; then
  if grep -q '<title>Win rate of A' "$T/eval/report.html.dom"; then
    t_pass "eval page: win-rate chart present (scorer $scorer)"
  else
    t_fail "eval page: no win-rate chart although --scorer was given"
  fi
else
  echo "SKIP report-browser: win-rate chart: no scorer kind in this build (set HGDPO_REPORT_TEST_SCORER=NAME=KIND[:ARG])"
fi
t_finish
