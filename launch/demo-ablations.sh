# demo-ablations.sh — the ablations of `launch/demo.sh --full` (sourced by demo.sh after its own stages; not run alone).
#
# Uses demo.sh's settings: $work, $seed, $steps, $model, $ranks, $hgdpo, the sampling options "${sample[@]}" and the
# training command "${train[@]}" (global batch 16 on 4 ranks, the same seed, lr and LoRA as the demo's runs), and
# the demo's prompts ($work/train-prompts.txt, $work/heldout-prompts.txt). Every number in the tables is measured here:
#   A1 pool       one pool of 20 images per training prompt, scored by toy-human
#   A2 select     N = 2/5/10/20 (hgdpo select --pool-size N: the first N images of each prompt's pool, best vs worst)
#                 and l = 2/5/10 at N = 20 (--loser-rank l: the l-th best as the loser); encode each
#   A3 train      DPO on each of the 7 datasets (the paper's N-N and N-20-L-l models), DPO with β ×4 and ×20 on N-20,
#                 HG-DPO (statistic matching, as the demo's) on N-20: 10 runs
#   A4 eval       each LoRA against the SFT model on the held-out prompts (as the demo's evals; the baseline images are
#                 sampled once and hard-linked into the other evals), N-20 with LAN, HG-DPO at LoRA scales
#                 0.25 / 0.5 / 0.75 (1 is the row above): 14 evals
#   A5 tables     hgdpo report table: Tables 3, 5, 2 shapes and the LoRA scale, into $work/ablations.md
ab="$work/ablations"
mkdir -p "$ab"
timing=()
# CPU seconds of the finished children (every rank: mpirun waits for them), from the shell's own `times` (not in a
# pipe or $(…): a subshell has its own children).
cpu_s() {
  times > "$ab/.times"
  cpu=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.0f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$ab/.times")
}
part() { part_name=$1 part_wall=$SECONDS; cpu_s; part_cpu=$cpu; }
part_done() { cpu_s; timing+=("| $part_name | $((SECONDS - part_wall)) | $((cpu - part_cpu)) |"); }
ab_start=$SECONDS
cpu_s
ab_cpu=$cpu

stage A1/5 "ablations: pool of 20 images per training prompt, scored"
part "pool: $(wc -l < "$work/train-prompts.txt") prompts × 20 images, toy-human scores"
run "$ranks" hgdpo pool --model "$model" --prompts "$work/train-prompts.txt" --images-per-prompt 20 --batch 10 \
  "${sample[@]}" --seed "$seed" --out "$ab/pool"
run "$ranks" hgdpo score --pool "$ab/pool" --scorer toy=toy-human
part_done

stage A2/5 "ablations: select N = 2/5/10/20 and loser rank l = 2/5/10 from the one pool, encode"
# name | hgdpo select options
datasets=("N-2|--pool-size 2" "N-5|--pool-size 5" "N-10|--pool-size 10" "N-20|--pool-size 20"
          "N-20-L-2|--pool-size 20 --loser-rank 2" "N-20-L-5|--pool-size 20 --loser-rank 5"
          "N-20-L-10|--pool-size 20 --loser-rank 10")
part "select and encode: 7 datasets"
data_rows=()
for d in "${datasets[@]}"; do
  name=${d%%|*} opts=${d#*|}
  # shellcheck disable=SC2086  # $opts is a list of options
  "$hgdpo" select --pool "$ab/pool" --by toy $opts --out "$ab/data-$name" > /dev/null
  field() { sed -n "s/^ *\"$1\" *: *\\([^,]*\\),*\$/\\1/p" "$ab/data-$name/select.json"; }
  data_rows+=("| $name | \`$opts\` | $(field triplets) | $(field skipped_ties) | $(printf '%.3f' "$(field mean_margin)") |")
  "$hgdpo" encode --model "$model" --data "$ab/data-$name" --out "$ab/cache-$name" --resolution 32 > /dev/null
done
part_done

stage A3/5 "ablations: 10 training runs of $steps steps (global batch 16 on 4 ranks)"
# name | dataset | train options (after the demo's "${train[@]}", whose --data is replaced by the dataset's cache)
runs=("N-2|N-2|--objective dpo" "N-5|N-5|--objective dpo" "N-10|N-10|--objective dpo" "N-20|N-20|--objective dpo"
      "N-20-L-2|N-20-L-2|--objective dpo" "N-20-L-5|N-20-L-5|--objective dpo" "N-20-L-10|N-20-L-10|--objective dpo"
      "N-20 (β×4)|N-20|--objective dpo --beta 10000" "N-20 (β×20)|N-20|--objective dpo --beta 50000"
      "N-20-SML (HG-DPO)|N-20|--objective hgdpo --stat-inference-steps 20")
slug() { tr -c 'A-Za-z0-9\n-' '_' <<<"$1"; }
# The demo's training command with its --data left out (each run names its dataset's cache).
ab_train=()
for ((i = 0; i < ${#train[@]}; i++)); do
  if [[ ${train[i]} == --data ]]; then i=$((i + 1)); else ab_train+=("${train[i]}"); fi
done
last=$(printf 'step-%06d' "$steps")
for r in "${runs[@]}"; do
  IFS='|' read -r name data opts <<<"$r"
  echo "-- train $name: $opts on $data"
  part "train $name"
  # shellcheck disable=SC2086
  run 4 "${ab_train[@]}" --data "$ab/cache-$data" $opts --out "$ab/run-$(slug "$name")" > "$ab/run-$(slug "$name").log"
  tail -n 1 "$ab/run-$(slug "$name").log"
  part_done
done

stage A4/5 "ablations: 14 evaluations against the SFT model on the held-out prompts"
# name | run | eval options
# (the demo's evals sample at LoRA scale 1; so do these, but for the α rows)
evals=("N-2|N-2|" "N-5|N-5|" "N-10|N-10|" "N-20|N-20|" "N-20-L-2|N-20-L-2|" "N-20-L-5|N-20-L-5|" "N-20-L-10|N-20-L-10|"
       "N-20 (β×4)|N-20 (β×4)|" "N-20 (β×20)|N-20 (β×20)|" "N-20-SML (HG-DPO)|N-20-SML (HG-DPO)|"
       "N-20-LAN|N-20|--lan" "HG-DPO α 0.25|N-20-SML (HG-DPO)|0.25" "HG-DPO α 0.5|N-20-SML (HG-DPO)|0.5"
       "HG-DPO α 0.75|N-20-SML (HG-DPO)|0.75")
first_eval=""
for e in "${evals[@]}"; do
  IFS='|' read -r name runname opts <<<"$e"
  [[ $opts == [0-9]* ]] && opts="--lora-scale $opts" || opts="--lora-scale 1 $opts"
  out="$ab/eval-$(slug "$name")"
  part "eval $name"
  if [[ -n $first_eval ]]; then   # the SFT side is the same images in every eval (same model, prompts, seeds)
    mkdir -p "$out/baseline" && ln "$first_eval"/baseline/*.png "$out/baseline/"
  fi
  # shellcheck disable=SC2086
  run "$ranks" hgdpo eval --model "$model" --lora "$ab/run-$(slug "$runname")/$last/pytorch_lora_weights.safetensors" \
    $opts --prompts "$work/heldout-prompts.txt" --images-per-prompt 4 --batch 4 "${sample[@]}" \
    --seed "$((seed + 1000))" --scorer toy=toy-human --bootstrap-resamples 2000 --out "$out" > "$out.log"
  sed -n 's/.*"win_rate":\([0-9.]*\).*/  toy-human win rate \1/p' "$out.log"
  first_eval=${first_eval:-$out}
  part_done
done

stage A5/5 "ablations: tables"
table() {  # title layout label…
  local title=$1 layout=$2 args=() l
  shift 2
  for l in "$@"; do args+=(--eval "$l=$ab/eval-$(slug "$l")"); done
  "$hgdpo" report table --title "$title" --layout "$layout" "${args[@]}"
  echo
}
{
  echo "# The paper's ablations on the toy world (launch/demo.sh --full)"
  echo
  echo "Seed $seed; $(wc -l < "$work/train-prompts.txt") training prompts, one pool of 20 images each (\`${sample[*]}\`);"
  echo "every model is a LoRA (r8) trained $steps steps at global batch 16 on 4 ranks from the SFT model \`$model\`,"
  echo "evaluated against it on $(wc -l < "$work/heldout-prompts.txt") held-out prompts × 4 images with the toy-human scorer."
  echo "All runs have the same seed (noise, timesteps, batches): rows differ by their data or objective only. One run per"
  echo "row: the intervals are over prompts, not over training seeds."
  echo
  echo "### The datasets (hgdpo select on the one pool)"
  echo
  echo "| dataset | select options | triplets | skipped ties | mean winner − loser score |"
  echo "| :--- | :--- | :---: | :---: | :---: |"
  printf '%s\n' "${data_rows[@]}"
  echo
  table "Pool size N (paper Table 3; DPO; LAN at sampling; SML = statistic matching, HG-DPO)" winrate \
    N-2 N-5 N-10 N-20 N-20-LAN "N-20-SML (HG-DPO)"
  table "Loser rank l at N = 20 (paper Table 5; DPO; N-20-L-20 is N-20)" winrate N-20-L-2 N-20-L-5 N-20-L-10 N-20
  table "Colour shift (paper Table 2)" color N-2 N-5 N-10 N-20 "N-20 (β×4)" "N-20 (β×20)" N-20-LAN "N-20-SML (HG-DPO)"
  table "Statistic matching against a larger β (paper Tables 1, 2: DPO β ×4, ×20 vs LAN and SML)" winrate \
    N-20 "N-20 (β×4)" "N-20 (β×20)" N-20-LAN "N-20-SML (HG-DPO)"
  table "LoRA scale α of HG-DPO at sampling (paper appendix A.3)" winrate \
    "HG-DPO α 0.25" "HG-DPO α 0.5" "HG-DPO α 0.75" "N-20-SML (HG-DPO)"
  echo "(α 1 is the N-20-SML row.)"
  echo
  echo "### Time of each part"
  echo
  echo "| part | wall s | CPU s (user + sys, all ranks) |"
  echo "| :--- | :---: | :---: |"
  printf '%s\n' "${timing[@]}"
  cpu_s
  echo "| **all ablations** | **$((SECONDS - ab_start))** | **$((cpu - ab_cpu))** |"
  echo
  echo "$(nproc) cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} > "$ab/ablations.md.part"
mv "$ab/ablations.md.part" "$work/ablations.md"
cat "$work/ablations.md"
printf '\nablations: %s\n' "$work/ablations.md"
