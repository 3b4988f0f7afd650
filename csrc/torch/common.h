// Torch glue shared by the CPU and CUDA registrations: the two op schemas, argument
// validation (shapes, dtypes, devices) and contiguous copies of the arguments. No math.
//
// Everything here is generic over the cell: a cell's facts (gates, whether it has a cell
// state, whether it accepts a projection, its workspace) come from its description
// (core::kCells, cells.h), and the parameters a layer takes from core::kLayerParams.
#pragma once

#include <torch/extension.h>

#include <array>
#include <initializer_list>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "../core/rnn.h"

namespace rnnfast {
namespace glue {

namespace core = ::rnnfast::core;

// The two ops, one schema each for every cell. `state` is empty (zero initial states) or holds
// CellInfo::states() tensors, [h] or [h, c]; `weights` holds the present entries of
// core::kLayerParams in that order (see WeightLayout below); `zoneout` is empty (none) or holds
// one tensor per state: a 0-D probability (eval's expectation) or a mask shaped like the
// state's rows (core::ForwardArgs::zoneout); None or empty: no zoneout. The backward call
// takes the forward's.
constexpr const char* kForwardOp = "layer";
constexpr const char* kBackwardOp = "layer_backward";
constexpr const char* kForwardSchema =
    "layer(str cell, Tensor input, Tensor[] state, Tensor[] weights, Tensor? lengths, "
    "bool reverse, bool training, Tensor[]? zoneout=None) -> "
    "(Tensor output, Tensor[] state_out, Tensor workspace)";
constexpr const char* kBackwardSchema =
    "layer_backward(str cell, Tensor? grad_output, Tensor?[] grad_state, Tensor input, "
    "Tensor[] weights, Tensor? lengths, Tensor workspace, bool reverse, "
    "Tensor[]? zoneout=None, bool[]? output_mask=None) -> "
    "(Tensor? grad_input, Tensor?[] grad_state, Tensor?[] grad_weights)";

// A bidirectional layer's two directions in one call (CPU): the forward direction's
// arguments, then the reverse direction's; the input and lengths are shared, and the
// backward's grad_input is the sum of the two directions' (core::layer_backward_pair).
constexpr const char* kPairForwardOp = "bidirectional_layer";
constexpr const char* kPairBackwardOp = "bidirectional_layer_backward";
constexpr const char* kPairForwardSchema =
    "bidirectional_layer(str cell, Tensor input, Tensor[] state, Tensor[] state_reverse, "
    "Tensor[] weights, Tensor[] weights_reverse, Tensor? lengths, bool training, "
    "Tensor[]? zoneout=None, Tensor[]? zoneout_reverse=None) -> "
    "(Tensor output, Tensor[] state_out, Tensor workspace, Tensor output_reverse, "
    "Tensor[] state_out_reverse, Tensor workspace_reverse)";
constexpr const char* kPairBackwardSchema =
    "bidirectional_layer_backward(str cell, Tensor? grad_output, Tensor?[] grad_state, "
    "Tensor? grad_output_reverse, Tensor?[] grad_state_reverse, Tensor input, "
    "Tensor[] weights, Tensor[] weights_reverse, Tensor? lengths, Tensor workspace, "
    "Tensor workspace_reverse, Tensor[]? zoneout=None, Tensor[]? zoneout_reverse=None, "
    "bool[]? output_mask=None) -> "
    "(Tensor? grad_input, Tensor?[] grad_state, Tensor?[] grad_weights, "
    "Tensor?[] grad_state_reverse, Tensor?[] grad_weights_reverse)";

// Two stacked layers of one direction in one call (CPU, no gradients: grad mode off or
// nothing requiring grad): the lower layer's arguments, then the upper one's, whose input is
// the lower one's output (core::layer_forward_stack); the lengths are shared.
constexpr const char* kStackForwardOp = "stacked_layers";
constexpr const char* kStackForwardSchema =
    "stacked_layers(str cell, Tensor input, Tensor[] state, Tensor[] state_upper, "
    "Tensor[] weights, Tensor[] weights_upper, Tensor? lengths, Tensor[]? zoneout=None, "
    "Tensor[]? zoneout_upper=None) -> "
    "(Tensor output, Tensor[] state_out, Tensor output_upper, Tensor[] state_out_upper)";

// The backward ops' output_mask says which gradients to compute and return: None = all, else
// one bool per gradient in the order the op returns them (see OutputMask below). A gradient
// not asked for comes back undefined (None in Python).

// (output, state_out, workspace) and (grad_input, grad_state, grad_weights).
using ForwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>;
using BackwardResult =
    std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;
// (output, state_out, workspace) of the forward direction, then of the reverse direction.
using PairForwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor,
                                     std::vector<at::Tensor>, at::Tensor>;
// (output, state_out) of the lower layer, then of the upper one.
using StackForwardResult =
    std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>>;
// What the backward ops return: the gradients, None where output_mask did not ask for one
// (the schemas' Tensor? and Tensor?[]); inside the glue a BackwardResult holds them with
// undefined tensors for None.
using OptionalTensors = std::vector<c10::optional<at::Tensor>>;
using BackwardOpResult = std::tuple<c10::optional<at::Tensor>, OptionalTensors, OptionalTensors>;
// (grad_input, grad_state, grad_weights, grad_state_reverse, grad_weights_reverse).
using PairBackwardResult = std::tuple<c10::optional<at::Tensor>, OptionalTensors, OptionalTensors,
                                      OptionalTensors, OptionalTensors>;

// An undefined tensor as None, and back.
inline c10::optional<at::Tensor> none_if_undefined(at::Tensor t) {
  return t.defined() ? c10::optional<at::Tensor>(std::move(t)) : c10::nullopt;
}
inline OptionalTensors none_if_undefined(std::vector<at::Tensor> ts) {
  OptionalTensors out;
  out.reserve(ts.size());
  for (at::Tensor& t : ts) out.push_back(none_if_undefined(std::move(t)));
  return out;
}
inline at::Tensor undefined_if_none(c10::optional<at::Tensor> t) {
  return t.has_value() ? std::move(*t) : at::Tensor();
}
inline std::vector<at::Tensor> undefined_if_none(OptionalTensors ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (c10::optional<at::Tensor>& t : ts) out.push_back(undefined_if_none(std::move(t)));
  return out;
}
inline BackwardOpResult none_if_undefined(BackwardResult g) {
  return {none_if_undefined(std::move(std::get<0>(g))),
          none_if_undefined(std::move(std::get<1>(g))),
          none_if_undefined(std::move(std::get<2>(g)))};
}

// Names the op and its cell in error messages: "rnnfast::layer(lstm)".
struct OpName {
  const char* op;
  const char* cell;
};
inline std::ostream& operator<<(std::ostream& os, const OpName& n) {
  return os << "rnnfast::" << n.op << "(" << n.cell << ")";
}

// The cell called `name`, or a ValueError listing the known cells.
inline const core::CellInfo& find_cell(c10::string_view name, const char* op) {
  for (const core::CellInfo& c : core::kCells)
    if (name == c.name) return c;
  std::string known;
  for (const core::CellInfo& c : core::kCells) known += (known.empty() ? "" : ", ") + std::string(c.name);
  TORCH_CHECK_VALUE(false, "rnnfast::", op, ": unknown cell '", name, "', expected one of ",
                    known);
}

// The names of the states, by position in `state`: h, then c for a cell with a cell state.
constexpr int kStateH = 0, kStateC = 1;
constexpr const char* kStateNames[] = {"h", "c"};

// --- the weights list ---------------------------------------------------------------------
//
// Which parameters a `weights` list holds is read off its length. The list has, in
// core::kLayerParams order, every Always parameter, then the Bias ones if the layer has biases
// (bias=True), the Projection ones if it has a projection, and the cell's own (Presence::Cell,
// the ones its description lists; a fixed number per cell). The Bias group (bias_ih, bias_hh:
// biases come in pairs) and the Projection group (weight_hr) differ in size and neither is
// empty, so each of the four combinations has its own length: the length says which groups
// are there. A cell without `projection` accepts only the lengths without it.

constexpr int params_with(core::Presence p) {
  int n = 0;
  for (const core::ParamSpec& s : core::kLayerParams) n += s.presence == p ? 1 : 0;
  return n;
}
static_assert(params_with(core::Presence::Bias) > 0 && params_with(core::Presence::Projection) > 0 &&
                  params_with(core::Presence::Bias) != params_with(core::Presence::Projection),
              "the length of a weights list must say which optional parameters it holds");

// Which parameters a weights list holds: the optional groups, and the cell's own.
struct WeightLayout {
  bool bias = false, projection = false;
  unsigned cell_params = 0;  // CellInfo::param_mask
  // Whether the list holds kLayerParams[index].
  constexpr bool has(int index) const {
    switch (core::kLayerParams[index].presence) {
      case core::Presence::Always: return true;
      case core::Presence::Bias: return bias;
      case core::Presence::Projection: return projection;
      case core::Presence::Cell: return (cell_params >> index) & 1u;
    }
    return false;
  }
  constexpr int count() const {
    int n = 0;
    for (int i = 0; i < core::kLayerParamCount; ++i) n += has(i) ? 1 : 0;
    return n;
  }
};

// The position of the parameter called `name` in core::kLayerParams (-1 if none).
constexpr int param_index(const char* name) {
  for (int i = 0; i < core::kLayerParamCount; ++i) {
    const char *a = core::kLayerParams[i].name, *b = name;
    while (*a && *a == *b) ++a, ++b;
    if (*a == *b) return i;
  }
  return -1;
}
// The parameters the kernels' arguments name (the cell's own go by CellInfo::param_mask).
constexpr int kWeightIh = param_index("weight_ih"), kWeightHh = param_index("weight_hh"),
              kBiasIh = param_index("bias_ih"), kBiasHh = param_index("bias_hh"),
              kWeightHr = param_index("weight_hr");
static_assert(kWeightIh >= 0 && kWeightHh >= 0 && kBiasIh >= 0 && kBiasHh >= 0 && kWeightHr >= 0,
              "every parameter the kernels take is in core::kLayerParams");

// The kLayerParams positions of a cell's own parameters, in order (n = 0 .. params() - 1),
// for a range-for (no allocation: the ops build this on every call).
struct CellParamIndices {
  int index[core::kMaxCellParams];
  int count = 0;
  const int* begin() const { return index; }
  const int* end() const { return index + count; }
};
inline CellParamIndices cell_param_indices(const core::CellInfo& cell) {
  CellParamIndices r;
  for (int i = 0; i < core::kLayerParamCount; ++i)
    if (cell.has_param(i)) r.index[r.count++] = i;
  return r;
}

// One tensor per entry of core::kLayerParams; undefined = absent.
using ParamTensors = std::array<at::Tensor, core::kLayerParamCount>;

// "weight_ih, weight_hh, bias_ih, bias_hh": the parameters of one layout, in list order.
inline std::string param_names(WeightLayout layout) {
  std::string s;
  for (int i = 0; i < core::kLayerParamCount; ++i)
    if (layout.has(i)) s += (s.empty() ? "" : ", ") + std::string(core::kLayerParams[i].name);
  return s;
}

// The layouts `cell` accepts, for messages: "2 (weight_ih, weight_hh) or 4 (...)".
inline std::string accepted_layouts(const core::CellInfo& cell) {
  std::vector<std::string> items;
  for (bool projection : {false, true}) {
    if (projection && !cell.projection) continue;
    for (bool bias : {false, true}) {
      const WeightLayout l{bias, projection, cell.param_mask};
      items.push_back(std::to_string(l.count()) + " (" + param_names(l) + ")");
    }
  }
  std::string s;
  for (size_t i = 0; i < items.size(); ++i)
    s += (i == 0 ? "" : i + 1 == items.size() ? " or " : ", ") + items[i];
  return s;
}

// The layout of a weights list of `n` tensors for `cell`.
inline WeightLayout decode_weights(const core::CellInfo& cell, const OpName& op, size_t n) {
  for (bool projection : {false, true})
    for (bool bias : {false, true}) {
      const WeightLayout l{bias, projection, cell.param_mask};
      if (static_cast<size_t>(l.count()) != n) continue;
      TORCH_CHECK(!projection || cell.projection, op, ": weights has ", n, " tensors, which are ",
                  param_names(l), ", but the ", cell.name,
                  " cell takes no projection (weight_hr); it takes ", accepted_layouts(cell));
      return l;
    }
  TORCH_CHECK(false, op, ": weights must hold ", accepted_layouts(cell), " tensors, got ", n,
              " tensors");
}

// --- sizes and checks ---------------------------------------------------------------------

// Sizes of one layer call, read off the weights and checked against the
// other arguments. N is the number of input rows: T*B, or sum(lengths) for a
// packed 2-D input (PackedSequence.data order, see core::ForwardArgs::packed).
struct Dims {
  int64_t T, B, I, H, P, S, G, N;
  bool packed;
  WeightLayout layout;
  // Leading dimensions of input-shaped tensors (x, y, workspace, dx).
  std::vector<int64_t> rows() const {
    return packed ? std::vector<int64_t>{N} : std::vector<int64_t>{T, B};
  }
  std::vector<int64_t> rows_by(int64_t cols) const {
    auto r = rows();
    r.push_back(cols);
    return r;
  }
  // The size an extent of the shape legend (rnn.h) stands for.
  int64_t extent(core::Extent e) const {
    switch (e) {
      case core::Extent::Input: return I;
      case core::Extent::Hidden: return H;
      case core::Extent::State: return S;
      case core::Extent::Proj: return P;
      case core::Extent::GateRows: return G * H;
      case core::Extent::None: break;
    }
    return 0;
  }
  // The shape of a parameter: [rows] or [rows, cols].
  std::vector<int64_t> shape_of(const core::ParamSpec& p) const {
    if (p.cols == core::Extent::None) return {extent(p.rows)};
    return {extent(p.rows), extent(p.cols)};
  }
  // The shape of state k ([h] or [h, c]): h is [B, S], c is [B, H].
  std::vector<int64_t> state_shape(int k) const { return {B, k == kStateH ? S : H}; }
};

// t must be defined, on the input's device, of the input's dtype and of rank dim.
template <class Name>
inline void check_tensor(const at::Tensor& t, const OpName& op, const Name& name,
                         const at::Tensor& input, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is required but was None");
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but the input has dtype ", input.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
}

template <class Name>
inline void check_shape(const at::Tensor& t, const OpName& op, const Name& name,
                        at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
}

// "state[1] (c)", for messages.
struct StateName {
  const char* list;
  int k;
};
inline std::ostream& operator<<(std::ostream& os, const StateName& n) {
  return os << n.list << "[" << n.k << "] (" << kStateNames[n.k] << ")";
}

inline const at::Tensor* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &*t : nullptr;
}

inline c10::optional<at::Tensor> opt_contiguous(const c10::optional<at::Tensor>& t) {
  if (auto p = opt_ptr(t)) return p->contiguous();
  return c10::nullopt;
}

// Validates input, weights and lengths; `dtypes` names what this backend accepts (for the
// message) and fills `params` with the weights by kLayerParams position. Lengths are a CPU
// tensor on every device. A 2-D input is the packed layout (rows of the active (t, b),
// time-major), which needs non-increasing lengths summing to its rows; only backends with
// allow_packed.
inline Dims check_args(const core::CellInfo& cell, const OpName& op, const at::Tensor& input,
                       at::TensorList weights, const c10::optional<at::Tensor>& lengths,
                       bool dtype_ok, const char* dtypes, bool allow_packed,
                       ParamTensors& params) {
  TORCH_CHECK(input.defined(), op, ": input is required but was None");
  TORCH_CHECK(dtype_ok, op, ": input on ", input.device(), " must be ", dtypes, ", got ",
              input.scalar_type());
  Dims d{};
  d.packed = input.dim() == 2;
  TORCH_CHECK(!d.packed || allow_packed, op,
              ": a packed 2-D input is supported on CPU only; got one on ", input.device());
  check_tensor(input, op, "input", input, d.packed ? 2 : 3);
  d.layout = decode_weights(cell, op, weights.size());
  size_t next = 0;
  for (int i = 0; i < core::kLayerParamCount; ++i) {
    const core::ParamSpec& p = core::kLayerParams[i];
    if (!d.layout.has(i)) continue;
    params[i] = weights[next++];
    check_tensor(params[i], op, p.name, input, p.cols == core::Extent::None ? 1 : 2);
  }
  d.G = cell.gates;
  if (d.packed) {
    TORCH_CHECK(opt_ptr(lengths), op,
                ": a packed 2-D input needs lengths (the sequence lengths, non-increasing)");
    const auto& L = *opt_ptr(lengths);
    TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong && L.dim() == 1, op,
                ": lengths must be a 1-D int64 CPU tensor, got ", L.scalar_type(), " ",
                L.sizes(), " on ", L.device());
    d.N = input.size(0);
    d.B = L.size(0);
    const auto Lc = L.contiguous();
    const int64_t* l = Lc.data_ptr<int64_t>();
    int64_t sum = 0;
    for (int64_t b = 0; b < d.B; ++b) {
      TORCH_CHECK(l[b] >= 0 && (b == 0 || l[b] <= l[b - 1]), op,
                  ": with a packed 2-D input, lengths must be non-negative and non-increasing, "
                  "got ", L.sizes(), " with lengths[", b, "] = ", l[b]);
      // sum <= N throughout, so it cannot overflow
      TORCH_CHECK(l[b] <= d.N - sum, op, ": a packed 2-D input has one row per "
                  "active step, but lengths add up to more than its ", d.N, " rows");
      sum += l[b];
    }
    TORCH_CHECK(sum == d.N, op, ": a packed 2-D input has one row per active "
                "step, sum(lengths) = ", sum, ", but it has ", d.N, " rows");
    d.T = d.B > 0 ? l[0] : 0;
    d.I = input.size(1);
  } else {
    d.T = input.size(0);
    d.B = input.size(1);
    d.I = input.size(2);
    d.N = d.T * d.B;
  }
  // H from the first parameter with G*H rows (weight_ih), P from the one with P rows
  // (weight_hr, present with a projection); then every parameter's shape from its extents.
  d.H = -1;
  for (int i = 0; i < core::kLayerParamCount && d.H < 0; ++i) {
    const core::ParamSpec& p = core::kLayerParams[i];
    if (!params[i].defined() || p.rows != core::Extent::GateRows) continue;
    TORCH_CHECK(params[i].size(0) % d.G == 0, op, ": ", p.name, " has ", params[i].size(0),
                " rows, not a multiple of ", d.G, " gates");
    d.H = params[i].size(0) / d.G;
  }
  d.P = 0;
  for (int i = 0; i < core::kLayerParamCount; ++i) {
    const core::ParamSpec& p = core::kLayerParams[i];
    if (!params[i].defined() || p.rows != core::Extent::Proj) continue;
    d.P = params[i].size(0);
    TORCH_CHECK(d.P > 0 && d.P < d.H, op, ": ", p.name, " must have 0 < rows < ", d.H,
                ", got ", d.P);
  }
  d.S = d.P > 0 ? d.P : d.H;
  for (int i = 0; i < core::kLayerParamCount; ++i)
    if (params[i].defined()) check_shape(params[i], op, core::kLayerParams[i].name,
                                         d.shape_of(core::kLayerParams[i]));
  TORCH_CHECK(d.T > 0, op, ": input must have at least one time step");
  if (auto p = opt_ptr(lengths); p && !d.packed) {
    const auto& L = *p;
    TORCH_CHECK(L.device().is_cpu() && L.scalar_type() == at::kLong && L.dim() == 1 &&
                    L.size(0) == d.B,
                op, ": lengths must be a 1-D int64 CPU tensor of size ", d.B, ", got ",
                L.scalar_type(), " ", L.sizes(), " on ", L.device());
    if (d.B > 0) {
      auto mn = L.min().item<int64_t>(), mx = L.max().item<int64_t>();
      TORCH_CHECK(mn >= 0 && mx <= d.T, op, ": lengths must lie in [0, ", d.T,
                  "], got values in [", mn, ", ", mx, "]");
    }
  }
  return d;
}

inline at::Tensor contiguous_or_undefined(const at::Tensor& t) {
  return t.defined() ? t.contiguous() : t;
}

// The ops' optional tensor list argument (Tensor[]?), and that list or an empty one.
using OptionalTensorList = c10::optional<at::TensorList>;
inline at::TensorList list_or_empty(const OptionalTensorList& l) {
  return l.has_value() ? *l : at::TensorList();
}

// The zoneout of a call (core::ForwardArgs::zoneout), per state [h, c]: a mask (contiguous)
// or a probability; none = no mask and probability 0.
struct Zoneout {
  std::array<at::Tensor, 2> mask;
  std::array<double, 2> p{0.0, 0.0};
};

// Validates the `zoneout` list: empty, or one entry per state, each a 0-D floating tensor
// holding a probability in [0, 1] or a mask of the input's dtype and device shaped like the
// state's rows ([T, B, S] for h, [T, B, H] for c; [N, *] packed).
inline Zoneout check_zoneout(const core::CellInfo& cell, const OpName& op, const Dims& d,
                             const at::Tensor& input, at::TensorList zoneout) {
  Zoneout z;
  TORCH_CHECK(zoneout.empty() || static_cast<int>(zoneout.size()) == cell.states(), op,
              ": zoneout must be empty (no zoneout) or hold one tensor per state (",
              cell.states() == 1 ? "[h]" : "[h, c]", "), got ", zoneout.size(), " tensors");
  for (int k = 0; k < static_cast<int>(zoneout.size()); ++k) {
    const at::Tensor& t = zoneout[k];
    const StateName name{"zoneout", k};
    TORCH_CHECK(t.defined(), op, ": ", name, " is required but was None");
    if (t.dim() == 0) {
      TORCH_CHECK(t.device().is_cpu() || t.device() == input.device(), op, ": ", name,
                  " (a probability) must be on the CPU or on the input's device (",
                  input.device(), "), got one on ", t.device());
      TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
                  " must be a floating probability or mask, got dtype ", t.scalar_type());
      z.p[k] = t.item<double>();
      TORCH_CHECK(z.p[k] >= 0.0 && z.p[k] <= 1.0, op, ": ", name,
                  " is a probability and must lie in [0, 1], got ", z.p[k]);
      continue;
    }
    check_tensor(t, op, name, input, d.packed ? 2 : 3);
    check_shape(t, op, name, d.rows_by(d.state_shape(k)[1]));
    z.mask[k] = t.contiguous();
  }
  return z;
}

// Whether a tensor's values are not in its memory as they read: a lazily negated view (the
// Negative dispatch key) or a ZeroTensor (no memory at all). A kernel reached through the
// dispatcher never sees one (the dispatcher's fallbacks for those keys materialize them
// first), but rnnfast.ops also calls the CPU kernel directly (ops._straight_to_cpu).
inline bool lazy_values(const at::Tensor& t) {
  return t.defined() && (t.is_neg() || t._is_zerotensor());
}
inline at::Tensor materialized(const at::Tensor& t) {
  if (!lazy_values(t)) return t;
  return t._is_zerotensor() ? at::zeros(t.sizes(), t.options()) : t.resolve_neg();
}
inline std::vector<at::Tensor> materialized(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const at::Tensor& t : ts) out.push_back(materialized(t));
  return out;
}

// The forward arguments, validated and made contiguous.
struct ForwardInputs {
  const core::CellInfo* cell;
  Dims d;
  at::Tensor input;
  std::array<at::Tensor, 2> state;  // [h, c]; undefined = zeros (c: also for a cell without)
  ParamTensors params;              // undefined = absent
  c10::optional<at::Tensor> lengths;
  Zoneout zoneout;
};

inline ForwardInputs prepare_forward(c10::string_view cell_name, const at::Tensor& input,
                                     at::TensorList state, at::TensorList weights,
                                     const c10::optional<at::Tensor>& lengths,
                                     at::TensorList zoneout, bool dtype_ok,
                                     const char* dtypes, bool allow_packed,
                                     const char* op_name = kForwardOp) {
  bool lazy = lazy_values(input) || (lengths && lazy_values(*lengths));
  for (at::TensorList ts : {state, weights, zoneout})
    for (const at::Tensor& t : ts) lazy = lazy || lazy_values(t);
  if (lazy) {  // (rare: see lazy_values) the same call on materialized copies
    const c10::optional<at::Tensor> l =
        lengths ? c10::optional<at::Tensor>(materialized(*lengths)) : c10::nullopt;
    return prepare_forward(cell_name, materialized(input), materialized(state),
                           materialized(weights), l, materialized(zoneout), dtype_ok, dtypes,
                           allow_packed, op_name);
  }
  ForwardInputs f;
  f.cell = &find_cell(cell_name, op_name);
  const core::CellInfo& cell = *f.cell;
  const OpName op{op_name, cell.name};
  ParamTensors params;
  f.d = check_args(cell, op, input, weights, lengths, dtype_ok, dtypes, allow_packed, params);
  const Dims& d = f.d;
  TORCH_CHECK(state.empty() || static_cast<int>(state.size()) == cell.states(), op,
              ": state must be empty (zero initial states) or hold ", cell.states(),
              cell.states() == 1 ? " tensor [h]" : " tensors [h, c]", ", got ", state.size(),
              " tensors");
  for (int k = 0; k < static_cast<int>(state.size()); ++k) {
    check_tensor(state[k], op, StateName{"state", k}, input, 2);
    check_shape(state[k], op, StateName{"state", k}, d.state_shape(k));
    f.state[k] = state[k].contiguous();
  }
  f.input = input.contiguous();
  for (int i = 0; i < core::kLayerParamCount; ++i) f.params[i] = contiguous_or_undefined(params[i]);
  f.lengths = opt_contiguous(lengths);
  f.zoneout = check_zoneout(cell, op, d, input, zoneout);
  return f;
}

// The backward arguments, validated and made contiguous. The workspace must
// have dtype ws_dtype (the CPU kernels save it in the input's dtype, the CUDA
// kernels in the accumulation type).
struct BackwardInputs {
  const core::CellInfo* cell;
  Dims d;
  at::Tensor input, ws, grad_output;
  std::array<at::Tensor, 2> grad_state;  // [dh, dc]; undefined = zeros
  ParamTensors params;                   // undefined = absent
  c10::optional<at::Tensor> lengths;
  Zoneout zoneout;
};

inline BackwardInputs prepare_backward(
    c10::string_view cell_name, const c10::optional<at::Tensor>& grad_output,
    const c10::List<c10::optional<at::Tensor>>& grad_state, const at::Tensor& input,
    at::TensorList weights, const c10::optional<at::Tensor>& lengths,
    const at::Tensor& workspace, at::TensorList zoneout, at::ScalarType ws_dtype, bool dtype_ok,
    const char* dtypes, bool allow_packed, const char* op_name = kBackwardOp) {
  BackwardInputs b;
  b.cell = &find_cell(cell_name, op_name);
  const core::CellInfo& cell = *b.cell;
  const OpName op{op_name, cell.name};
  ParamTensors params;
  b.d = check_args(cell, op, input, weights, lengths, dtype_ok, dtypes, allow_packed, params);
  const Dims& d = b.d;
  const int64_t WS = cell.workspace_cols(d.H, d.P);
  TORCH_CHECK(workspace.defined(), op, ": workspace is required but was None");
  TORCH_CHECK(workspace.device() == input.device(), op, ": workspace is on ",
              workspace.device(), " but the input is on ", input.device());
  TORCH_CHECK(workspace.scalar_type() == ws_dtype, op, ": workspace has dtype ",
              workspace.scalar_type(), ", expected ", ws_dtype);
  TORCH_CHECK(workspace.dim() == (d.packed ? 2 : 3), op,
              ": the workspace is empty: the forward pass ran with "
              "training=False and saved nothing for backward");
  check_shape(workspace, op, "workspace", d.rows_by(WS));
  if (auto p = opt_ptr(grad_output)) {
    check_tensor(*p, op, "grad_output", input, d.packed ? 2 : 3);
    check_shape(*p, op, "grad_output", d.rows_by(d.S));
    b.grad_output = p->contiguous();
  }
  TORCH_CHECK(grad_state.empty() || static_cast<int>(grad_state.size()) == cell.states(), op,
              ": grad_state must be empty (no state gradients) or hold ", cell.states(),
              cell.states() == 1 ? " tensor [h]" : " tensors [h, c]", " (each may be None), got ",
              grad_state.size());
  for (int k = 0; k < static_cast<int>(grad_state.size()); ++k) {
    const c10::optional<at::Tensor> g = grad_state.get(k);
    if (auto p = opt_ptr(g)) {
      check_tensor(*p, op, StateName{"grad_state", k}, input, 2);
      check_shape(*p, op, StateName{"grad_state", k}, d.state_shape(k));
      b.grad_state[k] = p->contiguous();
    }
  }
  b.input = input.contiguous();
  b.ws = workspace.contiguous();
  for (int i = 0; i < core::kLayerParamCount; ++i) b.params[i] = contiguous_or_undefined(params[i]);
  b.lengths = opt_contiguous(lengths);
  b.zoneout = check_zoneout(cell, op, d, input, zoneout);
  return b;
}

// --- output_mask ---------------------------------------------------------------------------
//
// Which gradients one direction's backward computes: the input's, each state's, each given
// weight's (by position in its weights list). The CPU kernels skip what is not asked for: the
// GEMM dx = dG W_ih over the whole sequence, dh0 = dG_0 W_hh at the last step, each dW; what
// autograd does not need (an input that is data, initial states not given or not requiring
// grad, frozen weights) is not computed. (The CUDA glue computes all and drops the rest.)
struct OutputMask {
  bool input = true;
  std::array<bool, 2> state{true, true};
  std::vector<bool> weights;  // empty: all
  bool weight(size_t pos) const { return weights.empty() || weights[pos]; }
};

using OptionalBoolList = c10::optional<c10::List<bool>>;

// The mask of each direction of a backward call with `directions` directions (1, or 2 for a
// pair, which share grad_input) from the op's output_mask: entry 0 is grad_input's, then per
// direction one entry per state of the cell and one per weight (weight_counts[dir] of them).
// A ValueError naming the op if the length is not that.
inline std::vector<OutputMask> split_output_mask(const core::CellInfo& cell, const OpName& op,
                                                 const OptionalBoolList& mask,
                                                 std::initializer_list<int> weight_counts) {
  std::vector<OutputMask> out(weight_counts.size());
  if (!mask.has_value()) return out;
  const c10::List<bool>& m = *mask;
  size_t expected = 1;
  std::string parts = "grad_input";
  size_t dir_index = 0;
  for (int w : weight_counts) {
    expected += cell.states() + w;
    const char* suffix = dir_index++ ? "_reverse" : "";
    parts += ", " + std::to_string(cell.states()) + " for grad_state" + suffix + ", " +
             std::to_string(w) + " for grad_weights" + suffix;
  }
  TORCH_CHECK_VALUE(m.size() == expected, op, ": output_mask must be None or hold ", expected,
                    " bools (", parts, "), got ", m.size());
  size_t next = 1;
  size_t dir = 0;
  for (int w : weight_counts) {
    OutputMask& o = out[dir++];
    o.input = m.get(0);
    for (int k = 0; k < cell.states(); ++k) o.state[k] = m.get(next++);
    o.weights.resize(w);
    for (int i = 0; i < w; ++i) o.weights[i] = m.get(next++);
  }
  return out;
}

// The outputs of one forward call (output, state_out, workspace), allocated with `opts`;
// the workspace, saved only when training, with `ws_opts` (empty when not training).
inline ForwardResult empty_outputs(const core::CellInfo& cell, const Dims& d,
                                   const at::TensorOptions& opts,
                                   const at::TensorOptions& ws_opts, bool training) {
  std::vector<at::Tensor> state_out;
  state_out.reserve(cell.states());
  for (int k = 0; k < cell.states(); ++k) state_out.push_back(at::empty(d.state_shape(k), opts));
  return {at::empty(d.rows_by(d.S), opts), std::move(state_out),
          training ? at::empty(d.rows_by(cell.workspace_cols(d.H, d.P)), ws_opts)
                   : at::empty({0}, ws_opts)};
}

// The gradients of one backward call (grad_input, grad_state, grad_weights), allocated with
// `opts`: grad_state has one per state of the cell, grad_weights one per given weight; those
// `mask` does not ask for are left undefined.
inline BackwardResult empty_grads(const core::CellInfo& cell, const Dims& d,
                                  const at::TensorOptions& opts, const OutputMask& mask) {
  std::vector<at::Tensor> grad_state, grad_weights;
  grad_state.reserve(cell.states());
  for (int k = 0; k < cell.states(); ++k)
    grad_state.push_back(mask.state[k] ? at::empty(d.state_shape(k), opts) : at::Tensor());
  for (int i = 0; i < core::kLayerParamCount; ++i)
    if (d.layout.has(i))
      grad_weights.push_back(mask.weight(grad_weights.size())
                                 ? at::empty(d.shape_of(core::kLayerParams[i]), opts)
                                 : at::Tensor());
  return {mask.input ? at::empty(d.rows_by(d.I), opts) : at::Tensor(), std::move(grad_state),
          std::move(grad_weights)};
}

// Leaves undefined the gradients of `g` that `mask` does not ask for (a backend that computes
// every gradient and returns only those asked for).
inline void drop_unasked(BackwardResult& g, const OutputMask& mask) {
  if (!mask.input) std::get<0>(g) = at::Tensor();
  std::vector<at::Tensor>& state = std::get<1>(g);
  for (size_t k = 0; k < state.size(); ++k)
    if (!mask.state[k]) state[k] = at::Tensor();
  std::vector<at::Tensor>& weights = std::get<2>(g);
  for (size_t i = 0; i < weights.size(); ++i)
    if (!mask.weight(i)) weights[i] = at::Tensor();
}

// The gradient of the parameter at kLayerParams position `index` in a grad_weights list
// (undefined if the layout has none).
inline const at::Tensor& grad_of(const std::vector<at::Tensor>& grad_weights,
                                 const WeightLayout& layout, int index) {
  static const at::Tensor kNone;
  if (!layout.has(index)) return kNone;
  size_t pos = 0;
  for (int i = 0; i < index; ++i) pos += layout.has(i) ? 1 : 0;
  return grad_weights[pos];
}

// Registers a backend's forward and backward kernels for one dispatch key.
#define RNNFAST_REGISTER_BACKEND(KEY, FWD, BWD)           \
  TORCH_LIBRARY_IMPL(rnnfast, KEY, m) {                   \
    m.impl(::rnnfast::glue::kForwardOp, &FWD);            \
    m.impl(::rnnfast::glue::kBackwardOp, &BWD);           \
  }

}  // namespace glue
}  // namespace rnnfast
