#!/usr/bin/env bash
# One-time set-up of vidforce on a fresh machine (idempotent; fast when already done).
# Creates .venv, installs torch first, then DeepSpeed built against it, then vidforce itself.
#
# Usage: bash tools/setup.sh [--print-plan]
#   --print-plan (or VIDFORCE_SETUP_DRY_RUN=1): print the steps and pip commands, run nothing.
# Environment:
#   PYTHON                the interpreter that creates the venv (default python3)
#   VIDFORCE_VENV         the venv directory (default .venv)
#   VIDFORCE_TORCH        the torch version (default 2.13.0)
#   VIDFORCE_TORCH_INDEX  where torch comes from: a package index URL (pip --index-url), or empty for
#                         pip's own configuration. Unset: the CPU build's index
#                         (https://download.pytorch.org/whl/cpu) on a machine without nvidia-smi, unless
#                         pip is configured with an index, extra index or find-links (a local mirror
#                         decides then); pip's default (PyPI, CUDA build) where nvidia-smi exists.
# A stamp file in the venv (keyed by pyproject.toml) makes a second run exit at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VIDFORCE_VENV:-.venv}
CPU_INDEX=https://download.pytorch.org/whl/cpu
DRY=${VIDFORCE_SETUP_DRY_RUN:-0}
case "${1:-}" in
  --print-plan) DRY=1 ;;
  "") ;;
  *) echo "setup.sh: unknown argument ${1} (only --print-plan)" >&2; exit 2 ;;
esac

step() {  # step WHAT CMD...: announce the step, then run CMD (a dry run only prints it)
  local what=$1
  shift
  echo "==> $what"
  if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi
}

has_module() {  # has_module NAME: the venv's python imports NAME
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import $1" >/dev/null 2>&1
}

pip_config() {  # pip's effective configuration (files and PIP_* variables), one key=value a line
  local python="$VENV/bin/python"
  [ -x "$python" ] || python=$PY
  "$python" -m pip config list 2>/dev/null || true
}

choose_torch_index() {  # sets TORCH_INDEX (pip options, an array) and TORCH_INDEX_WHY
  TORCH_INDEX=()
  if [ -n "${VIDFORCE_TORCH_INDEX+set}" ]; then
    if [ -n "$VIDFORCE_TORCH_INDEX" ]; then
      TORCH_INDEX=(--index-url "$VIDFORCE_TORCH_INDEX")
      TORCH_INDEX_WHY="VIDFORCE_TORCH_INDEX=$VIDFORCE_TORCH_INDEX"
    else
      TORCH_INDEX_WHY="VIDFORCE_TORCH_INDEX is empty: pip's own configuration"
    fi
  elif command -v nvidia-smi >/dev/null 2>&1; then
    TORCH_INDEX_WHY="nvidia-smi found: pip's default index (CUDA build)"
  elif pip_config | grep -Eq '(^|\.)(index-url|extra-index-url|find-links|no-index)='; then
    TORCH_INDEX_WHY="no GPU, but pip is configured with its own index or find-links: that decides"
  else
    TORCH_INDEX=(--index-url "$CPU_INDEX")
    TORCH_INDEX_WHY="no GPU (no nvidia-smi): the CPU build's index"
  fi
}

pip=("$VENV/bin/python" -m pip)
stamp="$VENV/.vidforce-setup-$(sha1sum < pyproject.toml | cut -c1-12)"
[ "$DRY" = 1 ] && echo "setup.sh: dry run, nothing is installed"

if [ ! -x "$VENV/bin/python" ]; then
  step "create the venv $VENV" "$PY" -m venv "$VENV"
fi
if [ -f "$stamp" ]; then
  if [ "$DRY" != 1 ]; then exit 0; fi
  echo "==> $stamp exists: a real run stops here (already set up)"
fi
step "upgrade pip, setuptools, wheel" "${pip[@]}" install -q --upgrade pip setuptools wheel

# torch first: DeepSpeed's build imports it.
choose_torch_index
torch_cmd=("${pip[@]}" install ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch==${VIDFORCE_TORCH:-2.13.0}")
if has_module torch; then
  echo "==> torch is already installed: skipped (a fresh install would use: $TORCH_INDEX_WHY)"
  [ "$DRY" = 1 ] && echo "+ (skipped) ${torch_cmd[*]}"
else
  step "install torch ($TORCH_INDEX_WHY)" "${torch_cmd[@]}"
fi

step "install DeepSpeed's build dependencies" \
  "${pip[@]}" install -q numpy ninja packaging psutil py-cpuinfo hjson msgpack pydantic tqdm
ds_cmd=(env DS_BUILD_OPS=0 "${pip[@]}" install --no-build-isolation "deepspeed==0.19.8")
if has_module deepspeed; then
  echo "==> DeepSpeed is already installed: skipped"
  [ "$DRY" = 1 ] && echo "+ (skipped) ${ds_cmd[*]}"
else
  step "install DeepSpeed 0.19.8 (no prebuilt ops)" "${ds_cmd[@]}"
fi

step "install vidforce (editable, with dev, video, wandb and text extras)" \
  "${pip[@]}" install -q -e ".[dev,video,wandb,text]"
step "stamp the venv as set up" touch "$stamp"
