#!/usr/bin/env bash
# Prints a folder holding cuBLAS's headers (cublas_v2.h and friends), for compiling the
# CUDA sources where the CUDA toolkit came without cuBLAS (as on the CPU-only CI machine).
# Looks in the toolkit next to nvcc first; else unpacks just the headers of the
# nvidia-cublas wheel (pip download, no install) into ${1:-/tmp/rnnfast-cublas-<major>}.
# NVCC names the compiler to match (default: nvcc on PATH).
set -euo pipefail
nvcc_path=${NVCC:-$(command -v nvcc)}
for inc in "$(dirname "$(readlink -f "$nvcc_path")")/../include" /usr/local/cuda/include; do
  if [ -f "$inc/cublas_v2.h" ]; then (cd "$inc" && pwd); exit 0; fi
done
major=$("$nvcc_path" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
dest=${1:-/tmp/rnnfast-cublas-$major}
if [ ! -f "$dest/include/cublas_v2.h" ]; then
  rm -rf "$dest" && mkdir -p "$dest/wheel"
  python -m pip download -q --no-deps --only-binary=:all: -d "$dest/wheel" \
    "nvidia-cublas>=${major}.0,<$((major + 1)).0" >&2 \
    || python -m pip download -q --no-deps --only-binary=:all: -d "$dest/wheel" "nvidia-cublas-cu${major}" >&2
  mkdir -p "$dest/include"
  python - "$dest" <<'PY'
import glob, os, sys, zipfile
dest = sys.argv[1]
whl = glob.glob(os.path.join(dest, "wheel", "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if "/include/" in name and os.path.basename(name).startswith(("cublas", "nvblas")):
            with open(os.path.join(dest, "include", os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
  rm -rf "$dest/wheel"
fi
echo "$dest/include"
