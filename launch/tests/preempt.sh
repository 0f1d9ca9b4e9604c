#!/usr/bin/env bash
# preempt.sh — preemption of a multi-rank run started with launch/local.sh: SIGTERM (scancel, preemption) and
# SIGUSR1 (Slurm's --signal before the time limit) sent to the launcher mid-run. Every rank must finish its
# step and exit 0 (mpirun's status 0), rank 0 must write a checkpoint at the step reached, and `--resume auto`
# must continue to a final LoRA and optimizer state equal, bit for bit, to an uninterrupted run's; the metrics
# log then has every step exactly once. (Resuming on another rank count continues too, equal up to rounding
# in the gradient sums' order: see TrainerTests.testResumeContinuesExactly.)
#
# Usage: launch/tests/preempt.sh      (OpenMPI; ~30 s)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init preempt
t_need_cmd mpirun

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
steps=8
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --max-steps "$steps" --checkpoint-every 100
  --collective-timeout 60)
final() { echo "$1/step-$(printf %06d "$steps")/$2"; }

t_job 150 "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$T/full" >"$T/full.log" 2>&1
if ((T_RC == 0)) && [[ -s "$(final "$T/full" pytorch_lora_weights.safetensors)" ]]; then
  t_pass "uninterrupted run: 2 ranks, $steps steps (${T_SECONDS}s)"
else
  t_fail "uninterrupted run" "exit $T_RC: $(tail -n 5 "$T/full.log")"
  t_finish
fi

for sig in TERM USR1; do
  out="$T/run-$sig"
  resume_ranks=2
  t_bg 150 "$out.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$out"
  # Signal the launcher once two steps are logged (the run is then between step 2 and the end).
  if ! t_wait_for 100 t_has_lines "$out/metrics.jsonl" 2; then
    t_fail "SIG$sig: the run did not reach step 2" "$(tail -n 5 "$out.log")"
    continue
  fi
  launcher="$(t_bg_child)"
  t0=$(date +%s.%N)
  kill -s "$sig" "$launcher"
  t_wait_bg
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  stopped="$(t_latest_step "$out" || true)"
  if ((T_RC == 0)) && grep -q "stop signal received: checkpoint at step $stopped written" "$out.log"; then
    t_pass "SIG$sig to launch/local.sh: every rank exited 0 ${took}s later, checkpoint at step $stopped"
  else
    t_fail "SIG$sig to launch/local.sh: clean stop" "exit $T_RC, latest step '$stopped': $(tail -n 6 "$out.log")"
    continue
  fi
  if [[ -n "$stopped" ]] && ((stopped >= 2 && stopped < steps)); then
    t_pass "SIG$sig: stopped mid-run (step $stopped of $steps)"
  else
    t_fail "SIG$sig: stopped mid-run" "latest step '$stopped' (of $steps)"
    continue
  fi
  t_job 150 "$T_ROOT/launch/local.sh" --timeout 120 "$resume_ranks" "${train[@]}" --out "$out" --resume auto >"$out.resume.log" 2>&1
  if ((T_RC == 0)) && grep -q "resumed from .*step-$(printf %06d "$stopped")" "$out.resume.log"; then
    t_pass "SIG$sig: --resume auto on $resume_ranks rank(s) continued from step $stopped to $steps"
  else
    t_fail "SIG$sig: --resume auto" "exit $T_RC: $(tail -n 5 "$out.resume.log")"
    continue
  fi
  for f in pytorch_lora_weights.safetensors optimizer.safetensors; do
    if t_same_lora "$(final "$out" "$f")" "$(final "$T/full" "$f")"; then
      t_pass "SIG$sig: final $f bit-identical to the uninterrupted run's"
    else
      t_fail "SIG$sig: final $f differs from the uninterrupted run's"
    fi
  done
  logged="$(grep -o '"step":[0-9]*' "$out/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')"
  if [[ "$logged" == "$(seq -s ' ' 1 "$steps") " ]]; then
    t_pass "SIG$sig: metrics.jsonl has steps 1..$steps once each"
  else
    t_fail "SIG$sig: metrics.jsonl steps" "$logged"
  fi
done
t_finish
