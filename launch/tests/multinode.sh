#!/usr/bin/env bash
# multinode.sh — a real multi-host run: two hosts made on this machine (network namespaces joined by veth,
# one sshd each, own hostnames), `launch/mpirun.sh HOSTFILE` over their addresses running a short
# `hgdpo train` (tiny random U-Net, random latents), 1 and then 2 ranks per host. The LoRA must equal, bit for
# bit, that of a single-host run with as many ranks (launch/local.sh), and the logged losses too.
#
# Usage: launch/tests/multinode.sh      (root; needs iproute2, openssh-server, OpenMPI; ~20 s)
# Cleans up namespaces, sshd and temp files also when it fails (see lib.sh).
set -euo pipefail
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_init multinode
t_need_root
t_need_cmd ip sshd ssh ssh-keygen unshare mpirun

t_make_world "$T" || { t_fail "make the tiny world"; t_finish; }
steps=3
train=(hgdpo train --model "$T/model" --data "$T/cache" "${T_TRAIN_OPTS[@]}" --max-steps "$steps" --checkpoint-every 1
  --collective-timeout 60)
lora() { echo "$1/step-$(printf %06d "$steps")/pytorch_lora_weights.safetensors"; }

# The references: the same ranks on one host. (The trainer's result does not depend on the rank count up to the
# rounding of the gradient sums' order; with the same rank count it is bit-identical.)
for np in 2 4; do
  t_job 120 "$T_ROOT/launch/local.sh" --timeout 100 "$np" "${train[@]}" --out "$T/single-$np" >"$T/single-$np.log" 2>&1
  if ((T_RC == 0)) && [[ -s "$(lora "$T/single-$np")" ]]; then
    t_pass "single-host reference run, $np ranks (${T_SECONDS}s)"
  else
    t_fail "single-host reference run, $np ranks" "exit $T_RC: $(tail -n 5 "$T/single-$np.log")"
    t_finish
  fi
done

if ! t_cluster_up >"$T/cluster.log" 2>&1; then
  t_fail "two namespace hosts with sshd" "$(tail -n 5 "$T/cluster.log")"
  t_finish
fi
t_pass "two hosts up: ${T_NODE[0]} ${T_ADDR[0]}, ${T_NODE[1]} ${T_ADDR[1]} (sshd, ssh between them)"

export HGDPO_SSH_CONFIG="$T_SSH_CONFIG" HGDPO_MPI_IF="$T_NET.0/24" HGDPO_BTL="tcp,self"
for per_node in 1 2; do
  np=$((2 * per_node))
  printf '%s slots=%d\n' "${T_ADDR[0]}" "$per_node" "${T_ADDR[1]}" "$per_node" >"$T/hostfile-$per_node"
  out="$T/multi-$np"
  # mpirun runs on host a; ranks 0..per_node-1 there, the others on host b (started through ssh).
  t_job 180 "${T_ON0[@]}" "$T_ROOT/launch/mpirun.sh" --timeout 150 "$T/hostfile-$per_node" "$np" "${train[@]}" \
    --out "$out" >"$out.log" 2>&1
  if ((T_RC != 0)); then
    t_fail "$np ranks on 2 hosts (mpirun --hostfile)" "exit $T_RC after ${T_SECONDS}s: $(tail -n 8 "$out.log")"
    continue
  fi
  t_pass "$np ranks on 2 hosts: hgdpo train through launch/mpirun.sh, ${T_SECONDS}s"
  # Where did the ranks run? `hgdpo probe mpi` reports each rank's host.
  t_job 60 "${T_ON0[@]}" "$T_ROOT/launch/mpirun.sh" --timeout 50 "$T/hostfile-$per_node" "$np" hgdpo probe mpi --count 1000 \
    >"$T/probe-$np.json" 2>"$T/probe-$np.err"
  hosts="$(grep -o '"host":"[^"]*"' "$T/probe-$np.json" | sort | uniq -c | tr -s ' \n' ' ')"
  if ((T_RC == 0)) && grep -q '"ok":true' "$T/probe-$np.json" &&
    [[ "$(grep -o "\"host\":\"${T_NODE[0]}\"" "$T/probe-$np.json" | wc -l)" == "$per_node" ]] &&
    [[ "$(grep -o "\"host\":\"${T_NODE[1]}\"" "$T/probe-$np.json" | wc -l)" == "$per_node" ]]; then
    t_pass "$np ranks: probe mpi exact, $per_node rank(s) on each host ($hosts)"
  else
    t_fail "$np ranks: probe mpi across the hosts" "exit $T_RC, hosts: $hosts $(tail -n 3 "$T/probe-$np.err")"
  fi
  if t_same_lora "$(lora "$out")" "$(lora "$T/single-$np")"; then
    t_pass "$np ranks on 2 hosts: LoRA after $steps steps bit-identical to the single-host run's"
  else
    t_fail "$np ranks on 2 hosts: LoRA differs from the single-host run's" "$(lora "$out")"
  fi
  if t_same_numbers loss "$out/metrics.jsonl" "$T/single-$np/metrics.jsonl" 0; then
    t_pass "$np ranks: the $steps logged losses equal the single-host run's"
  else
    t_fail "$np ranks: the logged losses differ from the single-host run's" "$T_DIFF"
  fi
done
t_finish
