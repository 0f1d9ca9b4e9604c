#!/usr/bin/env bash
# install-deps.sh — install the system packages hgdpo needs to build and run (Debian/Ubuntu, apt).
#
# Usage: launch/install-deps.sh [--with-cluster-tools] [--skip-swift-check] [--help]
#
#   Installs whatever is missing among: libopenmpi-dev openmpi-bin libopenblas-dev libpng-dev pkg-config
#   --with-cluster-tools  also installs openssh-server iproute2 slurm-wlm (multi-host / Slurm launch tests;
#                         slurm-wlm brings slurmctld, slurmd and srun with its pmix plugin: srun --mpi=pmix).
#                         No daemon is started or configured by this script.
#   --skip-swift-check    do not require a Swift toolchain (e.g. compute nodes that only run a built binary).
#
# Idempotent: each package is checked with dpkg-query first; `apt-get update` runs at most once and only
# when something is missing, so a second run does nothing and takes well under a second.
# Needs root, or sudo when not root. Exits non-zero with a message on any failure.
# The Swift toolchain is not an apt package: it is looked for on PATH and in /opt/swift/usr/bin.
set -euo pipefail

readonly BASE_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev libpng-dev pkg-config)
readonly CLUSTER_PACKAGES=(openssh-server iproute2 slurm-wlm)

die() { echo "install-deps.sh: error: $*" >&2; exit 1; }
note() { echo "install-deps.sh: $*"; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

with_cluster=0
check_swift=1
while (($#)); do
  case "$1" in
    --with-cluster-tools) with_cluster=1 ;;
    --skip-swift-check) check_swift=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-deps.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  die "this script needs a Debian/Ubuntu system (dpkg-query and apt-get not found); install the equivalents of: ${BASE_PACKAGES[*]}"
fi

packages=("${BASE_PACKAGES[@]}")
((with_cluster)) && packages+=("${CLUSTER_PACKAGES[@]}")

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  # Root directly, otherwise through sudo.
  as_root=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 ||
      die "missing packages (${missing[*]}) and not root, and sudo is not installed; run as root: apt-get install -y ${missing[*]}"
    as_root=(sudo)
  fi
  log="$(mktemp "${TMPDIR:-/tmp}/hgdpo-install-deps.XXXXXX")"
  trap 'rm -f "$log"' EXIT
  note "installing: ${missing[*]}"
  # apt's output (including the chatter of package maintainer scripts) goes to a log; apt's own
  # warning/error lines (W:/E:) are always shown, and the end of the log too when a step fails.
  run_apt() {
    local what="$1"; shift
    if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      die "apt-get $what failed"
    fi
    grep -E '^(W|E|Err):' "$log" >&2 || true
  }
  run_apt update update -q
  run_apt "install of: ${missing[*]}" install -y -q -o Dpkg::Use-Pty=0 "${missing[@]}"
  still=()
  for p in "${missing[@]}"; do is_installed "$p" || still+=("$p"); done
  ((${#still[@]} == 0)) || die "still not installed after apt-get install: ${still[*]}"
  note "installed: ${missing[*]}"
else
  note "all packages present: ${packages[*]}"
fi

if ((check_swift)); then
  if command -v swift >/dev/null 2>&1; then
    note "swift: $(command -v swift)"
  elif [[ -x /opt/swift/usr/bin/swift ]]; then
    note "swift found at /opt/swift/usr/bin/swift but it is not on PATH; before building run:"
    note "  export PATH=/opt/swift/usr/bin:\$PATH"
  else
    die "no Swift toolchain: 'swift' is not on PATH and /opt/swift/usr/bin/swift does not exist.
  Install a Swift 5.9+ toolchain for this OS (e.g. unpack the release tarball so that /opt/swift/usr/bin/swift
  exists) and put its usr/bin on PATH, then build with: swift build -c release
  (Use --skip-swift-check on machines that only run an already built binary.)"
  fi
fi
