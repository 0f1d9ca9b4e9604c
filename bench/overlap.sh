#!/usr/bin/env bash
# overlap.sh — the training step on 2 hosts with the gradient all-reduce overlapped with the backward (--bucket-mb)
# and without (--bucket-mb 0), runs interleaved, for BENCHMARKS.md. The hosts are the launch tests' network
# namespaces joined by a veth, one sshd each (launch/tests/lib.sh, t_cluster_up), one rank per host over OpenMPI's
# TCP path; both namespaces share this machine's cores, so each rank gets cores / 2 threads.
#
# Usage: bench/overlap.sh CONFIG LATENT TRAIN STEPS ROUNDS [BUCKET_MB...]   (root; OpenMPI, iproute2, openssh-server)
#   e.g. bench/overlap.sh small 32 lora 6 3        bench/overlap.sh small 32 unet 6 3
#   TRAIN: lora (the LoRA's gradient) or unet (every U-Net parameter: --train unet --objective sft, a big gradient).
#   Global batch 2 (local batch 1 on each rank), a random-weight U-Net of the bench shape and random latents.
#   Each round runs --bucket-mb 0, then each BUCKET_MB given (default 4).
# LINK_RATE=2gbit (any tc rate) limits each veth to that rate (tc tbf): the network, not the shared cores, is then
# the bottleneck, as on a cluster with a slow interconnect (without it the veth's copies run on the same 2 cores as
# the compute, so the overlap can only hide the waiting, not the work of the transfer).
# Checks that every run ends with the same weights and optimizer state, bit for bit. Prints one line per run (median step and exposed all-reduce time over the steps after the first, buckets sent
# during the backward, load average) and the medians per setting.
set -euo pipefail
config=${1:?CONFIG}; latent=${2:?LATENT}; what=${3:?lora or unet}; steps=${4:?STEPS}; rounds=${5:?ROUNDS}; shift 5
buckets=("$@"); ((${#buckets[@]})) || buckets=(4)
[[ "$what" == lora || "$what" == unet ]] || { echo "overlap.sh: TRAIN must be lora or unet, got '$what'" >&2; exit 2; }
# shellcheck source=launch/tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch/tests/lib.sh"
t_init overlap-bench
t_need_root
t_need_cmd ip sshd ssh ssh-keygen unshare mpirun
"$HGDPO_BIN" make-model --shape "$config" --parts unet --out "$T/model" --seed 3 >/dev/null
context=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cross_attention_dim'])" "$T/model/unet/config.json")
"$HGDPO_BIN" make-cache --count 64 --latent "4,$latent,$latent" --context "77,$context" --out "$T/cache" >/dev/null
t_cluster_up >"$T/cluster.log" 2>&1 || { cat "$T/cluster.log"; t_fail "two namespace hosts"; t_finish; }
if [[ -n "${LINK_RATE:-}" ]]; then
  for i in 0 1; do ip netns exec "${T_NS[$i]}" tc qdisc add dev "${T_VETH[$i]}" root tbf rate "$LINK_RATE" burst 1mb latency 500ms; done
fi
export HGDPO_SSH_CONFIG="$T_SSH_CONFIG" HGDPO_MPI_IF="$T_NET.0/24" HGDPO_BTL="tcp,self"
export HGDPO_THREADS=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
printf '%s slots=1\n%s slots=1\n' "${T_ADDR[0]}" "${T_ADDR[1]}" >"$T/hostfile"
extra=(--lr 1e-5 --optimizer adamw)
[[ "$what" == unet ]] && extra+=(--train unet --objective sft)
echo "config $config@$latent, --train $what, 2 hosts x 1 rank x $HGDPO_THREADS threads, global batch 2, $steps steps, link ${LINK_RATE:-veth unlimited}, $(date -u +%H:%M) UTC"
results="$T/results"
: >"$results"
for ((r = 1; r <= rounds; r++)); do
  for b in 0 "${buckets[@]}"; do
    out="$T/run-$r-$b"
    load=$(cut -d' ' -f1 /proc/loadavg)
    t_job 3600 "${T_ON0[@]}" "$T_ROOT/launch/mpirun.sh" --timeout 3500 "$T/hostfile" 2 hgdpo train --model "$T/model" \
      --data "$T/cache" --out "$out" --global-batch 2 --local-batch 1 --max-steps "$steps" --checkpoint-every 1000000 \
      --seed 1 --bucket-mb "$b" "${extra[@]}" >"$out.log" 2>&1
    ((T_RC == 0)) || { tail -n 20 "$out.log"; t_fail "run $r, --bucket-mb $b"; t_finish; }
    # Every run ends with the same weights and optimizer state, bit for bit (the sum's order does not depend on buckets).
    for f in "$out"/step-*/*.safetensors; do
      ref="$T/run-1-0/${f#"$out"/}"
      cmp -s "$f" "$ref" || { t_fail "run $r, --bucket-mb $b: $(basename "$f") differs from round 1 --bucket-mb 0's"; }
    done
    python3 - "$r" "$b" "$load" "$out/metrics.jsonl" <<'PY' | tee -a "$results"
import json, statistics, sys
r, b, load, path = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()][1:]
step = statistics.median(x["step_s"] for x in rows)
comm = statistics.median(x["allreduce_s"] for x in rows)
print(f"round {r} --bucket-mb {b:>4}: step {step:.3f} s, all-reduce waited {comm * 1e3:7.1f} ms, "
      f"buckets {rows[-1]['grad_buckets']} ({rows[-1]['grad_buckets_overlapped']} during the backward), load {load}")
PY
  done
done
python3 - "$results" <<'PY'
import re, statistics, sys
by = {}
for line in open(sys.argv[1]):
    m = re.search(r"--bucket-mb\s+(\S+): step ([\d.]+) s, all-reduce waited\s+([\d.]+) ms", line)
    by.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
for b, v in by.items():
    print(f"--bucket-mb {b}: median step {statistics.median(s for s, _ in v):.3f} s, "
          f"median all-reduce waited {statistics.median(c for _, c in v):.1f} ms over {len(v)} runs")
PY
t_pass "overlap benchmark"
t_finish
