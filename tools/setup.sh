#!/usr/bin/env bash
# One-time set-up of vidforce on a fresh machine (idempotent; fast when already done).
# Creates .venv, installs torch first, then DeepSpeed built against it, then vidforce itself.
# Usage: bash tools/setup.sh            (CPU torch; on a GPU machine install your CUDA torch first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VIDFORCE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip="$VENV/bin/python -m pip"
stamp="$VENV/.vidforce-setup-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
$pip install -q --upgrade pip setuptools wheel
# torch first: DeepSpeed's build imports it.
$VENV/bin/python -c "import torch" 2>/dev/null || $pip install -q "torch==${VIDFORCE_TORCH:-2.13.0}"
$pip install -q numpy ninja packaging psutil py-cpuinfo hjson msgpack pydantic tqdm
$VENV/bin/python -c "import deepspeed" 2>/dev/null || \
  DS_BUILD_OPS=0 $pip install -q --no-build-isolation "deepspeed==0.19.8"
$pip install -q -e ".[dev,video,wandb,text]"
touch "$stamp"
