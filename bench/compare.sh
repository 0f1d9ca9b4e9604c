#!/usr/bin/env bash
# compare.sh — the HG-DPO training step, hgdpo vs the PyTorch reference (../shared/bench/torch_dpo_step.py: diffusers
# + peft), on this machine with the same thread count, one after the other; prints both JSON lines and the ratio.
#
# Usage: bench/compare.sh [CONFIG [LATENT [PAIRS [STEPS [THREADS]]]]]     (default: small 32 1 3 <cores>)
#        BF16=1 bench/compare.sh …   both in bf16 mixed precision (hgdpo --mixed-precision bf16, PyTorch --bf16)
# Installs the reference into .venv-fixtures (torch, diffusers, peft: a large download) when it is missing;
# HGDPO_TORCH_PYTHON=PATH uses that interpreter instead; HGDPO_REFERENCE_BENCH=DIR the reference scripts elsewhere.
# Also prints the kernel paths hgdpo ran (`kernels` of its JSON: attention per head size, convolution, GEMM, bf16 GEMM),
# the sgemm peak on the same threads (bench/sgemm_peak.c, 4096³, best and median of 5) and each step's GFLOPS as a
# share of that peak (a step ≈ 6 U-Net forwards of one sample per pair: ../shared/bench/torch_flops.py, BENCHMARKS.md);
# with BF16=1 also as a share of the VDPBF16PS register-only peak (bench/vector_peak.c), the bf16 step's ceiling.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=${1:-small}; latent=${2:-32}; pairs=${3:-1}; steps=${4:-3}; threads=${5:-$(nproc)}
ours_bf16=(); theirs_bf16=()
if [[ "${BF16:-0}" == 1 ]]; then ours_bf16=(--mixed-precision bf16); theirs_bf16=(--bf16); fi
bench_dir="${HGDPO_REFERENCE_BENCH:-$root/../shared/bench}"
[[ -f "$bench_dir/torch_dpo_step.py" ]] || { echo "compare.sh: $bench_dir/torch_dpo_step.py not found" >&2; exit 1; }
py="${HGDPO_TORCH_PYTHON:-$root/.venv-fixtures/bin/python}"
if ! [[ -x "$py" ]] || ! "$py" -c "import torch, diffusers, peft" 2>/dev/null; then
  bash "$root/Tests/parity/setup_venv.sh"
fi
# The launchers' OpenBLAS settings (OPENBLAS_CORETYPE on AVX-512 CPUs, OPENBLAS_THREAD_TIMEOUT); threads are set below.
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
(cd "$root" && swift build -c release >/dev/null)
ours=$(HGDPO_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$root/.build/release/hgdpo" bench step --shape "$config" \
  --latent "$latent" --pairs "$pairs" --steps "$steps" --threads "$threads" ${ours_bf16[@]+"${ours_bf16[@]}"})
theirs=$(cd "$bench_dir" && OMP_NUM_THREADS=$threads "$py" torch_dpo_step.py --config "$config" --latent "$latent" \
  --pairs "$pairs" --steps "$steps" --threads "$threads" ${theirs_bf16[@]+"${theirs_bf16[@]}"} 2>/dev/null | tail -n 1)
echo "$ours"
echo "$theirs"
peak_bin=$(mktemp /tmp/hgdpo-sgemm-peak.XXXXXX)
vector_bin=$(mktemp /tmp/hgdpo-vector-peak.XXXXXX)
trap 'rm -f "$peak_bin" "$vector_bin"' EXIT
gcc -O2 "$root/bench/sgemm_peak.c" -o "$peak_bin" -lopenblas
gcc -O2 "$root/bench/vector_peak.c" -o "$vector_bin" -lpthread
peak=$(OPENBLAS_NUM_THREADS=$threads "$peak_bin" 4096 5)
vector=$("$vector_bin" "$threads" 1)
forward=$(cd "$bench_dir" && "$py" torch_flops.py "$config" "$latent" 2>/dev/null | tail -n 1)
python3 - "$ours" "$theirs" "$peak" "$forward" "$vector" <<'PY'
import json, re, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"speed-up (PyTorch median / hgdpo median): {b['median_step_s'] / a['median_step_s']:.2f}x   "
      f"peak RSS hgdpo {a['peak_rss_mb']:.0f} MB, PyTorch {b['peak_rss_mb']:.0f} MB")
k = a["kernels"]
print("hgdpo kernels: attention " + "; ".join(f"{h.replace('head_dim_', 'heads of ')}: {p}" for h, p in k["attention"].items())
      + f" | convolution: {k['convolution']} | GEMM: {k['gemm']} | bf16 GEMM: {k['bf16_gemm']}")
peak = json.loads(sys.argv[3])
best, median = peak["best_gflops"], peak["median_gflops"]
print(f"sgemm peak (bench/sgemm_peak.c, 4096^3, {peak['threads']} threads, {peak['core']}): best {best:.0f} GFLOPS, median {median:.0f}")
fwd = float(re.search(r"per sample ([\d.]+)", sys.argv[4]).group(1))
gflop = 6 * a["pairs"] * fwd
for name, r in (("hgdpo", a), ("PyTorch", b)):
    g = gflop / r["median_step_s"]
    print(f"{name}: {gflop:.1f} GFLOP per step / {r['median_step_s']:.3f} s = {g:.0f} GFLOPS, {100 * g / best:.0f} % of the sgemm peak")
vec = json.loads(sys.argv[5])
line = f"register-only peaks (bench/vector_peak.c, {vec['threads']} threads): {vec['fma']} {vec['fma_gflops']:.0f} GFLOPS"
if vec["bf16_gflops"] is not None:
    line += f", vdpbf16ps zmm {vec['bf16_gflops']:.0f} GFLOPS"
print(line)
if a.get("bf16") and vec["bf16_gflops"] is not None:
    g = gflop / a["median_step_s"]
    print(f"hgdpo bf16 step: {g:.0f} GFLOPS = {100 * g / vec['bf16_gflops']:.0f} % of the VDPBF16PS peak")
PY
