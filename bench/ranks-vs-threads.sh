#!/usr/bin/env bash
# ranks-vs-threads.sh — 1 rank × C threads against C ranks × 1 thread (C = cores), `hgdpo train` on this machine,
# interleaved (the order flips every round) so that a shared machine's load hits both alike; for BENCHMARKS.md
# (issue 16, item 5: a user should be able to choose ranks per node for memory, not for speed).
#
# Usage: bench/ranks-vs-threads.sh ROUNDS [CONFIG [LATENT [STEPS]]]      (default: small 32 4)
#   The job of bench/train-scaling.sh: global batch 16, local batch 4, a random-weight U-Net of the bench shape and
#   random latents; pairs/s from the median step after the first. HGDPO_BIN: the binary (default: the release build).
#   HGDPO_BIN_BEFORE: another binary (e.g. before a change) also run as 1 × C in every round, for a before/after.
# Prints one line per run with the load average before it, then the medians and their ratio.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=${1:?ROUNDS}; config=${2:-small}; latent=${3:-32}; steps=${4:-4}
export HGDPO_BIN=${HGDPO_BIN:-$root/.build/release/hgdpo}
[[ -x "$HGDPO_BIN" ]] || { echo "ranks-vs-threads.sh: no binary at $HGDPO_BIN (swift build -c release)" >&2; exit 1; }
cores=$(nproc)
work=$(mktemp -d /tmp/hgdpo-rvt.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$HGDPO_BIN" make-model --shape "$config" --parts unet --out "$work/model" >/dev/null
context=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cross_attention_dim'])" "$work/model/unet/config.json")
"$HGDPO_BIN" make-cache --count 256 --latent "4,$latent,$latent" --context "77,$context" --out "$work/cache" >/dev/null
echo "config $config@$latent, global batch 16, local batch 4, $steps steps, $cores cores, $(date -u +%H:%M) UTC, $HGDPO_BIN"
run() {  # RANKS THREADS ROUND [BINARY]
  local out="$work/run-$1x$2-$3${4:+-before}" load bin=${4:-$HGDPO_BIN}
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  HGDPO_BIN=$bin HGDPO_THREADS=$2 "$root/launch/local.sh" --timeout 3600 "$1" hgdpo train --model "$work/model" --data "$work/cache" \
    --out "$out" --global-batch 16 --local-batch 4 --max-steps "$steps" --checkpoint-every 1000000 --seed 1 \
    >"$out.log" 2>&1 || { echo "$1 x $2 failed:"; tail -n 20 "$out.log"; exit 1; }
  python3 - "$1" "$2" "$3" "$load" "$out/metrics.jsonl" "${4:+ (before)}" <<'PY' | tee -a "$work/results"
import json, statistics, sys
ranks, threads, r, load, path, tag = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()][1:]
step = statistics.median(x["step_s"] for x in rows)
print(f"round {r}: {ranks} x {threads}{tag}: {16 / step:6.3f} pairs/s (median step {step:.3f} s), load before {load}")
PY
}
for ((r = 1; r <= rounds; r++)); do
  order=(threads ranks); ((r % 2)) || order=(ranks threads)
  [[ -n "${HGDPO_BIN_BEFORE:-}" ]] && { ((r % 2)) && order=(before "${order[@]}") || order+=(before); }
  for o in "${order[@]}"; do
    case $o in
      threads) run 1 "$cores" "$r" ;;
      ranks) run "$cores" 1 "$r" ;;
      before) run 1 "$cores" "$r" "$HGDPO_BIN_BEFORE" ;;
    esac
  done
done
python3 - "$work/results" "$cores" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.search(r"round (\d+): (\d+) x (\d+)( \(before\))?: +([\d.]+) pairs/s", line)
    runs.setdefault((m.group(2), m.group(3), bool(m.group(4))), {})[m.group(1)] = float(m.group(5))
c = sys.argv[2]
ranks = runs[(c, "1", False)]
mr = statistics.median(ranks.values())
for label, key in (("", ("1", c, False)), (" (before)", ("1", c, True))):
    if key not in runs: continue
    threads = runs[key]
    mt = statistics.median(threads.values())
    ratios = sorted(threads[k] / ranks[k] for k in threads)
    print(f"median 1 x {c}{label}: {mt:.3f} pairs/s, {c} x 1: {mr:.3f} pairs/s: {100 * mt / mr:.0f} % "
          f"(per round, sorted: {' '.join(f'{100 * x:.0f}' for x in ratios)} %)")
PY
