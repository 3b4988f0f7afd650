// Autograd for the layer ops, registered under the Autograd dispatch key (every device): the
// forward op runs below autograd and saves what its backward op needs; the backward op gives
// the gradients. No math here.
//
// In C++ rather than with torch.library.register_autograd: the Python wrapper that generates
// (an autograd.Function per call, the op's default arguments filled in from its schema on
// every call, a Python backward) cost about 60 us per forward and 60 us per backward, 7% of a
// training call at T=50 B=16 H=64.
//
// Gradients of gradients: when autograd records the backward pass (create_graph=True, grad
// mode on inside backward), the fused backward op would give gradients with no graph behind
// them. The backward then calls rnnfast._reference.layer_backward instead, which recomputes
// the layer with differentiable torch ops and differentiates it with create_graph=True. The
// backward ops themselves are not differentiable: their Autograd kernel is torch's
// not-implemented fallback, which raises if anything backpropagates through them.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/extension.h>

#include <string>

#include "common.h"

namespace rnnfast {
namespace {

namespace core = ::rnnfast::core;
using glue::BackwardResult;
using glue::ForwardResult;
using OptTensor = c10::optional<at::Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = ForwardResult(const at::Tensor&, const OptTensor&, const OptTensor&,
                                 const at::Tensor&, const at::Tensor&, const OptTensor&,
                                 const OptTensor&, const OptTensor&, const OptTensor&, bool, bool);
using BackwardSig = BackwardResult(const OptTensor&, const OptTensor&, const OptTensor&,
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const OptTensor&, const OptTensor&, const at::Tensor&, bool);

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }
bool given(const OptTensor& t) { return t.has_value() && t->defined(); }
at::Tensor or_undefined(const OptTensor& t) { return given(t) ? *t : at::Tensor(); }

// Positions in the forward's save_for_backward list.
enum Saved { kInput, kWih, kWhh, kWhr, kLengths, kWorkspace, kHx, kCx, kBih, kBhh };

// "lstm", "gru", "rnn_tanh", "rnn_relu"
std::string short_name(core::Cell cell) {
  std::string name = glue::cell_name(cell);
  return name.substr(0, name.size() - std::string("_layer").size());
}

// The differentiable backward (rnnfast._reference.layer_backward, see the top of this file):
// gradients of (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr), undefined where none is needed.
variable_list differentiable_backward(const char* cell, bool reverse, const variable_list& grads,
                                      bool lstm, const variable_list& saved) {
  namespace py = pybind11;
  py::gil_scoped_acquire gil;
  // leaked on purpose: no Python object may be destroyed after the interpreter is gone; the
  // function is looked up on each call (tests replace it to see which path ran)
  static py::object* module = new py::object(py::module_::import("rnnfast._reference"));
  py::object fn = module->attr("layer_backward");
  auto wrap = [](const at::Tensor& t) -> py::object {
    return t.defined() ? py::cast(t) : py::none();
  };
  py::object out = fn(cell, reverse, wrap(grads[0]), wrap(grads[1]),
                         lstm ? wrap(grads[2]) : py::none(), wrap(saved[kInput]),
                         wrap(saved[kHx]), wrap(saved[kCx]), wrap(saved[kWih]), wrap(saved[kWhh]),
                         wrap(saved[kBih]), wrap(saved[kBhh]), wrap(saved[kWhr]),
                         wrap(saved[kLengths]));
  variable_list result;
  for (py::handle g : out) result.push_back(g.is_none() ? at::Tensor() : g.cast<at::Tensor>());
  TORCH_CHECK(result.size() == 8, "rnnfast: layer_backward returned ", result.size(),
              " gradients, expected 8");
  return result;
}

// The op's handle, looked up once.
template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").typed<Sig>();
}

template <core::Cell cell>
struct LayerFunction : public torch::autograd::Function<LayerFunction<cell>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const OptTensor& hx,
                               const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, const OptTensor& lengths, bool reverse,
                               bool training) {
    static const auto op = find_op<ForwardSig>(std::string("rnnfast::") + glue::cell_name(cell));
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, hy, cy, ws] =
        op.call(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training);
    // hx, cx and the biases are saved for a backward that autograd records (see the top);
    // whether they are defined also says which optional inputs were variables (given and
    // defined, as Function counts them): only those get a gradient back.
    ctx->save_for_backward({input, w_ih, w_hh, or_undefined(w_hr), or_undefined(lengths), ws,
                            or_undefined(hx), or_undefined(cx), or_undefined(b_ih),
                            or_undefined(b_hh)});
    ctx->saved_data["reverse"] = reverse;
    // The workspace is not marked non-differentiable (compiled autograd refuses C++ Functions
    // that mark outputs so); its gradient, never defined in practice, is ignored. Gradients of
    // unused outputs stay undefined; the backward op takes them as absent.
    ctx->set_materialize_grads(false);
    return {y, hy, cy, ws};
  }

  // One gradient per forward argument, in order; none for the absent optional tensors (their
  // forward arguments were not variables), the lengths and the flags.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<BackwardSig>(std::string("rnnfast::") + glue::cell_name(cell) + "_backward");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[kInput], &w_ih = saved[kWih], &w_hh = saved[kWhh],
                     &ws = saved[kWorkspace];
    TORCH_CHECK(ws.dim() == input.dim(), "rnnfast.", short_name(cell),
                ": backward needs the activations saved by a forward pass with training=True; "
                "this forward ran with training=False");
    const bool lstm = cell == core::Cell::LSTM;
    const bool reverse = ctx->saved_data["reverse"].toBool();
    at::Tensor gx, ghx, gcx, gwih, gwhh, gbih, gbhh, gwhr;
    if (at::GradMode::is_enabled()) {
      auto g = differentiable_backward(short_name(cell).c_str(), reverse, grads, lstm, saved);
      gx = g[0], ghx = g[1], gcx = g[2], gwih = g[3], gwhh = g[4], gbih = g[5], gbhh = g[6],
      gwhr = g[7];
    } else {
      // grad mode is off: nothing to record, so straight to the backend kernel
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(gx, ghx, gcx, gwih, gwhh, gbih, gbhh, gwhr) =
          op.call(optional_of(grads[0]), optional_of(grads[1]),
                  lstm ? optional_of(grads[2]) : c10::nullopt, input, w_ih, w_hh,
                  optional_of(saved[kWhr]), optional_of(saved[kLengths]), ws, reverse);
    }
    // Function drops the entries of arguments that were not variables (they must be
    // undefined); the others are returned even where an input needs no gradient.
    auto if_given = [&](int k, const at::Tensor& g) { return saved[k].defined() ? g : at::Tensor(); };
    const at::Tensor none;
    return {gx,
            if_given(kHx, ghx),
            if_given(kCx, gcx),
            gwih,
            gwhh,
            if_given(kBih, gbih),
            if_given(kBhh, gbhh),
            if_given(kWhr, gwhr),
            none,
            none,
            none};
  }
};

// The Autograd kernel of an op: LayerFunction records the backward when grad mode is on and
// an input requires grad; otherwise it only runs the forward.
template <core::Cell cell>
ForwardResult layer_autograd(const at::Tensor& input, const OptTensor& hx, const OptTensor& cx,
                             const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                             const OptTensor& b_hh, const OptTensor& w_hr,
                             const OptTensor& lengths, bool reverse, bool training) {
  // autograd needs the required tensors (their devices); the glue checks the rest
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{input, "input"},
                                {w_ih, "weight_ih"},
                                {w_hh, "weight_hh"}})
    TORCH_CHECK(t.defined(), "rnnfast::", glue::cell_name(cell), ": ", name,
                " is required but was None");
  variable_list out = LayerFunction<cell>::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                 lengths, reverse, training);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) {
  using core::Cell;
  m.impl("lstm_layer", &layer_autograd<Cell::LSTM>);
  m.impl("gru_layer", &layer_autograd<Cell::GRU>);
  m.impl("rnn_tanh_layer", &layer_autograd<Cell::RNN_TANH>);
  m.impl("rnn_relu_layer", &layer_autograd<Cell::RNN_RELU>);
  // not differentiable: an error, never a silent zero, if a graph goes through them
  for (const char* op : {"lstm_layer_backward", "gru_layer_backward", "rnn_tanh_layer_backward",
                         "rnn_relu_layer_backward"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace rnnfast
