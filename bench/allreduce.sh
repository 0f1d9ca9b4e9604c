#!/usr/bin/env bash
# allreduce.sh — time the trainer's gradient all-reduce (`hgdpo bench allreduce`: the U-Net LoRA of SD1.5 at rank 8,
# 1,594,368 elements, in f64 as hgdpo train sends it (its fixed-order sum, and MPI_Allreduce), and in f32) on 2 and 4 ranks of this machine (shared memory,
# and TCP over loopback), and across two hosts made on this machine (network namespaces joined by veth, one sshd
# each, launch/mpirun.sh over TCP; as launch/tests/multinode.sh), for BENCHMARKS.md.
#
# Usage: bench/allreduce.sh [ITERS]      (root for the two-host rows; default 20 iterations after 3 warm-up)
# Prints one markdown table row per setup: median time, bus bandwidth (bytes × 2(n−1)/n / time: what each rank
# sends in a ring all-reduce) and the time the same bytes take at LINK_GBS GB/s (default 4.3: the veth's streaming
# rate measured here, ../shared/cluster-notes.md), and the machine load before and after.
# Binary: HGDPO_BIN, else .build/release/hgdpo (built if missing).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
iters=${1:-20}
link=${LINK_GBS:-4.3}
[[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
if [[ -z "${HGDPO_BIN:-}" ]]; then
  [[ -x "$root/.build/release/hgdpo" ]] || (cd "$root" && swift build -c release --product hgdpo >/dev/null)
  export HGDPO_BIN="$root/.build/release/hgdpo"
fi
# The namespace hosts, temp dir and clean-up of the launch tests.
# shellcheck source=launch/tests/lib.sh
source "$root/launch/tests/lib.sh"
t_init bench-allreduce 2>/dev/null

echo "load before: $(uptime | sed 's/.*load average/load average/'), $(nproc) cores, binary $HGDPO_BIN"
echo "| setup | ranks | hosts | dtype | method | MB | median ms | min ms | bus GB/s | at ${link} GB/s ms |"
echo "|---|---|---|---|---|---|---|---|---|---|"
row() { # SETUP JSON
  local setup="$1" json="$2"
  awk -v setup="$setup" -v link="$link" -v j="$json" 'BEGIN {
    n = split(j, kv, /[{},]/)
    for (i = 1; i <= n; i++) { split(kv[i], p, ":"); gsub(/"/, "", p[1]); gsub(/"/, "", p[2]); v[p[1]] = p[2] }
    w = v["ranks"]; b = v["bytes"]
    printf "| %s | %d | %d | %s | %s | %.1f | %.2f | %.2f | %.2f | %.2f |\n", setup, w, v["hosts"], v["dtype"], v["method"], b / 1e6,
      v["median_s"] * 1e3, v["min_s"] * 1e3, v["busbw_gb_s"], b * 2 * (w - 1) / w / (link * 1e9) * 1e3 }'
}
bench=(hgdpo bench allreduce --iters "$iters")
# The trainer's fixed-order sum (f64), and MPI_Allreduce in f64 and f32.
cases=("--dtype f64 --method ordered" "--dtype f64 --method mpi" "--dtype f32 --method mpi")
for np in 2 4; do
  for c in "${cases[@]}"; do
    # shellcheck disable=SC2086  # $c is two options
    row "one host, shared memory" "$("$root/launch/local.sh" --timeout 300 "$np" "${bench[@]}" $c | grep '^{')"
  done
  row "one host, TCP loopback" "$(HGDPO_BTL=self,tcp "$root/launch/local.sh" --timeout 300 "$np" "${bench[@]}" | grep '^{')"
done
if ((EUID == 0)) && t_cluster_up >"$T/cluster.log" 2>&1; then
  export HGDPO_SSH_CONFIG="$T_SSH_CONFIG" HGDPO_MPI_IF="$T_NET.0/24" HGDPO_BTL="tcp,self"
  for per in 1 2; do
    printf '%s slots=%d\n' "${T_ADDR[0]}" "$per" "${T_ADDR[1]}" "$per" >"$T/hostfile"
    for c in "${cases[@]}"; do
      # shellcheck disable=SC2086  # $c is two options
      row "2 hosts (veth), TCP" "$(t_on_node 0 "$root/launch/mpirun.sh" --timeout 300 "$T/hostfile" $((2 * per)) "${bench[@]}" \
        $c | grep '^{')"
    done
  done
else
  echo "(two-host rows skipped: need root, iproute2 and openssh-server)"
fi
echo "load after: $(uptime | sed 's/.*load average/load average/')"
