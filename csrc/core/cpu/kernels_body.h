// The body every kernels_<isa>.cpp compiles in its own namespace: the vector types of its
// instruction set, then the runtime (buffers, threads), the GEMM, the cell math and its CPU
// step accessors, the layer drivers, the keep masks (random_impl.h), and the entry points the
// dispatcher calls.
// Before including: RNNFAST_ISA_NS (namespace name), and RNNFAST_VEC_HEADER (the
// ISA's vector header, which defines SimdIsa) or RNNFAST_SCALAR_ONLY.
namespace rnnfast {
namespace core {
namespace RNNFAST_ISA_NS {

#include "vec_scalar.h"
#if defined(RNNFAST_SCALAR_ONLY)
using IsaTraits = ScalarIsa;
#else
#include "vec_x86_math.h"
#include RNNFAST_VEC_HEADER
using IsaTraits = SimdIsa;
#endif
#include "runtime_impl.h"
#include "gemm_impl.h"
#include "../cell_math.h"
#include "cell_step.h"
#include "layer_impl.h"
#include "random_impl.h"

void forward(const ForwardArgs<float>& a, const Executor& ex) { forward_entry(a, ex); }
void forward(const ForwardArgs<double>& a, const Executor& ex) { forward_entry(a, ex); }
void backward(const BackwardArgs<float>& a, const Executor& ex) { backward_entry(a, ex); }
void backward(const BackwardArgs<double>& a, const Executor& ex) { backward_entry(a, ex); }
LayerPlan plan(const ForwardArgs<float>& a, int threads) { return make_forward_plan(a, threads); }
LayerPlan plan(const ForwardArgs<double>& a, int threads) { return make_forward_plan(a, threads); }
LayerPlan plan(const BackwardArgs<float>& a, int threads) { return make_backward_plan(a, threads); }
LayerPlan plan(const BackwardArgs<double>& a, int threads) { return make_backward_plan(a, threads); }
// The input projection's GEMM (layer_impl.h, input_projection, for more than 8 rows).
void project(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, float* gx,
             const Executor& ex) {
  gemm<float>(ex, rows, N, K, x, K, 1, w, K, /*b_trans=*/true, gx, N, /*accumulate=*/false);
}
void project(const double* x, int64_t rows, int64_t K, const double* w, int64_t N, double* gx,
             const Executor& ex) {
  gemm<double>(ex, rows, N, K, x, K, 1, w, K, /*b_trans=*/true, gx, N, /*accumulate=*/false);
}
void fill_keep_mask(float* out, int64_t n, double p, uint64_t seed, int64_t first) {
  fill_keep_mask_impl(out, n, p, seed, first);
}
void fill_keep_mask(double* out, int64_t n, double p, uint64_t seed, int64_t first) {
  fill_keep_mask_impl(out, n, p, seed, first);
}

}  // namespace RNNFAST_ISA_NS
}  // namespace core
}  // namespace rnnfast
