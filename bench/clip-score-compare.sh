#!/usr/bin/env bash
# clip-score-compare.sh — CLIP scorer throughput at the ViT-H/14 shape (PickScore, HPS v2): `hgdpo score` with
# `clip:DIR` against transformers' CLIPModel + CLIPImageProcessor (bench/clip_score_torch.py) on the same random model
# and the same N 512x512 PNGs of one prompt, same threads, interleaved ROUNDS times. Model loading is excluded on both
# sides (hgdpo's score_s times its scoring loop: PNG decode, preprocessing, both towers).
#
# Usage: bench/clip-score-compare.sh [IMAGES [THREADS [ROUNDS]]]    (default: 8 <cores> 2)
#        HGDPO_BENCH_CLIP=DIR (default /tmp/hgdpo-bench-clip-h14; made on first use, ~3.9 GB), HGDPO_PYTHON
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
images=${1:-8}; threads=${2:-$(nproc)}; rounds=${3:-2}
dir=${HGDPO_BENCH_CLIP:-/tmp/hgdpo-bench-clip-h14}
py=${HGDPO_PYTHON:-/work/.venv-torch/bin/python}
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
[[ -f "$dir/clip/config.json" ]] || "$py" "$root/bench/clip_score_torch.py" --make "$dir" --images "$images"
(cd "$root" && swift build -c release --product hgdpo >/dev/null)
for r in $(seq "$rounds"); do
  rm -rf "$dir/pool/scores.parts" "$dir/pool/scores.jsonl" "$dir/pool/scorers.json"
  echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): hgdpo" >&2
  HGDPO_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$root/.build/release/hgdpo" score --pool "$dir/pool" \
    --scorer "pick=clip:$dir/clip,batch=$images" --threads "$threads" 2>/dev/null | tail -n 1
  echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): transformers" >&2
  OMP_NUM_THREADS=$threads "$py" "$root/bench/clip_score_torch.py" --dir "$dir" --images "$images" --batch "$images" \
    --threads "$threads" 2>/dev/null | tail -n 1
done
