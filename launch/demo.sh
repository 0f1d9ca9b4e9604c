#!/usr/bin/env bash
# demo.sh — install what is missing, build in release mode, and run the main job, HG-DPO training on MPI ranks,
# end to end on this machine.
#
# Usage: launch/demo.sh [NP]     (NP ranks on this machine, default 2)
#
# Until the embedded default world exists (the toy world issue), the job runs on what can be made here: a random-weight
# Stable Diffusion pipeline of the `tiny` shape and a triplet dataset of random images. It checks the MPI collectives,
# encodes the dataset into a latent cache on the ranks (VAE + CLIP text encoder), trains 8 steps (global batch 8) with
# a checkpoint every 2, resumes from the last one, and shows the LoRA it wrote.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
np=${1:-2}

"$root/launch/install-deps.sh"
[[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
echo "== swift build -c release"
swift build -c release
export HGDPO_BIN="$root/.build/release/hgdpo"
work=${HGDPO_DEMO_DIR:-$root/runs/demo}
rm -rf "$work"
mkdir -p "$work"

echo "== $np ranks: hgdpo probe mpi"
"$root/launch/local.sh" --timeout 300 "$np" hgdpo probe mpi

echo "== a random-weight pipeline (tiny: U-Net, CLIP text encoder and tokenizer, VAE) and 64 triplets of random 96x80 images"
"$HGDPO_BIN" make-model --shape tiny --out "$work/model"
"$HGDPO_BIN" make-triplets --count 64 --width 96 --height 80 --out "$work/triplets"

echo "== $np ranks: hgdpo encode (resize and crop to 64x64, VAE latents 4x8x8, prompt embeddings 77x32)"
"$root/launch/local.sh" --timeout 600 "$np" hgdpo encode --model "$work/model" --data "$work/triplets" --out "$work/cache" \
  --resolution 64 --shard-size 16

echo "== $np ranks: hgdpo train (6 steps, then resume to 8)"
train=(hgdpo train --model "$work/model" --data "$work/cache" --out "$work/run" --global-batch 8 --local-batch 2
       --lr 1e-4 --checkpoint-every 2 --seed 1)
"$root/launch/local.sh" --timeout 900 "$np" "${train[@]}" --max-steps 6
"$root/launch/local.sh" --timeout 900 "$np" "${train[@]}" --max-steps 8 --resume auto

echo "== the trained LoRA, in the format diffusers loads (load_lora_weights)"
"$HGDPO_BIN" inspect "$work/run/step-000008/pytorch_lora_weights.safetensors" | head -c 300; echo " …"
tail -n 2 "$work/run/metrics.jsonl"
echo "demo: done — run folder $work/run (metrics.jsonl, config.json, step-*/)"
