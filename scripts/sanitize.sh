#!/usr/bin/env bash
# Builds rnnfast with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy (the
# in-place build is never touched) and runs, under the sanitizers:
#   1. the C++ core tests (tests/cpp, CMake -DRNNFAST_SANITIZE=ON; LeakSanitizer on), twice:
#      as built (the scratch cache is off under ASan) and with the scratch cache on and every
#      scratch block starting as NaN (RNNFAST_SCRATCH_CACHE=1 RNNFAST_DEBUG_NAN_SCRATCH=1), so
#      that the cache's reuse, accounting and caps run sanitized too (CMakeLists.txt),
#   2. a focused subset of the Python tests (parity, special inputs, errors, cells, ops, the
#      fuzz budget, determinism, threads) against the sanitized extension,
#   3. the parity tests once per SIMD path the CPU has (RNNFAST_SIMD=scalar|avx2|avx512; not
#      avx2 again where it is the default path, run by step 2: no AVX-512, RNNFAST_SIMD unset),
#   4. parity, cells, the core guards and the stacked schedule (its packed-weights cache) with
#      the scratch cache on and NaN scratch (kept blocks and the unused tail of a reused block
#      are poisoned, so overflows still show).
# Exits non-zero if any step fails or if any sanitizer report was written, even by a
# subprocess whose failure a test tolerated.
#
#   bash scripts/sanitize.sh              # everything
#   bash scripts/sanitize.sh -x -k lstm   # extra pytest arguments go to step 2
#
# Time, fresh scratch dir, 2 cores, AMD Zen 3 (AVX2 only): 35 min (2026-12-01, both builds at
# -O1): core tests 13 min (build 10, runs 3), sanitized extension build 9 min, Python 12 min.
# Before, in CI at 64909d6: 53 min (core built -O0: 16 min; extension at -O3: 23 min). A rerun
# with an unchanged csrc/ skips most of the build.
#
# Environment: RNNFAST_SANITIZE_DIR (scratch dir, default /tmp/rnnfast-sanitize; kept between
# runs so rebuilds are incremental), MAX_JOBS (default 2), CC/CXX (default gcc/g++; the runtime
# preloaded into Python is the one this compiler links: `$CXX -print-file-name=libasan.so`),
# PYTHON (default python), RNNFAST_SANITIZE_STRICT=1 (also run the known-issue tests below).
#
# Why LD_PRELOAD: python itself is not instrumented, so the ASan runtime must be loaded before
# anything else for its interceptors (malloc, memcpy, ...) to see every allocation; libstdc++ is
# preloaded too, because ASan's __cxa_throw interceptor must find the real one at start-up
# (without it the first C++ exception -- every TORCH_CHECK -- aborts with "CHECK failed:
# asan_interceptors.cpp ... real___cxa_throw").
#
# Why detect_leaks=0 for Python: LeakSanitizer reports, at exit, heap blocks nothing points to
# any more. CPython does not free all of its objects at exit, and torch's JIT bindings and
# operator registry allocate for the process lifetime: `import torch, rnnfast` plus one
# LSTM call gives ~3,700 leak records (45,000 allocations, 11 MB), none with an rnnfast frame
# in its stack. A suppression file cannot separate those from ours, because LSan
# suppressions match any frame of the allocation stack and every allocation made by rnnfast is
# reached through libpython/libtorch frames (suppressing those would suppress everything).
# Leaks are covered instead by (1) the C++ core tests, which run with LSan on, and (2)
# tests/test_threads_memory.py, which checks RSS stays flat over thousands of calls in the
# normal build. allocator_may_return_null=1 lets the "huge size" fuzz cases see the allocation
# failure torch would see (MemoryError/RuntimeError) instead of ASan aborting on
# allocation-size-too-big.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${RNNFAST_SANITIZE_DIR:-/tmp/rnnfast-sanitize}
SRC=$WORK/src
REPORTS=$WORK/reports
JOBS=${MAX_JOBS:-2}
export CC=${CC:-gcc} CXX=${CXX:-g++}
# the real interpreter, not a launcher script (pyenv shims are bash: keep them out of ASan)
PY=$("${PYTHON:-python}" -c 'import sys; print(sys.executable)') || { echo "no python"; exit 2; }
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"

T_START=$(date +%s)
FAILED=()
declare -a SUMMARY=()

step() {  # step "name" command...  (times it, records failure, keeps going)
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s)
  echo
  echo "==== [sanitize] $name"
  "$@"
  rc=$?
  t1=$(date +%s)
  local verdict=ok
  [ $rc -eq 0 ] || verdict="FAILED (rc=$rc)"
  SUMMARY+=("$(printf '%-58s %4ss  %s' "$name" "$((t1 - t0))" "$verdict")")
  [ $rc -eq 0 ] || FAILED+=("$name")
  return $rc
}

die() { echo "[sanitize] $*" >&2; exit 2; }

LIBASAN=$($CXX -print-file-name=libasan.so)
LIBSTDCXX=$(readlink -f "$($CXX -print-file-name=libstdc++.so.6)")
[ -f "$LIBASAN" ] ||
  die "no libasan.so for $CXX (got '$LIBASAN'); install the compiler's sanitizer runtime"
[ -f "$LIBSTDCXX" ] || die "no libstdc++.so.6 for $CXX"
command -v cmake >/dev/null || die "cmake not found"

# ---------------------------------------------------------------- scratch copy of the sources
mkdir -p "$WORK" && rm -rf "$SRC" "$REPORTS" && mkdir -p "$SRC" "$REPORTS" ||
  die "cannot create $WORK"
# mtimes are preserved, so ninja/cmake rebuild only what changed since the last run
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.so' --exclude='.hypothesis' -cf - \
    setup.py pyproject.toml CMakeLists.txt csrc python tests | tar -C "$SRC" -xf - \
  || die "copying the sources failed"

# ---------------------------------------------------------------- sanitizer runtime options
ASAN_BASE="halt_on_error=1:abort_on_error=0:allocator_may_return_null=1"
ASAN_BASE+=":detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
UBSAN_OPTS="print_stacktrace=1:halt_on_error=1:report_error_type=1:log_path=$REPORTS/ubsan"

run_core() {
  # -O1, as the sanitizers' documentation advises: at -O0 every intrinsic of the SIMD kernels
  # goes through memory, and the two runs took 7 min each on an AMD Zen 3 host (2 cores)
  cmake -S "$SRC" -B "$WORK/build-core-asan" -DCMAKE_BUILD_TYPE=Debug -DRNNFAST_SANITIZE=ON \
        -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" >/dev/null &&
  cmake --build "$WORK/build-core-asan" -j "$JOBS" &&
  ASAN_OPTIONS="$ASAN_BASE:detect_leaks=1:log_path=$REPORTS/asan-core" UBSAN_OPTIONS="$UBSAN_OPTS" \
    ctest --test-dir "$WORK/build-core-asan" --output-on-failure
}

# -O1 here too (setup.py's RNNFAST_CXX_OPT). Compile times of the three kernel files with the
# sanitizers on an AMD Zen 3, two jobs at once (ninja's log): -O3 861, 801 and 584 s (CI at
# 64909d6), -O1 303, 274 and 232 s.
build_ext() {
  ( cd "$SRC" &&
    CFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" MAX_JOBS=$JOBS RNNFAST_CXX_OPT=-O1 \
      $PY setup.py build_ext --inplace --build-temp "$WORK/ext-temp" >"$WORK/build-ext.log" 2>&1 ) \
    || { tail -40 "$WORK/build-ext.log"; return 1; }
  local so
  so=$(ls "$SRC"/python/rnnfast/_C*.so) || return 1
  # the extension must really be instrumented, by both sanitizers
  local syms
  syms=$(nm -D --undefined-only "$so") || return 1
  grep -q '__asan_report' <<<"$syms" || { echo "not ASan-instrumented: $so"; return 1; }
  grep -q '__ubsan_handle' <<<"$syms" || { echo "not UBSan-instrumented: $so"; return 1; }
  echo "built $so"
}

# Runs a command with the sanitizer runtime preloaded and the sanitized rnnfast on the path.
san() {
  ( cd "$SRC" &&
    LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
    ASAN_OPTIONS="$ASAN_BASE:detect_leaks=0:log_path=$REPORTS/asan" \
    UBSAN_OPTIONS="$UBSAN_OPTS" \
    PYTHONPATH="$SRC/python:$SRC/tests" \
    RNNFAST_FUZZ_CASE_TIMEOUT=${RNNFAST_FUZZ_CASE_TIMEOUT:-180} \
    PYTHONDONTWRITEBYTECODE=1 \
    "$@" )
}

check_runtime() {
  # 1. python really loads the sanitized build from the scratch copy
  san $PY -c "
import rnnfast, sys
f = rnnfast._C.__file__
assert f.startswith('$SRC/'), f'rnnfast._C comes from {f}, not the sanitized copy'
print('rnnfast', f, rnnfast.info())
" || return 1
  # 2. canary: a heap-use-after-free made from Python must produce a report file
  local canary=$WORK/canary
  rm -rf "$canary" && mkdir -p "$canary"
  ( cd "$SRC" && LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
    ASAN_OPTIONS="detect_leaks=0:log_path=$canary/asan" $PY -c "
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(16); libc.free(p)
ctypes.memmove(ctypes.create_string_buffer(16), p, 8)
" ) >/dev/null 2>&1
  if grep -qs "heap-use-after-free" "$canary"/asan.*; then
    echo "canary: use-after-free detected and logged, as it must be"
  else
    echo "canary: the sanitizer did NOT report a deliberate use-after-free"; return 1
  fi
}

PYTEST=($PY -m pytest -q -p no:cacheprovider -p no:randomly)
KNOWN=()  # tests to leave out of the sanitized run (none now)
FOCUSED=(tests/test_parity.py tests/test_special.py tests/test_errors.py tests/test_cells.py
         tests/test_ops.py tests/test_gradcheck.py tests/test_dropout.py tests/test_fuzz_parity.py
         tests/test_fuzz_malformed.py tests/test_lstm_variants.py tests/test_zoneout.py
         tests/test_layer_norm.py tests/test_bidirectional_pair.py tests/test_output_mask.py
         tests/test_stacked_layers.py tests/test_determinism.py tests/test_threads_memory.py
         tests/test_straight_dispatch.py)

simd_supported() {
  case $1 in
    scalar) return 0 ;;
    avx2) grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo ;;
    avx512) grep -qw avx512f /proc/cpuinfo ;;
  esac
}

step "C++ core tests (ASan+UBSan+LSan)" run_core
if step "build rnnfast._C with ASan+UBSan (scratch copy)" build_ext; then
  step "sanitized runtime in use + canary report" check_runtime
  step "Python focused subset (default SIMD path)" \
    san "${PYTEST[@]}" "${FOCUSED[@]}" "${KNOWN[@]}" "$@"
  for simd in scalar avx2 avx512; do
    if [ "$simd" = avx2 ] && [ -z "${RNNFAST_SIMD:-}" ] && simd_supported avx2 &&
       ! simd_supported avx512; then
      # the default path on this CPU: the focused subset above already ran it
      SUMMARY+=("$(printf '%-58s %4s   %s' "parity + cells with RNNFAST_SIMD=$simd" "-" \
                  "skipped (the default path here: ran above)")")
    elif simd_supported "$simd"; then
      step "parity + cells with RNNFAST_SIMD=$simd" \
        san env RNNFAST_SIMD=$simd "${PYTEST[@]}" tests/test_parity.py tests/test_cells.py \
          "tests/test_info_simd.py::test_env_override_is_reported"
    else
      SUMMARY+=("$(printf '%-58s %4s   %s' "parity + cells with RNNFAST_SIMD=$simd" "-" \
                  "skipped (CPU lacks it)")")
    fi
  done
  step "parity + cells + guards + stacked, scratch cache on, NaN scratch" \
    san env RNNFAST_SCRATCH_CACHE=1 RNNFAST_DEBUG_NAN_SCRATCH=1 "${PYTEST[@]}" \
      tests/test_parity.py tests/test_cells.py tests/test_core_guards.py \
      tests/test_stacked_layers.py \
      "tests/test_threads_memory.py::test_scratch_blocks_reused_dirty_give_the_same_results"
fi

# ---------------------------------------------------------------- any report fails the run
# A log file holding only "WARNING: AddressSanitizer failed to allocate" lines comes from the
# huge-size fuzz cases (allocator_may_return_null=1: the allocation fails as it would without
# ASan, and torch raises); anything else is a report.
echo
shopt -s nullglob
reports=()
for r in "$REPORTS"/*; do
  if grep -qv 'WARNING: AddressSanitizer failed to allocate' "$r"; then
    reports+=("$r")
  else
    echo "[sanitize] note: $(wc -l <"$r") allocation-failure warning(s) in $r" \
         "(expected: the huge-size fuzz cases)"
  fi
done
if [ ${#reports[@]} -gt 0 ]; then
  echo "==== [sanitize] ${#reports[@]} sanitizer report file(s):"
  for r in "${reports[@]}"; do
    echo "---- $r"
    head -60 "$r"
  done
  FAILED+=("sanitizer reports")
fi

echo
echo "==== [sanitize] summary ($(nproc) CPUs, scratch dir $WORK)"
for s in "${SUMMARY[@]}"; do echo "  $s"; done
echo "  sanitizer report files: ${#reports[@]}"
echo "  total: $(( $(date +%s) - T_START ))s"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "OK: zero sanitizer reports"
