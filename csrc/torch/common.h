// Torch glue shared by the CPU and CUDA registrations: argument validation
// (shapes, dtypes, devices) and contiguous copies of the arguments. No math.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "../core/rnn.h"

namespace rnnfast {
namespace glue {

namespace core = ::rnnfast::core;

inline const char* cell_name(core::Cell cell) {
  switch (cell) {
    case core::Cell::LSTM: return "lstm_layer";
    case core::Cell::GRU: return "gru_layer";
    case core::Cell::RNN_TANH: return "rnn_tanh_layer";
    default: return "rnn_relu_layer";
  }
}

// Sizes of one layer call, read off the weights and checked against the
// other arguments. N is the number of input rows: T*B, or sum(lengths) for a
// packed 2-D input (PackedSequence.data order, see core::ForwardArgs::packed).
struct Dims {
  int64_t T, B, I, H, P, S, G, N;
  bool packed;
  // Leading dimensions of input-shaped tensors (x, y, workspace, dx).
  std::vector<int64_t> rows() const {
    return packed ? std::vector<int64_t>{N} : std::vector<int64_t>{T, B};
  }
  std::vector<int64_t> rows_by(int64_t cols) const {
    auto r = rows();
    r.push_back(cols);
    return r;
  }
};

// t must be defined, on the input's device, of the input's dtype and of rank dim.
inline void check_tensor(const at::Tensor& t, const char* op, const char* name,
                         const at::Tensor& input, int64_t dim) {
  TORCH_CHECK(t.defined(), "rnnfast::", op, ": ", name, " is required but was None");
  TORCH_CHECK(t.device() == input.device(), "rnnfast::", op, ": ", name, " is on ", t.device(),
              " but the input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "rnnfast::", op, ": ", name,
              " has dtype ", t.scalar_type(), " but the input has dtype ", input.scalar_type());
  TORCH_CHECK(t.dim() == dim, "rnnfast::", op, ": ", name, " must be ", dim, "-D, got shape ",
              t.sizes());
}

inline void check_shape(const at::Tensor& t, const char* op, const char* name,
                        at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, "rnnfast::", op, ": ", name, " must have shape ", want,
              ", got ", t.sizes());
}

inline const at::Tensor* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &*t : nullptr;
}

inline c10::optional<at::Tensor> opt_contiguous(const c10::optional<at::Tensor>& t) {
  if (auto p = opt_ptr(t)) return p->contiguous();
  return c10::nullopt;
}

// Validates input, weights and lengths; `dtypes` names what this backend
// accepts (for the message). Lengths are a CPU tensor on every device. A 2-D
// input is the packed layout (rows of the active (t, b), time-major), which needs
// non-increasing lengths summing to its rows; only backends with allow_packed.
inline Dims check_args(core::Cell cell, const at::Tensor& input, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
                       const c10::optional<at::Tensor>& lengths, bool dtype_ok,
                       const char* dtypes, bool allow_packed) {
  const char* op = cell_name(cell);
  TORCH_CHECK(input.defined(), "rnnfast::", op, ": input is required but was None");
  TORCH_CHECK(dtype_ok, "rnnfast::", op, ": input on ", input.device(), " must be ", dtypes,
              ", got ", input.scalar_type());
  Dims d{};
  d.packed = input.dim() == 2;
  TORCH_CHECK(!d.packed || allow_packed, "rnnfast::", op,
              ": a packed 2-D input is supported on CPU only; got one on ", input.device());
  check_tensor(input, op, "input", input, d.packed ? 2 : 3);
  check_tensor(w_ih, op, "weight_ih", input, 2);
  check_tensor(w_hh, op, "weight_hh", input, 2);
  d.G = core::cell_info(cell).gates;
  if (d.packed) {
    TORCH_CHECK(opt_ptr(lengths), "rnnfast::", op,
                ": a packed 2-D input needs lengths (the sequence lengths, non-increasing)");
    const auto& L = *opt_ptr(lengths);
    TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong && L.dim() == 1,
                "rnnfast::", op, ": lengths must be a 1-D int64 CPU tensor, got ",
                L.scalar_type(), " ", L.sizes(), " on ", L.device());
    d.N = input.size(0);
    d.B = L.size(0);
    const auto Lc = L.contiguous();
    const int64_t* l = Lc.data_ptr<int64_t>();
    int64_t sum = 0;
    for (int64_t b = 0; b < d.B; ++b) {
      TORCH_CHECK(l[b] >= 0 && (b == 0 || l[b] <= l[b - 1]), "rnnfast::", op,
                  ": with a packed 2-D input, lengths must be non-negative and non-increasing, "
                  "got ", L.sizes(), " with lengths[", b, "] = ", l[b]);
      // sum <= N throughout, so it cannot overflow
      TORCH_CHECK(l[b] <= d.N - sum, "rnnfast::", op, ": a packed 2-D input has one row per "
                  "active step, but lengths add up to more than its ", d.N, " rows");
      sum += l[b];
    }
    TORCH_CHECK(sum == d.N, "rnnfast::", op, ": a packed 2-D input has one row per active "
                "step, sum(lengths) = ", sum, ", but it has ", d.N, " rows");
    d.T = d.B > 0 ? l[0] : 0;
    d.I = input.size(1);
  } else {
    d.T = input.size(0);
    d.B = input.size(1);
    d.I = input.size(2);
    d.N = d.T * d.B;
  }
  TORCH_CHECK(w_ih.size(0) % d.G == 0, "rnnfast::", op, ": weight_ih has ", w_ih.size(0),
              " rows, not a multiple of ", d.G, " gates");
  d.H = w_ih.size(0) / d.G;
  check_shape(w_ih, op, "weight_ih", {d.G * d.H, d.I});
  d.P = 0;
  if (auto p = opt_ptr(w_hr)) {
    TORCH_CHECK(cell == core::Cell::LSTM, "rnnfast::", op, ": weight_hr is only for LSTM");
    check_tensor(*p, op, "weight_hr", input, 2);
    d.P = p->size(0);
    TORCH_CHECK(d.P > 0 && d.P < d.H, "rnnfast::", op, ": weight_hr must have 0 < rows < ", d.H,
                ", got ", d.P);
    check_shape(*p, op, "weight_hr", {d.P, d.H});
  }
  d.S = d.P > 0 ? d.P : d.H;
  check_shape(w_hh, op, "weight_hh", {d.G * d.H, d.S});
  TORCH_CHECK(d.T > 0, "rnnfast::", op, ": input must have at least one time step");
  if (auto p = opt_ptr(lengths); p && !d.packed) {
    const auto& L = *p;
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

// The forward arguments, validated and made contiguous.
struct ForwardInputs {
  Dims d;
  at::Tensor input, w_ih, w_hh;
  c10::optional<at::Tensor> hx, cx, b_ih, b_hh, w_hr, lengths;
};

inline ForwardInputs prepare_forward(
    core::Cell cell, const at::Tensor& input, const c10::optional<at::Tensor>& hx,
    const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths,
    bool dtype_ok, const char* dtypes, bool allow_packed) {
  const char* op = cell_name(cell);
  ForwardInputs f;
  f.d = check_args(cell, input, w_ih, w_hh, w_hr, lengths, dtype_ok, dtypes, allow_packed);
  const Dims& d = f.d;
  if (auto p = opt_ptr(hx)) {
    check_tensor(*p, op, "hx", input, 2);
    check_shape(*p, op, "hx", {d.B, d.S});
  }
  if (auto p = opt_ptr(cx)) {
    TORCH_CHECK(cell == core::Cell::LSTM, "rnnfast::", op, ": cx is only for LSTM");
    check_tensor(*p, op, "cx", input, 2);
    check_shape(*p, op, "cx", {d.B, d.H});
  }
  if (auto p = opt_ptr(b_ih)) {
    check_tensor(*p, op, "bias_ih", input, 1);
    check_shape(*p, op, "bias_ih", {d.G * d.H});
  }
  if (auto p = opt_ptr(b_hh)) {
    check_tensor(*p, op, "bias_hh", input, 1);
    check_shape(*p, op, "bias_hh", {d.G * d.H});
  }
  f.input = input.contiguous();
  f.w_ih = w_ih.contiguous();
  f.w_hh = w_hh.contiguous();
  f.hx = opt_contiguous(hx);
  f.cx = opt_contiguous(cx);
  f.b_ih = opt_contiguous(b_ih);
  f.b_hh = opt_contiguous(b_hh);
  f.w_hr = opt_contiguous(w_hr);
  f.lengths = opt_contiguous(lengths);
  return f;
}

// The backward arguments, validated and made contiguous. The workspace must
// have dtype ws_dtype (the CPU kernels save it in the input's dtype, the CUDA
// kernels in the accumulation type).
struct BackwardInputs {
  Dims d;
  at::Tensor input, w_ih, w_hh, ws;
  c10::optional<at::Tensor> gy, ghy, gcy, w_hr, lengths;
};

inline BackwardInputs prepare_backward(
    core::Cell cell, const c10::optional<at::Tensor>& grad_output,
    const c10::optional<at::Tensor>& grad_hy, const c10::optional<at::Tensor>& grad_cy,
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths,
    const at::Tensor& workspace, at::ScalarType ws_dtype, bool dtype_ok, const char* dtypes,
    bool allow_packed) {
  const char* op = cell_name(cell);
  BackwardInputs b;
  b.d = check_args(cell, input, w_ih, w_hh, w_hr, lengths, dtype_ok, dtypes, allow_packed);
  const Dims& d = b.d;
  const int64_t WS = core::cell_info(cell).workspace_cols(d.H, d.P);
  TORCH_CHECK(workspace.defined(), "rnnfast::", op,
              "_backward: workspace is required but was None");
  TORCH_CHECK(workspace.device() == input.device(), "rnnfast::", op, "_backward: workspace is on ",
              workspace.device(), " but the input is on ", input.device());
  TORCH_CHECK(workspace.scalar_type() == ws_dtype, "rnnfast::", op,
              "_backward: workspace has dtype ", workspace.scalar_type(), ", expected ", ws_dtype);
  TORCH_CHECK(workspace.dim() == (d.packed ? 2 : 3),
              "rnnfast::", op, "_backward: the workspace is empty: the forward pass ran with "
              "training=False and saved nothing for backward");
  check_shape(workspace, op, "workspace", d.rows_by(WS));
  if (auto p = opt_ptr(grad_output)) {
    check_tensor(*p, op, "grad_output", input, d.packed ? 2 : 3);
    check_shape(*p, op, "grad_output", d.rows_by(d.S));
    b.gy = p->contiguous();
  }
  if (auto p = opt_ptr(grad_hy)) {
    check_tensor(*p, op, "grad_hy", input, 2);
    check_shape(*p, op, "grad_hy", {d.B, d.S});
    b.ghy = p->contiguous();
  }
  if (auto p = opt_ptr(grad_cy)) {
    if (cell == core::Cell::LSTM) {
      check_tensor(*p, op, "grad_cy", input, 2);
      check_shape(*p, op, "grad_cy", {d.B, d.H});
      b.gcy = p->contiguous();
    }
  }
  b.input = input.contiguous();
  b.w_ih = w_ih.contiguous();
  b.w_hh = w_hh.contiguous();
  b.ws = workspace.contiguous();
  b.w_hr = opt_contiguous(w_hr);
  b.lengths = opt_contiguous(lengths);
  return b;
}

// Gradient tensors of one backward call, allocated with `opts`.
struct Grads {
  at::Tensor dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
             at::Tensor>
  tuple() const {
    return {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
  }
};

inline Grads empty_grads(core::Cell cell, const Dims& d, const at::TensorOptions& opts) {
  Grads g;
  g.dx = at::empty(d.rows_by(d.I), opts);
  g.dh0 = at::empty({d.B, d.S}, opts);
  g.dc0 = cell == core::Cell::LSTM ? at::empty({d.B, d.H}, opts) : at::empty({0}, opts);
  g.dw_ih = at::empty({d.G * d.H, d.I}, opts);
  g.dw_hh = at::empty({d.G * d.H, d.S}, opts);
  g.db_ih = at::empty({d.G * d.H}, opts);
  g.db_hh = at::empty({d.G * d.H}, opts);
  g.dw_hr = d.P > 0 ? at::empty({d.P, d.H}, opts) : at::empty({0}, opts);
  return g;
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

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

// The outputs of one forward call (output, hy, cy, workspace), allocated with `opts`;
// the workspace, saved only when training, with `ws_opts`.
inline ForwardResult empty_outputs(core::Cell cell, const Dims& d, const at::TensorOptions& opts,
                                   const at::TensorOptions& ws_opts, bool training) {
  return {at::empty(d.rows_by(d.S), opts), at::empty({d.B, d.S}, opts),
          cell == core::Cell::LSTM ? at::empty({d.B, d.H}, opts) : at::empty({0}, opts),
          training ? at::empty(d.rows_by(core::cell_info(cell).workspace_cols(d.H, d.P)), ws_opts)
                   : at::empty({0}, ws_opts)};
}

// Registers forward_op<Cell> / backward_op<Cell> of a backend under every
// cell's op names for one dispatch key.
#define RNNFAST_REGISTER_BACKEND(KEY, FWD, BWD)                                 \
  TORCH_LIBRARY_IMPL(rnnfast, KEY, m) {                                         \
    using ::rnnfast::core::Cell;                                                \
    m.impl("lstm_layer", &FWD<Cell::LSTM>);                                     \
    m.impl("gru_layer", &FWD<Cell::GRU>);                                       \
    m.impl("rnn_tanh_layer", &FWD<Cell::RNN_TANH>);                             \
    m.impl("rnn_relu_layer", &FWD<Cell::RNN_RELU>);                             \
    m.impl("lstm_layer_backward", &BWD<Cell::LSTM>);                            \
    m.impl("gru_layer_backward", &BWD<Cell::GRU>);                              \
    m.impl("rnn_tanh_layer_backward", &BWD<Cell::RNN_TANH>);                    \
    m.impl("rnn_relu_layer_backward", &BWD<Cell::RNN_RELU>);                    \
  }

}  // namespace glue
}  // namespace rnnfast
