#!/usr/bin/env bash
# Sets up rnnfast on a fresh machine: Python dependencies, then builds and
# installs the extension against the installed torch. Idempotent.
#   bash scripts/setup.sh
# Environment:
#   PYTHON                   the interpreter to install into (default: python)
#   RNNFAST_TORCH_INDEX_URL  the package index torch is taken from, if torch is
#                            not installed yet (e.g. a ROCm or CUDA index of
#                            download.pytorch.org); see below for the default
#   RNNFAST_SETUP_DRY_RUN=1  show what pip would install (pip --dry-run) and
#                            what would be built; change nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TORCH_SPEC=torch==2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# pip's own --dry-run prints "Would install ..."; --quiet would hide that.
PIP_MODE=--quiet
if [ "${RNNFAST_SETUP_DRY_RUN:-0}" = 1 ]; then
  PIP_MODE=--dry-run
fi

pip_install() {
  "$PY" -m pip install "$PIP_MODE" "$@"
}

# True if the package index $1 answers for torch within 10 s.
index_answers() {
  "$PY" - "$1" >/dev/null 2>&1 <<'PYEOF'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
PYEOF
}

# torch: keep one that is already there (a GPU machine may bring its own CUDA
# build). Otherwise install 2.13.0:
# - from RNNFAST_TORCH_INDEX_URL when it is set;
# - with no NVIDIA GPU (nvidia-smi missing or listing none), the CPU build from
#   torch's own index: on the default index (PyPI) the Linux wheel is the CUDA
#   build, several GB with its nvidia-* dependencies. If that index cannot be
#   reached, or pip fails on it, fall back to the default index (where pip is
#   configured with a local CPU wheel, as on this project's machines, pip takes
#   that one);
# - with a GPU, from the default index: the CUDA build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ -n "${RNNFAST_TORCH_INDEX_URL:-}" ]; then
    echo "setup.sh: installing $TORCH_SPEC from $RNNFAST_TORCH_INDEX_URL"
    pip_install --index-url "$RNNFAST_TORCH_INDEX_URL" "$TORCH_SPEC"
  elif nvidia-smi -L >/dev/null 2>&1; then
    echo "setup.sh: NVIDIA GPU found: installing $TORCH_SPEC (CUDA build) from the default index"
    pip_install "$TORCH_SPEC"
  else
    installed=0
    if index_answers "$TORCH_CPU_INDEX"; then
      echo "setup.sh: no NVIDIA GPU: installing the CPU build of $TORCH_SPEC from $TORCH_CPU_INDEX"
      if pip_install --index-url "$TORCH_CPU_INDEX" "$TORCH_SPEC"; then
        installed=1
      fi
    fi
    if [ "$installed" = 0 ]; then
      echo "setup.sh: no NVIDIA GPU, and $TORCH_CPU_INDEX did not answer or pip failed on it:" \
        "installing $TORCH_SPEC from the default index (RNNFAST_TORCH_INDEX_URL chooses one)" >&2
      pip_install "$TORCH_SPEC"
    fi
  fi
fi
# onnx + onnxruntime: the second oracle of the coupled-gate LSTM (ONNX LSTM input_forget=1)
# and the ONNX export tests; onnxscript: torch.onnx.export's dynamo exporter
pip_install pybind11 ninja numpy pytest pytest-benchmark hypothesis tqdm matplotlib \
  transformers==5.24.0 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2 setuptools wheel

if [ "$PIP_MODE" = --dry-run ]; then
  echo "setup.sh: dry run: would build and install rnnfast with:" \
    "MAX_JOBS=${MAX_JOBS:-2} $PY -m pip install --quiet --no-build-isolation ."
  exit 0
fi
# --no-build-isolation: compile against the torch installed above, not a fresh one.
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --quiet --no-build-isolation .
"$PY" -c "import rnnfast, json; print('rnnfast installed:', json.dumps(rnnfast.info()))"
