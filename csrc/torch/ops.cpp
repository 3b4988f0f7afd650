// Torch glue: op schemas, the CPU implementations (argument checks,
// allocation, dtype dispatch, then a call into csrc/core), and the pybind11
// module with build/runtime information. No math here.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <string>

#include "../core/rnn.h"
#include "common.h"

namespace rnnfast {
namespace {

namespace core = ::rnnfast::core;

// Runs core's parallel loops on torch's intra-op thread pool, so
// torch.set_num_threads is respected.
class AtenExecutor final : public core::Executor {
 public:
  int num_threads() const override { return at::get_num_threads(); }
  void run(int64_t n, void (*fn)(void*, int64_t, int64_t), void* ctx) const override {
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { fn(ctx, b, e); });
  }
  // A team on torch's OpenMP pool. The team size is what OpenMP actually gives
  // (fewer threads inside another parallel region), so members never wait for a
  // thread that does not exist.
  void run_team(int max_threads, void (*fn)(void*, int, int), void* ctx) const override {
#ifdef _OPENMP
    if (max_threads > 1 && !at::in_parallel_region()) {
#pragma omp parallel num_threads(max_threads)
      { fn(ctx, omp_get_thread_num(), omp_get_num_threads()); }
      return;
    }
#endif
    fn(ctx, 0, 1);
  }
};

using namespace ::rnnfast::glue;

template <class Real>
const Real* data_or_null(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr<Real>() : nullptr;
}

bool cpu_dtype_ok(const at::Tensor& input) {
  return input.defined() &&
         (input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble);
}

// In the debug mode of core::debug_nan_scratch the outputs start as NaN too (from torch's
// allocator they hold whatever was there), so that one a kernel leaves unwritten shows.
void debug_fill_nan(const at::Tensor& t) {
  if (t.defined() && t.numel() > 0) core::debug_fill_nan(t.data_ptr(), t.nbytes());
}

// The saved workspace: from core's block cache when large (it is freed after backward, and
// the next forward reuses it without page faults), else from torch's allocator.
// A size whose byte count overflows goes to at::empty too, which reports it cleanly.
at::Tensor workspace_tensor(std::vector<int64_t> sizes, const at::TensorOptions& opts) {
  size_t bytes = c10::elementSize(opts.dtype().toScalarType());
  for (int64_t s : sizes)
    if (s < 0 || __builtin_mul_overflow(bytes, static_cast<size_t>(s), &bytes))
      return at::empty(sizes, opts);
  if (bytes < core::kScratchMinBytes) {
    at::Tensor t = at::empty(sizes, opts);
    debug_fill_nan(t);
    return t;
  }
  void* p = core::scratch_alloc(bytes);
  return at::from_blob(p, sizes, [](void* q) { core::scratch_free(q); }, opts);
}

template <core::Cell cell>
ForwardResult forward_op(const at::Tensor& input_, const c10::optional<at::Tensor>& hx_,
                         const c10::optional<at::Tensor>& cx_, const at::Tensor& w_ih_,
                         const at::Tensor& w_hh_, const c10::optional<at::Tensor>& b_ih_,
                         const c10::optional<at::Tensor>& b_hh_,
                         const c10::optional<at::Tensor>& w_hr_,
                         const c10::optional<at::Tensor>& lengths_, bool reverse, bool training) {
  const ForwardInputs f = prepare_forward(cell, input_, hx_, cx_, w_ih_, w_hh_, b_ih_, b_hh_,
                                          w_hr_, lengths_, cpu_dtype_ok(input_),
                                          "float32 or float64", /*allow_packed=*/true);
  const Dims& d = f.d;
  const auto opts = f.input.options();
  ForwardResult out = empty_outputs(cell, d, opts, opts, /*training=*/false);
  at::Tensor &y = std::get<0>(out), &hy = std::get<1>(out), &cy = std::get<2>(out),
             &ws = std::get<3>(out);
  if (training) ws = workspace_tensor(d.rows_by(core::cell_info(cell).workspace_cols(d.H, d.P)), opts);
  if (core::debug_nan_scratch())
    for (const at::Tensor* t : {&y, &hy, &cy}) debug_fill_nan(*t);

  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "rnnfast_layer_forward", [&] {
    core::ForwardArgs<scalar_t> a;
    a.cell = cell;
    a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
    a.x = f.input.data_ptr<scalar_t>();
    a.h0 = data_or_null<scalar_t>(f.hx);
    a.c0 = data_or_null<scalar_t>(f.cx);
    a.w_ih = f.w_ih.data_ptr<scalar_t>();
    a.w_hh = f.w_hh.data_ptr<scalar_t>();
    a.b_ih = data_or_null<scalar_t>(f.b_ih);
    a.b_hh = data_or_null<scalar_t>(f.b_hh);
    a.w_hr = data_or_null<scalar_t>(f.w_hr);
    a.lengths = f.lengths ? f.lengths->data_ptr<int64_t>() : nullptr;
    a.reverse = reverse;
    a.packed = d.packed;
    a.y = y.data_ptr<scalar_t>();
    a.hy = hy.data_ptr<scalar_t>();
    a.cy = cell == core::Cell::LSTM ? cy.data_ptr<scalar_t>() : nullptr;
    a.ws = training ? ws.data_ptr<scalar_t>() : nullptr;
    core::layer_forward(a, ex);
  });
  return out;
}

template <core::Cell cell>
BackwardResult backward_op(const c10::optional<at::Tensor>& grad_output,
                           const c10::optional<at::Tensor>& grad_hy,
                           const c10::optional<at::Tensor>& grad_cy, const at::Tensor& input_,
                           const at::Tensor& w_ih_, const at::Tensor& w_hh_,
                           const c10::optional<at::Tensor>& w_hr_,
                           const c10::optional<at::Tensor>& lengths_,
                           const at::Tensor& workspace, bool reverse) {
  const BackwardInputs in = prepare_backward(
      cell, grad_output, grad_hy, grad_cy, input_, w_ih_, w_hh_, w_hr_, lengths_, workspace,
      input_.defined() ? input_.scalar_type() : at::kFloat, cpu_dtype_ok(input_),
      "float32 or float64", /*allow_packed=*/true);
  const Dims& d = in.d;
  Grads g = empty_grads(cell, d, in.input.options());
  if (core::debug_nan_scratch())
    for (const at::Tensor* t : {&g.dx, &g.dh0, &g.dc0, &g.dw_ih, &g.dw_hh, &g.db_ih, &g.db_hh,
                                &g.dw_hr})
      debug_fill_nan(*t);

  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(in.input.scalar_type(), "rnnfast_layer_backward", [&] {
    core::BackwardArgs<scalar_t> a;
    a.cell = cell;
    a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
    a.x = in.input.data_ptr<scalar_t>();
    a.w_ih = in.w_ih.data_ptr<scalar_t>();
    a.w_hh = in.w_hh.data_ptr<scalar_t>();
    a.w_hr = data_or_null<scalar_t>(in.w_hr);
    a.lengths = in.lengths ? in.lengths->data_ptr<int64_t>() : nullptr;
    a.reverse = reverse;
    a.packed = d.packed;
    a.ws = in.ws.data_ptr<scalar_t>();
    a.dy = data_or_null<scalar_t>(in.gy);
    a.dhy = data_or_null<scalar_t>(in.ghy);
    a.dcy = data_or_null<scalar_t>(in.gcy);
    a.dx = g.dx.data_ptr<scalar_t>();
    a.dh0 = g.dh0.data_ptr<scalar_t>();
    a.dc0 = cell == core::Cell::LSTM ? g.dc0.data_ptr<scalar_t>() : nullptr;
    a.dw_ih = g.dw_ih.data_ptr<scalar_t>();
    a.dw_hh = g.dw_hh.data_ptr<scalar_t>();
    a.db_ih = g.db_ih.data_ptr<scalar_t>();
    a.db_hh = g.db_hh.data_ptr<scalar_t>();
    a.dw_hr = d.P > 0 ? g.dw_hr.data_ptr<scalar_t>() : nullptr;
    core::layer_backward(a, ex);
  });
  return g.tuple();
}

}  // namespace

TORCH_LIBRARY(rnnfast, m) {
  for (auto cell : {core::Cell::LSTM, core::Cell::GRU, core::Cell::RNN_TANH, core::Cell::RNN_RELU}) {
    const std::string name = glue::cell_name(cell);
    m.def((name + glue::kForwardArgs).c_str());
    m.def((name + "_backward" + glue::kBackwardArgs).c_str());
  }
}

RNNFAST_REGISTER_BACKEND(CPU, forward_op, backward_op)

}  // namespace rnnfast

PYBIND11_MODULE(_C, m) {
  namespace core = ::rnnfast::core;
  m.doc() = "rnnfast native extension: registers torch.ops.rnnfast.* and reports build info";
  m.def("simd", [] { return std::string(core::isa_name(core::active_isa())); },
        "The SIMD instruction set the CPU kernels use now.");
  m.def("cpu_supports", [](const std::string& name) {
    for (auto isa : {core::Isa::Scalar, core::Isa::Avx2, core::Isa::Avx512})
      if (name == core::isa_name(isa)) return core::cpu_supports(isa);
    return false;
  });
  m.def("set_simd", [](const std::string& name) {
    for (auto isa : {core::Isa::Scalar, core::Isa::Avx2, core::Isa::Avx512})
      if (name == core::isa_name(isa)) {
        if (!core::set_isa(isa))
          throw std::invalid_argument("rnnfast: this CPU does not support SIMD path '" + name + "'");
        return;
      }
    throw std::invalid_argument("rnnfast: unknown SIMD path '" + name +
                                "', expected one of scalar, avx2, avx512");
  }, "Forces the SIMD instruction set (for testing).");
  m.def("scratch_cached_bytes", [] { return core::scratch_cached_bytes(); },
        "Bytes of large CPU scratch blocks kept for the next kernel call.");
  m.def("release_scratch", [] { core::release_scratch(); },
        "Frees the large CPU scratch blocks kept for the next kernel call.");
  m.def("scratch_cache_enabled", [] { return core::scratch_cache_enabled(); },
        "Whether the CPU kernels keep freed scratch blocks for the next call (off by default "
        "under AddressSanitizer; RNNFAST_SCRATCH_CACHE=1/0 overrides).");
  m.def("debug_nan_scratch", [] { return core::debug_nan_scratch(); },
        "Whether the debug mode RNNFAST_DEBUG_NAN_SCRATCH=1 is on: CPU scratch blocks and "
        "outputs start filled with NaN.");
#ifdef RNNFAST_WITH_CUDA
  m.attr("cuda_built") = true;
#define RNNFAST_QUOTE(...) #__VA_ARGS__
#define RNNFAST_STRING(x) RNNFAST_QUOTE(x)
  // sha256 of the CUDA sources, from setup.py (scripts/cuda_sources_hash.py)
  m.attr("cuda_sources_sha") = RNNFAST_STRING(RNNFAST_CUDA_SOURCES_SHA);
#else
  m.attr("cuda_built") = false;
#endif
}
