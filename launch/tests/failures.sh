#!/usr/bin/env bash
# failures.sh — failures under the launchers: each job must end non-zero within a stated bound, with a message
# naming the rank and host, and leave its last complete checkpoint intact (verified by loading it: `hgdpo inspect`
# of its LoRA, then `--resume auto` from it for one more step, which must succeed and say where it resumed).
#
#   1. kill -9 of rank 1 (launch/local.sh, 2 ranks)                                  bound 30 s
#   2. an error thrown on rank 1 (HGDPO_FAULT_THROW; MPI_Abort)                      bound 30 s
#   3. a hung rank (SIGSTOP of rank 1): the collective watchdog of rank 0
#      (--collective-timeout 10) ends the job                                        bound 40 s
#   4. a node lost: two namespace hosts (launch/mpirun.sh), node b's veth cut mid-run;
#      mpirun's TCP keepalive (HGDPO_OOB_KEEPALIVE=5,2,3: ~11 s) notices it        bound 45 s
#   5. a node lost: every process of node b killed (orted, rank, sshd)              bound 30 s
#   6. a hung rank during `hgdpo encode` (SIGSTOP of rank 1; --collective-timeout 10): bound 40 s, and the same
#      command then resumes from the shards written and finishes the cache
#
# Usage: launch/tests/failures.sh      (root for cases 3-4; OpenMPI, iproute2, openssh-server; ~1-2 min)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init failures
t_need_cmd mpirun

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --checkpoint-every 1)
long=(--max-steps 60)   # longer than the faults take to happen
host="$(hostname)"

# checkpoint_intact NAME RUN RANKS [LAUNCH PREFIX...]: the run's last checkpoint loads and training resumes from it.
checkpoint_intact() {
  local name="$1" run="$2" ranks="$3"
  shift 3
  local last
  last="$(t_latest_step "$run" || true)"
  if [[ -z "$last" ]] || ! "$HGDPO_BIN" inspect "$run/step-$(printf %06d "$last")/pytorch_lora_weights.safetensors" >/dev/null 2>&1; then
    t_fail "$name: last checkpoint readable" "latest step '$last'"
    return
  fi
  t_job 120 "$T_ROOT/launch/local.sh" --timeout 100 "$ranks" "${train[@]}" --out "$run" --resume auto \
    --max-steps $((last + 1)) >"$run.resume.log" 2>&1
  if ((T_RC == 0)) && grep -q "resumed from .*step-$(printf %06d "$last") at step $last" "$run.resume.log" &&
    [[ "$(t_latest_step "$run")" == $((last + 1)) ]]; then
    t_pass "$name: last checkpoint (step $last) intact: loads, and training resumes from it"
  else
    t_fail "$name: resume from the last checkpoint (step $last)" "exit $T_RC: $(tail -n 4 "$run.resume.log")"
  fi
}

# ended_in NAME BOUND: the t_bg job ended non-zero within BOUND seconds of $t_fault.
ended_in() {
  local name="$1" bound="$2" took
  t_wait_bg
  took=$(awk -v a="$t_fault" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  # (The t_bg bound, 150 s and more, is far above every case's bound: a status 124/137 within it is mpirun's.)
  if ((T_RC != 0)) && awk -v t="$took" -v b="$bound" 'BEGIN { exit !(t <= b) }'; then
    t_pass "$name: the job ended with exit status $T_RC, ${took}s after the fault (bound ${bound}s)"
  else
    t_fail "$name: the job must end non-zero within ${bound}s" "exit $T_RC after ${took}s"
  fi
}

# says NAME LOG REGEX WHAT: the job's output matches REGEX (grep -E).
says() {
  local line
  line="$(grep -E -m1 "$3" "$2" || true)"
  if [[ -n "$line" ]]; then t_pass "$1: names $4: \"${line:0:160}\""; else t_fail "$1: no message naming $4" "$(tail -n 6 "$2")"; fi
}

# --- 1. kill -9 of one rank -------------------------------------------------------------------------------
run="$T/kill9"
t_bg 150 "$run.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" "${long[@]}" --out "$run" --collective-timeout 60
if t_wait_for 100 t_has_lines "$run/metrics.jsonl" 2 && pid="$(t_rank_pid 1)"; then
  t_fault=$(date +%s.%N)
  kill -9 "$pid"
  ended_in "kill -9 of rank 1" 30
  says "kill -9 of rank 1" "$run.log" "rank 1 .*on node $host .*signal 9" "rank 1 and host $host"
  checkpoint_intact "kill -9 of rank 1" "$run" 2
else
  t_fail "kill -9 of rank 1: the run did not start" "$(tail -n 5 "$run.log")"
fi

# --- 2. an error on one rank ----------------------------------------------------------------------------------
run="$T/throw"
HGDPO_FAULT_THROW="rank=1,step=3" t_bg 150 "$run.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" \
  "${long[@]}" --out "$run" --collective-timeout 60
t_fault=$(date +%s.%N)
if t_wait_for 100 t_has_lines "$run/metrics.jsonl" 2; then t_fault=$(date +%s.%N); fi
ended_in "error on rank 1" 30
says "error on rank 1" "$run.log" "rank 1/2 on $host: error: .*HGDPO_FAULT_THROW" "rank 1, host $host and the error"
checkpoint_intact "error on rank 1" "$run" 2

# --- 3. a hung rank ---------------------------------------------------------------------------------------------
run="$T/hung"
t_bg 150 "$run.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${train[@]}" "${long[@]}" --out "$run" --collective-timeout 10
if t_wait_for 100 t_has_lines "$run/metrics.jsonl" 2 && pid="$(t_rank_pid 1)"; then
  t_fault=$(date +%s.%N)
  kill -STOP "$pid"
  ended_in "hung rank 1 (SIGSTOP)" 40
  says "hung rank 1 (SIGSTOP)" "$run.log" "rank 0 on $host: (MPI_Allreduce|the all-reduce) .* did not finish within 10 s" "the waiting rank 0 and host $host"
  checkpoint_intact "hung rank 1 (SIGSTOP)" "$run" 2
else
  t_fail "hung rank 1: the run did not start" "$(tail -n 5 "$run.log")"
fi

# --- 6. a hung rank during hgdpo encode --------------------------------------------------------------------------
# Encode has the same watchdog: rank 0, waiting for the stopped rank 1 in the shard's all-reduce, ends the job; the
# shards already written stay, and running the same command again resumes from them and finishes the cache.
enc="$T/encode"
encode=(hgdpo encode --model "$enc/model" --data "$enc/triplets" --out "$enc/cache" --resolution 64 --shard-size 4
  --batch 1 --threads 1 --collective-timeout 10)
if "$HGDPO_BIN" make-model --shape tiny --out "$enc/model" >/dev/null &&
  "$HGDPO_BIN" make-triplets --count 256 --width 64 --height 64 --out "$enc/triplets" >/dev/null; then
  t_bg 150 "$enc.log" "$T_ROOT/launch/local.sh" --timeout 120 2 "${encode[@]}"
  if t_wait_for 100 test -s "$enc/cache/shard-00001.safetensors" && pid="$(t_rank_pid 1)"; then
    t_fault=$(date +%s.%N)
    kill -STOP "$pid"
    ended_in "encode, hung rank 1 (SIGSTOP)" 40
    says "encode, hung rank 1 (SIGSTOP)" "$enc.log" "rank 0 on $host: MPI_.* did not finish within 10 s" \
      "the waiting rank 0 and host $host"
    if "$T_ROOT/launch/local.sh" --timeout 300 2 "${encode[@]}" >"$enc.resume.log" 2>&1 &&
      grep -q "encode: resuming: [1-9][0-9]* of 64 shards are already written" "$enc.resume.log" &&
      grep -q '"count":256' "$enc.resume.log"; then
      t_pass "encode, hung rank 1: the same command resumes from the shards on disk and finishes the cache"
    else
      t_fail "encode, hung rank 1: resuming must finish the cache" "$(tail -n 5 "$enc.resume.log")"
    fi
  else
    t_wait_bg
    t_fail "encode, hung rank 1: the encode did not start" "$(tail -n 5 "$enc.log")"
  fi
else
  t_fail "encode, hung rank 1: make the tiny pipeline and triplets"
fi

# --- 4./5. a node lost ------------------------------------------------------------------------------------------
if ((EUID != 0)) || { ! command -v sshd >/dev/null 2>&1 && [[ ! -x /usr/sbin/sshd ]]; } ||
  ! command -v ip >/dev/null 2>&1; then
  echo "SKIP failures: node-loss cases need root and openssh-server"
  t_finish
fi
if ! t_cluster_up >"$T/cluster.log" 2>&1; then
  t_fail "two namespace hosts with sshd" "$(tail -n 5 "$T/cluster.log")"
  t_finish
fi
export HGDPO_SSH_CONFIG="$T_SSH_CONFIG" HGDPO_MPI_IF="$T_NET.0/24" HGDPO_BTL="tcp,self" HGDPO_OOB_KEEPALIVE=5,2,3
printf '%s slots=1\n' "${T_ADDR[0]}" "${T_ADDR[1]}" >"$T/hostfile"

for how in cut killed; do
  run="$T/node-$how"
  name="node b lost ($([[ $how == cut ]] && echo "network cut" || echo "its processes killed"))"
  # The watchdog's bound above the keepalive's (see HGDPO_OOB_KEEPALIVE in launch/env.sh).
  t_bg 200 "$run.log" "${T_ON0[@]}" "$T_ROOT/launch/mpirun.sh" --timeout 180 "$T/hostfile" 2 "${train[@]}" \
    "${long[@]}" --out "$run" --collective-timeout 60
  if ! t_wait_for 100 t_has_lines "$run/metrics.jsonl" 2; then
    t_fail "$name: the run did not start" "$(tail -n 5 "$run.log")"
    continue
  fi
  t_fault=$(date +%s.%N)
  if [[ $how == cut ]]; then
    ip -n "${T_NS[1]}" link set "${T_VETH[1]}" down
    ended_in "$name" 45
  else
    ip netns pids "${T_NS[1]}" | xargs -r kill -9
    ended_in "$name" 30
  fi
  # OpenMPI's wording depends on what it noticed first ("lost communication with a remote daemon ... on node X",
  # "not know how to route a message ... target node: X", ssh's "Connection to X closed").
  says "$name" "$run.log" "(${T_NODE[1]}|${T_ADDR[1]})" "the lost host ${T_ADDR[1]}"
  checkpoint_intact "$name" "$run" 2
  # Node b again, for the next case: network up, sshd restarted.
  ip -n "${T_NS[1]}" link set "${T_VETH[1]}" up
  if ! kill -0 "$(cat "$T/ssh/sshd-1.pid" 2>/dev/null)" 2>/dev/null; then
    t_on_node 1 /usr/sbin/sshd -f /dev/null -h "$T/ssh/host_key" -o "ListenAddress=${T_ADDR[1]}" \
      -o "PidFile=$T/ssh/sshd-1.pid" -o PermitRootLogin=prohibit-password \
      -o "AuthorizedKeysFile=$T/ssh/authorized_keys" -o StrictModes=no -o UsePAM=no -E "$T/ssh/sshd-1.log"
  fi
  { ip netns pids "${T_NS[1]}" | grep -vx "$(cat "$T/ssh/sshd-1.pid")" | xargs -r kill -9; } || true
done
t_finish
