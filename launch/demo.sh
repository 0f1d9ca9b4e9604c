#!/usr/bin/env bash
# demo.sh — HG-DPO end to end on the toy human world (docs/toyworld.md), with the real commands, in minutes on a CPU.
#
# Usage: launch/demo.sh [--full] [--seed S] [--out DIR] [--steps N] [--model DIR] [--no-build]
#
#   On a fresh Debian 12 it installs what is missing (launch/install-deps.sh), builds in release mode, then, with the
#   shipped toy SFT model models/toy (launch/toy/build-model.sh rebuilds it):
#     1. prompts      hgdpo world prompts: 256 training prompts, 64 held-out prompts (descriptions never trained on)
#     2. pool         8 images per prompt (DPM-Solver++ 20 steps, no CFG), sharded over the ranks
#     3. score        the toy-human preference scorer (anatomy, pose, prompt attributes; from the pixels alone)
#     4. select       winner = best, loser = worst of each prompt's pool
#     5. encode       the triplets into a latent cache (pixel space: the image in [-1, 1])
#     6. HG-DPO       LoRA, 4 MPI ranks × local batch 4 = global batch 16, lr 3e-3, Diffusion-DPO (β 2500) +
#                     statistic matching (λ_stat 1e4 over a 20-step sampler step, --stat-inference-steps 20: for this
#                     v-prediction model the weight SD 1.5's default of 50 has; docs/calibration.md)
#     7. DPO          the same without statistic matching (--objective dpo), the comparison
#     8. eval         both LoRAs against the SFT model on the held-out prompts: toy-human win rates with 95 %
#                     intervals, HSV colour shift, latent channel statistics, grids
#     9. report       one HTML page (training curves of both runs' metrics, both evaluations); its path is printed
#   --seed S    seed of the prompts, the pool, training and evaluation (default 0): the same seed gives the same tables
#   --out DIR   work folder (default runs/demo; emptied first)
#   --steps N   training steps of each run (default 300)
#   --model DIR the SFT pipeline (default models/toy)
#   --no-build  use the existing .build/release/hgdpo (or $HGDPO_BIN)
#   --full      then the paper's ablations (Tables 2, 3, 5 and the LoRA scale of its appendix A.3), each a real run:
#               one pool of 20 images per prompt, selected as N = 2/5/10/20 (the first N images of each prompt) and
#               with loser rank l = 2/5/10/20 at N = 20; DPO on each, DPO with β ×4 and ×20, HG-DPO (statistic
#               matching), LAN at sampling time, HG-DPO at LoRA scales 0.25/0.5/0.75/1; 10 training runs, 14 evals.
#               Tables and the time of every part: OUT/ablations.md (also printed). Time: 20 min wall, 38 CPU-min
#               for the demo and the ablations on 2 cores (measured: 1193 s; each training ≈ 57 s, each evaluation
#               ≈ 11 s, the 20-image pool 206 s).
#   HGDPO_DEMO_TRAIN_PROMPTS, HGDPO_DEMO_HELDOUT_PROMPTS  training and held-out prompts (default 256 and 64)
#   HGDPO_DEMO_RANKS  sampling/scoring ranks (default: the number of cores, at most 4)
# Budget: ≤ 10 minutes wall on 2 free cores, the release build included (docs/toyworld.md has the timings).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seed=0 work="$root/runs/demo" steps=300 build=1 model="$root/models/toy" full=0
while (($#)); do
  case "$1" in
    --seed) seed=$2; shift ;;
    --out) work=$2; shift ;;
    --steps) steps=$2; shift ;;
    --model) model=$2; shift ;;
    --no-build) build=0 ;;
    --full) full=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "demo.sh: unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $seed =~ ^[0-9]+$ && $steps =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: --seed and --steps take whole numbers" >&2; exit 2; }
[[ -f $model/unet/diffusion_pytorch_model.safetensors ]] || { echo "demo.sh: no U-Net weights in $model/unet (launch/toy/build-model.sh builds models/toy)" >&2; exit 2; }
model=$(cd "$model" && pwd)

start=$SECONDS
((full)) && echo "demo.sh --full: the demo, then the paper's ablations (10 training runs, 14 evaluations): ≈ 38 CPU-minutes, ≈ 20 minutes on 2 free cores (twice or more on a loaded machine; the trainings scale with --steps)"
stage() { printf '\n== [%s] %s  (%d s)\n' "$1" "$2" $((SECONDS - start)); }

if ((build)); then
  stage 0/9 "install what is missing, build in release mode"
  "$root/launch/install-deps.sh"
  [[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
  swift build -c release
fi
export HGDPO_BIN=${HGDPO_BIN:-$root/.build/release/hgdpo}
hgdpo=$HGDPO_BIN
cores=$(nproc)
ranks=${HGDPO_DEMO_RANKS:-$((cores < 4 ? cores : 4))}
run() { "$root/launch/local.sh" "$@"; }

rm -rf "$work"
mkdir -p "$work"
sample=(--steps 20 --scheduler dpmsolver++ --guidance 1 --height 32 --width 32)

n_train=${HGDPO_DEMO_TRAIN_PROMPTS:-256} n_heldout=${HGDPO_DEMO_HELDOUT_PROMPTS:-64}
stage 1/9 "prompts: $n_train training, $n_heldout held-out"
"$hgdpo" world prompts --count "$n_train" --split train --seed "$seed" --out "$work/train-prompts.txt"
"$hgdpo" world prompts --count "$n_heldout" --split heldout --seed "$seed" --out "$work/heldout-prompts.txt"

stage 2/9 "pool: $n_train prompts × 8 images on $ranks ranks"
run "$ranks" hgdpo pool --model "$model" --prompts "$work/train-prompts.txt" --images-per-prompt 8 --batch 8 \
  "${sample[@]}" --seed "$seed" --out "$work/pool"

stage 3/9 "score: toy-human"
run "$ranks" hgdpo score --pool "$work/pool" --scorer toy=toy-human

stage 4/9 "select: best and worst of each prompt"
"$hgdpo" select --pool "$work/pool" --by toy --out "$work/triplets"

stage 5/9 "encode"
"$hgdpo" encode --model "$model" --data "$work/triplets" --out "$work/cache" --resolution 32

train=(hgdpo train --model "$model" --data "$work/cache" --global-batch 16 --local-batch 4 --max-steps "$steps"
       --lr 3e-3 --lora-rank 8 --lora-alpha 8 --checkpoint-every "$steps" --seed "$seed" --log-every 10)
stage 6/9 "HG-DPO: 4 ranks × local batch 4 = global batch 16, $steps steps"
run 4 "${train[@]}" --objective hgdpo --stat-inference-steps 20 --out "$work/hgdpo"
stage 7/9 "DPO without statistic matching (the comparison): $steps steps"
run 4 "${train[@]}" --objective dpo --out "$work/dpo"

stage 8/9 "eval on the held-out prompts against the SFT model"
last=$(printf 'step-%06d' "$steps")
for kind in hgdpo dpo; do
  echo "-- $kind"
  run "$ranks" hgdpo eval --model "$model" --lora "$work/$kind/$last/pytorch_lora_weights.safetensors" --lora-scale 1 \
    --prompts "$work/heldout-prompts.txt" --images-per-prompt 4 --batch 4 "${sample[@]}" --seed "$((seed + 1000))" \
    --scorer toy=toy-human --bootstrap-resamples 2000 --out "$work/eval-$kind"
done

stage 9/9 "report"
"$hgdpo" report "$work/hgdpo" --eval "$work/eval-hgdpo" --eval "$work/eval-dpo" --out "$work/report.html"
for kind in hgdpo dpo; do
  echo "-- $kind vs SFT ($work/eval-$kind/report.md)"
  sed -n '1,40p' "$work/eval-$kind/report.md"
done
((full)) && source "$root/launch/demo-ablations.sh"
printf '\ndemo: done in %d s. Report: %s\n' $((SECONDS - start)) "$work/report.html"
