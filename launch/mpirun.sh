#!/usr/bin/env bash
# mpirun.sh — run NP MPI ranks across the nodes of an OpenMPI hostfile (ssh-launched, no scheduler).
#
# Usage: launch/mpirun.sh [--timeout SECONDS] HOSTFILE NP [--] COMMAND [ARGS...]
#        launch/mpirun.sh --help
#
#   HOSTFILE  OpenMPI hostfile, one node a line: `node01 slots=4` (slots = ranks on that node); see
#             hostfiles/cluster-example. Ranks are placed slot by slot (--map-by slot): node01 gets ranks
#             0-3, node02 ranks 4-7, ...
#   NP        total number of ranks (positive integer, at most the sum of the slots unless you add
#             --oversubscribe through HGDPO_MPIRUN_ARGS).
#   COMMAND   `hgdpo` means the built binary ($HGDPO_BIN, default .build/release/hgdpo), which must be at
#             the same path on every node (shared filesystem); anything else is run as given.
#   --timeout SECONDS  run mpirun under `timeout -k 10 SECONDS` (a cut network can hang mpirun for good).
#
# Environment:
#   HGDPO_THREADS      threads per rank; default: cores of THIS node / ranks per node (slots of the fullest
#                      node, or NP if smaller), at least 1. Set it when the compute nodes differ from this one.
#   HGDPO_MPI_IF       network for MPI traffic and for mpirun's own wire-up, e.g. "eth0", "ib0" or
#                      "10.77.0.0/24" (→ --mca btl_tcp_if_include / oob_tcp_if_include). Set it when nodes
#                      have several interfaces (docker bridges, management nets) or start-up hangs.
#   HGDPO_SSH_CONFIG   ssh client config file used to reach the nodes (→ --mca plm_rsh_agent "ssh -F FILE").
#                      Passwordless ssh (keys) to every node is needed either way.
#   HGDPO_BTL          MPI transports (--mca btl), default "tcp,vader,self". Use "tcp,self" when the "nodes"
#                      are network namespaces of ONE machine (test setups): they share the hostname and
#                      /dev/shm, and vader's shared-memory files of the two "nodes" collide (segfaults).
#   HGDPO_BIND_TO      rank binding (--bind-to), default "none": each rank runs HGDPO_THREADS threads, which
#                      OpenMPI's default binding (one core per rank when NP <= 2) would squeeze onto one core.
#   HGDPO_OOB_KEEPALIVE "TIME,INTERVAL,PROBES" (default 30,10,3): a node whose network is cut is noticed after
#                      ~60 s and the job ends (exit 205) naming it; "off" keeps OpenMPI's 8 min (launch/env.sh).
#   HGDPO_MPIRUN_ARGS  extra mpirun options, split on whitespace (e.g. "--oversubscribe --report-bindings").
#   Passed to every rank with -x: OPENBLAS_CORETYPE (if set), OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
#   HGDPO_THREADS, PATH, LD_LIBRARY_PATH and every exported HGDPO_* variable (see launch/env.sh).
# Transport: --mca btl tcp,vader,self (shared memory inside a node, TCP between nodes); see HGDPO_BTL.
# Exit status: mpirun's (non-zero if any rank failed); 2 for a usage error; 1 for a bad hostfile.
# Signals: a first SIGTERM, SIGINT or SIGHUP to this script is passed to the ranks as SIGUSR1 (hgdpo train:
# finish the step, checkpoint, exit 0 on every rank); a second one as it is. SIGUSR1/SIGUSR2 are passed on.
# (A SIGTERM sent to mpirun itself makes OpenMPI abort the job: ranks get SIGKILL 1 s after SIGTERM.)
set -euo pipefail

HGDPO_SCRIPT_NAME="mpirun.sh"
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
usage_error() {
  echo "mpirun.sh: error: $*" >&2
  echo "usage: launch/mpirun.sh [--timeout SECONDS] HOSTFILE NP [--] COMMAND [ARGS...]   (--help for more)" >&2
  exit 2
}
posint() { [[ "$1" =~ ^[0-9]+$ ]] && ((10#$1 > 0)); }

hostfile=""
np=""
limit=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --timeout)
      (($# >= 2)) || usage_error "--timeout needs a number of seconds"
      limit="$2"
      shift 2
      ;;
    --timeout=*) limit="${1#--timeout=}"; shift ;;
    --) shift; break ;;
    -*) usage_error "unknown option: $1" ;;
    *)
      if [[ -z "$hostfile" ]]; then
        hostfile="$1"
      elif [[ -z "$np" ]]; then
        np="$1"
      else
        break
      fi
      shift
      ;;
  esac
done

[[ -n "$hostfile" ]] || usage_error "missing HOSTFILE"
[[ -n "$np" ]] || usage_error "missing NP (number of ranks)"
posint "$np" || usage_error "NP must be a positive integer, got '$np'"
np=$((10#$np))
if [[ -n "$limit" ]]; then
  posint "$limit" || usage_error "--timeout needs a positive number of seconds, got '$limit'"
fi
(($#)) || usage_error "missing COMMAND"

# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# --- hostfile ------------------------------------------------------------------------------------
[[ -e "$hostfile" ]] || hgdpo_die "hostfile not found: $hostfile"
[[ -f "$hostfile" && -r "$hostfile" ]] || hgdpo_die "hostfile is not a readable file: $hostfile"
# Slots per node: `host slots=N` adds N, a line without slots adds 1; a node may appear on several lines.
declare -A slots_of=()
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line%%#*}"
  read -r -a words <<<"$line" || true
  ((${#words[@]})) || continue
  n=1
  for w in "${words[@]:1}"; do
    if [[ "$w" =~ ^slots=([0-9]+)$ ]]; then n=$((10#${BASH_REMATCH[1]})); fi
  done
  slots_of[${words[0]}]=$((${slots_of[${words[0]}]:-0} + n))
done <"$hostfile"
((${#slots_of[@]})) || hgdpo_die "hostfile has no hosts (only blank or comment lines): $hostfile"
max_slots=0
total_slots=0
for h in "${!slots_of[@]}"; do
  ((slots_of[$h] > max_slots)) && max_slots=${slots_of[$h]}
  total_slots=$((total_slots + slots_of[$h]))
done
ranks_per_node=$((np < max_slots ? np : max_slots))
((ranks_per_node >= 1)) || ranks_per_node=1
hgdpo_set_threads "$ranks_per_node"
hostfile_abs="$(cd "$(dirname "$hostfile")" && pwd)/$(basename "$hostfile")"

# --- command -------------------------------------------------------------------------------------
cmd=("$@")
if [[ "${cmd[0]}" == hgdpo ]]; then
  hgdpo_require_bin
  cmd[0]="$HGDPO_BIN"
fi

opts=(--hostfile "$hostfile_abs" -np "$np" --map-by slot --bind-to "${HGDPO_BIND_TO:-none}" --mca btl "${HGDPO_BTL:-tcp,vader,self}")
if [[ -n "${HGDPO_MPI_IF:-}" ]]; then
  opts+=(--mca btl_tcp_if_include "$HGDPO_MPI_IF" --mca oob_tcp_if_include "$HGDPO_MPI_IF")
fi
if [[ -n "${HGDPO_SSH_CONFIG:-}" ]]; then
  [[ -f "$HGDPO_SSH_CONFIG" && -r "$HGDPO_SSH_CONFIG" ]] || hgdpo_die "HGDPO_SSH_CONFIG is not a readable file: $HGDPO_SSH_CONFIG"
  ssh_config="$(cd "$(dirname "$HGDPO_SSH_CONFIG")" && pwd)/$(basename "$HGDPO_SSH_CONFIG")"
  [[ "$ssh_config" != *[[:space:]]* ]] || hgdpo_die "HGDPO_SSH_CONFIG path must not contain spaces: $ssh_config"
  opts+=(--mca plm_rsh_agent "ssh -F $ssh_config")
fi
extra=()
[[ -n "${HGDPO_MPIRUN_ARGS:-}" ]] && read -r -a extra <<<"$HGDPO_MPIRUN_ARGS"

hgdpo_env_flags
hgdpo_mpirun_root_flags
hgdpo_keepalive_flags
mpirun_cmd=(mpirun "${HGDPO_ROOT_FLAGS[@]}" "${opts[@]}" "${HGDPO_KEEPALIVE_FLAGS[@]}" "${HGDPO_X_FLAGS[@]}" "${extra[@]}" "${cmd[@]}")

command -v mpirun >/dev/null 2>&1 || hgdpo_die "mpirun not found: run launch/install-deps.sh"
if ((np > total_slots)) && [[ " ${extra[*]} " != *" --oversubscribe "* ]]; then
  echo "mpirun.sh: warning: NP=$np is more than the $total_slots slots in $hostfile (mpirun will refuse unless HGDPO_MPIRUN_ARGS has --oversubscribe)" >&2
fi
if [[ -n "${HGDPO_LAUNCH_VERBOSE:-}" ]]; then
  echo "mpirun.sh: ${#slots_of[@]} host(s), $total_slots slots, $ranks_per_node ranks/node, OMP_NUM_THREADS=$OMP_NUM_THREADS${OPENBLAS_CORETYPE:+ OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE}" >&2
  echo "mpirun.sh: ${mpirun_cmd[*]}" >&2
fi

# Not exec'd: this shell stays to pass signals on (a first SIGTERM/SIGINT/SIGHUP as SIGUSR1, which mpirun
# forwards to every rank instead of aborting the job: see hgdpo_run in launch/env.sh).
rc=0
hgdpo_run ${limit:+--timeout "$limit"} "${mpirun_cmd[@]}" || rc=$?
exit "$rc"
