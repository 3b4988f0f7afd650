#!/usr/bin/env bash
# The GPU check: run from the repository root on a machine with an NVIDIA GPU, torch with
# CUDA and nvcc. In one go (well under 10 minutes on an H100/H200 with 16 cores) it
#   1. builds the extension in place with the CUDA kernels (sm_90 unless
#      TORCH_CUDA_ARCH_LIST says otherwise),
#   2. runs the CUDA tests (tests/test_cuda.py: parity with cuDNN and with float64 CPU torch,
#      gradients, bf16/fp16 error, determinism, autocast, compile),
#   3. runs compute-sanitizer memcheck over a small case of every kernel path,
#   4. runs the GPU benchmark against cuDNN (bench/bench_gpu.py),
#   5. when the tests and the sanitizer passed, writes cuda-verified-entry.json: the entry to
#      add to python/rnnfast/cuda_verified.json (the manifest of GPU-verified hashes of the
#      CUDA sources, scripts/cuda_sources_hash.py), so that builds of these sources run their
#      CUDA kernels by default; record the run in the results file the entry names,
# writes logs and summary.md under $OUT (default bench/results/gpu-run; at most 8 files, so
# the device tool brings them all back) and prints a short summary last. Exit status: 0 when the build, the tests and the sanitizer all passed.
#   GPU_CHECK_BENCH=quick|full|none  (default full)   GPU_CHECK_BENCH_SECONDS (default 170)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.md"; }
: > "$OUT/summary.md"
status "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
env_txt=$( (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nvcc --version | tail -1) 2>&1 | tr '\n' ';')
status "device: $env_txt"

# 1. build. Then a probe: an argument error of a CPU op must come back as a RuntimeError
# (on the lent H200 image, 2026-11-27, /opt/gcc/bin/g++ linked libstdc++ statically into the
# extension and formatting such a message segfaulted); if it crashes and another system
# compiler exists, rebuild with that one. Setting CXX=/usr/bin/g++ CC=/usr/bin/gcc up front
# skips the first build there.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
build() {
  t0=$(date +%s)
  rm -rf build
  if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    status "BUILD FAILED (log: build.log)"
    exit 1
  fi
  status "build with $(${CXX:-c++} --version | head -1) ($(command -v ${CXX:-c++})): ok in $(( $(date +%s) - t0 )) s; libstdc++: $(ldd python/rnnfast/_C*.so | grep -o 'libstdc++[^ ]* => [^ ]*' || echo 'not a shared dependency')"
}
probe() {
  PYTHONPATH=$PWD/python $PY -c "
import torch, rnnfast
try:
    torch.ops.rnnfast.layer('lstm', torch.randn(3, 2, 4), [],
                            [torch.randn(20, 4), torch.randn(20, 6)], None, False, False)
except RuntimeError as e:
    print('probe: error path ok:', str(e).splitlines()[0])
" > "$OUT/build.probe" 2>&1
}
build
probe; probe_rc=$?
if [ $probe_rc -ne 0 ]; then
  status "probe: the error path crashed (rc=$probe_rc) with $(command -v ${CXX:-c++})"
  for alt in /usr/bin/g++ /usr/bin/g++-13 /usr/bin/g++-12; do
    if [ -x "$alt" ] && [ "$(readlink -f "$alt")" != "$(readlink -f "$(command -v ${CXX:-c++})")" ]; then
      export CXX=$alt CC=${alt/g++/gcc}
      build
      probe && break
    fi
  done
fi
status "$(tail -1 "$OUT/build.probe")"
cat "$OUT/build.probe" >> "$OUT/build.log"; rm -f "$OUT/build.probe"
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
export RNNFAST_CUDA_KERNELS=1 RNNFAST_REQUIRE_CUDA=1
$PY -c "import rnnfast; print(rnnfast.info())" | tee -a "$OUT/summary.md"
built_sha=$($PY -c "import rnnfast; print(rnnfast._C.cuda_sources_sha)" 2>&1)
tree_sha=$($PY scripts/cuda_sources_hash.py 2>&1)
status "CUDA sources sha256: built $built_sha, working tree $tree_sha"

# 2. tests
t0=$(date +%s)
timeout 300 $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider -rfE > "$OUT/tests.log" 2>&1
tests_rc=$?
status "tests: rc=$tests_rc in $(( $(date +%s) - t0 )) s: $(tail -1 "$OUT/tests.log")"
if [ $tests_rc -ne 0 ]; then grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/tests.log" | head -40; fi

# 3. compute-sanitizer memcheck
t0=$(date +%s)
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
  $PY tests/cuda_sanitize_case.py > "$OUT/sanitizer.log" 2>&1
san_rc=$?
status "compute-sanitizer memcheck: rc=$san_rc in $(( $(date +%s) - t0 )) s: $(grep -E 'ERROR SUMMARY|sanitize case' "$OUT/sanitizer.log" | tr '\n' ' ')"

# 4. benchmark
mode=${GPU_CHECK_BENCH:-full}
if [ "$mode" != none ]; then
  t0=$(date +%s)
  extra=""; [ "$mode" = quick ] && extra="--quick"
  timeout $(( ${GPU_CHECK_BENCH_SECONDS:-170} + 60 )) $PY bench/bench_gpu.py --out "$OUT" \
    --time-limit "${GPU_CHECK_BENCH_SECONDS:-170}" $extra > "$OUT/bench.log" 2>&1
  status "benchmark: rc=$? in $(( $(date +%s) - t0 )) s (gpu_bench.md)"
fi

# 5. the manifest entry, for a passing run of the sources the build was compiled from
if [ $tests_rc -eq 0 ] && [ $san_rc -eq 0 ]; then
  if [ "$built_sha" = "$tree_sha" ]; then
    card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    $PY scripts/cuda_sources_hash.py --entry --card "$card" \
      --results "bench/results/gpu-$(date -u +%F).md" > "$OUT/cuda-verified-entry.json"
    status "manifest entry: cuda-verified-entry.json (add it to python/rnnfast/cuda_verified.json)"
  else
    status "no manifest entry: the build's CUDA sources differ from the working tree's"
  fi
fi

echo
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"
cat "$OUT/summary.md"
[ $tests_rc -eq 0 ] && [ $san_rc -eq 0 ]
