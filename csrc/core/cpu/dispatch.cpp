// Chooses the instruction set once and routes the entry points to it.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include <unistd.h>

#include "../random.h"
#include "../rnn.h"
#include "env_flag.h"

namespace rnnfast {
namespace core {

#define RNNFAST_DECLARE_ISA(ns)                                   \
  namespace ns {                                                  \
  void forward(const ForwardArgs<float>&, const Executor&);       \
  void forward(const ForwardArgs<double>&, const Executor&);      \
  void backward(const BackwardArgs<float>&, const Executor&);     \
  void backward(const BackwardArgs<double>&, const Executor&);    \
  LayerPlan plan(const ForwardArgs<float>&, int);                 \
  LayerPlan plan(const ForwardArgs<double>&, int);                \
  LayerPlan plan(const BackwardArgs<float>&, int);                \
  LayerPlan plan(const BackwardArgs<double>&, int);               \
  void fill_keep_mask(float*, int64_t, double, uint64_t, int64_t);  \
  void project(const float*, int64_t, int64_t, const float*, int64_t, float*,           \
               const Executor&);                                                      \
  void project(const double*, int64_t, int64_t, const double*, int64_t, double*,        \
               const Executor&);                                                      \
  void fill_keep_mask(double*, int64_t, double, uint64_t, int64_t); \
  }
RNNFAST_DECLARE_ISA(scalar)
#if defined(__x86_64__) || defined(_M_X64)
RNNFAST_DECLARE_ISA(avx2)
RNNFAST_DECLARE_ISA(avx512)
#endif
#undef RNNFAST_DECLARE_ISA

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && cpu_supports(Isa::Avx2);
#endif
    default: return false;
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    default: return "scalar";
  }
}

int64_t cpu_l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (v > 0) return static_cast<int64_t>(v);
#endif
    return int64_t(512) << 10;
  }();
  return bytes;
}

namespace {
std::atomic<bool>& gemm_rows_slot() {
  static std::atomic<bool> on{env_flag("RNNFAST_GEMM_ROWS", true)};  // 0: off (A/B timing)
  return on;
}
}  // namespace

bool gemm_rows_enabled() { return gemm_rows_slot().load(std::memory_order_relaxed); }
void set_gemm_rows(bool on) { gemm_rows_slot().store(on, std::memory_order_relaxed); }

namespace {

Isa choose_isa() {
  const char* env = std::getenv("RNNFAST_SIMD");
  if (env && *env) {
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
      if (std::strcmp(env, isa_name(isa)) == 0 && cpu_supports(isa)) return isa;
  }
  // AVX-512 and AVX2 have both been verified by the test suite on the project's
  // machine (AMD EPYC with AVX-512F); prefer the wider one.
  if (cpu_supports(Isa::Avx512)) return Isa::Avx512;
  if (cpu_supports(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(choose_isa())};
  return slot;
}

}  // namespace

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

bool set_isa(Isa isa) {
  if (!cpu_supports(isa)) return false;
  isa_slot().store(static_cast<int>(isa));
  return true;
}

template <class A>
static void route_forward(const A& a, const Executor& ex) {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx512: avx512::forward(a, ex); return;
    case Isa::Avx2: avx2::forward(a, ex); return;
#endif
    default: scalar::forward(a, ex); return;
  }
}

template <class A>
static void route_backward(const A& a, const Executor& ex) {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx512: avx512::backward(a, ex); return;
    case Isa::Avx2: avx2::backward(a, ex); return;
#endif
    default: scalar::backward(a, ex); return;
  }
}

template <class A>
static LayerPlan route_plan(const A& a, int threads) {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx512: return avx512::plan(a, threads);
    case Isa::Avx2: return avx2::plan(a, threads);
#endif
    default: return scalar::plan(a, threads);
  }
}

template <class Real>
static void route_fill_keep_mask(Real* out, int64_t n, double p, uint64_t seed, int64_t first) {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx512: avx512::fill_keep_mask(out, n, p, seed, first); return;
    case Isa::Avx2: avx2::fill_keep_mask(out, n, p, seed, first); return;
#endif
    default: scalar::fill_keep_mask(out, n, p, seed, first); return;
  }
}
void fill_keep_mask(float* out, int64_t n, double p, uint64_t seed, int64_t first) {
  route_fill_keep_mask(out, n, p, seed, first);
}
void fill_keep_mask(double* out, int64_t n, double p, uint64_t seed, int64_t first) {
  route_fill_keep_mask(out, n, p, seed, first);
}

template <class Real>
static void route_project(const Real* x, int64_t rows, int64_t K, const Real* w, int64_t N,
                          Real* gx, const Executor& ex) {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx512: avx512::project(x, rows, K, w, N, gx, ex); return;
    case Isa::Avx2: avx2::project(x, rows, K, w, N, gx, ex); return;
#endif
    default: scalar::project(x, rows, K, w, N, gx, ex); return;
  }
}
void project_input(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, float* gx,
                   const Executor& ex) {
  route_project(x, rows, K, w, N, gx, ex);
}
void project_input(const double* x, int64_t rows, int64_t K, const double* w, int64_t N,
                   double* gx, const Executor& ex) {
  route_project(x, rows, K, w, N, gx, ex);
}

LayerPlan plan_forward(const ForwardArgs<float>& a, int threads) { return route_plan(a, threads); }
LayerPlan plan_forward(const ForwardArgs<double>& a, int threads) { return route_plan(a, threads); }
LayerPlan plan_backward(const BackwardArgs<float>& a, int threads) { return route_plan(a, threads); }
LayerPlan plan_backward(const BackwardArgs<double>& a, int threads) {
  return route_plan(a, threads);
}

std::string to_string(const LayerPlan& p) {
  auto flag = [](const char* name, bool v) { return std::string(name) + (v ? "=1 " : "=0 "); };
  return flag("parallel", p.parallel) + flag("weights_in_place", p.weights_in_place) +
         flag("input_in_steps", p.input_in_steps) + flag("compact_rows", p.compact_rows) +
         flag("packed_panel", p.packed_panel) + flag("stream_workspace", p.stream_workspace) +
         flag("row_split", p.row_split) +
         "block_rows=" + std::to_string(p.block_rows) +
         " row_blocks=" + std::to_string(p.row_blocks) +
         " strip_width=" + std::to_string(p.strip_width);
}

void layer_forward(const ForwardArgs<float>& a, const Executor& ex) { route_forward(a, ex); }
void layer_forward(const ForwardArgs<double>& a, const Executor& ex) { route_forward(a, ex); }
void layer_backward(const BackwardArgs<float>& a, const Executor& ex) { route_backward(a, ex); }
void layer_backward(const BackwardArgs<double>& a, const Executor& ex) { route_backward(a, ex); }

}  // namespace core
}  // namespace rnnfast
