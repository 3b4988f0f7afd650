// The AVX-512F path. Only this file's own functions are compiled for AVX-512F
// (target pragma after the library headers); the dispatcher calls them only
// on CPUs that report AVX-512F.
#include "kernels_common.h"

#if defined(RNNFAST_X86)

// GCC 12 reports its own AVX-512 intrinsic headers (_mm512_undefined_*) as
// reading uninitialised values; those warnings are not about this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

namespace rnnfast {
namespace core {
namespace avx512 {

#include "vec_scalar.h"
#include "vec_x86_math.h"
#include "vec_avx512.h"
using KIsa = SimdIsa;
#include "gemm_impl.h"
#include "cells_impl.h"
#include "layer_impl.h"

void forward(const ForwardArgs<float>& a, const Executor& ex) { forward_entry(a, ex); }
void forward(const ForwardArgs<double>& a, const Executor& ex) { forward_entry(a, ex); }
void backward(const BackwardArgs<float>& a, const Executor& ex) { backward_entry(a, ex); }
void backward(const BackwardArgs<double>& a, const Executor& ex) { backward_entry(a, ex); }

}  // namespace avx512
}  // namespace core
}  // namespace rnnfast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // RNNFAST_X86
