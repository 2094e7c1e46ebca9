#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install rlkit with its pinned dependencies.
# Usage: source-free; called by scripts/quickstart.sh and scripts/test.sh. RLKIT_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLKIT_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.rlkit-installed"
HASH=$(sha256sum pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing rlkit and pinned dependencies into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and alone, so pip takes the pinned build (CPU wheel where one is provided locally).
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  echo "$HASH" > "$STAMP"
fi
