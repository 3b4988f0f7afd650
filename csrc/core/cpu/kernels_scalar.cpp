// The portable path: plain C++ compiled for the baseline target. Computes the
// same function as the SIMD paths and is the fallback on any CPU.
#include "kernels_common.h"

namespace rnnfast {
namespace core {
namespace scalar {

#include "vec_scalar.h"
using KIsa = ScalarIsa;
#include "gemm_impl.h"
#include "cells_impl.h"
#include "layer_impl.h"

void forward(const ForwardArgs<float>& a, const Executor& ex) { forward_entry(a, ex); }
void forward(const ForwardArgs<double>& a, const Executor& ex) { forward_entry(a, ex); }
void backward(const BackwardArgs<float>& a, const Executor& ex) { backward_entry(a, ex); }
void backward(const BackwardArgs<double>& a, const Executor& ex) { backward_entry(a, ex); }

}  // namespace scalar
}  // namespace core
}  // namespace rnnfast
