// The AVX2 + FMA path. Only this file's own functions are compiled for AVX2 + FMA
// (target pragma after the library headers); the dispatcher calls them only
// on CPUs that report AVX2 + FMA.
#include "kernels_common.h"

#if defined(RNNFAST_X86)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace rnnfast {
namespace core {
namespace avx2 {

#include "vec_scalar.h"
#include "vec_x86_math.h"
#include "vec_avx2.h"
using KIsa = SimdIsa;
#include "gemm_impl.h"
#include "cells_impl.h"
#include "layer_impl.h"

void forward(const ForwardArgs<float>& a, const Executor& ex) { forward_entry(a, ex); }
void forward(const ForwardArgs<double>& a, const Executor& ex) { forward_entry(a, ex); }
void backward(const BackwardArgs<float>& a, const Executor& ex) { backward_entry(a, ex); }
void backward(const BackwardArgs<double>& a, const Executor& ex) { backward_entry(a, ex); }

}  // namespace avx2
}  // namespace core
}  // namespace rnnfast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // RNNFAST_X86
