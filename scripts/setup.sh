#!/usr/bin/env bash
# Installs splitkit and what it needs into the current Python, once. Safe to run again.
# Where no torch is installed it takes the CPU wheel (never a multi-GB CUDA build); a user with a
# GPU installs their own torch first and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] no torch found: installing the CPU wheel torch==2.13.0"
  "$PY" -m pip install -q "torch==2.13.0"
fi
if ! "$PY" -c "import splitkit, safetensors, tokenizers, umap, seaborn, pyarrow, sklearn, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .setup-done ]; then
  echo "[setup] installing splitkit and its dependencies"
  "$PY" -m pip install -q -e ".[test]"
  touch .setup-done
fi
