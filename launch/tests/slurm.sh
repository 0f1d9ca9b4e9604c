#!/usr/bin/env bash
# slurm.sh — a real Slurm batch job: a throw-away single-node Slurm (slurmctld + slurmd from Debian's slurm-wlm,
# a generated slurm.conf with AuthType=auth/none, CredType=cred/none, ProctrackType=proctrack/pgid,
# TaskPlugin=task/none, SlurmdParameters=config_overrides, every state file in a temp dir, NodeName = `hostname -s`)
# runs `sbatch --wait launch/slurm/train.sbatch` with 4 tasks (srun --mpi=pmix). Checked: the job's exit status
# and output, the checkpoint, the metrics (4 ranks), and the LoRA equal to a 4-rank launch/local.sh run's; the same
# for launch/slurm/train-mpirun.sbatch (mpirun inside the allocation).
# Then preemption: a second job is sent SIGUSR1 (what --signal=B:USR1@120 does before the time limit) mid-run;
# its ranks checkpoint and exit 0, the job requeues itself, restarts with --resume auto and ends with the same
# LoRA; and a job preempted by Slurm itself (`scontrol requeue`: SIGTERM to every task, then requeue) restarts from
# its checkpoint to the same LoRA. The daemons are stopped afterwards, also when the test fails.
#
# Usage: launch/tests/slurm.sh      (root; needs slurm-wlm (launch/install-deps.sh --with-cluster-tools); ~1 min)
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init slurm
t_need_root
t_need_cmd slurmctld slurmd sbatch scontrol scancel srun mpirun

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
steps=8
train=(--model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --max-steps "$steps" --checkpoint-every 1 --collective-timeout 60)
final="step-$(printf %06d "$steps")/pytorch_lora_weights.safetensors"

# --- the reference: 4 ranks with launch/local.sh -----------------------------------------------------------
t_job 150 "$T_ROOT/launch/local.sh" --timeout 120 4 hgdpo train "${train[@]}" --out "$T/local" >"$T/local.log" 2>&1
((T_RC == 0)) || { t_fail "4-rank launch/local.sh reference run" "exit $T_RC: $(tail -n 5 "$T/local.log")"; t_finish; }

# --- a throw-away Slurm ----------------------------------------------------------------------------------------
S="$T/slurm"
mkdir -p "$S/ctld" "$S/d"
node="$(hostname -s)"
# Two free TCP ports (slurmctld, slurmd): another Slurm on this machine, e.g. a second run of this test, must not
# answer our commands.
port_free() { ! ss -Htln "( sport = :$1 or sport = :$(($1 + 1)) )" 2>/dev/null | grep -q .; }
port="${HGDPO_TEST_SLURM_PORT:-$((20000 + ($$ % 4000) * 2))}"
for ((i = 0; i < 200; i++)); do port_free "$port" && break; port=$((port + 2)); done
export SLURM_CONF="$S/slurm.conf"
cat >"$SLURM_CONF" <<CONF
ClusterName=hgdpotest
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/none
CredType=cred/none
# Short waits for a test: a requeued job may start again cred_expire s after (default 120), the schedulers look
# at pending jobs every 2 s (default 60 / 30), and sbatch --wait polls every 8 s instead of every 32 (it polls
# more slowly while that is under MinJobAge / 2; a finished job's record stays MinJobAge s, default 300).
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=10
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
stop_slurm() { # SIGTERM by PID file, up to 10 s to exit, then SIGKILL
  local f pid i
  for f in "$S/slurmd.pid" "$S/slurmctld.pid"; do
    [[ -s "$f" ]] || continue
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || continue
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
  done
  return 0
}
t_on_cleanup stop_slurm
slurmctld -D -f "$SLURM_CONF" >"$S/slurmctld.out" 2>&1 &
slurmd -D -f "$SLURM_CONF" >"$S/slurmd.out" 2>&1 &
node_idle() { [[ "$(sinfo -h -n "$node" -o %t 2>/dev/null)" == idle ]]; }
if t_wait_for 30 node_idle; then
  t_pass "throw-away Slurm up: node $node idle (slurmctld + slurmd on ports $port-$((port + 1)), state in $S)"
else
  t_fail "Slurm start" "node state '$(sinfo -h -o %t 2>&1)'; $(tail -n 3 "$S/slurmctld.log" "$S/slurmd.log" 2>&1)"
  t_finish
fi

sbatch_opts=(--nodes=1 --ntasks-per-node=4 --cpus-per-task=1 --time=10 --chdir="$T")

# --- 1. sbatch --wait train.sbatch ---------------------------------------------------------------------------
t_job 200 sbatch --wait --parsable "${sbatch_opts[@]}" --output="$T/job1-%j.out" "$T_ROOT/launch/slurm/train.sbatch" \
  "${train[@]}" --out "$T/job1" >"$T/sbatch1.log" 2>&1
job="$(head -n1 "$T/sbatch1.log" | cut -d';' -f1)"
out="$T/job1-$job.out"
if ((T_RC == 0)); then
  t_pass "sbatch --wait launch/slurm/train.sbatch (4 tasks): job $job exit 0 (${T_SECONDS}s)"
else
  t_fail "sbatch --wait launch/slurm/train.sbatch" "exit $T_RC: $(tail -n 8 "$T/sbatch1.log" "$out" 2>&1)
  $(scontrol show job "$job" 2>&1 | grep -oE '(JobState|ExitCode|DerivedExitCode|Reason)=[^ ]*' | tr '\n' ' ')
  $(grep -E "JobId=$job[^0-9]" "$S/slurmctld.log" 2>&1 | tail -n 6)"
fi
if grep -q "train.sbatch: job $job (restart 0) on $node: 4 ranks × 1 threads" "$out" 2>/dev/null &&
  grep -q "srun --mpi=pmix" "$out" && grep -q "step $steps/$steps" "$out"; then
  t_pass "job output: 4 ranks × 1 thread (SLURM_CPUS_PER_TASK), srun --mpi=pmix, $steps steps logged"
else
  t_fail "job output" "$(head -n 5 "$out" 2>&1)"
fi
if [[ "$(t_latest_step "$T/job1")" == "$steps" ]] && "$HGDPO_BIN" inspect "$T/job1/$final" >/dev/null 2>&1; then
  t_pass "checkpoint at step $steps written and readable"
else
  t_fail "checkpoint at step $steps" "latest: $(cat "$T/job1/latest" 2>&1)"
fi
if [[ "$(t_lines "$T/job1/metrics.jsonl")" == "$steps" ]] && (($(grep -c '"world_size":4' "$T/job1/metrics.jsonl") == steps)); then
  t_pass "metrics.jsonl: $steps records, world_size 4"
else
  t_fail "metrics.jsonl" "$(head -c 300 "$T/job1/metrics.jsonl" 2>&1)"
fi
if t_same_lora "$T/job1/$final" "$T/local/$final"; then
  t_pass "the job's LoRA is bit-identical to the 4-rank launch/local.sh run's"
else
  t_fail "the job's LoRA differs from the 4-rank launch/local.sh run's"
fi

# --- 2. sbatch --wait train-mpirun.sbatch (mpirun inside the allocation) ---------------------------------------
t_job 200 sbatch --wait --parsable "${sbatch_opts[@]}" --output="$T/jobm-%j.out" "$T_ROOT/launch/slurm/train-mpirun.sbatch" \
  "${train[@]}" --out "$T/jobm" >"$T/sbatchm.log" 2>&1
job="$(head -n1 "$T/sbatchm.log" | cut -d';' -f1)"
out="$T/jobm-$job.out"
if ((T_RC == 0)) && grep -q "train-mpirun.sbatch: job $job (restart 0) on $node: 4 ranks × 1 threads" "$out" &&
  t_same_lora "$T/jobm/$final" "$T/local/$final"; then
  t_pass "sbatch --wait launch/slurm/train-mpirun.sbatch (4 tasks): exit 0, LoRA bit-identical to local 4 ranks (${T_SECONDS}s)"
else
  t_fail "sbatch --wait launch/slurm/train-mpirun.sbatch" "exit $T_RC: $(tail -n 8 "$T/sbatchm.log" "$out" 2>&1)"
fi

# --- 3. preemption: SIGUSR1 to the batch shell, requeue, resume --------------------------------------------------
# submit_running NAME LABEL: sbatch train.sbatch (output in $T/NAME) without waiting, then wait until it has logged
# 2 steps; sets job and out. On failure: FAIL "LABEL: job did not start" and the test ends.
submit_running() {
  local name="$1" label="$2"
  t_job 30 sbatch --parsable "${sbatch_opts[@]}" --output="$T/$name-%j.out" "$T_ROOT/launch/slurm/train.sbatch" \
    "${train[@]}" --out "$T/$name" >"$T/sbatch-$name.log" 2>&1
  job="$(head -n1 "$T/sbatch-$name.log" | cut -d';' -f1)"
  out="$T/$name-$job.out"
  if ((T_RC != 0)) || ! t_wait_for 120 t_has_lines "$T/$name/metrics.jsonl" 2; then
    t_fail "$label: job did not start" "sbatch exit $T_RC: $(tail -n 5 "$T/sbatch-$name.log" "$out" 2>&1)"
    t_finish
  fi
}

submit_running job2 preemption
scancel --signal=USR1 --batch "$job"
# Done: a final state (a requeued job goes REQUEUED -> PENDING -> RUNNING again).
job_state() { scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2; }
job_done() { [[ "$(job_state)" =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)$ ]]; }
if t_wait_for 240 job_done; then
  state="JobState=$(job_state)"
  restarts="$(scontrol show job "$job" 2>/dev/null | grep -o 'Restarts=[0-9]*' | head -n1)"
  t_pass "preemption: job $job ended ($state, $restarts)"
else
  t_fail "preemption: job $job did not end within 240 s" "$(squeue -j "$job" 2>&1 | tail -n 1)"
  scancel "$job" 2>/dev/null || true
  t_finish
fi
stopped="$(grep -o 'stop signal received: checkpoint at step [0-9]*' "$out" | grep -o '[0-9]*$' | head -n1 || true)"
if [[ -n "$stopped" ]] && ((stopped < steps)) && grep -q "step finished with exit status 0" "$out" &&
  grep -q "requeueing job $job (restart 1)" "$out"; then
  t_pass "preemption: SIGUSR1 to the batch shell: checkpoint at step $stopped, every rank exited 0, job requeued"
else
  t_fail "preemption: stop and requeue" "$(grep -v '^step\|^checkpoint' "$out" | tail -n 8)"
fi
if grep -q "job $job (restart 1)" "$out" && grep -q "resumed from .*step-$(printf %06d "${stopped:-0}") at step ${stopped:-0}" "$out"; then
  t_pass "preemption: the requeued job resumed from step $stopped (--resume auto)"
else
  t_fail "preemption: resume after requeue" "$(grep -v '^step\|^checkpoint' "$out" | tail -n 8)"
fi
if [[ "$state" == JobState=COMPLETED ]] && t_same_lora "$T/job2/$final" "$T/local/$final"; then
  t_pass "preemption: final LoRA bit-identical to the uninterrupted run's"
else
  t_fail "preemption: final LoRA" "$state; $(ls "$T/job2" 2>&1 | tr '\n' ' ')"
fi
logged="$(grep -o '"step":[0-9]*' "$T/job2/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')"
[[ "$logged" == "$(seq -s ' ' 1 "$steps") " ]] && t_pass "preemption: metrics.jsonl has steps 1..$steps once each" ||
  t_fail "preemption: metrics.jsonl steps" "$logged"

# --- 4. preemption by Slurm: `scontrol requeue` (as PreemptMode=REQUEUE does: SIGTERM to every task, requeue) ------
submit_running job3 "scontrol requeue"
scontrol requeue "$job"
if t_wait_for 240 job_done && [[ "$(job_state)" == COMPLETED ]]; then
  stopped="$(grep -o 'stop signal received: checkpoint at step [0-9]*' "$out" | grep -o '[0-9]*$' | head -n1 || true)"
  if [[ -n "$stopped" ]] && grep -q "job $job (restart 1)" "$out" &&
    grep -q "resumed from .*step-$(printf %06d "$stopped") at step $stopped" "$out" &&
    t_same_lora "$T/job3/$final" "$T/local/$final"; then
    t_pass "scontrol requeue: ranks checkpointed at step $stopped, the job restarted, resumed, same final LoRA"
  else
    t_fail "scontrol requeue: checkpoint, restart, resume, same LoRA" "$(grep -v '^step\|^checkpoint' "$out" | tail -n 8)"
  fi
else
  t_fail "scontrol requeue: job $job did not complete" "state $(job_state); $(tail -n 5 "$out" 2>&1)"
  scancel "$job" 2>/dev/null || true
fi
t_finish
