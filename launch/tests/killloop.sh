#!/usr/bin/env bash
# killloop.sh — kill -9 at random moments, then `--resume auto`, again and again: nothing written is lost or mixed.
#
# A 2-rank `hgdpo train` (launch/local.sh) with a checkpoint every step is killed HGDPO_KILLS times with SIGKILL,
# each time one random rank or the whole job (launcher, mpirun and every rank), at a random moment: during set-up,
# mid-step, or while a checkpoint is being written (HGDPO_FAULT_CHECKPOINT_DELAY stretches each checkpoint write so
# that these kills land inside it). After each kill: every checkpoint on disk verifies and loads (`hgdpo checkpoint
# verify`), no rank is left running, and the next job takes over the dead job's lock and resumes from the newest
# intact checkpoint. At the end a last job finishes the run: its final LoRA and optimizer state must equal an
# uninterrupted run's bit for bit, and metrics.jsonl must hold every step exactly once.
#
# The kill schedule comes from HGDPO_KILL_SEED (bash's RANDOM seeded with it), and each kill is printed as
# "kill K/N: MODE TARGET at +S s (latest step L)", so a failure replays with the same seed (timings on a loaded
# machine can still move a kill by a few hundred ms; the seed fixes the mode, target and delay).
#
# Usage: launch/tests/killloop.sh                      (CI: 3 kills, ~1 min in a debug build)
#        HGDPO_KILLS=24 launch/tests/killloop.sh       (the long loop; RELIABILITY.md records its last result)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init killloop
t_need_cmd mpirun

kills="${HGDPO_KILLS:-3}"
seed="${HGDPO_KILL_SEED:-1}"
RANDOM="$seed"
steps=$((4 * kills + 6))   # more than the kills can get through: every kill hits a running job
delay=0.4   # seconds the checkpoint writer pauses twice inside each checkpoint (kill window)

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --max-steps "$steps" --checkpoint-every 1
  --keep-checkpoints 2 --collective-timeout 60)
final() { echo "$1/step-$(printf %06d "$steps")/$2"; }

t_job 300 "$T_ROOT/launch/local.sh" --timeout 280 2 "${train[@]}" --out "$T/full" >"$T/full.log" 2>&1
if ((T_RC == 0)) && [[ -s "$(final "$T/full" pytorch_lora_weights.safetensors)" ]]; then
  t_pass "uninterrupted run: 2 ranks, $steps steps (${T_SECONDS}s)"
else
  t_fail "uninterrupted run" "exit $T_RC: $(tail -n 5 "$T/full.log")"
  t_finish
fi

run="$T/run"
# The pids of this test's hgdpo ranks (any rank).
rank_pids() {
  local pid
  for pid in $(t_pids); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$HGDPO_BIN")" ]] && echo "$pid"
  done
  return 0
}
settled() {
  local p st
  for p in "$@"; do
    st="$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)" || continue
    [[ -z "$st" || "$st" == Z ]] || return 1
  done
}
in_checkpoint() { compgen -G "$run/.tmp-step-0*" >/dev/null; }
both_ranks_up() { [[ -n "$(t_rank_pid 0)" && -n "$(t_rank_pid 1)" ]]; }

modes=(setup step checkpoint checkpoint)   # half the kills inside a checkpoint write
ok_kills=0 checkpoint_kills=0 takeovers=0 fallbacks=0
for ((k = 1; k <= kills; k++)); do
  mode="${modes[RANDOM % ${#modes[@]}]}"
  target=$((RANDOM % 3))   # 0, 1: that rank; 2: the whole job
  wait_ms=$((RANDOM % 1500))
  before="$(t_latest_step "$run" || echo none)"
  log="$run.kill$k.log"
  HGDPO_FAULT_CHECKPOINT_DELAY="$delay" t_bg 200 "$log" "$T_ROOT/launch/local.sh" --timeout 180 2 "${train[@]}" \
    --out "$run" --resume auto
  case "$mode" in
    setup) t_wait_for 60 both_ranks_up || true ;;
    step) t_wait_for 60 both_ranks_up && t_wait_for 60 grep -q '^step ' "$log" || true ;;
    checkpoint) t_wait_for 90 in_checkpoint || true ;;
  esac
  sleep "$(awk -v ms="$wait_ms" -v m="$mode" 'BEGIN { printf "%.3f", (m == "checkpoint" ? ms / 4 : ms) / 1000 }')"
  during=no
  in_checkpoint && during=yes
  launcher="$(t_bg_child || true)"
  case "$target" in
    0 | 1)
      victim="rank $target"
      # (The /proc scan can miss a process now and then on a loaded machine: look again.)
      for _ in 1 2 3 4 5; do pids="$(t_rank_pid "$target" || true)"; [[ -n "$pids" ]] && break; sleep 0.2; done ;;
    2) victim="whole job"; pids="$launcher $(pgrep -P "${launcher:-0}" 2>/dev/null | tr '\n' ' ') $(rank_pids | tr '\n' ' ')" ;;
  esac
  t_log "kill $k/$kills: $mode, $victim at +$((wait_ms))ms (latest step $before, inside a checkpoint write: $during)"
  echo "kill $k/$kills: $mode $victim, +${wait_ms}ms, latest step $before, inside a checkpoint write: $during"
  if [[ -z "${pids// /}" ]]; then
    t_fail "kill $k ($mode, $victim)" "no such process: the job had ended or not started ($(tail -n 2 "$log" | tr '\n' ' '))"
  fi
  # shellcheck disable=SC2086
  [[ -n "${pids// /}" ]] && kill -9 $pids 2>/dev/null || true
  t_wait_bg 2>/dev/null
  # A process SIGKILLed inside a write (uninterruptible sleep) lives until the write returns: the next job waits for
  # that, as a scheduler would (a zombie has exited and is fine).
  # shellcheck disable=SC2086
  t_wait_for 30 settled $pids || t_log "kill $k: a killed process is still running: $pids"
  [[ "$during" == yes ]] && checkpoint_kills=$((checkpoint_kills + 1))
  grep -q "took over .*hgdpo.lock" "$log" && takeovers=$((takeovers + 1))
  grep -q "is damaged" "$log" && fallbacks=$((fallbacks + 1))
  problems=""
  if [[ -n "$(rank_pids)" ]]; then
    sleep 3
    [[ -n "$(rank_pids)" ]] && problems+="ranks still running: $(rank_pids | tr '\n' ' '); "
  fi
  if compgen -G "$run/step-*" >/dev/null; then
    "$HGDPO_BIN" checkpoint verify "$run" >"$run.verify$k.json" 2>&1 || problems+="$(grep -v '"ok":true' "$run.verify$k.json" | head -3); "
    for d in "$run"/step-*; do
      "$HGDPO_BIN" inspect "$d/pytorch_lora_weights.safetensors" >/dev/null 2>&1 || problems+="$d: the LoRA does not load; "
    done
  fi
  if grep -q "error" "$log" && ! grep -qE "exited on signal|rank [0-9]/2 on .*: error: MPI|killed|noticed that process|Killed" "$log"; then
    problems+="job error: $(grep -m1 error "$log"); "
  fi
  if [[ -z "$problems" ]]; then
    ok_kills=$((ok_kills + 1))
  else
    t_fail "kill $k ($mode, $victim)" "$problems"
  fi
done
t_pass "$ok_kills of $kills kill -9 left every checkpoint on disk verified and loadable ($checkpoint_kills inside a checkpoint write, seed $seed)"
((checkpoint_kills > 0)) && t_pass "kills inside a checkpoint write: $checkpoint_kills" ||
  t_fail "no kill landed inside a checkpoint write"

t_job 300 "$T_ROOT/launch/local.sh" --timeout 280 2 "${train[@]}" --out "$run" --resume auto >"$run.final.log" 2>&1
if ((T_RC == 0)); then
  t_pass "the last --resume auto finished the run ($(grep -o 'resumed from [^ ]* at step [0-9]*' "$run.final.log" || echo 'from step 0'))"
else
  t_fail "the last --resume auto" "exit $T_RC: $(tail -n 5 "$run.final.log")"
fi
((takeovers > 0)) && t_pass "the next job took over a killed job's lock ($takeovers times)" ||
  t_fail "no lock takeover was seen after $kills kills"
for f in pytorch_lora_weights.safetensors optimizer.safetensors; do
  if t_same_lora "$(final "$run" "$f")" "$(final "$T/full" "$f")"; then
    t_pass "final $f bit-identical to the uninterrupted run's after $kills kills"
  else
    t_fail "final $f differs from the uninterrupted run's"
  fi
done
logged="$(grep -o '"step":[0-9]*' "$run/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')"
if [[ "$logged" == "$(seq -s ' ' 1 "$steps") " ]]; then
  t_pass "metrics.jsonl has steps 1..$steps once each"
else
  t_fail "metrics.jsonl steps" "$logged"
fi
if "$HGDPO_BIN" checkpoint verify "$run" >/dev/null 2>&1 && ! compgen -G "$run/.tmp-*" >/dev/null && [[ ! -e "$run/hgdpo.lock" ]]; then
  t_pass "at the end: every checkpoint verifies, no half-written folder, the lock released"
else
  t_fail "at the end" "$(ls -a "$run" | tr '\n' ' ')"
fi
t_finish
