// Torch glue: op schemas, the CPU implementations (argument checks,
// allocation, dtype dispatch, then a call into csrc/core), and the pybind11
// module with build/runtime information. No math here.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <string>

#include "../core/random.h"
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

// The data of a tensor, or null where it is absent (undefined).
template <class Real>
Real* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<Real>() : nullptr;
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

// The fields a forward and a backward call share: the cell, the sizes, the lengths, the
// direction, the layout and the zoneout.
template <class Real, template <class> class Args>
void set_call(Args<Real>& a, const core::CellInfo& cell, const Dims& d,
              const c10::optional<at::Tensor>& lengths, bool reverse, const Zoneout& zoneout) {
  a.cell = cell.id;
  a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
  a.lengths = lengths ? lengths->data_ptr<int64_t>() : nullptr;
  a.reverse = reverse;
  a.packed = d.packed;
  for (int k = 0; k < 2; ++k) {
    a.zoneout[k] = data_or_null<Real>(zoneout.mask[k]);
    a.zoneout_p[k] = zoneout.p[k];
  }
}

// The core arguments of a forward call, from checked inputs and the allocated outputs.
template <class Real>
core::ForwardArgs<Real> forward_args(const ForwardInputs& f, const ForwardResult& out,
                                     bool reverse, bool training) {
  const core::CellInfo& cell = *f.cell;
  const Dims& d = f.d;
  const std::vector<at::Tensor>& state_out = std::get<1>(out);
  core::ForwardArgs<Real> a;
  set_call(a, cell, d, f.lengths, reverse, f.zoneout);
  a.x = f.input.data_ptr<Real>();
  a.h0 = data_or_null<Real>(f.state[kStateH]);
  a.c0 = data_or_null<Real>(f.state[kStateC]);
  a.w_ih = data_or_null<Real>(f.params[kWeightIh]);
  a.w_hh = data_or_null<Real>(f.params[kWeightHh]);
  a.b_ih = data_or_null<Real>(f.params[kBiasIh]);
  a.b_hh = data_or_null<Real>(f.params[kBiasHh]);
  a.w_hr = data_or_null<Real>(f.params[kWeightHr]);
  int n = 0;
  for (int i : cell_param_indices(cell)) a.cell_w[n++] = data_or_null<Real>(f.params[i]);
  a.y = std::get<0>(out).data_ptr<Real>();
  a.hy = state_out[kStateH].data_ptr<Real>();
  a.cy = cell.cell_state ? state_out[kStateC].data_ptr<Real>() : nullptr;
  a.ws = training ? std::get<2>(out).data_ptr<Real>() : nullptr;
  return a;
}

// The outputs of a forward call (the workspace from workspace_tensor when training).
ForwardResult forward_outputs(const ForwardInputs& f, bool training) {
  const core::CellInfo& cell = *f.cell;
  const Dims& d = f.d;
  const auto opts = f.input.options();
  ForwardResult out = empty_outputs(cell, d, opts, opts, /*training=*/false);
  if (training) std::get<2>(out) = workspace_tensor(d.rows_by(cell.workspace_cols(d.H, d.P)), opts);
  if (core::debug_nan_scratch()) {
    debug_fill_nan(std::get<0>(out));
    for (const at::Tensor& t : std::get<1>(out)) debug_fill_nan(t);
  }
  return out;
}

ForwardResult forward_op(c10::string_view cell_name, const at::Tensor& input_,
                         at::TensorList state_, at::TensorList weights_,
                         const c10::optional<at::Tensor>& lengths_, bool reverse, bool training,
                         OptionalTensorList zoneout_) {
  const ForwardInputs f = prepare_forward(cell_name, input_, state_, weights_, lengths_,
                                          list_or_empty(zoneout_),
                                          cpu_dtype_ok(input_), "float32 or float64",
                                          /*allow_packed=*/true);
  ForwardResult out = forward_outputs(f, training);
  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "rnnfast_layer_forward", [&] {
    core::layer_forward(forward_args<scalar_t>(f, out, reverse, training), ex);
  });
  return out;
}

// The core arguments of a backward call, from checked inputs and the allocated gradients.
template <class Real>
core::BackwardArgs<Real> backward_args(const BackwardInputs& in, const BackwardResult& g,
                                       bool reverse) {
  const core::CellInfo& cell = *in.cell;
  const Dims& d = in.d;
  const std::vector<at::Tensor>& dstate = std::get<1>(g);
  const std::vector<at::Tensor>& dweights = std::get<2>(g);
  core::BackwardArgs<Real> a;
  set_call(a, cell, d, in.lengths, reverse, in.zoneout);
  a.x = in.input.data_ptr<Real>();
  a.w_ih = data_or_null<Real>(in.params[kWeightIh]);
  a.w_hh = data_or_null<Real>(in.params[kWeightHh]);
  a.w_hr = data_or_null<Real>(in.params[kWeightHr]);
  int n = 0;
  for (int i : cell_param_indices(cell)) {
    a.cell_w[n] = data_or_null<Real>(in.params[i]);
    a.dcell_w[n++] = data_or_null<Real>(grad_of(dweights, d.layout, i));
  }
  a.ws = in.ws.data_ptr<Real>();
  a.dy = data_or_null<Real>(in.grad_output);
  a.dhy = data_or_null<Real>(in.grad_state[kStateH]);
  a.dcy = data_or_null<Real>(in.grad_state[kStateC]);
  a.dx = data_or_null<Real>(std::get<0>(g));  // null where not asked for: not computed
  a.dh0 = data_or_null<Real>(dstate[kStateH]);
  a.dc0 = cell.cell_state ? data_or_null<Real>(dstate[kStateC]) : nullptr;
  a.dw_ih = data_or_null<Real>(grad_of(dweights, d.layout, kWeightIh));
  a.dw_hh = data_or_null<Real>(grad_of(dweights, d.layout, kWeightHh));
  a.db_ih = data_or_null<Real>(grad_of(dweights, d.layout, kBiasIh));
  a.db_hh = data_or_null<Real>(grad_of(dweights, d.layout, kBiasHh));
  a.dw_hr = data_or_null<Real>(grad_of(dweights, d.layout, kWeightHr));
  return a;
}

// The gradients of a backward call that `mask` asks for, NaN-filled in the debug mode.
BackwardResult backward_outputs(const BackwardInputs& in, const OutputMask& mask) {
  BackwardResult g = empty_grads(*in.cell, in.d, in.input.options(), mask);
  if (core::debug_nan_scratch()) {
    debug_fill_nan(std::get<0>(g));
    for (const at::Tensor& t : std::get<1>(g)) debug_fill_nan(t);
    for (const at::Tensor& t : std::get<2>(g)) debug_fill_nan(t);
  }
  return g;
}

BackwardOpResult backward_op(c10::string_view cell_name,
                           const c10::optional<at::Tensor>& grad_output,
                           const c10::List<c10::optional<at::Tensor>>& grad_state,
                           const at::Tensor& input_, at::TensorList weights_,
                           const c10::optional<at::Tensor>& lengths_,
                           const at::Tensor& workspace, bool reverse,
                           OptionalTensorList zoneout_, const OptionalBoolList& output_mask) {
  const BackwardInputs in = prepare_backward(
      cell_name, grad_output, grad_state, input_, weights_, lengths_, workspace,
      list_or_empty(zoneout_),
      input_.defined() ? input_.scalar_type() : at::kFloat, cpu_dtype_ok(input_),
      "float32 or float64", /*allow_packed=*/true);
  const OutputMask mask = split_output_mask(*in.cell, OpName{kBackwardOp, in.cell->name},
                                            output_mask, {in.d.layout.count()})[0];
  BackwardResult g = backward_outputs(in, mask);
  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(in.input.scalar_type(), "rnnfast_layer_backward", [&] {
    core::layer_backward(backward_args<scalar_t>(in, g, reverse), ex);
  });
  return none_if_undefined(std::move(g));
}

// The op names the reverse direction's checks report: its state, weights and zoneout errors
// name the arguments state_reverse, weights_reverse and zoneout_reverse (this op's) or
// grad_output_reverse, grad_state_reverse and workspace_reverse (the backward's) without the
// suffix, after this name.
constexpr const char* kPairForwardReverseOp = "bidirectional_layer, reverse direction";
constexpr const char* kPairBackwardReverseOp = "bidirectional_layer_backward, reverse direction";

PairForwardResult pair_forward_op(c10::string_view cell_name, const at::Tensor& input_,
                                  at::TensorList state_, at::TensorList state_reverse_,
                                  at::TensorList weights_, at::TensorList weights_reverse_,
                                  const c10::optional<at::Tensor>& lengths_, bool training,
                                  OptionalTensorList zoneout_,
                                  OptionalTensorList zoneout_reverse_) {
  const ForwardInputs f[2] = {
      prepare_forward(cell_name, input_, state_, weights_, lengths_, list_or_empty(zoneout_),
                      cpu_dtype_ok(input_), "float32 or float64", /*allow_packed=*/true,
                      kPairForwardOp),
      prepare_forward(cell_name, input_, state_reverse_, weights_reverse_, lengths_,
                      list_or_empty(zoneout_reverse_), cpu_dtype_ok(input_),
                      "float32 or float64", /*allow_packed=*/true, kPairForwardReverseOp)};
  ForwardResult out[2] = {forward_outputs(f[0], training), forward_outputs(f[1], training)};
  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(f[0].input.scalar_type(), "rnnfast_bidirectional_layer", [&] {
    core::layer_forward_pair(forward_args<scalar_t>(f[0], out[0], /*reverse=*/false, training),
                             forward_args<scalar_t>(f[1], out[1], /*reverse=*/true, training),
                             ex);
  });
  return std::tuple_cat(std::move(out[0]), std::move(out[1]));
}

PairBackwardResult pair_backward_op(
    c10::string_view cell_name, const c10::optional<at::Tensor>& grad_output,
    const c10::List<c10::optional<at::Tensor>>& grad_state,
    const c10::optional<at::Tensor>& grad_output_reverse,
    const c10::List<c10::optional<at::Tensor>>& grad_state_reverse, const at::Tensor& input_,
    at::TensorList weights_, at::TensorList weights_reverse_,
    const c10::optional<at::Tensor>& lengths_, const at::Tensor& workspace,
    const at::Tensor& workspace_reverse, OptionalTensorList zoneout_,
    OptionalTensorList zoneout_reverse_, const OptionalBoolList& output_mask) {
  const at::ScalarType dtype = input_.defined() ? input_.scalar_type() : at::kFloat;
  const BackwardInputs in[2] = {
      prepare_backward(cell_name, grad_output, grad_state, input_, weights_, lengths_,
                       workspace, list_or_empty(zoneout_), dtype, cpu_dtype_ok(input_),
                       "float32 or float64", /*allow_packed=*/true, kPairBackwardOp),
      prepare_backward(cell_name, grad_output_reverse, grad_state_reverse, input_,
                       weights_reverse_, lengths_, workspace_reverse,
                       list_or_empty(zoneout_reverse_), dtype, cpu_dtype_ok(input_),
                       "float32 or float64", /*allow_packed=*/true, kPairBackwardReverseOp)};
  const std::vector<OutputMask> mask =
      split_output_mask(*in[0].cell, OpName{kPairBackwardOp, in[0].cell->name}, output_mask,
                        {in[0].d.layout.count(), in[1].d.layout.count()});
  // grad_input is the sum of the directions' input gradients, written by the forward one's
  OutputMask reverse_mask = mask[1];
  reverse_mask.input = false;
  BackwardResult g[2] = {backward_outputs(in[0], mask[0]), backward_outputs(in[1], reverse_mask)};
  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(in[0].input.scalar_type(), "rnnfast_bidirectional_backward", [&] {
    core::BackwardArgs<scalar_t> b = backward_args<scalar_t>(in[1], g[1], /*reverse=*/true);
    b.dx = data_or_null<scalar_t>(std::get<0>(g[0]));  // the sum of both goes to one gradient
    core::layer_backward_pair(backward_args<scalar_t>(in[0], g[0], /*reverse=*/false), b, ex);
  });
  return {none_if_undefined(std::move(std::get<0>(g[0]))),
          none_if_undefined(std::move(std::get<1>(g[0]))),
          none_if_undefined(std::move(std::get<2>(g[0]))),
          none_if_undefined(std::move(std::get<1>(g[1]))),
          none_if_undefined(std::move(std::get<2>(g[1])))};
}

// The op names the upper layer's checks report (its state, weights and zoneout errors name
// the arguments without the suffix _upper, after this name).
constexpr const char* kStackUpperOp = "stacked_layers, upper layer";

StackForwardResult stack_forward_op(c10::string_view cell_name, const at::Tensor& input_,
                                    at::TensorList state_, at::TensorList state_upper_,
                                    at::TensorList weights_, at::TensorList weights_upper_,
                                    const c10::optional<at::Tensor>& lengths_,
                                    OptionalTensorList zoneout_,
                                    OptionalTensorList zoneout_upper_) {
  const ForwardInputs lower =
      prepare_forward(cell_name, input_, state_, weights_, lengths_, list_or_empty(zoneout_),
                      cpu_dtype_ok(input_), "float32 or float64", /*allow_packed=*/true,
                      kStackForwardOp);
  ForwardResult out = forward_outputs(lower, /*training=*/false);
  const ForwardInputs upper =
      prepare_forward(cell_name, std::get<0>(out), state_upper_, weights_upper_, lengths_,
                      list_or_empty(zoneout_upper_), /*dtype_ok=*/true, "float32 or float64",
                      /*allow_packed=*/true, kStackUpperOp);
  ForwardResult out_upper = forward_outputs(upper, /*training=*/false);
  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(lower.input.scalar_type(), "rnnfast_stacked_layers", [&] {
    core::layer_forward_stack(forward_args<scalar_t>(lower, out, /*reverse=*/false, false),
                              forward_args<scalar_t>(upper, out_upper, /*reverse=*/false, false),
                              ex);
  });
  return {std::move(std::get<0>(out)), std::move(std::get<1>(out)),
          std::move(std::get<0>(out_upper)), std::move(std::get<1>(out_upper))};
}

// keep_mask: a zoneout mask of `size` (core::fill_keep_mask), 1 with probability p, from the
// seed in the 0-D int64 tensor `seed`. Its elements depend only on (seed, index), so the
// parallel split does not change them.
at::Tensor keep_mask_op(const at::Tensor& seed, double p, at::IntArrayRef size,
                        at::ScalarType dtype) {
  constexpr const char* op = "rnnfast::keep_mask";
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.dim() == 0, op,
                   ": seed must be a 0-D int64 tensor, got a ", seed.dim(), "-D ",
                   seed.scalar_type(), " tensor");
  TORCH_CHECK_VALUE(p >= 0 && p <= 1, op, ": p must be in [0, 1], got ", p);
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, op,
                   ": dtype must be float32 or float64, got ", dtype);
  for (int64_t d : size) TORCH_CHECK_VALUE(d >= 0, op, ": size must not be negative, got ", size);
  at::Tensor out = at::empty(size, seed.options().dtype(dtype));
  const uint64_t s = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(dtype, "keep_mask", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), int64_t(1) << 14, [&](int64_t b, int64_t e) {
      core::fill_keep_mask(data + b, e - b, p, s, b);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(rnnfast, m) {
  m.def(glue::kForwardSchema);
  m.def(glue::kBackwardSchema);
  m.def(glue::kPairForwardSchema);
  m.def(glue::kPairBackwardSchema);
  m.def(glue::kStackForwardSchema);
  m.def("keep_mask(Tensor seed, float p, int[] size, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("keep_mask", &keep_mask_op);
  m.impl(glue::kPairForwardOp, &pair_forward_op);
  m.impl(glue::kPairBackwardOp, &pair_backward_op);
  m.impl(glue::kStackForwardOp, &stack_forward_op);
}

RNNFAST_REGISTER_BACKEND(CPU, forward_op, backward_op)

}  // namespace rnnfast

PYBIND11_MODULE(_C, m) {
  namespace core = ::rnnfast::core;
  m.doc() = "rnnfast native extension: registers torch.ops.rnnfast.* and reports build info";
  // The straight route of rnnfast.ops.layer (ops._straight_to_cpu says when it may be taken):
  // rnnfast::layer's CPU kernel with training=False, called from Python without the
  // dispatcher's boxing (its arguments converted once by pybind11, no IValue stack). Returns
  // (output, final states). The GIL is released while the kernel runs, as the op's.
  m.def(
      "layer_cpu_inference",
      [](const std::string& cell, const at::Tensor& input, const std::vector<at::Tensor>& state,
         const std::vector<at::Tensor>& weights, const c10::optional<at::Tensor>& lengths,
         bool reverse, const c10::optional<std::vector<at::Tensor>>& zoneout) {
        // (the dispatcher sends only CPU tensors to this kernel; here the caller must)
        TORCH_CHECK(input.defined() && input.device().is_cpu(),
                    "rnnfast._C.layer_cpu_inference: the input must be a CPU tensor, got ",
                    input.defined() ? input.device().str() : std::string("None"));
        auto [y, state_out, ws] = ::rnnfast::forward_op(
            cell, input, state, weights, lengths, reverse, /*training=*/false,
            zoneout ? ::rnnfast::glue::OptionalTensorList(*zoneout)
                    : ::rnnfast::glue::OptionalTensorList());
        return std::make_tuple(std::move(y), std::move(state_out));
      },
      py::arg("cell"), py::arg("input"), py::arg("state"), py::arg("weights"),
      py::arg("lengths"), py::arg("reverse"), py::arg("zoneout"),
      py::call_guard<py::gil_scoped_release>());
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
  m.def("plan", [](const std::string& cell, bool backward, int64_t T, int64_t B, int64_t I,
                   int64_t H, int64_t P, int threads, bool training) {
    const core::CellInfo* info = core::find_cell(cell.c_str());
    if (!info) throw std::invalid_argument("rnnfast: unknown cell '" + cell + "'");
    if (backward) {
      core::BackwardArgs<float> a;
      a.cell = info->id;
      a.T = T; a.B = B; a.I = I; a.H = H; a.P = P;
      return core::to_string(core::plan_backward(a, threads));
    }
    core::ForwardArgs<float> a;
    a.cell = info->id;
    a.T = T; a.B = B; a.I = I; a.H = H; a.P = P;
    alignas(64) static float workspace_stub[16];  // a training forward saves a workspace; the
    if (training) a.ws = workspace_stub;          // planner reads only its address's alignment
    return core::to_string(core::plan_forward(a, threads));
  }, py::arg("cell"), py::arg("backward"), py::arg("T"), py::arg("B"), py::arg("I"),
     py::arg("H"), py::arg("P") = 0, py::arg("threads") = 1, py::arg("training") = false,
        "The CPU driver's plan (csrc/core/rnn.h: LayerPlan) of a dense float32 layer call on "
        "the active SIMD path, as 'field=value ...' (for benchmarks and tests); training: a "
        "forward that saves the workspace (a backward call is always training).");
  m.def("pair_concurrent", [](int threads, int64_t w_hh_bytes) {
    return core::pair_concurrent(threads, w_hh_bytes);
  }, py::arg("threads"), py::arg("w_hh_bytes"),
        "Whether a bidirectional layer's two directions run at the same time, one thread each, "
        "on `threads` threads with a W_hh of `w_hh_bytes` bytes per direction "
        "(csrc/core/rnn.h: layer_forward_pair), rather than one after the other on every "
        "thread.");
  m.def("stack_concurrent", [](int threads, int64_t w_hh_bytes, int64_t T, int64_t B) {
    return core::stack_concurrent(threads, w_hh_bytes, T, B);
  }, py::arg("threads"), py::arg("w_hh_bytes"), py::arg("T"), py::arg("B"),
        "Whether two stacked layers take the stacked schedule (a wavefront, one core per layer) "
        "on `threads` threads for W_hh of w_hh_bytes per layer, T steps of B rows "
        "(csrc/core/rnn.h: stack_concurrent).");
  m.def("stack_wavefronts", [] { return core::stack_wavefronts(); },
        "How many stacked_layers calls have run as a wavefront so far (for tests).");
  m.def("l2_cache_bytes", [] { return core::cpu_l2_cache_bytes(); },
        "The per-core L2 cache the CPU kernels plan with, in bytes.");
  m.def("gemm_rows_enabled", [] { return core::gemm_rows_enabled(); },
        "Whether GEMMs of few k steps (weight gradients of calls of few rows) write their "
        "output row by row (csrc/core/rnn.h: set_gemm_rows).");
  m.def("set_gemm_rows", [](bool on) { core::set_gemm_rows(on); }, py::arg("on"),
        "Turns the row-by-row path of GEMMs of few k steps on or off (for tests and A/B "
        "timing: the results are the same bits either way).");
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
  // The cells' descriptions (core::kCells) and the per-layer parameters (core::kLayerParams),
  // from which the Python side derives its cell list, parameter shapes and fake kernels.
  m.def("cells", [] {
    pybind11::list cells;
    for (const core::CellInfo& c : core::kCells) {
      pybind11::list gate_names;
      std::string names = c.gate_names;
      for (size_t start = 0, comma; start <= names.size(); start = comma + 1) {
        comma = names.find(',', start);
        if (comma == std::string::npos) comma = names.size();
        gate_names.append(names.substr(start, comma - start));
      }
      pybind11::dict d;
      d["name"] = c.name;
      d["gate_names"] = gate_names;
      d["gates"] = c.gates;
      d["cell_state"] = c.cell_state;
      d["projection"] = c.projection;
      d["apart_gates"] = c.apart_gates;
      d["saved_blocks"] = c.saved_blocks;
      d["layer_norm"] = c.layer_norm();
      d["stats_cols"] = c.layer_norm() ? core::kLnStatsCols : 0;
      pybind11::list params;
      for (int i = 0; i < core::kLayerParamCount; ++i)
        if (c.has_param(i)) params.append(core::kLayerParams[i].name);
      d["params"] = params;
      cells.append(d);
    }
    return cells;
  }, "The cells the ops know (the `cell` argument), with their descriptions (csrc/core/cells.h).");
  m.attr("layer_norm_eps") = core::kLayerNormEps;
  m.def("layer_params", [] {
    auto extent = [](core::Extent e) -> pybind11::object {
      switch (e) {
        case core::Extent::Input: return pybind11::str("input");
        case core::Extent::Hidden: return pybind11::str("hidden");
        case core::Extent::State: return pybind11::str("state");
        case core::Extent::Proj: return pybind11::str("proj");
        case core::Extent::GateRows: return pybind11::str("gate_rows");
        case core::Extent::None: break;
      }
      return pybind11::none();
    };
    pybind11::list params;
    for (const core::ParamSpec& p : core::kLayerParams) {
      pybind11::dict d;
      d["name"] = p.name;
      d["rows"] = extent(p.rows);
      d["cols"] = extent(p.cols);
      d["presence"] = p.presence == core::Presence::Always       ? "always"
                      : p.presence == core::Presence::Bias       ? "bias"
                      : p.presence == core::Presence::Projection ? "projection"
                                                                 : "cell";
      params.append(d);
    }
    return params;
  }, "The per-layer parameters in the ops' `weights` order: name, rows and cols as extents "
     "(input, hidden, state, proj, gate_rows; cols None for 1-D) and when present (always, bias, "
     "projection, or cell: in the cells whose `params` list it).");
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
