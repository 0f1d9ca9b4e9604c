#!/usr/bin/env bash
# build-model.sh — rebuild the toy world's SFT model shipped in models/toy (docs/toyworld.md, "The SFT model").
#
# Usage: launch/toy/build-model.sh [--out DIR] [--steps N] [--batch B] [--lr LR] [--count N] [--ranks R] [--seed S]
#
#   1. hgdpo world make-model   the toy target pipeline: pixel space (no vae/), a tiny CLIP text encoder with frozen
#                               random weights and a tokenizer covering the grammar, a 0.99 M-parameter random U-Net
#                               that predicts v (prediction_type v_prediction)
#   2. hgdpo world dataset      rendered SFT images (the winners), 30 % of them with a random defect, as a real SFT
#      hgdpo encode             model learns from imperfect web data; encoded into a latent cache (pixel space)
#   3. hgdpo train --train unet --objective sft   every U-Net weight, v-prediction MSE on the winners (uniform t), AdamW,
#                               linear warm-up then cosine decay, on R MPI ranks (launch/local.sh)
#   4. export                   the pipeline of step 1 with the trained unet/ folder of the last checkpoint, and the
#                               run's config.json and metrics.jsonl under DIR/sft/ (how it was made)
#   --out DIR    where the pipeline goes (default models/toy); the work files go to runs/toy-build (emptied first)
#   --steps N    optimizer steps (default 1500), --batch B images per step (default 64), --lr LR (default 1e-3)
#   --count N    SFT images rendered (default 16384)
#   --ranks R    MPI ranks (default: the number of cores, at most 4)
#   --seed S     seed of the model init, the data and training (default 0)
# Cost: steps 1–2 take seconds; step 3 is ≈ 15 CPU-ms per image (forward + backward of every weight): the defaults
# (1500 × 64 = 96,000 images) took 781 s wall, 24 m 47 s user + 16 s sys CPU on 2 free cores (AMD EPYC, 2026-12-07), and rebuilt
# the shipped models/toy (unet/, text encoder, tokenizer, scheduler) bit for bit.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out="$root/models/toy" steps=1500 batch=64 lr=1e-3 count=16384 seed=0
cores=$(nproc)
ranks=$((cores < 4 ? cores : 4))
while (($#)); do
  case "$1" in
    --out) out=$2; shift ;;
    --steps) steps=$2; shift ;;
    --batch) batch=$2; shift ;;
    --lr) lr=$2; shift ;;
    --count) count=$2; shift ;;
    --ranks) ranks=$2; shift ;;
    --seed) seed=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-model.sh: unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
for v in steps batch count ranks; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "build-model.sh: --$v takes a positive whole number, got '${!v}'" >&2; exit 2; }
done
[[ $seed =~ ^[0-9]+$ ]] || { echo "build-model.sh: --seed takes a whole number, got '$seed'" >&2; exit 2; }
((batch % ranks == 0)) || { echo "build-model.sh: --batch $batch is not a multiple of --ranks $ranks" >&2; exit 2; }
export HGDPO_BIN=${HGDPO_BIN:-$root/.build/release/hgdpo}
hgdpo=$HGDPO_BIN
[[ -x $hgdpo ]] || { echo "build-model.sh: $hgdpo not found (swift build -c release)" >&2; exit 2; }
work="$root/runs/toy-build"
rm -rf "$work"
mkdir -p "$work"
start=$SECONDS

echo "== [1/4] hgdpo world make-model"
"$hgdpo" world make-model --out "$work/model" --seed "$seed"
echo "== [2/4] hgdpo world dataset: $count triplets, defect rate 0.3; hgdpo encode"
"$hgdpo" world dataset --count "$count" --defect-rate 0.3 --seed "$seed" --out "$work/sft-data"
"$hgdpo" encode --model "$work/model" --data "$work/sft-data" --out "$work/sft-cache" --resolution 32 | tail -n 1
echo "== [3/4] hgdpo train --train unet --objective sft: $steps steps × $batch images on $ranks ranks, lr $lr"
"$root/launch/local.sh" "$ranks" hgdpo train --train unet --objective sft --model "$work/model" --data "$work/sft-cache" \
  --out "$work/sft-run" --global-batch "$batch" --local-batch $((batch / ranks)) --max-steps "$steps" --lr "$lr" \
  --warmup-steps 30 --lr-schedule cosine --optimizer adamw --seed "$seed" --checkpoint-every "$steps" --log-every 20
echo "== [4/4] export to $out"
last="$work/sft-run/$(printf 'step-%06d' "$steps")"
rm -rf "$out"
mkdir -p "$out/sft"
cp -r "$work/model/model_index.json" "$work/model/scheduler" "$work/model/text_encoder" "$work/model/tokenizer" "$out/"
cp -r "$last/unet" "$out/unet"
cp "$work/sft-run/config.json" "$work/sft-run/metrics.jsonl" "$out/sft/"
echo "build-model.sh: done in $((SECONDS - start)) s: $out ($(du -sh "$out" | cut -f1))"
