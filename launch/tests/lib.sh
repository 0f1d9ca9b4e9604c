# shellcheck shell=bash
# lib.sh — shared helpers of the launch tests (launch/tests/*.sh). SOURCE it from a test script:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   t_init NAME                 # temp dir $T, clean-up trap, tag for leftover processes
#   t_on_cleanup 'CMD'          # runs at exit (also on failure or a signal), last registered first
#   t_job LIMIT CMD...          # CMD under `timeout -k 5 LIMIT`; status in T_RC, seconds in T_SECONDS
#   t_pass WHAT / t_fail WHAT [DETAIL]   # one PASS / FAIL line
#   t_finish                    # summary line, exit status 1 if anything failed
#
# Every test prints one line per check, "PASS name: what" or "FAIL name: what (detail)", and at the end
# "launch-test name: N passed, M failed" (launch/tests/run-all.sh and launch/test.sh count these lines).
# A test that cannot run here (not root, a tool missing) prints "SKIP name: why" and exits 0.
#
# Clean-up always runs (EXIT, INT, TERM, HUP traps): the registered commands, then every process that is still
# alive and carries this test's tag (HGDPO_TEST_TAG in its environment, which mpirun passes on to every rank
# with -x, or the temp dir in its command line) is killed with SIGKILL, then the temp dir is removed
# (kept when HGDPO_TEST_KEEP=1, for debugging).
#
# Environment: HGDPO_BIN (default: REPO/.build/release/hgdpo, else REPO/.build/debug/hgdpo).

T_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
T_PASSED=0
T_FAILED=0
T_CLEANUPS=()
T=""

t_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

t_init() {
  T_NAME="$1"
  export HGDPO_TEST_TAG="hgdpo-launch-test-$T_NAME-$$"
  T="$(mktemp -d "${TMPDIR:-/tmp}/hgdpo-$T_NAME.XXXXXX")"
  # Any OpenMPI session folders go into the temp dir too (removed with it).
  export TMPDIR="$T" OMPI_MCA_orte_tmpdir_base="$T"
  trap 't_cleanup' EXIT
  # A command that fails unexpectedly (set -e ends the test) still leaves a FAIL line saying where.
  set -E
  trap 'echo "FAIL $T_NAME: unexpected error (exit $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
  trap 't_log "$T_NAME: interrupted"; exit 130' INT
  trap 't_log "$T_NAME: terminated"; exit 143' TERM HUP
  [[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
  if [[ -z "${HGDPO_BIN:-}" ]]; then
    HGDPO_BIN="$T_ROOT/.build/release/hgdpo"
    [[ -x "$HGDPO_BIN" ]] || HGDPO_BIN="$T_ROOT/.build/debug/hgdpo"
  fi
  export HGDPO_BIN
  if [[ ! -x "$HGDPO_BIN" ]]; then
    t_fail "hgdpo binary" "not found: $HGDPO_BIN (build it: swift build, or set HGDPO_BIN)"
    t_finish
  fi
  export HGDPO_ROOT="$T_ROOT"
  t_log "$T_NAME: temp dir $T, binary $HGDPO_BIN"
}

t_on_cleanup() { T_CLEANUPS+=("$1"); }

# Processes of this test: the tag in their environment, or the temp dir in their command line.
t_pids() {
  local p pid
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    if grep -qsa "HGDPO_TEST_TAG=$HGDPO_TEST_TAG" "$p/environ" 2>/dev/null ||
      { [[ -n "$T" ]] && grep -qsaF "$T" "$p/cmdline" 2>/dev/null; }; then
      echo "$pid"
    fi
  done
}

t_kill_leftovers() {
  local -a pids victims=()
  local pid
  mapfile -t pids < <(t_pids)
  # (The scan's own short-lived helpers carry the tag too: only what is still alive afterwards counts.)
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && victims+=("$pid")
  done
  ((${#victims[@]})) || return 0
  t_log "$T_NAME: killing ${#victims[@]} leftover process(es): $(ps -o pid=,comm= -p "$(IFS=,; echo "${victims[*]}")" 2>/dev/null | tr -s ' \n' ' ')"
  kill -9 "${victims[@]}" 2>/dev/null || true
}

t_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  local i
  for ((i = ${#T_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${T_CLEANUPS[$i]}" >/dev/null 2>&1 || true
  done
  t_kill_leftovers
  if [[ -n "$T" && -d "$T" ]]; then
    if [[ "${HGDPO_TEST_KEEP:-0}" == 1 ]]; then
      t_log "$T_NAME: kept $T (HGDPO_TEST_KEEP=1)"
    else
      rm -rf "$T"
    fi
  fi
  exit "$rc"
}

t_pass() { T_PASSED=$((T_PASSED + 1)); echo "PASS $T_NAME: $1"; }
t_fail() {
  T_FAILED=$((T_FAILED + 1))
  echo "FAIL $T_NAME: $1${2:+ ($2)}"
}

t_skip() {
  echo "SKIP $T_NAME: $*"
  exit 0
}

t_finish() {
  echo "launch-test $T_NAME: $T_PASSED passed, $T_FAILED failed"
  ((T_FAILED == 0)) || exit 1
  exit 0
}

# t_job LIMIT CMD...: runs CMD with a hard bound (SIGTERM at LIMIT s, SIGKILL 5 s later); never fails the
# script: the status goes to T_RC (124/137 when the bound fired) and the wall time to T_SECONDS.
t_job() {
  local limit="$1"
  shift
  local t0 t1
  t0=$(date +%s.%N)
  T_RC=0
  # In the background and waited for: a signal to this script runs its trap (clean-up) at once, not only
  # after the job has ended.
  timeout -k 5 "$limit" "$@" &
  wait $! || T_RC=$?
  t1=$(date +%s.%N)
  T_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

# t_bg LIMIT LOG CMD...: like t_job, in the background (stdout and stderr to LOG); the pid in T_BG_PID.
t_bg() {
  local limit="$1" log="$2"
  shift 2
  timeout -k 5 "$limit" "$@" >"$log" 2>&1 &
  T_BG_PID=$!
}

# t_bg_child: the pid of the command t_bg started (the child of its `timeout`), to signal it directly.
t_bg_child() {
  local c
  c="$(cat "/proc/$T_BG_PID/task/$T_BG_PID/children" 2>/dev/null)" || return 1
  c="${c%% *}"
  [[ -n "$c" ]] && echo "$c"
}

# t_lines FILE: number of lines of FILE (0 if it does not exist).
t_lines() { if [[ -f "$1" ]]; then wc -l <"$1" | tr -d ' '; else echo 0; fi; }
# t_has_lines FILE N: FILE has at least N lines (for t_wait_for, which re-runs its command each time).
t_has_lines() { (($(t_lines "$1") >= $2)); }

# t_wait_bg: waits for the t_bg job; status in T_RC.
t_wait_bg() {
  T_RC=0
  wait "$T_BG_PID" || T_RC=$?
}

# t_wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds; returns 1 if it did not within SECONDS.
t_wait_for() {
  local limit="$1" deadline
  shift
  deadline=$(($(date +%s) + limit))
  until "$@" 2>/dev/null; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.2
  done
}

t_need_root() { ((EUID == 0)) || t_skip "needs root (network namespaces / daemons)"; }
t_need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || [[ -x "/usr/sbin/$c" ]] ||
      t_skip "'$c' is not installed (launch/install-deps.sh --with-cluster-tools)"
  done
}

# --- the tiny training world ------------------------------------------------------------------------
# t_make_world DIR: a random-weight tiny U-Net (hgdpo make-model --shape tiny) and a latent cache of 32
# random triplets of 4x8x8 latents with 4x32 prompt embeddings (a step of 4 pairs: ~0.3 s in a debug build).
t_make_world() {
  local dir="$1"
  "$HGDPO_BIN" make-model --shape tiny --out "$dir/model" --seed 3 >/dev/null &&
    "$HGDPO_BIN" make-cache --count 32 --latent 4,8,8 --context 4,32 --out "$dir/cache" >/dev/null
}

# The training options of the launch tests (output folder and step count given by each test).
T_TRAIN_OPTS=(--global-batch 4 --local-batch 1 --lr 1e-3 --optimizer adamw --seed 7 --threads 1 --log-every 1)

# t_same_lora A B: the two LoRA files are the same bytes (tensors bit for bit; the metadata holds only the
# step, rank and alpha, so equal runs write equal files).
t_same_lora() { [[ -s "$1" && -s "$2" ]] && cmp -s "$1" "$2"; }

# t_same_numbers KEY FILE1 FILE2 RTOL: the values of "KEY" in two metrics.jsonl files agree to RTOL (relative)
# and there are as many; the largest difference is put in T_DIFF.
t_same_numbers() {
  T_DIFF="$(paste -d' ' <(grep -o "\"$1\":[^,}]*" "$2" | cut -d: -f2) <(grep -o "\"$1\":[^,}]*" "$3" | cut -d: -f2) |
    awk -v tol="$4" '{ n++; if (NF != 2) bad = 1; d = $1 - $2; if (d < 0) d = -d; m = ($2 < 0 ? -$2 : $2);
      r = d / (m > 1e-30 ? m : 1e-30); if (r > worst) worst = r }
      END { printf "%d values, max rel. diff %.3g", n, worst; exit (bad || n == 0 || worst > tol) }')"
}

# t_latest_step RUN: the step number of RUN/latest (empty if none).
t_latest_step() {
  local l
  l="$(cat "$1/latest" 2>/dev/null)" || return 1
  echo "$((10#${l#step-}))"
}

# t_rank_pid RANK: pid of this test's hgdpo process with that MPI rank (empty if none).
t_rank_pid() {
  local pid
  for pid in $(t_pids); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$HGDPO_BIN")" ]] || continue
    if grep -qsa "OMPI_COMM_WORLD_RANK=$1\$" <(tr '\0' '\n' <"/proc/$pid/environ"); then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# --- two "hosts" on this machine -------------------------------------------------------------------
# t_cluster_up: two network namespaces joined by a veth pair (10.77.0.1/24 and 10.77.0.2/24, a network that
# exists only between them), each with its own hostname (UTS namespace: hgdpo-node-a, hgdpo-node-b) and its
# own sshd (configured on the command line only: neither /etc/ssh nor ~/.ssh is touched; keys in $T/ssh).
# Sets T_NS=(ns-a ns-b), T_ADDR=(ip-a ip-b), T_NODE=(name-a name-b), T_VETH=(veth-a veth-b), and
# T_SSH_CONFIG (an ssh client config for those keys). Everything is removed by the clean-up trap.
# t_on_node I CMD...: runs CMD on node I (0 or 1): in its namespace and with its hostname. For t_job / t_bg
# (which need a command, not a function) the same prefix is in the arrays T_ON0 and T_ON1.
T_NET=10.77.0
t_cluster_up() {
  T_NS=("hgdpo$$a" "hgdpo$$b")
  T_VETH=("hgv$$a" "hgv$$b")
  T_ADDR=("$T_NET.1" "$T_NET.2")
  T_NODE=(hgdpo-node-a hgdpo-node-b)
  T_ON0=(ip netns exec "${T_NS[0]}" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "${T_NODE[0]}")
  T_ON1=(ip netns exec "${T_NS[1]}" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "${T_NODE[1]}")
  local i
  for i in 0 1; do
    ip netns add "${T_NS[$i]}"
    t_on_cleanup "ip netns del ${T_NS[$i]}"
    # Last registered, first run: kill what still runs inside the namespace before deleting it.
    t_on_cleanup "ip netns pids ${T_NS[$i]} | xargs -r kill -9; sleep 0.2"
  done
  ip link add "${T_VETH[0]}" netns "${T_NS[0]}" type veth peer name "${T_VETH[1]}" netns "${T_NS[1]}"
  for i in 0 1; do
    ip -n "${T_NS[$i]}" addr add "${T_ADDR[$i]}/24" dev "${T_VETH[$i]}"
    ip -n "${T_NS[$i]}" link set lo up
    ip -n "${T_NS[$i]}" link set "${T_VETH[$i]}" up
  done
  mkdir -p "$T/ssh" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -C hgdpo-test -f "$T/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -C hgdpo-test -f "$T/ssh/id"
  cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
  T_SSH_CONFIG="$T/ssh/config"
  cat >"$T_SSH_CONFIG" <<CFG
Host *
  User root
  IdentityFile $T/ssh/id
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 10
CFG
  for i in 0 1; do
    t_on_cleanup "kill \$(cat $T/ssh/sshd-$i.pid 2>/dev/null) 2>/dev/null"
    t_on_node "$i" /usr/sbin/sshd -f /dev/null -h "$T/ssh/host_key" -o "ListenAddress=${T_ADDR[$i]}" \
      -o "PidFile=$T/ssh/sshd-$i.pid" -o PermitRootLogin=prohibit-password \
      -o "AuthorizedKeysFile=$T/ssh/authorized_keys" -o StrictModes=no -o UsePAM=no -E "$T/ssh/sshd-$i.log"
  done
  for i in 0 1; do
    t_wait_for 10 test -s "$T/ssh/sshd-$i.pid" || { t_log "sshd $i did not start: $(cat "$T/ssh/sshd-$i.log")"; return 1; }
  done
  # Each node reaches the other by ssh and sees its own hostname.
  local seen
  seen="$(t_on_node 0 timeout 20 ssh -F "$T_SSH_CONFIG" "${T_ADDR[1]}" hostname)" || { t_log "ssh node a -> b failed"; return 1; }
  [[ "$seen" == "${T_NODE[1]}" ]] || { t_log "ssh to ${T_ADDR[1]} reached '$seen', not ${T_NODE[1]}"; return 1; }
}

t_on_node() {
  local i="$1"
  shift
  if ((i == 0)); then "${T_ON0[@]}" "$@"; else "${T_ON1[@]}" "$@"; fi
}
