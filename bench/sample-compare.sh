#!/usr/bin/env bash
# sample-compare.sh — text-to-image time per image, hgdpo sample vs diffusers' StableDiffusionPipeline
# (bench/sample_torch.py), on the same random-weight SD 1.5-shaped pipeline folder, same thread count, one after the
# other: one image, CFG 5, DPM-Solver++, the given steps; prints both JSON lines and the seconds per image measured and
# extrapolated to 50 steps (encode + decode + 50 × the measured seconds per step).
#
# Usage: bench/sample-compare.sh [STEPS [SIZE [THREADS]]]      (default: 5 512 <cores>)
#        HGDPO_BENCH_MODEL=DIR (default /tmp/hgdpo-bench-sd15; made by sample_torch.py --make when missing, ~4.3 GB)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
steps=${1:-5}; size=${2:-512}; threads=${3:-$(nproc)}
model=${HGDPO_BENCH_MODEL:-/tmp/hgdpo-bench-sd15}
py="$root/.venv-fixtures/bin/python"
[[ -x "$py" ]] || { bash "$root/Tests/parity/setup_venv.sh"; py="$root/.venv-fixtures/bin/python"; }
# The launchers' OpenBLAS settings (OPENBLAS_CORETYPE on AVX-512 CPUs, OPENBLAS_THREAD_TIMEOUT); threads are set below.
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
[[ -f "$model/model_index.json" ]] || "$py" "$root/bench/sample_torch.py" --model "$model" --make
(cd "$root" && swift build -c release --product hgdpo >/dev/null)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
uptime >&2
ours=$(HGDPO_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$root/.build/release/hgdpo" sample --model "$model" \
  --prompt "a photo of a young woman, bust shot, smiling" --steps "$steps" --height "$size" --width "$size" \
  --guidance 5 --scheduler dpmsolver++ --threads "$threads" --out "$out/ours" 2>/dev/null | tail -n 1)
uptime >&2
theirs=$(OMP_NUM_THREADS=$threads "$py" "$root/bench/sample_torch.py" --model "$model" --steps "$steps" --size "$size" \
  --threads "$threads" 2>/dev/null | tail -n 1)
uptime >&2
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" "$steps" <<'PY'
import json, sys
a, b, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
def per_image(d):
    measured = d["encode_s"] + d["denoise_s"] + d["decode_s"]
    return measured, d["encode_s"] + d["decode_s"] + 50 * d["denoise_s"] / steps
(ma, xa), (mb, xb) = per_image(a), per_image(b)
print(f"s/image at {steps} steps: hgdpo {ma:.1f}, diffusers {mb:.1f}; extrapolated to 50 steps: hgdpo {xa:.0f}, "
      f"diffusers {xb:.0f} (diffusers/hgdpo {xb / xa:.2f}x); per step hgdpo {a['denoise_s'] / steps:.2f} s, "
      f"diffusers {b['per_step_s']:.2f} s; decode hgdpo {a['decode_s']:.1f} s, diffusers {b['decode_s']:.1f} s")
PY
