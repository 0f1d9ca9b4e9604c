# shellcheck shell=bash
# env.sh — common environment for the hgdpo launch scripts. SOURCE it, do not execute it:
#
#   source launch/env.sh            # in a script or an interactive bash
#
# What it sets up (nothing here starts a process):
#   HGDPO_ROOT     repo root (the folder above launch/), unless already set.
#   HGDPO_BIN      the hgdpo binary: $HGDPO_BIN if set (relative paths made absolute), else
#                  $HGDPO_ROOT/.build/release/hgdpo (built by `swift build -c release`).
#   OPENBLAS_CORETYPE=SkylakeX  only if /proc/cpuinfo has avx512f and the variable is not set already
#                  (never on CPUs without avx512f: OpenBLAS would die with an illegal instruction).
#   OPENBLAS_THREAD_TIMEOUT=4  unless set: OpenBLAS's idle threads sleep at once instead of spinning.
#   HGDPO_THREADS, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS  threads per rank, all the same value:
#                  $HGDPO_THREADS if you set it; else $SLURM_CPUS_PER_TASK; else nproc / local ranks (>= 1).
#                  Local ranks = $HGDPO_LOCAL_RANKS (default 1) at source time; the launch scripts call
#                  `hgdpo_set_threads NP_PER_NODE` again once they know it.
#   OMPI_ALLOW_RUN_AS_ROOT=1, OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  only when running as root.
#
# Functions:
#   hgdpo_set_threads N      recompute the threads per rank for N ranks on this node (see above).
#   hgdpo_env_flags          fills the array HGDPO_X_FLAGS with `-x VAR` for mpirun: OPENBLAS_CORETYPE,
#                            OPENBLAS_THREAD_TIMEOUT, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, HGDPO_THREADS, PATH, LD_LIBRARY_PATH and
#                            every exported HGDPO_* variable (only those that are set and exported).
#   hgdpo_require_bin        exits 1 with a hint to build if $HGDPO_BIN is not an executable.
#   hgdpo_mpirun_root_flags  fills HGDPO_ROOT_FLAGS with --allow-run-as-root when running as root.
#   hgdpo_keepalive_flags    fills HGDPO_KEEPALIVE_FLAGS with mpirun's TCP keepalive settings for its connections
#                            to the node daemons, from HGDPO_OOB_KEEPALIVE="TIME,INTERVAL,PROBES" (default
#                            30,10,3): a node whose network is cut (or that lost power) is noticed after
#                            TIME + INTERVAL×PROBES s (~60 s) and mpirun ends the job (exit 205) naming it.
#                            OpenMPI's default is 300,20,9 (8 min). Keep it well below hgdpo train's
#                            --collective-timeout (600 s): once a rank has ended the job, mpirun waits for an
#                            unreachable node for TCP's retransmission limit (~15 min). HGDPO_OOB_KEEPALIVE=off
#                            leaves OpenMPI's settings.
#   hgdpo_cpu_has_avx512f [CPUINFO]   true if the CPU flags include avx512f.
#   hgdpo_run [--timeout S] CMD...  runs CMD (mpirun or srun) in the background with stdin kept, passes INT
#                            TERM HUP USR1 USR2 on to it, waits for it and returns its exit status.
#                            mpirun forwards USR1/USR2 to every rank but takes TERM/INT/HUP as "abort the job"
#                            (SIGTERM to the ranks, SIGKILL 1 s later, exit status 1): so the FIRST TERM, INT
#                            or HUP is passed on as ${HGDPO_STOP_SIGNAL:-USR1} (the trainer then finishes its
#                            step, checkpoints and exits 0 on every rank); a second one is passed on as it is.
#                            HGDPO_STOP_SIGNAL=TERM passes every signal on unchanged.
#                            With --timeout, CMD runs under `timeout -k ${HGDPO_KILL_AFTER:-10} S` (SIGTERM,
#                            then SIGKILL to its whole process group) and a message is printed when the time
#                            ran out (status 124/137); USR1/USR2 then go to timeout's child (timeout itself
#                            would die of them). The signals that arrived are in HGDPO_SIGNALS_SEEN (" USR1").
#   hgdpo_resume_args ARGS...  (Slurm scripts) sets HGDPO_TRAIN_ARGS to ARGS plus `--resume ${HGDPO_RESUME-auto}`
#                            unless ARGS has --resume already or HGDPO_RESUME is set to the empty string.
#   hgdpo_slurm_requeue      (Slurm scripts) after a SIGUSR1 (time limit near) was seen by hgdpo_run:
#                            `scontrol requeue $SLURM_JOB_ID` unless HGDPO_REQUEUE=0 or the job was already
#                            requeued HGDPO_MAX_REQUEUES (default 10) times. Returns 0 if it requeued.
#   hgdpo_die MSG / hgdpo_is_posint VALUE
#
# A value of HGDPO_THREADS that env.sh computed itself is remembered in _HGDPO_AUTO_THREADS, so sourcing
# env.sh again (or a launch script started from a shell that sourced it) recomputes it instead of taking
# it for a user setting.

if [[ -z "${BASH_VERSION:-}" ]]; then
  echo "env.sh: must be sourced from bash" >&2
  # shellcheck disable=SC2317  # the exit is reached only when this file is executed instead of sourced
  return 1 2>/dev/null || exit 1
fi

hgdpo_die() {
  echo "${HGDPO_SCRIPT_NAME:-hgdpo}: error: $*" >&2
  # In an interactive shell that sourced this file, do not close the user's terminal.
  [[ $- == *i* ]] && return 1
  exit 1
}

hgdpo_is_posint() { [[ "${1:-}" =~ ^[0-9]+$ ]] && ((10#$1 > 0)); }

hgdpo_cpu_has_avx512f() {
  local cpuinfo="${1:-/proc/cpuinfo}"
  [[ -r "$cpuinfo" ]] && grep -m1 '^flags' "$cpuinfo" | grep -qw avx512f
}

hgdpo_set_threads() {
  local ranks="${1:-1}" threads cores
  hgdpo_is_posint "$ranks" || ranks=1
  if [[ -n "${HGDPO_THREADS:-}" && "${HGDPO_THREADS}" != "${_HGDPO_AUTO_THREADS:-}" ]]; then
    hgdpo_is_posint "$HGDPO_THREADS" || hgdpo_die "HGDPO_THREADS must be a positive integer, got '$HGDPO_THREADS'"
    threads=$((10#$HGDPO_THREADS))
    unset _HGDPO_AUTO_THREADS
  else
    if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && hgdpo_is_posint "$SLURM_CPUS_PER_TASK"; then
      threads=$((10#$SLURM_CPUS_PER_TASK))
    else
      cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
      hgdpo_is_posint "$cores" || cores=1
      threads=$((cores / ranks))
    fi
    ((threads >= 1)) || threads=1
    export _HGDPO_AUTO_THREADS="$threads"
  fi
  export HGDPO_THREADS="$threads" OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads"
}

# shellcheck disable=SC2034
hgdpo_env_flags() {
  HGDPO_X_FLAGS=()
  local v
  local -a names=(OPENBLAS_CORETYPE OPENBLAS_THREAD_TIMEOUT OMP_NUM_THREADS OPENBLAS_NUM_THREADS HGDPO_THREADS PATH LD_LIBRARY_PATH)
  local -A exported=() seen=()
  while IFS= read -r v; do
    exported[$v]=1
    [[ "$v" == HGDPO_* ]] && names+=("$v")
  done < <(compgen -e)
  for v in "${names[@]}"; do
    [[ -n "${exported[$v]:-}" && -z "${seen[$v]:-}" ]] || continue
    seen[$v]=1
    HGDPO_X_FLAGS+=(-x "$v")
  done
}

# shellcheck disable=SC2034  # HGDPO_ROOT_FLAGS / HGDPO_X_FLAGS are read by the scripts that source this
hgdpo_mpirun_root_flags() {
  HGDPO_ROOT_FLAGS=()
  ((EUID == 0)) && HGDPO_ROOT_FLAGS=(--allow-run-as-root)
  return 0
}

# shellcheck disable=SC2034  # HGDPO_KEEPALIVE_FLAGS is read by the scripts that source this
hgdpo_keepalive_flags() {
  HGDPO_KEEPALIVE_FLAGS=()
  local spec="${HGDPO_OOB_KEEPALIVE:-30,10,3}" time intvl probes
  [[ "$spec" == off ]] && return 0
  IFS=, read -r time intvl probes <<<"$spec"
  hgdpo_is_posint "$time" && hgdpo_is_posint "$intvl" && hgdpo_is_posint "$probes" ||
    hgdpo_die "HGDPO_OOB_KEEPALIVE must be TIME,INTERVAL,PROBES (positive integers, seconds) or off, got '$spec'"
  HGDPO_KEEPALIVE_FLAGS=(--mca oob_tcp_keepalive_time "$time" --mca oob_tcp_keepalive_intvl "$intvl"
    --mca oob_tcp_keepalive_probes "$probes")
}

hgdpo_require_bin() {
  if [[ "$HGDPO_BIN" == */* ]]; then
    [[ -x "$HGDPO_BIN" && ! -d "$HGDPO_BIN" ]] ||
      hgdpo_die "hgdpo binary not found or not executable: $HGDPO_BIN
  Build it with: (cd '$HGDPO_ROOT' && swift build -c release), or point HGDPO_BIN at it."
  else
    command -v "$HGDPO_BIN" >/dev/null 2>&1 || hgdpo_die "HGDPO_BIN='$HGDPO_BIN' is not on PATH"
  fi
}

# The trap of hgdpo_run: SIGNAL PID TIMED (TIMED non-empty when PID is a `timeout` wrapper).
_hgdpo_pass_signal() {
  local sig="$1" pid="$2" timed="$3" as="$1" target="$2" name="${HGDPO_SCRIPT_NAME:-hgdpo}"
  HGDPO_SIGNALS_SEEN+=" $sig"
  if [[ "$sig" == TERM || "$sig" == INT || "$sig" == HUP ]]; then
    if ((_HGDPO_STOPS == 0)); then
      as="${HGDPO_STOP_SIGNAL:-USR1}"
      as="${as#SIG}"
    fi
    _HGDPO_STOPS=$((_HGDPO_STOPS + 1))
  fi
  if [[ -n "$timed" && "$as" != TERM && "$as" != INT && "$as" != HUP ]]; then
    # `timeout` passes only TERM INT HUP (and a few more) on; it would die of USR1. Signal its child.
    target="$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    target="${target//[$'\n ']/ }"
    [[ -n "${target// /}" ]] || target="$pid"
  fi
  if [[ "$as" == "$sig" ]]; then
    echo "$name: got SIG$sig, passing it on" >&2
  else
    echo "$name: got SIG$sig, passing it on as SIG$as (every rank finishes its step, checkpoints, exits; send SIG$sig again to abort at once)" >&2
  fi
  # shellcheck disable=SC2086  # target may be several pids
  kill -s "$as" $target 2>/dev/null || true
}

hgdpo_run() {
  local limit=""
  if [[ "${1:-}" == --timeout ]]; then
    limit="$2"
    shift 2
  fi
  local -a cmd=("$@")
  [[ -n "$limit" ]] && cmd=(timeout -k "${HGDPO_KILL_AFTER:-10}" "$limit" "${cmd[@]}")
  "${cmd[@]}" <&0 &
  local pid=$! rc=0 sig
  HGDPO_SIGNALS_SEEN=""
  _HGDPO_STOPS=0
  for sig in INT TERM HUP USR1 USR2; do
    # shellcheck disable=SC2064  # expand $sig and $pid now
    trap "_hgdpo_pass_signal $sig $pid '$limit'" "$sig"
  done
  while :; do
    wait "$pid" || true
    # wait also returns when a trapped signal arrives; the child's own status is remembered by bash.
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || rc=$?
      break
    fi
  done
  trap - INT TERM HUP USR1 USR2
  if [[ -n "$limit" ]] && ((rc == 124 || rc == 137)); then
    echo "${HGDPO_SCRIPT_NAME:-hgdpo}: error: timed out after ${limit}s (exit $rc): ${*}" >&2
  fi
  return "$rc"
}

# shellcheck disable=SC2034  # HGDPO_TRAIN_ARGS is read by the Slurm scripts
hgdpo_resume_args() {
  HGDPO_TRAIN_ARGS=("$@")
  local a resume="${HGDPO_RESUME-auto}"
  [[ -n "$resume" ]] || return 0
  for a in "$@"; do
    [[ "$a" == --resume || "$a" == --resume=* ]] && return 0
  done
  HGDPO_TRAIN_ARGS+=(--resume "$resume")
}

hgdpo_slurm_requeue() {
  local name="${HGDPO_SCRIPT_NAME:-hgdpo}" count="${SLURM_RESTART_COUNT:-0}" max="${HGDPO_MAX_REQUEUES:-10}"
  [[ "${HGDPO_SIGNALS_SEEN:-}" == *USR1* && -n "${SLURM_JOB_ID:-}" ]] || return 1
  if [[ "${HGDPO_REQUEUE:-1}" == 0 ]]; then
    echo "$name: time limit near, not requeueing (HGDPO_REQUEUE=0)" >&2
    return 1
  fi
  if ((count >= max)); then
    echo "$name: not requeueing: already requeued $count times (HGDPO_MAX_REQUEUES=$max)" >&2
    return 1
  fi
  echo "$name: requeueing job $SLURM_JOB_ID (restart $((count + 1))) to continue from the last checkpoint"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "$name: warning: scontrol requeue $SLURM_JOB_ID failed" >&2
    return 1
  fi
}

# --- resolve paths ---------------------------------------------------------------------------------
HGDPO_LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${HGDPO_ROOT:-}" ]]; then
  HGDPO_ROOT="$(cd "$HGDPO_LAUNCH_DIR/.." && pwd)"
fi
export HGDPO_ROOT
if [[ -z "${HGDPO_BIN:-}" ]]; then
  HGDPO_BIN="$HGDPO_ROOT/.build/release/hgdpo"
elif [[ "$HGDPO_BIN" == */* && "$HGDPO_BIN" != /* ]]; then
  HGDPO_BIN="$PWD/$HGDPO_BIN"
fi
export HGDPO_BIN

# --- OpenBLAS kernel selection ---------------------------------------------------------------------
# Decided on the node that sources this file; mpirun forwards it with -x, so on a cluster with mixed CPU
# generations set OPENBLAS_CORETYPE yourself (or leave it unset on every node).
if [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
  if hgdpo_cpu_has_avx512f /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
  fi
elif [[ "${OPENBLAS_CORETYPE,,}" =~ ^(skylakex|cooperlake|sapphirerapids)$ ]] && ! hgdpo_cpu_has_avx512f /proc/cpuinfo; then
  echo "${HGDPO_SCRIPT_NAME:-env.sh}: warning: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE but this CPU has no avx512f (illegal instruction likely)" >&2
fi

# OpenBLAS's idle threads spin (sched_yield) for 2^OPENBLAS_THREAD_TIMEOUT cycles (default 2^28, ~0.1 s) before
# sleeping, taking a core from hgdpo's own workers (attention, norms, im2col) between GEMMs. 2^4 lets them sleep at
# once: bench step small@32 on 2 threads 0.60 → 0.54 s, sd15@32 unchanged within noise (2026-12).
export OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}"

# --- threads per rank ------------------------------------------------------------------------------
hgdpo_set_threads "${HGDPO_LOCAL_RANKS:-1}"

# --- OpenMPI as root -------------------------------------------------------------------------------
if ((EUID == 0)); then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
