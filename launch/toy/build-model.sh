#!/usr/bin/env bash
# build-model.sh — rebuild the toy world's SFT model shipped in models/toy (docs/toyworld.md, "The SFT model").
#
# Usage: launch/toy/build-model.sh [--out DIR] [--steps N] [--batch B] [--seed S]
#
#   1. hgdpo world make-model   the toy target pipeline: pixel space (no vae/), a tiny CLIP text encoder with frozen
#                               random weights and a tokenizer covering the grammar, a 0.99 M-parameter U-Net
#   2. hgdpo world dataset      4096 rendered SFT images (the winners), 30 % of them with a random defect, as a real
#                               SFT model learns from imperfect web data
#   3. full-parameter SFT of the U-Net (every weight; noise MSE on the winners, as `hgdpo train --objective sft`)
#   --out DIR   where the pipeline goes (default models/toy); the work files go to runs/toy-build
#   --steps N   optimizer steps (default 600), --batch B images per step (default 64), --seed S (default 0)
#
# STOPGAP, step 3: the issue's trainer is `hgdpo train --train unet --objective sft` (issue 15 item 3, being built on
# branch framework). It was not in main when the shipped model was built, and hgdpo's LoRA-only SFT cannot train a
# random U-Net (LoRA reaches only the attention projections, at 8×8 and in the middle block). So step 3 runs
# launch/toy/train_sft_torch.py, the same objective with diffusers' UNet2DConditionModel and PyTorch's AdamW, in the
# shared venv (HGDPO_PYTHON, default /work/.venv-torch/bin/python: torch, diffusers, transformers, safetensors).
# The shipped model is therefore NOT yet the issue's hgdpo-trained full-parameter SFT model. Once `--train unet`
# lands, step 3 becomes:
#   hgdpo encode --model DIR --data runs/toy-build/sft-data --out runs/toy-build/sft-cache --resolution 32
#   launch/local.sh 4 hgdpo train --train unet --objective sft --model DIR --data runs/toy-build/sft-cache …
# Cost: steps 1–2 take seconds; step 3 ≈ 0.8 CPU-s per step of 32 images (PyTorch, 1 thread), so the default
# 600 steps × 64 images ≈ 16 CPU-min. The copy in models/toy was cut short (models/toy/README.md says how).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out="$root/models/toy" steps=600 batch=64 seed=0
while (($#)); do
  case "$1" in
    --out) out=$2; shift ;;
    --steps) steps=$2; shift ;;
    --batch) batch=$2; shift ;;
    --seed) seed=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-model.sh: unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
hgdpo=${HGDPO_BIN:-$root/.build/release/hgdpo}
python=${HGDPO_PYTHON:-/work/.venv-torch/bin/python}
[[ -x $hgdpo ]] || { echo "build-model.sh: $hgdpo not found (swift build -c release)" >&2; exit 2; }
"$python" -c 'import torch, diffusers, transformers' 2>/dev/null ||
  { echo "build-model.sh: $python lacks torch/diffusers/transformers (set HGDPO_PYTHON)" >&2; exit 2; }
work="$root/runs/toy-build"
rm -rf "$work"
mkdir -p "$work"

echo "== [1/3] hgdpo world make-model"
"$hgdpo" world make-model --out "$work/model" --seed "$seed"
echo "== [2/3] hgdpo world dataset: 4096 triplets, defect rate 0.3"
"$hgdpo" world dataset --count 4096 --defect-rate 0.3 --seed "$seed" --out "$work/sft-data"
echo "== [3/3] full-parameter SFT (launch/toy/train_sft_torch.py, the stopgap above): $steps steps × $batch images"
"$python" "$root/launch/toy/train_sft_torch.py" --model "$work/model" --data "$work/sft-data" --out "$work/sft-model" \
  --steps "$steps" --batch "$batch" --lr 1e-3 --seed "$seed"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$work/sft-model" "$out"
echo "build-model.sh: done, $out ($(du -sh "$out" | cut -f1))"
