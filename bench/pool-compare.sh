#!/usr/bin/env bash
# pool-compare.sh — pool throughput (images per second), `hgdpo pool` against diffusers' StableDiffusionPipeline
# (bench/pool_torch.py), on the same random SD 1.5-shaped pipeline folder (bench/sample_torch.py --make), N images of
# one prompt per U-Net call with both CFG halves (hgdpo pool --batch N, diffusers num_images_per_prompt=N), CFG 5,
# DPM-Solver++, same threads. Runs interleaved (hgdpo fp32, diffusers fp32, hgdpo bf16, diffusers bf16, ROUNDS times)
# so a shared machine's load hits both sides alike; prints every JSON line, then images/s measured and extrapolated to
# 50 steps: N / (encode + 50 × seconds per step + decode).
#
# Usage: bench/pool-compare.sh [STEPS [SIZE [IMAGES [THREADS [ROUNDS]]]]]   (default: 2 512 2 <cores> 1)
#        HGDPO_BENCH_MODEL=DIR (default /tmp/hgdpo-bench-sd15), HGDPO_PYTHON (default /work/.venv-torch/bin/python)
#        HGDPO_BENCH_DTYPES="fp32 bf16" (which precisions to run)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
steps=${1:-2}; size=${2:-512}; images=${3:-2}; threads=${4:-$(nproc)}; rounds=${5:-1}
model=${HGDPO_BENCH_MODEL:-/tmp/hgdpo-bench-sd15}
py=${HGDPO_PYTHON:-/work/.venv-torch/bin/python}
dtypes=${HGDPO_BENCH_DTYPES:-fp32 bf16}
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
[[ -f "$model/model_index.json" ]] || "$py" "$root/bench/sample_torch.py" --model "$model" --make
(cd "$root" && swift build -c release --product hgdpo >/dev/null)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "a photo of a young woman, bust shot, smiling" > "$out/prompts.txt"
results=()
for r in $(seq "$rounds"); do
  for dtype in $dtypes; do
    mp=$([[ $dtype == bf16 ]] && echo bf16 || echo no)
    echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): hgdpo $dtype" >&2
    ours=$(HGDPO_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$root/.build/release/hgdpo" pool --model "$model" \
      --prompts "$out/prompts.txt" --images-per-prompt "$images" --batch "$images" --steps "$steps" --height "$size" \
      --width "$size" --guidance 5 --scheduler dpmsolver++ --mixed-precision "$mp" --threads "$threads" \
      --out "$out/pool-$r-$dtype" 2>/dev/null | tail -n 1)
    results+=("{\"impl\":\"hgdpo\",\"dtype\":\"$dtype\",\"images\":$images,\"steps\":$steps,\"result\":$ours}")
    echo "${results[-1]}"
    echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): diffusers $dtype" >&2
    theirs=$(OMP_NUM_THREADS=$threads "$py" "$root/bench/pool_torch.py" --model "$model" --images "$images" --steps "$steps" \
      --size "$size" --threads "$threads" --dtype "$dtype" 2>/dev/null | tail -n 1)
    results+=("$theirs")
    echo "$theirs"
  done
done
echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): done" >&2
python3 - "${results[@]}" <<'PY'
import json, sys
for line in sys.argv[1:]:
    d = json.loads(line)
    if d["impl"] == "hgdpo":
        r, n, steps = d["result"], d["images"], d["steps"]
        e, s, dec = r["encode_s"], r["denoise_s"] / steps, r["decode_s"]
    else:
        n, e, s, dec = d["images"], d["encode_s"], d["per_step_s"], d["decode_s"]
    print(f'{d["impl"]:9s} {d["dtype"]}: {s:.2f} s/step ({n} images, CFG), decode {dec:.1f} s, '
          f'{n / (e + 50 * s + dec) * 3600:.1f} images/hour at 50 steps')
PY
