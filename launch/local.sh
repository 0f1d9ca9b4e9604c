#!/usr/bin/env bash
# local.sh — run NP MPI ranks on this machine (debugging, CI, single-node runs).
#
# Usage: launch/local.sh [--timeout SECONDS] NP [--] COMMAND [ARGS...]
#        launch/local.sh --help
#
#   COMMAND  `hgdpo` means the built binary ($HGDPO_BIN, default .build/release/hgdpo), e.g.
#              launch/local.sh 4 hgdpo train --model M --data D --out RUN
#            anything else is run as given (a path, or a program on PATH), e.g. launch/local.sh 2 ./a.out
#   NP       number of ranks (positive integer; more ranks than cores is allowed: --oversubscribe).
#   --timeout SECONDS  run mpirun under `timeout -k 10 SECONDS`: SIGTERM when time is up, SIGKILL 10 s later
#            (a hung collective must not hang CI). Exit status 124 (or 137) and a message when it fires.
#
# Threads per rank: HGDPO_THREADS if set, else SLURM_CPUS_PER_TASK, else cores / NP (at least 1); exported
# as OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and HGDPO_THREADS (see launch/env.sh).
# Ranks are not bound to cores (--bind-to none) and yield when idle (OMPI_MCA_mpi_yield_when_idle=1), so
# oversubscribed runs do not starve each other.
# Transport: --mca btl self,vader (shared memory). If /dev/shm is not a writable folder, it falls back to
# --mca btl self,tcp over the loopback interface. HGDPO_BTL overrides the choice (e.g. "self,tcp").
# Extra mpirun options: HGDPO_MPIRUN_ARGS (split on whitespace), e.g.
#   HGDPO_MPIRUN_ARGS="--mca btl_vader_single_copy_mechanism none" (containers that forbid process_vm_readv).
# Exit status: mpirun's (non-zero if any rank failed); 2 for a usage error.
# Signals: a first SIGTERM, SIGINT or SIGHUP to this script is passed to the ranks as SIGUSR1 (hgdpo train:
# finish the step, checkpoint, exit 0 on every rank); a second one as it is. SIGUSR1/SIGUSR2 are passed on.
# (A SIGTERM sent to mpirun itself makes OpenMPI abort the job: ranks get SIGKILL 1 s after SIGTERM.)
set -euo pipefail

HGDPO_SCRIPT_NAME="local.sh"
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
usage_error() {
  echo "local.sh: error: $*" >&2
  echo "usage: launch/local.sh [--timeout SECONDS] NP [--] COMMAND [ARGS...]   (--help for more)" >&2
  exit 2
}

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
      if [[ -z "$np" ]]; then
        np="$1"
        shift
      else
        break
      fi
      ;;
  esac
done

[[ -n "$np" ]] || usage_error "missing NP (number of ranks)"
hgdpo_posint() { [[ "$1" =~ ^[0-9]+$ ]] && ((10#$1 > 0)); }
hgdpo_posint "$np" || usage_error "NP must be a positive integer, got '$np'"
np=$((10#$np))
if [[ -n "$limit" ]]; then
  hgdpo_posint "$limit" || usage_error "--timeout needs a positive number of seconds, got '$limit'"
fi
(($#)) || usage_error "missing COMMAND"

# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
hgdpo_set_threads "$np"

cmd=("$@")
if [[ "${cmd[0]}" == hgdpo ]]; then
  hgdpo_require_bin
  cmd[0]="$HGDPO_BIN"
fi

if [[ -n "${HGDPO_BTL:-}" ]]; then
  btl=(--mca btl "$HGDPO_BTL")
  [[ "$HGDPO_BTL" == *tcp* ]] && btl+=(--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
elif [[ -d /dev/shm && -w /dev/shm ]]; then
  btl=(--mca btl "self,vader")
else
  echo "local.sh: /dev/shm is not writable: using --mca btl self,tcp on loopback" >&2
  btl=(--mca btl "self,tcp" --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
fi

extra=()
[[ -n "${HGDPO_MPIRUN_ARGS:-}" ]] && read -r -a extra <<<"$HGDPO_MPIRUN_ARGS"

hgdpo_env_flags
hgdpo_mpirun_root_flags
mpirun_cmd=(mpirun "${HGDPO_ROOT_FLAGS[@]}" -np "$np" --oversubscribe --bind-to none
  -x OMPI_MCA_mpi_yield_when_idle=1 "${HGDPO_X_FLAGS[@]}" "${btl[@]}" "${extra[@]}" "${cmd[@]}")

command -v mpirun >/dev/null 2>&1 || hgdpo_die "mpirun not found: run launch/install-deps.sh"
if [[ -n "${HGDPO_LAUNCH_VERBOSE:-}" ]]; then
  echo "local.sh: OMP_NUM_THREADS=$OMP_NUM_THREADS${OPENBLAS_CORETYPE:+ OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE}" >&2
  echo "local.sh: ${mpirun_cmd[*]}" >&2
fi

# Not exec'd: this shell stays to pass signals on (a first SIGTERM/SIGINT/SIGHUP as SIGUSR1, which mpirun
# forwards to every rank instead of aborting the job: see hgdpo_run in launch/env.sh).
rc=0
hgdpo_run ${limit:+--timeout "$limit"} "${mpirun_cmd[@]}" || rc=$?
exit "$rc"
