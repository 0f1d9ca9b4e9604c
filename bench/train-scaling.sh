#!/usr/bin/env bash
# train-scaling.sh — throughput of `hgdpo train` on 1, 2 and 4 ranks of this machine, and the share of the step
# spent in the gradient all-reduce (metrics.jsonl: samples_per_s, step_s, allreduce_s), for BENCHMARKS.md.
#
# Usage: bench/train-scaling.sh [CONFIG [LATENT [STEPS [RANKS...]]]]   (default: small 32 6 1 2 4)
# The same job each time: global batch 16, local batch 4 (accumulation 16/(ranks·4)), random-weight U-Net of the
# given bench shape (hgdpo make-model) and a cache of random latents. Threads per rank: cores / ranks (at least 1).
# The first step (warm-up: allocation, first touches) is left out of the averages.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=${1:-small}; latent=${2:-32}; steps=${3:-6}; shift $(( $# < 3 ? $# : 3 ))
ranks=("$@"); ((${#ranks[@]})) || ranks=(1 2 4)
[[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
(cd "$root" && swift build -c release >/dev/null)
export HGDPO_BIN="$root/.build/release/hgdpo"
work=$(mktemp -d /tmp/hgdpo-scaling.XXXXXX)
trap 'rm -rf "$work"' EXIT
context=$("$HGDPO_BIN" make-model --shape "$config" --parts unet --out "$work/model" >/dev/null &&
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cross_attention_dim'])" "$work/model/unet/config.json")
"$HGDPO_BIN" make-cache --count 256 --latent "4,$latent,$latent" --context "77,$context" --out "$work/cache" >/dev/null
echo "config $config, latent $latent, global batch 16, local batch 4, $steps steps, $(nproc) cores"
for np in "${ranks[@]}"; do
  unset HGDPO_THREADS
  "$root/launch/local.sh" --timeout 3600 "$np" hgdpo train --model "$work/model" --data "$work/cache" \
    --out "$work/run-$np" --global-batch 16 --local-batch 4 --max-steps "$steps" --checkpoint-every 1000000 \
    --log-every 1 --seed 1 >"$work/log-$np" 2>&1 || { echo "ranks $np: failed"; tail -n 20 "$work/log-$np"; exit 1; }
  python3 - "$np" "$work/run-$np/metrics.jsonl" <<'PY'
import json, sys
np_, path = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path) if l.strip()][1:]
step = sum(r["step_s"] for r in rows) / len(rows)
comm = sum(r.get("allreduce_s", 0.0) for r in rows) / len(rows)
print(f"ranks {np_}: {16 / step:7.2f} samples/s (pairs/s), step {step:.3f} s, all-reduce {comm * 1e3:.1f} ms = {100 * comm / step:.2f}% of the step")
PY
done
