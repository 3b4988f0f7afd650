// Autograd for rnnfast::layer, registered under the Autograd dispatch key (every device): the
// forward op runs below autograd and saves what rnnfast::layer_backward needs; that op gives
// the gradients. One autograd Function serves every cell; a second one, PairFunction, serves
// rnnfast::bidirectional_layer (CPU) the same way with rnnfast::bidirectional_layer_backward.
// No math here.
//
// In C++ rather than with torch.library.register_autograd: the Python wrapper that generates
// (an autograd.Function per call, the op's default arguments filled in from its schema on
// every call, a Python backward) costs tens of microseconds per call, a visible share of a
// training call at small sizes.
//
// Gradients of gradients: when autograd records the backward pass (create_graph=True, grad
// mode on inside backward), the fused backward op would give gradients with no graph behind
// them. The backward then calls rnnfast._reference.layer_backward instead, which recomputes
// the layer with differentiable torch ops and differentiates it with create_graph=True. The
// backward op itself is not differentiable: its Autograd kernel (NotDifferentiable, at the
// bottom) raises if anything backpropagates through it.
//
// The fused backward computes only the gradients autograd needs (the op's output_mask, from
// needs_input_grad): no dx GEMM for an input that is data, no dh0 GEMM for initial states not
// given or not requiring grad, no dW for a frozen weight.
#include <torch/autograd.h>
#include <torch/extension.h>

#include <string>

#include "common.h"

namespace rnnfast {
namespace {

namespace core = ::rnnfast::core;
using glue::ForwardResult;
using OptTensor = c10::optional<at::Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = ForwardResult(c10::string_view, const at::Tensor&, at::TensorList,
                                 at::TensorList, const OptTensor&, bool, bool,
                                 glue::OptionalTensorList);
using BackwardSig = glue::BackwardOpResult(c10::string_view, const OptTensor&,
                                   const c10::List<OptTensor>&, const at::Tensor&,
                                   at::TensorList, const OptTensor&, const at::Tensor&, bool,
                                   glue::OptionalTensorList, const glue::OptionalBoolList&);

using glue::none_if_undefined;
using glue::undefined_if_none;

// The forward's save_for_backward list: these three, then the cell's states() initial states
// (undefined where the state list was empty), then the weights, then the zoneout list (its
// length in saved_data[kZoneoutKey]).
enum Saved { kInput, kLengths, kWorkspace, kFirstState };
constexpr const char* kZoneoutKey = "zoneout";

// The cell and the direction of a call, kept in the context's saved_data as one integer (one
// hash-map entry per call): the cell's index in core::kCells, times two, plus 1 for reverse.
constexpr const char* kCallKey = "call";
int64_t call_code(const core::CellInfo& cell, bool reverse) {
  return static_cast<int64_t>(&cell - core::kCells) * 2 + (reverse ? 1 : 0);
}
const core::CellInfo& cell_of_code(int64_t code) { return core::kCells[code / 2]; }
bool reverse_of_code(int64_t code) { return code % 2 == 1; }

// The position of the first weight in the saved list.
size_t first_weight(const core::CellInfo& cell) { return kFirstState + cell.states(); }

// The differentiable backward (rnnfast._reference.layer_backward, see the top of this file):
// the gradients of the input, of each given initial state and of each weight, undefined where
// none is needed.
struct DifferentiableGrads {
  at::Tensor input;
  std::vector<at::Tensor> state, weights;
};
DifferentiableGrads differentiable_backward(const core::CellInfo& cell, bool reverse,
                                            const variable_list& grads,
                                            const variable_list& saved, size_t zoneout) {
  namespace py = pybind11;
  py::gil_scoped_acquire gil;
  // leaked on purpose: no Python object may be destroyed after the interpreter is gone; the
  // function is looked up on each call (tests replace it to see which path ran)
  static py::object* module = new py::object(py::module_::import("rnnfast._reference"));
  py::object fn = module->attr("layer_backward");
  auto wrap = [](const at::Tensor& t) -> py::object {
    return t.defined() ? py::cast(t) : py::none();
  };
  const int states = cell.states();
  py::list grad_state, state, weights;
  for (int k = 0; k < states; ++k) grad_state.append(wrap(grads[1 + k]));
  if (saved[kFirstState].defined())
    for (int k = 0; k < states; ++k) state.append(py::cast(saved[kFirstState + k]));
  py::list zoneout_list;
  const size_t end_of_weights = saved.size() - zoneout;
  for (size_t i = first_weight(cell); i < end_of_weights; ++i) weights.append(py::cast(saved[i]));
  for (size_t i = end_of_weights; i < saved.size(); ++i) zoneout_list.append(py::cast(saved[i]));
  py::tuple out = fn(cell.name, reverse, wrap(grads[0]), grad_state, wrap(saved[kInput]), state,
                     weights, wrap(saved[kLengths]), zoneout_list);
  auto unwrap = [](py::handle g) { return g.is_none() ? at::Tensor() : g.cast<at::Tensor>(); };
  TORCH_CHECK(out.size() == 3, "rnnfast: layer_backward returned ", out.size(),
              " items, expected 3 (grad_input, grad_state, grad_weights)");
  DifferentiableGrads result;
  result.input = unwrap(out[0]);
  for (py::handle g : out[1]) result.state.push_back(unwrap(g));
  for (py::handle g : out[2]) result.weights.push_back(unwrap(g));
  TORCH_CHECK(result.state.size() == py::len(state) && result.weights.size() == py::len(weights),
              "rnnfast: layer_backward returned ", result.state.size(), " state and ",
              result.weights.size(), " weight gradients, expected ", py::len(state), " and ",
              py::len(weights));
  return result;
}

// The op's handle, looked up once.
template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string("rnnfast::") + name).c_str(), "")
      .typed<Sig>();
}

// One Function for every cell. Function flattens the tensor lists: the forward's variables
// are the input, each state tensor and each weight (and the lengths, if given), and the
// backward returns one gradient for each, in that order; its outputs are the output, each
// final state and the workspace.
struct LayerFunction : public torch::autograd::Function<LayerFunction> {
  static variable_list forward(AutogradContext* ctx, const core::CellInfo* cell,
                               const at::Tensor& input, at::TensorList state,
                               at::TensorList weights, const OptTensor& lengths, bool reverse,
                               bool training, at::TensorList zoneout) {
    static const auto op = find_op<ForwardSig>(glue::kForwardOp);
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, state_out, ws] =
        op.call(cell->name, input, state, weights, lengths, reverse, training,
                zoneout.empty() ? glue::OptionalTensorList() : glue::OptionalTensorList(zoneout));
    // The states are saved for a backward that autograd records (see the top); whether they
    // are defined also says whether a state list was given (and gets gradients back).
    variable_list saved;
    saved.reserve(kFirstState + cell->states() + weights.size() + zoneout.size());
    saved.push_back(input);
    saved.push_back(undefined_if_none(lengths));
    saved.push_back(ws);
    for (int k = 0; k < cell->states(); ++k) saved.push_back(state.empty() ? at::Tensor() : state[k]);
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), zoneout.begin(), zoneout.end());
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data[kCallKey] = call_code(*cell, reverse);
    if (!zoneout.empty()) ctx->saved_data[kZoneoutKey] = static_cast<int64_t>(zoneout.size());
    // The workspace is not marked non-differentiable (compiled autograd refuses C++ Functions
    // that mark outputs so); its gradient, never defined in practice, is ignored. Gradients of
    // unused outputs stay undefined; the backward op takes them as absent.
    ctx->set_materialize_grads(false);
    variable_list out;
    out.reserve(state_out.size() + 2);
    out.push_back(y);
    out.insert(out.end(), state_out.begin(), state_out.end());
    out.push_back(ws);
    return out;
  }

  // grads: the output's, each final state's, the workspace's.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BackwardSig>(glue::kBackwardOp);
    const variable_list saved = ctx->get_saved_variables();
    const int64_t code = ctx->saved_data[kCallKey].toInt();
    const core::CellInfo& cell = cell_of_code(code);
      const at::Tensor &input = saved[kInput], &ws = saved[kWorkspace];
    TORCH_CHECK(ws.dim() == input.dim(), "rnnfast.", cell.name,
                ": backward needs the activations saved by a forward pass with training=True; "
                "this forward ran with training=False");
    const bool reverse = reverse_of_code(code);
    const bool state_given = saved[kFirstState].defined();
    const auto zoneout_entry = ctx->saved_data.find(kZoneoutKey);
    const size_t zoneout =
        zoneout_entry == ctx->saved_data.end() ? 0 : zoneout_entry->second.toInt();
    const at::TensorList weights = at::TensorList(saved).slice(
        first_weight(cell), saved.size() - zoneout - first_weight(cell));
    const at::TensorList zoneout_list = at::TensorList(saved).slice(saved.size() - zoneout);
    at::Tensor grad_input;
    std::vector<at::Tensor> grad_state, grad_weights;
    if (at::GradMode::is_enabled()) {
      DifferentiableGrads g = differentiable_backward(cell, reverse, grads, saved, zoneout);
      grad_input = std::move(g.input);
      grad_state = std::move(g.state);
      grad_weights = std::move(g.weights);
    } else {
      // grad mode is off: nothing to record, so straight to the backend kernel
      at::AutoDispatchBelowADInplaceOrView below;
      c10::List<OptTensor> grad_state_out;
      grad_state_out.reserve(cell.states());
      for (int k = 0; k < cell.states(); ++k)
        grad_state_out.push_back(none_if_undefined(grads[1 + k]));
      // only the gradients autograd needs (differentiable inputs: the input, the states if
      // given, the weights, in that order; no state edges when no state list was given)
      c10::List<bool> mask;
      size_t edge = 0;
      mask.push_back(ctx->needs_input_grad(edge++));
      for (int k = 0; k < cell.states(); ++k)
        mask.push_back(state_given && ctx->needs_input_grad(edge++));
      for (size_t i = 0; i < weights.size(); ++i) mask.push_back(ctx->needs_input_grad(edge++));
      auto [gi, gs, gw] =
          op.call(cell.name, none_if_undefined(grads[0]), grad_state_out, input, weights,
                  none_if_undefined(saved[kLengths]), ws, reverse,
                  zoneout ? glue::OptionalTensorList(zoneout_list) : glue::OptionalTensorList(),
                  mask);
      grad_input = undefined_if_none(std::move(gi));
      grad_state = undefined_if_none(std::move(gs));
      grad_weights = undefined_if_none(std::move(gw));
    }
    // One entry per flattened forward argument: none for the cell, the lengths and the flags
    // (not variables, or not differentiable), none for the states when no state list was
    // given (it had no elements), none for each zoneout tensor (constants).
    variable_list result;
    result.reserve(5 + cell.states() + weights.size() + zoneout);
    result.emplace_back();                     // cell
    result.push_back(std::move(grad_input));   // input
    if (state_given)
      for (int k = 0; k < cell.states(); ++k) result.push_back(std::move(grad_state[k]));
    for (at::Tensor& g : grad_weights) result.push_back(std::move(g));
    result.emplace_back();  // lengths
    result.emplace_back();  // reverse
    result.emplace_back();  // training
    for (size_t k = 0; k < zoneout; ++k) result.emplace_back();
    return result;
  }
};

// A zoneout mask is a constant to the kernels: the Functions give it no gradient. One that
// requires grad, with grad mode on, would lose its gradient silently, so it is refused.
void check_constant_masks(const glue::OpName& op, const char* list,
                          const glue::OptionalTensorList& zoneout) {
  if (!zoneout.has_value() || !at::GradMode::is_enabled()) return;
  for (size_t k = 0; k < zoneout->size(); ++k) {
    const at::Tensor& t = (*zoneout)[k];
    TORCH_CHECK_VALUE(!t.defined() || !t.requires_grad(), op, ": ", list, "[", k,
                      "] requires grad, but rnnfast differentiates no zoneout mask or "
                      "probability (they are constants to its kernels); pass it detached");
  }
}

// The Autograd kernel of rnnfast::layer: LayerFunction records the backward when grad mode is
// on and an input requires grad; otherwise it only runs the forward.
ForwardResult layer_autograd(c10::string_view cell_name, const at::Tensor& input,
                             at::TensorList state, at::TensorList weights,
                             const OptTensor& lengths, bool reverse, bool training,
                             glue::OptionalTensorList zoneout) {
  const core::CellInfo& cell = glue::find_cell(cell_name, glue::kForwardOp);
  // autograd needs the input (its device); the glue checks the rest
  const glue::OpName op{glue::kForwardOp, cell.name};
  TORCH_CHECK(input.defined(), op, ": input is required but was None");
  check_constant_masks(op, "zoneout", zoneout);
  variable_list out =
      LayerFunction::apply(&cell, input, state, weights, lengths, reverse, training,
                           glue::list_or_empty(zoneout));
  return {out.front(), std::vector<at::Tensor>(out.begin() + 1, out.end() - 1), out.back()};
}

// The two directions of rnnfast::bidirectional_layer in one Function. Saved list: the input,
// the lengths, then per direction (forward, reverse) the workspace, the cell's states()
// initial states (undefined where that state list was empty), the weights and the zoneout
// list; each direction's weight and zoneout counts are in saved_data. Its flattened forward
// arguments: the cell, the input, each state of either list, each weight of either list, the
// lengths, the training flag, each zoneout tensor of either list.
struct PairFunction : public torch::autograd::Function<PairFunction> {
  static constexpr const char* kCountKeys[2][2] = {{"weights", "zoneout"},
                                                   {"weights_reverse", "zoneout_reverse"}};

  static variable_list forward(AutogradContext* ctx, const core::CellInfo* cell,
                               const at::Tensor& input, at::TensorList state,
                               at::TensorList state_reverse, at::TensorList weights,
                               at::TensorList weights_reverse, const OptTensor& lengths,
                               bool training, at::TensorList zoneout,
                               at::TensorList zoneout_reverse) {
    using Sig = glue::PairForwardResult(c10::string_view, const at::Tensor&, at::TensorList,
                                        at::TensorList, at::TensorList, at::TensorList,
                                        const OptTensor&, bool, glue::OptionalTensorList,
                                        glue::OptionalTensorList);
    static const auto op = find_op<Sig>(glue::kPairForwardOp);
    auto optional_list = [](at::TensorList l) {
      return l.empty() ? glue::OptionalTensorList() : glue::OptionalTensorList(l);
    };
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, state_out, ws, y_r, state_out_r, ws_r] =
        op.call(cell->name, input, state, state_reverse, weights, weights_reverse, lengths,
                training, optional_list(zoneout), optional_list(zoneout_reverse));
    const at::TensorList states[2] = {state, state_reverse};
    const at::Tensor ws_of[2] = {ws, ws_r};
    const at::TensorList weights_of[2] = {weights, weights_reverse};
    const at::TensorList zoneout_of[2] = {zoneout, zoneout_reverse};
    variable_list saved{input, undefined_if_none(lengths)};
    for (int dir = 0; dir < 2; ++dir) {
      saved.push_back(ws_of[dir]);
      for (int k = 0; k < cell->states(); ++k)
        saved.push_back(states[dir].empty() ? at::Tensor() : states[dir][k]);
      saved.insert(saved.end(), weights_of[dir].begin(), weights_of[dir].end());
      saved.insert(saved.end(), zoneout_of[dir].begin(), zoneout_of[dir].end());
      ctx->saved_data[kCountKeys[dir][0]] = static_cast<int64_t>(weights_of[dir].size());
      ctx->saved_data[kCountKeys[dir][1]] = static_cast<int64_t>(zoneout_of[dir].size());
    }
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data[kCallKey] = call_code(*cell, false);
    ctx->set_materialize_grads(false);  // as LayerFunction's
    variable_list out{y};
    out.insert(out.end(), state_out.begin(), state_out.end());
    out.push_back(ws);
    out.push_back(y_r);
    out.insert(out.end(), state_out_r.begin(), state_out_r.end());
    out.push_back(ws_r);
    return out;
  }

  // grads: per direction the output's, each final state's, the workspace's.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Sig = glue::PairBackwardResult(
        c10::string_view, const OptTensor&, const c10::List<OptTensor>&, const OptTensor&,
        const c10::List<OptTensor>&, const at::Tensor&, at::TensorList, at::TensorList,
        const OptTensor&, const at::Tensor&, const at::Tensor&, glue::OptionalTensorList,
        glue::OptionalTensorList, const glue::OptionalBoolList&);
    static const auto op = find_op<Sig>(glue::kPairBackwardOp);
    const variable_list saved = ctx->get_saved_variables();
    const core::CellInfo& cell = cell_of_code(ctx->saved_data[kCallKey].toInt());
    const int states = cell.states();
    // each direction's saved entries in LayerFunction's layout, and its grads
    variable_list saved_of[2], grads_of[2];
    size_t zoneout_of[2], weights_of[2], next = 2;
    for (int dir = 0; dir < 2; ++dir) {
      weights_of[dir] = ctx->saved_data[kCountKeys[dir][0]].toInt();
      zoneout_of[dir] = ctx->saved_data[kCountKeys[dir][1]].toInt();
      const size_t n = 1 + states + weights_of[dir] + zoneout_of[dir];
      saved_of[dir] = {saved[kInput], saved[kLengths]};
      saved_of[dir].insert(saved_of[dir].end(), saved.begin() + next, saved.begin() + next + n);
      next += n;
      grads_of[dir].assign(grads.begin() + dir * (states + 2),
                           grads.begin() + (dir + 1) * (states + 2));
      TORCH_CHECK(saved_of[dir][kWorkspace].dim() == saved[kInput].dim(), "rnnfast.", cell.name,
                  ": backward needs the activations saved by a forward pass with "
                  "training=True; this forward ran with training=False");
    }
    auto slice = [](const variable_list& l, size_t from, size_t n) {
      return at::TensorList(l).slice(from, n);
    };
    at::Tensor grad_input;
    std::vector<at::Tensor> grad_state[2], grad_weights[2];
    if (at::GradMode::is_enabled()) {
      // recorded backward: each direction differentiably, their input gradients added
      for (int dir = 0; dir < 2; ++dir) {
        DifferentiableGrads g =
            differentiable_backward(cell, dir == 1, grads_of[dir], saved_of[dir], zoneout_of[dir]);
        grad_input = !grad_input.defined() ? g.input
                     : g.input.defined()   ? grad_input + g.input
                                           : grad_input;
        grad_state[dir] = std::move(g.state);
        grad_weights[dir] = std::move(g.weights);
      }
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      c10::List<OptTensor> grad_state_in[2];
      for (int dir = 0; dir < 2; ++dir)
        for (int k = 0; k < states; ++k)
          grad_state_in[dir].push_back(none_if_undefined(grads_of[dir][1 + k]));
      auto zoneout_list = [&](int dir) {
        return zoneout_of[dir] ? glue::OptionalTensorList(slice(
                                     saved_of[dir], saved_of[dir].size() - zoneout_of[dir],
                                     zoneout_of[dir]))
                               : glue::OptionalTensorList();
      };
      // only the gradients autograd needs; its differentiable inputs: the input, the states
      // given (forward direction's, then reverse's), the weights (the same order)
      bool state_given[2];
      size_t states_given = 0;
      for (int dir = 0; dir < 2; ++dir) {
        state_given[dir] = saved_of[dir][kFirstState].defined();
        states_given += state_given[dir] ? states : 0;
      }
      c10::List<bool> mask;
      mask.push_back(ctx->needs_input_grad(0));
      for (int dir = 0; dir < 2; ++dir) {
        size_t state_edge = 1 + (dir == 1 && state_given[0] ? states : 0);
        size_t weight_edge = 1 + states_given + (dir == 1 ? weights_of[0] : 0);
        for (int k = 0; k < states; ++k)
          mask.push_back(state_given[dir] && ctx->needs_input_grad(state_edge++));
        for (size_t i = 0; i < weights_of[dir]; ++i)
          mask.push_back(ctx->needs_input_grad(weight_edge++));
      }
      auto [gi, gs, gw, gs_r, gw_r] =
          op.call(cell.name, none_if_undefined(grads_of[0][0]), grad_state_in[0],
                  none_if_undefined(grads_of[1][0]), grad_state_in[1], saved[kInput],
                  slice(saved_of[0], first_weight(cell), weights_of[0]),
                  slice(saved_of[1], first_weight(cell), weights_of[1]),
                  none_if_undefined(saved[kLengths]), saved_of[0][kWorkspace],
                  saved_of[1][kWorkspace], zoneout_list(0), zoneout_list(1), mask);
      grad_input = undefined_if_none(std::move(gi));
      grad_state[0] = undefined_if_none(std::move(gs));
      grad_weights[0] = undefined_if_none(std::move(gw));
      grad_state[1] = undefined_if_none(std::move(gs_r));
      grad_weights[1] = undefined_if_none(std::move(gw_r));
    }
    variable_list result;
    result.emplace_back();  // cell
    result.push_back(std::move(grad_input));
    for (int dir = 0; dir < 2; ++dir)
      if (saved_of[dir][kFirstState].defined())
        for (int k = 0; k < states; ++k) result.push_back(std::move(grad_state[dir][k]));
    for (int dir = 0; dir < 2; ++dir)
      for (at::Tensor& g : grad_weights[dir]) result.push_back(std::move(g));
    result.emplace_back();  // lengths
    result.emplace_back();  // training
    for (int dir = 0; dir < 2; ++dir)
      for (size_t k = 0; k < zoneout_of[dir]; ++k) result.emplace_back();
    return result;
  }
};

// The Autograd kernel of rnnfast::bidirectional_layer.
glue::PairForwardResult pair_autograd(c10::string_view cell_name, const at::Tensor& input,
                                      at::TensorList state, at::TensorList state_reverse,
                                      at::TensorList weights, at::TensorList weights_reverse,
                                      const OptTensor& lengths, bool training,
                                      glue::OptionalTensorList zoneout,
                                      glue::OptionalTensorList zoneout_reverse) {
  const core::CellInfo& cell = glue::find_cell(cell_name, glue::kPairForwardOp);
  const glue::OpName op{glue::kPairForwardOp, cell.name};
  TORCH_CHECK(input.defined(), op, ": input is required but was None");
  check_constant_masks(op, "zoneout", zoneout);
  check_constant_masks(op, "zoneout_reverse", zoneout_reverse);
  variable_list out = PairFunction::apply(
      &cell, input, state, state_reverse, weights, weights_reverse, lengths, training,
      glue::list_or_empty(zoneout), glue::list_or_empty(zoneout_reverse));
  const auto mid = out.begin() + out.size() / 2;
  return {out.front(), std::vector<at::Tensor>(out.begin() + 1, mid - 1), *(mid - 1), *mid,
          std::vector<at::Tensor>(mid + 1, out.end() - 1), out.back()};
}

// The tensors among `n` values of a stack from `first` on, those inside lists included.
variable_list tensors_on(const torch::jit::Stack& stack, size_t first, size_t n) {
  variable_list out;
  for (size_t i = first; i < first + n; ++i) {
    const c10::IValue& v = stack[i];
    if (v.isTensor()) {
      out.push_back(v.toTensor());
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef())
        if (e.isTensor()) out.push_back(e.toTensor());
    }
  }
  return out;
}

// The backward ops are not differentiable: a graph through their outputs must raise when
// differentiated, never give silent zeros. This Function runs the op below autograd (its
// forward) and raises in its backward; its variables are the op's tensor arguments, so its
// outputs, the op's, get it as their grad_fn whenever grad mode is on and an argument
// requires grad. (torch's autogradNotImplementedFallback does not attach one to the Tensor?
// and Tensor?[] outputs these ops have.)
struct NotDifferentiable : public torch::autograd::Function<NotDifferentiable> {
  static variable_list forward(AutogradContext* ctx, at::TensorList /*arguments*/,
                               const c10::OperatorHandle* op, c10::DispatchKeySet keys,
                               torch::jit::Stack* stack) {
    const size_t returns = op->schema().returns().size();
    {
      at::AutoDispatchBelowADInplaceOrView below;
      op->redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
    }
    ctx->saved_data["op"] = op->schema().operator_name().name;
    variable_list out;  // the defined ones (a None output has no history to set)
    for (at::Tensor& t : tensors_on(*stack, stack->size() - returns, returns))
      if (t.defined()) out.push_back(std::move(t));
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "the derivative of ", ctx->saved_data["op"].toStringRef(),
                                " is not implemented (for gradients of gradients, call "
                                "backward with create_graph=True on the layer's output)");
  }
};

// The Autograd kernel of the backward ops and of the inference-only stacked_layers (boxed: one
// for all).
void not_differentiable_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                               torch::jit::Stack* stack) {
  const size_t arguments = op.schema().arguments().size();
  variable_list given;
  bool any_requires_grad = false;
  for (at::Tensor& t : tensors_on(*stack, stack->size() - arguments, arguments))
    if (t.defined()) {
      any_requires_grad = any_requires_grad || t.requires_grad();
      given.push_back(std::move(t));
    }
  if (!any_requires_grad || !at::GradMode::is_enabled()) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
    return;
  }
  // the outputs on the stack are the tensors the Function returns, now with its grad_fn
  NotDifferentiable::apply(at::TensorList(given), &op, keys, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) {
  m.impl(glue::kForwardOp, &layer_autograd);
  m.impl(glue::kBackwardOp,
         torch::CppFunction::makeFromBoxedFunction<&not_differentiable_kernel>());
  m.impl(glue::kPairForwardOp, &pair_autograd);
  m.impl(glue::kPairBackwardOp,
         torch::CppFunction::makeFromBoxedFunction<&not_differentiable_kernel>());
  m.impl(glue::kStackForwardOp,
         torch::CppFunction::makeFromBoxedFunction<&not_differentiable_kernel>());
}

}  // namespace rnnfast
