#!/usr/bin/env bash
# lock.sh — one job per run folder, with real `hgdpo train` jobs:
#   1. a second train on a folder in use exits within 5 s with code 2, naming the first job (pid, host), and the
#      first job goes on undisturbed (metrics.jsonl: each step once);
#   2. the first job is killed with kill -9: the next job takes its lock over at once (same host, pid gone);
#   3. a job on "another host" (a UTS namespace with its own host name, as on a shared filesystem) is killed: its lock
#      is refused while its heartbeat is fresh and taken over once it is older than the job's stale_after_s
#      (HGDPO_LOCK_HEARTBEAT=1, HGDPO_LOCK_STALE_AFTER=6 here; 15 s and 300 s by default).
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
sleep 2
after=$(t_lines "$run/metrics.jsonl")
steps="$(grep -o '"step":[0-9]*' "$run/metrics.jsonl" | cut -d: -f2)"
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
if ((T_RC == 0)) && grep -q "took over $run/hgdpo.lock from hgdpo train, pid $first on $(hostname).*its process (pid $first) is gone" "$T/c.log"; then
  t_pass "after kill -9 the next job took the lock over at once (pid $first gone) and resumed from step $at"
else
  t_fail "takeover after kill -9" "exit $T_RC: $(grep -m2 -E "took over|error" "$T/c.log")"
fi
[[ ! -e "$run/hgdpo.lock" ]] && t_pass "the lock is released at the end of a job" || t_fail "lock left after a normal end"

# 3. A job on another host: judged by its heartbeat.
if ((EUID != 0)) || ! command -v unshare >/dev/null; then
  echo "SKIP lock: the other-host case needs root (unshare --uts)"
  t_finish
fi
other="$T/other"
HGDPO_LOCK_HEARTBEAT=1 HGDPO_LOCK_STALE_AFTER=6 t_bg 200 "$T/d.log" unshare --uts /bin/sh -c 'hostname hgdpo-other-node && exec "$@"' sh \
  "$T_ROOT/launch/local.sh" --timeout 180 1 "${train[@]}" --max-steps 400 --out "$other"
if ! t_wait_for 100 t_has_lines "$other/metrics.jsonl" 1; then
  t_fail "the other-host job did not start" "$(tail -n 5 "$T/d.log")"
  t_finish
fi
for pid in $(t_pids); do
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$HGDPO_BIN")" ]] && grep -qsaF "$other" "/proc/$pid/cmdline" && kill -9 "$pid"
done
t_wait_bg 2>/dev/null
killed=$(date +%s)
t_job 60 "$T_ROOT/launch/local.sh" --timeout 50 1 "${train[@]}" --max-steps 400 --out "$other" --resume auto >"$T/e.log" 2>&1
if ((T_RC == 2)) && grep -q "in use by another job: hgdpo train, pid [0-9]* on hgdpo-other-node" "$T/e.log"; then
  t_pass "another host's killed job: refused while its heartbeat is fresh (it may still be running there)"
else
  t_fail "another host's fresh lock" "exit $T_RC: $(grep -m1 error "$T/e.log")"
fi
sleep $((killed + 8 - $(date +%s)))
t_job 120 "$T_ROOT/launch/local.sh" --timeout 100 1 "${train[@]}" --max-steps 3 --out "$other" --resume auto >"$T/f.log" 2>&1
if ((T_RC == 0)) && grep -q "took over $other/hgdpo.lock from hgdpo train, pid [0-9]* on hgdpo-other-node.*no heartbeat for [0-9]* s (stale after 6 s)" "$T/f.log"; then
  t_pass "another host's killed job: taken over once its heartbeat was older than 6 s"
else
  t_fail "takeover of another host's stale lock" "exit $T_RC: $(grep -m2 -E "took over|error" "$T/f.log")"
fi
t_finish
