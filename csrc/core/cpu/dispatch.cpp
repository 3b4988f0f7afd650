// Chooses the instruction set once and routes the entry points to it.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "../rnn.h"

namespace rnnfast {
namespace core {

#define RNNFAST_DECLARE_ISA(ns)                                   \
  namespace ns {                                                  \
  void forward(const ForwardArgs<float>&, const Executor&);       \
  void forward(const ForwardArgs<double>&, const Executor&);      \
  void backward(const BackwardArgs<float>&, const Executor&);     \
  void backward(const BackwardArgs<double>&, const Executor&);    \
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

void layer_forward(const ForwardArgs<float>& a, const Executor& ex) { route_forward(a, ex); }
void layer_forward(const ForwardArgs<double>& a, const Executor& ex) { route_forward(a, ex); }
void layer_backward(const BackwardArgs<float>& a, const Executor& ex) { route_backward(a, ex); }
void layer_backward(const BackwardArgs<double>& a, const Executor& ex) { route_backward(a, ex); }

}  // namespace core
}  // namespace rnnfast
