#!/usr/bin/env bash
# Creates .venv-fixtures at the repo root (once) with what the fixture scripts in Tests/parity need.
# Only for regenerating fixtures: `swift test` uses the committed files and needs no Python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv-fixtures"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip
    "$venv/bin/pip" install torch diffusers transformers peft safetensors numpy
fi
echo "$venv/bin/python"
