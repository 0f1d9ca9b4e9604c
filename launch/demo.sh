#!/usr/bin/env bash
# demo.sh — install what is missing, build in release mode, and run the main job on the embedded default.
#
# Usage: launch/demo.sh [NP]     (NP ranks on this machine, default 2)
#
# Until the trainer lands (`hgdpo train`), the demo runs what the foundation has end to end: a 2-rank MPI job
# checking the collectives the trainer's gradient all-reduce uses, and `hgdpo inspect` on a diffusers U-Net
# (a random-weight tiny one committed as a test fixture).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
np=${1:-2}

"$root/launch/install-deps.sh"
[[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]] && export PATH="/opt/swift/usr/bin:$PATH"
echo "== swift build -c release"
swift build -c release
export HGDPO_BIN="$root/.build/release/hgdpo"

echo "== $np ranks: hgdpo probe mpi"
"$root/launch/local.sh" --timeout 300 "$np" hgdpo probe mpi

echo "== hgdpo inspect (a diffusers UNet2DConditionModel file)"
"$HGDPO_BIN" inspect --pretty Tests/IOTests/Fixtures/tiny_unet/diffusion_pytorch_model.safetensors | head -n 20
echo "   …"
echo "demo: done"
