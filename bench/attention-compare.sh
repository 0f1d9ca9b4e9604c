#!/usr/bin/env bash
# attention-compare.sh — the attention kernels alone, on the shapes of the U-Net configs at a latent size: hgdpo's
# two kernels (HGDPO_ATTENTION=blas: OpenBLAS GEMMs around AVX-512 softmax rows; avx512: CKernels/attention_avx512.c)
# and PyTorch's F.scaled_dot_product_attention (bench/attention_torch.py), forward and backward, same thread count.
# Prints a table of minimum times (the VM's timings are noisy; minima are the stable statistic) and torch / ours.
#
# Usage: bench/attention-compare.sh [CONFIG [LATENT [BATCH [THREADS]]]]     (default: small 32 2 <cores>)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=${1:-small}; latent=${2:-32}; batch=${3:-2}; threads=${4:-$(nproc)}
py="$root/.venv-fixtures/bin/python"
if ! [[ -x "$py" ]] || ! "$py" -c "import torch" 2>/dev/null; then bash "$root/Tests/parity/setup_venv.sh"; fi
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
(cd "$root" && swift build -c release --product hgdpo >/dev/null)
case "$config" in
  small) channels="64 128 256"; ctx=77 ;;
  sd15) channels="320 640 1280"; ctx=77 ;;
  tiny) channels="32 64 64"; ctx=77 ;;
  *) echo "attention-compare.sh: config must be tiny, small or sd15" >&2; exit 1 ;;
esac
shapes=(); n=$latent
for c in $channels; do                                  # the three attention levels: self, then cross (77 keys)
  t=$((n * n)); shapes+=("$batch,$t,$t,8,$((c / 8))" "$batch,$t,$ctx,8,$((c / 8))"); n=$((n / 2))
done
theirs=$(OMP_NUM_THREADS=$threads "$py" "$root/bench/attention_torch.py" --threads "$threads" "${shapes[@]}")
printf "%-22s %-23s %-23s %-23s %s\n" "B,tokens,keys,H,d" "blas fwd/bwd ms" "avx512 fwd/bwd ms" "torch fwd/bwd ms" "torch/best (fwd+bwd)"
i=0
while IFS= read -r line; do
  IFS=, read -r B N K H D <<<"${shapes[$i]}"
  run() { HGDPO_ATTENTION=$1 HGDPO_THREADS=$threads "$root/.build/release/hgdpo" bench attention --batch "$B" --tokens "$N" \
            --keys "$K" --heads "$H" --head-dim "$D" --threads "$threads" --iters 9; }
  python3 - "$(run blas)" "$(run avx512)" "$line" "${shapes[$i]}" <<'PY'
import json, sys
b, a, t = (json.loads(x) for x in sys.argv[1:4])
f = lambda d: f"{d['forward_min_ms']:8.2f} / {d['backward_min_ms']:8.2f}"
best = min(b['forward_min_ms'] + b['backward_min_ms'], a['forward_min_ms'] + a['backward_min_ms'])
print(f"{sys.argv[4]:<22} {f(b):<23} {f(a):<23} {f(t):<23} {(t['forward_min_ms'] + t['backward_min_ms']) / best:.2f}x")
PY
  i=$((i + 1))
done <<<"$theirs"
