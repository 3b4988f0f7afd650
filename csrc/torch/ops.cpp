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

const char* cell_name(core::Cell cell) {
  switch (cell) {
    case core::Cell::LSTM: return "lstm_layer";
    case core::Cell::GRU: return "gru_layer";
    case core::Cell::RNN_TANH: return "rnn_tanh_layer";
    default: return "rnn_relu_layer";
  }
}

// Sizes of one layer call, read off the weights and checked against the
// other arguments.
struct Dims {
  int64_t T, B, I, H, P, S, G;
};

void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim) {
  TORCH_CHECK(t.defined(), "rnnfast::", op, ": ", name, " is required but was None");
  TORCH_CHECK(t.device().is_cpu(), "rnnfast::", op, ": ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "rnnfast::", op, ": ", name, " has dtype ",
              t.scalar_type(), " but the input has dtype ", dtype);
  TORCH_CHECK(t.dim() == dim, "rnnfast::", op, ": ", name, " must be ", dim, "-D, got shape ",
              t.sizes());
}

void check_shape(const at::Tensor& t, const char* op, const char* name, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, "rnnfast::", op, ": ", name, " must have shape ", want,
              ", got ", t.sizes());
}

Dims check_args(core::Cell cell, const at::Tensor& input, const at::Tensor& w_ih,
                const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                const c10::optional<at::Tensor>& lengths) {
  const char* op = cell_name(cell);
  TORCH_CHECK(input.defined(), "rnnfast::", op, ": input is required but was None");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "rnnfast::", op, ": input must be float32 or float64, got ", input.scalar_type());
  const auto dt = input.scalar_type();
  check_tensor(input, op, "input", dt, 3);
  check_tensor(w_ih, op, "weight_ih", dt, 2);
  check_tensor(w_hh, op, "weight_hh", dt, 2);
  Dims d{};
  d.G = core::gates_of(cell);
  d.T = input.size(0);
  d.B = input.size(1);
  d.I = input.size(2);
  TORCH_CHECK(w_ih.size(0) % d.G == 0, "rnnfast::", op, ": weight_ih has ", w_ih.size(0),
              " rows, not a multiple of ", d.G, " gates");
  d.H = w_ih.size(0) / d.G;
  check_shape(w_ih, op, "weight_ih", {d.G * d.H, d.I});
  d.P = 0;
  if (w_hr.has_value() && w_hr->defined()) {
    TORCH_CHECK(cell == core::Cell::LSTM, "rnnfast::", op, ": weight_hr is only for LSTM");
    check_tensor(*w_hr, op, "weight_hr", dt, 2);
    d.P = w_hr->size(0);
    TORCH_CHECK(d.P > 0 && d.P < d.H, "rnnfast::", op, ": weight_hr must have 0 < rows < ", d.H,
                ", got ", d.P);
    check_shape(*w_hr, op, "weight_hr", {d.P, d.H});
  }
  d.S = d.P > 0 ? d.P : d.H;
  check_shape(w_hh, op, "weight_hh", {d.G * d.H, d.S});
  TORCH_CHECK(d.T > 0, "rnnfast::", op, ": input must have at least one time step");
  if (lengths.has_value() && lengths->defined()) {
    const auto& L = *lengths;
    TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong && L.dim() == 1 &&
                    L.size(0) == d.B,
                "rnnfast::", op, ": lengths must be a 1-D int64 CPU tensor of size ", d.B,
                ", got ", L.scalar_type(), " ", L.sizes(), " on ", L.device());
    if (d.B > 0) {
      auto mn = L.min().item<int64_t>(), mx = L.max().item<int64_t>();
      TORCH_CHECK(mn >= 0 && mx <= d.T, "rnnfast::", op, ": lengths must lie in [0, ", d.T,
                  "], got values in [", mn, ", ", mx, "]");
    }
  }
  return d;
}

const at::Tensor* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &*t : nullptr;
}

template <class Real>
const Real* data_or_null(const at::Tensor* t) {
  return t ? t->data_ptr<Real>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward_cpu(
    core::Cell cell, const at::Tensor& input_, const c10::optional<at::Tensor>& hx_,
    const c10::optional<at::Tensor>& cx_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
    const c10::optional<at::Tensor>& b_ih_, const c10::optional<at::Tensor>& b_hh_,
    const c10::optional<at::Tensor>& w_hr_, const c10::optional<at::Tensor>& lengths_,
    bool reverse, bool training) {
  const char* op = cell_name(cell);
  const Dims d = check_args(cell, input_, w_ih_, w_hh_, w_hr_, lengths_);
  const auto dt = input_.scalar_type();
  auto input = input_.contiguous();
  auto w_ih = w_ih_.contiguous();
  auto w_hh = w_hh_.contiguous();
  c10::optional<at::Tensor> hx, cx, b_ih, b_hh, w_hr, lengths;
  if (auto p = opt_ptr(hx_)) {
    check_tensor(*p, op, "hx", dt, 2);
    check_shape(*p, op, "hx", {d.B, d.S});
    hx = p->contiguous();
  }
  if (auto p = opt_ptr(cx_)) {
    TORCH_CHECK(cell == core::Cell::LSTM, "rnnfast::", op, ": cx is only for LSTM");
    check_tensor(*p, op, "cx", dt, 2);
    check_shape(*p, op, "cx", {d.B, d.H});
    cx = p->contiguous();
  }
  if (auto p = opt_ptr(b_ih_)) {
    check_tensor(*p, op, "bias_ih", dt, 1);
    check_shape(*p, op, "bias_ih", {d.G * d.H});
    b_ih = p->contiguous();
  }
  if (auto p = opt_ptr(b_hh_)) {
    check_tensor(*p, op, "bias_hh", dt, 1);
    check_shape(*p, op, "bias_hh", {d.G * d.H});
    b_hh = p->contiguous();
  }
  if (auto p = opt_ptr(w_hr_)) w_hr = p->contiguous();
  if (auto p = opt_ptr(lengths_)) lengths = p->contiguous();

  auto y = at::empty({d.T, d.B, d.S}, input.options());
  auto hy = at::empty({d.B, d.S}, input.options());
  auto cy = cell == core::Cell::LSTM ? at::empty({d.B, d.H}, input.options())
                                     : at::empty({0}, input.options());
  auto ws = training ? at::empty({d.T, d.B, core::workspace_cols(cell, d.H, d.P)}, input.options())
                     : at::empty({0}, input.options());

  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnfast_layer_forward", [&] {
    core::ForwardArgs<scalar_t> a;
    a.cell = cell;
    a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
    a.x = input.data_ptr<scalar_t>();
    a.h0 = hx ? hx->data_ptr<scalar_t>() : nullptr;
    a.c0 = cx ? cx->data_ptr<scalar_t>() : nullptr;
    a.w_ih = w_ih.data_ptr<scalar_t>();
    a.w_hh = w_hh.data_ptr<scalar_t>();
    a.b_ih = b_ih ? b_ih->data_ptr<scalar_t>() : nullptr;
    a.b_hh = b_hh ? b_hh->data_ptr<scalar_t>() : nullptr;
    a.w_hr = w_hr ? w_hr->data_ptr<scalar_t>() : nullptr;
    a.lengths = lengths ? lengths->data_ptr<int64_t>() : nullptr;
    a.reverse = reverse;
    a.y = y.data_ptr<scalar_t>();
    a.hy = hy.data_ptr<scalar_t>();
    a.cy = cell == core::Cell::LSTM ? cy.data_ptr<scalar_t>() : nullptr;
    a.ws = training ? ws.data_ptr<scalar_t>() : nullptr;
    core::layer_forward(a, ex);
  });
  return {y, hy, cy, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layer_backward_cpu(core::Cell cell, const c10::optional<at::Tensor>& grad_output_,
                   const c10::optional<at::Tensor>& grad_hy_,
                   const c10::optional<at::Tensor>& grad_cy_, const at::Tensor& input_,
                   const at::Tensor& w_ih_, const at::Tensor& w_hh_,
                   const c10::optional<at::Tensor>& w_hr_,
                   const c10::optional<at::Tensor>& lengths_, const at::Tensor& workspace,
                   bool reverse) {
  const char* op = cell_name(cell);
  const Dims d = check_args(cell, input_, w_ih_, w_hh_, w_hr_, lengths_);
  const auto dt = input_.scalar_type();
  const int64_t WS = core::workspace_cols(cell, d.H, d.P);
  TORCH_CHECK(workspace.defined(), "rnnfast::", op, "_backward: workspace is required but was None");
  check_tensor(workspace, op, "workspace", dt, workspace.dim() == 3 ? 3 : 1);
  TORCH_CHECK(workspace.dim() == 3,
              "rnnfast::", op, "_backward: the workspace is empty: the forward pass ran with "
              "training=False and saved nothing for backward");
  check_shape(workspace, op, "workspace", {d.T, d.B, WS});
  auto input = input_.contiguous();
  auto w_ih = w_ih_.contiguous();
  auto w_hh = w_hh_.contiguous();
  auto ws = workspace.contiguous();
  c10::optional<at::Tensor> gy, ghy, gcy, w_hr, lengths;
  if (auto p = opt_ptr(grad_output_)) {
    check_tensor(*p, op, "grad_output", dt, 3);
    check_shape(*p, op, "grad_output", {d.T, d.B, d.S});
    gy = p->contiguous();
  }
  if (auto p = opt_ptr(grad_hy_)) {
    check_tensor(*p, op, "grad_hy", dt, 2);
    check_shape(*p, op, "grad_hy", {d.B, d.S});
    ghy = p->contiguous();
  }
  if (auto p = opt_ptr(grad_cy_)) {
    if (cell == core::Cell::LSTM) {
      check_tensor(*p, op, "grad_cy", dt, 2);
      check_shape(*p, op, "grad_cy", {d.B, d.H});
      gcy = p->contiguous();
    }
  }
  if (auto p = opt_ptr(w_hr_)) w_hr = p->contiguous();
  if (auto p = opt_ptr(lengths_)) lengths = p->contiguous();

  const auto opts = input.options();
  auto dx = at::empty({d.T, d.B, d.I}, opts);
  auto dh0 = at::empty({d.B, d.S}, opts);
  auto dc0 = cell == core::Cell::LSTM ? at::empty({d.B, d.H}, opts) : at::empty({0}, opts);
  auto dw_ih = at::empty({d.G * d.H, d.I}, opts);
  auto dw_hh = at::empty({d.G * d.H, d.S}, opts);
  auto db_ih = at::empty({d.G * d.H}, opts);
  auto db_hh = at::empty({d.G * d.H}, opts);
  auto dw_hr = d.P > 0 ? at::empty({d.P, d.H}, opts) : at::empty({0}, opts);

  AtenExecutor ex;
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnfast_layer_backward", [&] {
    core::BackwardArgs<scalar_t> a;
    a.cell = cell;
    a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
    a.x = input.data_ptr<scalar_t>();
    a.w_ih = w_ih.data_ptr<scalar_t>();
    a.w_hh = w_hh.data_ptr<scalar_t>();
    a.w_hr = w_hr ? w_hr->data_ptr<scalar_t>() : nullptr;
    a.lengths = lengths ? lengths->data_ptr<int64_t>() : nullptr;
    a.reverse = reverse;
    a.ws = ws.data_ptr<scalar_t>();
    a.dy = gy ? gy->data_ptr<scalar_t>() : nullptr;
    a.dhy = ghy ? ghy->data_ptr<scalar_t>() : nullptr;
    a.dcy = gcy ? gcy->data_ptr<scalar_t>() : nullptr;
    a.dx = dx.data_ptr<scalar_t>();
    a.dh0 = dh0.data_ptr<scalar_t>();
    a.dc0 = cell == core::Cell::LSTM ? dc0.data_ptr<scalar_t>() : nullptr;
    a.dw_ih = dw_ih.data_ptr<scalar_t>();
    a.dw_hh = dw_hh.data_ptr<scalar_t>();
    a.db_ih = db_ih.data_ptr<scalar_t>();
    a.db_hh = db_hh.data_ptr<scalar_t>();
    a.dw_hr = d.P > 0 ? dw_hr.data_ptr<scalar_t>() : nullptr;
    core::layer_backward(a, ex);
  });
  return {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

// One schema for every cell; the cell is the op's name.
constexpr const char* kForwardArgs =
    "(Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, "
    "Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor? lengths, bool reverse, "
    "bool training) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)";
constexpr const char* kBackwardArgs =
    "(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, Tensor weight_ih, "
    "Tensor weight_hh, Tensor? weight_hr, Tensor? lengths, Tensor workspace, bool reverse) -> "
    "(Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_weight_ih, "
    "Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_weight_hr)";

template <core::Cell C>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_op(
    const at::Tensor& input, const c10::optional<at::Tensor>& hx,
    const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths,
    bool reverse, bool training) {
  return layer_forward_cpu(C, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                           training);
}

template <core::Cell C>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
backward_op(const c10::optional<at::Tensor>& gy, const c10::optional<at::Tensor>& ghy,
            const c10::optional<at::Tensor>& gcy, const at::Tensor& input,
            const at::Tensor& w_ih, const at::Tensor& w_hh,
            const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths,
            const at::Tensor& workspace, bool reverse) {
  return layer_backward_cpu(C, gy, ghy, gcy, input, w_ih, w_hh, w_hr, lengths, workspace,
                            reverse);
}

}  // namespace

TORCH_LIBRARY(rnnfast, m) {
  for (auto cell : {core::Cell::LSTM, core::Cell::GRU, core::Cell::RNN_TANH, core::Cell::RNN_RELU}) {
    const std::string name = cell_name(cell);
    m.def((name + kForwardArgs).c_str());
    m.def((name + "_backward" + kBackwardArgs).c_str());
  }
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("lstm_layer", &forward_op<core::Cell::LSTM>);
  m.impl("gru_layer", &forward_op<core::Cell::GRU>);
  m.impl("rnn_tanh_layer", &forward_op<core::Cell::RNN_TANH>);
  m.impl("rnn_relu_layer", &forward_op<core::Cell::RNN_RELU>);
  m.impl("lstm_layer_backward", &backward_op<core::Cell::LSTM>);
  m.impl("gru_layer_backward", &backward_op<core::Cell::GRU>);
  m.impl("rnn_tanh_layer_backward", &backward_op<core::Cell::RNN_TANH>);
  m.impl("rnn_relu_layer_backward", &backward_op<core::Cell::RNN_RELU>);
}

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
#ifdef RNNFAST_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}
