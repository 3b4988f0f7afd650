#!/usr/bin/env bash
# Sets up rnnfast on a fresh machine: Python dependencies, then builds and
# installs the extension against the installed torch. Idempotent.
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# torch: keep one that is already there (the GPU machines bring their own CUDA
# build); otherwise take the CPU build of 2.13.0, which lies on local disk here
# (an unpinned torch would pull a multi-GB CUDA build).
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet pybind11 ninja numpy pytest pytest-benchmark hypothesis tqdm matplotlib setuptools wheel

# --no-build-isolation: compile against the torch installed above, not a fresh one.
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --quiet --no-build-isolation .
"$PY" -c "import rnnfast, json; print('rnnfast installed:', json.dumps(rnnfast.info()))"
