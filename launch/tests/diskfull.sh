#!/usr/bin/env bash
# diskfull.sh — the disk fills up while a checkpoint is being written: the job stops with a clear error naming the
# file and the cause, `latest` still names the previous complete checkpoint (which verifies), no half-written folder
# is left, and once space is freed `--resume auto` finishes the run with the uninterrupted run's LoRA, bit for bit.
#
# The run folder is a small tmpfs (8 MB); after the checkpoint of step 2, a filler file takes all but 64 KB of it,
# so the checkpoint of step 3 (~800 KB) cannot be written. HGDPO_FAULT_CHECKPOINT_DELAY slows each checkpoint so the
# filler lands between two checkpoints.
#
# Usage: launch/tests/diskfull.sh      (needs root for the tmpfs mount; ~30 s)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init diskfull
t_need_root
t_need_cmd mpirun

steps=6
t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --max-steps "$steps" --checkpoint-every 1
  --keep-checkpoints 2 --collective-timeout 60)
final() { echo "$1/step-$(printf %06d "$steps")/$2"; }

t_job 150 "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$T/full" >"$T/full.log" 2>&1
((T_RC == 0)) && t_pass "uninterrupted run: $steps steps (${T_SECONDS}s)" || { t_fail "uninterrupted run" "$(tail -n 5 "$T/full.log")"; t_finish; }

mkdir -p "$T/small"
mount -t tmpfs -o size=8m hgdpo-diskfull "$T/small"
t_on_cleanup "umount -l '$T/small'"
run="$T/small/run"
HGDPO_FAULT_CHECKPOINT_DELAY=0.5 t_bg 150 "$T/full-disk.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$run"
if ! t_wait_for 100 test -s "$run/latest" || ! t_wait_for 60 grep -q step-000002 "$run/latest"; then
  t_fail "the run did not reach its second checkpoint" "$(tail -n 5 "$T/full-disk.log")"
  t_finish
fi
avail=$(df -B1 --output=avail "$T/small" | tail -n 1)
head -c $((avail - 65536)) /dev/zero >"$T/small/filler" 2>/dev/null || true
t_log "diskfull: filled the tmpfs: $(df -h --output=avail "$T/small" | tail -n 1 | tr -d ' ') left"
t_wait_bg
latest="$(t_latest_step "$run" || echo none)"
if ((T_RC != 0)) && grep -q "No space left on device" "$T/full-disk.log" && grep -q "$run/" "$T/full-disk.log"; then
  t_pass "disk full in a checkpoint: the job stopped (exit $T_RC) naming the file: $(grep -m1 -o "error: .*No space left on device[^)]*" "$T/full-disk.log" | cut -c1-160)"
else
  t_fail "disk full: a clear error" "exit $T_RC: $(tail -n 4 "$T/full-disk.log")"
fi
if [[ "$latest" == 2 || "$latest" == 3 ]] && "$HGDPO_BIN" checkpoint verify "$run" >"$T/verify.json" 2>&1; then
  t_pass "latest names the complete checkpoint of step $latest; every checkpoint left verifies ($(grep -c '"ok":true' "$T/verify.json"))"
else
  t_fail "latest / checkpoints after the full disk" "latest '$latest': $(cat "$T/verify.json")"
fi
if ! compgen -G "$run/.tmp-*" >/dev/null && ! compgen -G "$run/*.tmp" >/dev/null; then
  t_pass "no half-written checkpoint folder or temporary file left"
else
  t_fail "half-written files left" "$(ls -a "$run" | tr '\n' ' ')"
fi

rm -f "$T/small/filler"
t_job 150 "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$run" --resume auto >"$T/resume.log" 2>&1
if ((T_RC == 0)) && t_same_lora "$(final "$run" pytorch_lora_weights.safetensors)" "$(final "$T/full" pytorch_lora_weights.safetensors)" &&
  t_same_lora "$(final "$run" optimizer.safetensors)" "$(final "$T/full" optimizer.safetensors)"; then
  t_pass "space freed: --resume auto finished the run, LoRA and optimizer bit-identical to the uninterrupted run's"
else
  t_fail "resume after the full disk" "exit $T_RC: $(tail -n 4 "$T/resume.log")"
fi
logged="$(grep -o '"step":[0-9]*' "$run/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')"
[[ "$logged" == "$(seq -s ' ' 1 "$steps") " ]] && t_pass "metrics.jsonl has steps 1..$steps once each" || t_fail "metrics.jsonl steps" "$logged"

# Not one byte left: the next write (the step's metrics record, or the checkpoint) fails with an error, not a trap.
rm -rf "$run"
run2="$T/small/run2"
HGDPO_FAULT_CHECKPOINT_DELAY=0.5 t_bg 150 "$T/no-space.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" --out "$run2"
if t_wait_for 100 test -s "$run2/latest"; then
  head -c "$(df -B1 --output=avail "$T/small" | tail -n 1)" /dev/zero >"$T/small/filler2" 2>/dev/null || true
  t_wait_bg
  if ((T_RC != 0)) && grep -qE "error: .*(No space left on device|enough space)" "$T/no-space.log" && ! grep -q "Fatal error" "$T/no-space.log"; then
    t_pass "no space at all: a clear error (exit $T_RC): $(grep -m1 -oE "error: [^ ]*(metrics.jsonl|safetensors)[^:]*: [^(]*" "$T/no-space.log" | cut -c1-140)"
  else
    t_fail "no space at all: a clear error" "exit $T_RC: $(grep -m3 -E "error|Fatal" "$T/no-space.log")"
  fi
  "$HGDPO_BIN" checkpoint verify "$run2" >/dev/null 2>&1 && t_pass "no space at all: every checkpoint left verifies" ||
    t_fail "no space at all: checkpoints" "$("$HGDPO_BIN" checkpoint verify "$run2" 2>&1 | head -3)"
else
  t_fail "no space at all: the run did not write its first checkpoint" "$(tail -n 4 "$T/no-space.log")"
fi
t_finish
