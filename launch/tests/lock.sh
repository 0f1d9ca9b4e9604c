#!/usr/bin/env bash
# lock.sh — one job per run folder, with real `hgdpo train` jobs:
#   1. a second train on a folder in use exits within 5 s with code 2, naming the first job (pid, host), and the
#      first job goes on undisturbed (metrics.jsonl: each step once);
#   2. the first job is killed with kill -9: the next job takes its lock over at once (same host, pid gone);
#   3. a job on "another host" (a UTS namespace with its own host name, as on a shared filesystem): while it runs, a
#      second job sees its heartbeat advance and is refused; once it is killed, the next job watches 2.5 heartbeats
#      without a beat and takes it over (HGDPO_LOCK_HEARTBEAT=1, HGDPO_LOCK_STALE_AFTER=120 here; 5 s and 300 s by
#      default), long before the staleness bound.
#
# Usage: launch/tests/lock.sh      (~40 s; case 3 needs root for unshare --uts, else it is skipped)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init lock
t_need_cmd mpirun

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --checkpoint-every 2 --collective-timeout 60)
run="$T/run"

# 1. Two jobs on one folder.
t_bg 200 "$T/a.log" "$T_ROOT/launch/local.sh" --timeout 180 2 "${train[@]}" --max-steps 400 --out "$run"
if ! t_wait_for 100 t_has_lines "$run/metrics.jsonl" 2; then
  t_fail "the first job did not start" "$(tail -n 5 "$T/a.log")"
  t_finish
fi
first="$(t_rank_pid 0)"
t_job 60 "$T_ROOT/launch/local.sh" --timeout 50 2 "${train[@]}" --max-steps 400 --out "$run" >"$T/b.log" 2>&1
if ((T_RC == 2)) && awk -v s="$T_SECONDS" 'BEGIN { exit !(s < 5) }' &&
  grep -q "is in use by another job: hgdpo train, pid $first on $(hostname)" "$T/b.log"; then
  t_pass "a second train on the folder exited with code 2 after ${T_SECONDS}s naming the first (pid $first on $(hostname))"
else
  t_fail "second job on the folder" "exit $T_RC after ${T_SECONDS}s: $(grep -m1 error "$T/b.log")"
fi
before=$(t_lines "$run/metrics.jsonl")
t_wait_for 60 t_has_lines "$run/metrics.jsonl" $((before + 1)) || true
# One snapshot for the count and the steps: the job goes on writing lines between two reads of the file.
cp "$run/metrics.jsonl" "$T/metrics.snapshot"
after=$(t_lines "$T/metrics.snapshot")
steps="$(head -n "$after" "$T/metrics.snapshot" | grep -o '"step":[0-9]*' | cut -d: -f2)"
if ((after > before)) && [[ "$steps" == "$(seq 1 "$after")" ]]; then
  t_pass "the first job went on undisturbed (metrics.jsonl: steps 1..$after once each)"
else
  t_fail "the first job after the refused second one" "$before -> $after lines"
fi

# 2. kill -9 of the whole first job; the next job takes the lock over at once.
launcher="$(t_bg_child || true)"
kill -9 "$launcher" $(pgrep -P "${launcher:-0}" 2>/dev/null) $(t_rank_pid 0) $(t_rank_pid 1) 2>/dev/null || true
t_wait_bg 2>/dev/null
at="$(t_latest_step "$run" || echo 0)"
t_job 120 "$T_ROOT/launch/local.sh" --timeout 100 2 "${train[@]}" --max-steps $((at + 2)) --out "$run" --resume auto >"$T/c.log" 2>&1
if ((T_RC == 0)) && grep -qE "took over $run/hgdpo.lock from hgdpo train, pid $first on $(hostname).*its process \(pid $first\) (is gone|has exited)" "$T/c.log"; then
  t_pass "after kill -9 the next job took the lock over at once ($(grep -o "its process (pid $first) [a-z ]*" "$T/c.log")) and resumed from step $at"
else
  t_fail "takeover after kill -9" "exit $T_RC: $(grep -m2 -E "took over|error" "$T/c.log")"
fi
[[ ! -e "$run/hgdpo.lock" ]] && t_pass "the lock is released at the end of a job" || t_fail "lock left after a normal end"

# 3. A job on another host: its process cannot be looked at, so a taker watches its heartbeat (2.5 beats).
if ((EUID != 0)) || ! command -v unshare >/dev/null; then
  echo "SKIP lock: the other-host case needs root (unshare --uts)"
  t_finish
fi
other="$T/other"
HGDPO_LOCK_HEARTBEAT=1 HGDPO_LOCK_STALE_AFTER=120 t_bg 200 "$T/d.log" unshare --uts /bin/sh -c 'hostname hgdpo-other-node && exec "$@"' sh \
  "$T_ROOT/launch/local.sh" --timeout 180 1 "${train[@]}" --max-steps 400 --out "$other"
if ! t_wait_for 100 t_has_lines "$other/metrics.jsonl" 1; then
  t_fail "the other-host job did not start" "$(tail -n 5 "$T/d.log")"
  t_finish
fi
# 3a. While it runs, a second job sees the heartbeat advance and is refused, naming it.
t_job 60 "$T_ROOT/launch/local.sh" --timeout 50 1 "${train[@]}" --max-steps 400 --out "$other" --resume auto >"$T/e.log" 2>&1
if ((T_RC == 2)) && awk -v s="$T_SECONDS" 'BEGIN { exit !(s < 10) }' &&
  grep -q "in use by another job: hgdpo train, pid [0-9]* on hgdpo-other-node" "$T/e.log"; then
  t_pass "another host's live job: refused after ${T_SECONDS}s (its heartbeat advanced), naming it"
else
  t_fail "another host's live job" "exit $T_RC after ${T_SECONDS}s: $(grep -m1 error "$T/e.log")"
fi
# 3b. Killed there (a lost node, or MPI_Abort ending the job), it stops beating: the next job takes it over after
# watching 2.5 beats, long before the 120 s staleness bound.
for pid in $(t_pids); do
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$HGDPO_BIN")" ]] && grep -qsaF "$other" "/proc/$pid/cmdline" && kill -9 "$pid"
done
t_wait_bg 2>/dev/null
t_job 120 "$T_ROOT/launch/local.sh" --timeout 100 1 "${train[@]}" --max-steps 3 --out "$other" --resume auto >"$T/f.log" 2>&1
if ((T_RC == 0)) && grep -q "took over $other/hgdpo.lock from hgdpo train, pid [0-9]* on hgdpo-other-node.*its heartbeat did not advance for 3 s" "$T/f.log"; then
  t_pass "another host's killed job: taken over after watching its heartbeat for 3 s (${T_SECONDS}s in all)"
else
  t_fail "takeover of another host's silent lock" "exit $T_RC: $(grep -m2 -E "took over|error" "$T/f.log")"
fi
t_finish
