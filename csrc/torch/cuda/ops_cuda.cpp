// Torch glue for the CUDA kernels of csrc/core/cuda: argument checks,
// allocation, dtype conversion at the boundary, and the call into the core
// on torch's current stream and cuBLAS handle. No math here.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "../../core/cuda/rnn_cuda.h"
#include "../common.h"

namespace rnnfast {
namespace {

using namespace ::rnnfast::glue;
namespace kc = ::rnnfast::core::cuda;

constexpr const char* kDtypes = "float32, float64, float16 or bfloat16";

bool cuda_dtype_ok(const at::Tensor& input) {
  if (!input.defined()) return false;
  const auto t = input.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

kc::DType to_core(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return kc::DType::F64;
    case at::kHalf: return kc::DType::F16;
    case at::kBFloat16: return kc::DType::BF16;
    default: return kc::DType::F32;
  }
}

// The dtype the CUDA kernels save the workspace in and differentiate in.
at::ScalarType accumulate_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The data of a tensor, or null where it is absent (undefined).
void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor device_lengths(const c10::optional<at::Tensor>& lengths, const at::Device& device) {
  if (!lengths) return at::Tensor();
  return lengths->to(device, /*non_blocking=*/false);
}

ForwardResult forward_op(c10::string_view cell_name, const at::Tensor& input_,
                         at::TensorList state_, at::TensorList weights_,
                         const c10::optional<at::Tensor>& lengths_, bool reverse, bool training,
                         OptionalTensorList zoneout_) {
  const ForwardInputs f = prepare_forward(cell_name, input_, state_, weights_, lengths_,
                                          list_or_empty(zoneout_),
                                          cuda_dtype_ok(input_), kDtypes,
                                          /*allow_packed=*/false);
  const core::CellInfo& cell = *f.cell;
  const Dims& d = f.d;
  TORCH_CHECK(d.H > 0, OpName{kForwardOp, cell.name}, ": the CUDA kernels need hidden_size > 0, "
              "got weight_ih of shape ", f.params[kWeightIh].sizes());
  const c10::cuda::CUDAGuard guard(f.input.device());
  const auto opts = f.input.options();
  const auto acc_opts = opts.dtype(accumulate_dtype(f.input.scalar_type()));
  ForwardResult out = empty_outputs(cell, d, opts, acc_opts, training);
  at::Tensor &y = std::get<0>(out), &ws = std::get<2>(out);
  const std::vector<at::Tensor>& state_out = std::get<1>(out);
  const at::Tensor lengths = device_lengths(f.lengths, f.input.device());

  kc::ForwardArgs a;
  a.cell = cell.id;
  a.dtype = to_core(f.input.scalar_type());
  a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
  a.x = f.input.data_ptr();
  a.h0 = ptr_or_null(f.state[kStateH]);
  a.c0 = ptr_or_null(f.state[kStateC]);
  a.w_ih = ptr_or_null(f.params[kWeightIh]);
  a.w_hh = ptr_or_null(f.params[kWeightHh]);
  a.b_ih = ptr_or_null(f.params[kBiasIh]);
  a.b_hh = ptr_or_null(f.params[kBiasHh]);
  a.w_hr = ptr_or_null(f.params[kWeightHr]);
  int n = 0;
  for (int i : cell_param_indices(cell)) a.cell_w[n++] = ptr_or_null(f.params[i]);
  a.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.reverse = reverse;
  for (int k = 0; k < 2; ++k) {
    a.zoneout[k] = ptr_or_null(f.zoneout.mask[k]);
    a.zoneout_p[k] = f.zoneout.p[k];
  }
  a.y = y.data_ptr();
  a.hy = state_out[kStateH].data_ptr();
  a.cy = cell.cell_state ? state_out[kStateC].data_ptr() : nullptr;
  a.ws = training ? ws.data_ptr() : nullptr;
  auto scratch = at::empty({static_cast<int64_t>(kc::forward_scratch_bytes(a))},
                           opts.dtype(at::kByte));
  kc::layer_forward(a, scratch.data_ptr(), at::cuda::getCurrentCUDAStream(),
                    at::cuda::getCurrentCUDABlasHandle());
  return out;
}

at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dt) {
  return t.defined() ? t.to(dt).contiguous() : t;
}

BackwardOpResult backward_op(c10::string_view cell_name,
                           const c10::optional<at::Tensor>& grad_output,
                           const c10::List<c10::optional<at::Tensor>>& grad_state,
                           const at::Tensor& input_, at::TensorList weights_,
                           const c10::optional<at::Tensor>& lengths_,
                           const at::Tensor& workspace, bool reverse,
                           OptionalTensorList zoneout_, const OptionalBoolList& output_mask) {
  const bool ok = cuda_dtype_ok(input_);
  const auto dt = ok ? input_.scalar_type() : at::kFloat;
  const auto acc = accumulate_dtype(dt);
  const BackwardInputs in = prepare_backward(cell_name, grad_output, grad_state, input_,
                                             weights_, lengths_, workspace,
                                             list_or_empty(zoneout_), acc, ok,
                                             kDtypes,
                                             /*allow_packed=*/false);
  const core::CellInfo& cell = *in.cell;
  const Dims& d = in.d;
  TORCH_CHECK(d.H > 0, OpName{kBackwardOp, cell.name}, ": the CUDA kernels need "
              "hidden_size > 0, got weight_ih of shape ", in.params[kWeightIh].sizes());
  const c10::cuda::CUDAGuard guard(in.input.device());
  // The backward pass runs in the accumulation type: 16-bit tensors go up to
  // float32 here and the gradients come back down at the end.
  const auto x = in.input.to(acc).contiguous();
  const auto w_ih = to_dtype(in.params[kWeightIh], acc);
  const auto w_hh = to_dtype(in.params[kWeightHh], acc);
  const auto w_hr = to_dtype(in.params[kWeightHr], acc);
  std::vector<at::Tensor> cell_w;
  for (int i : cell_param_indices(cell)) cell_w.push_back(to_dtype(in.params[i], acc));
  const auto gy = to_dtype(in.grad_output, acc);
  const auto ghy = to_dtype(in.grad_state[kStateH], acc);
  const auto gcy = to_dtype(in.grad_state[kStateC], acc);
  const std::array<at::Tensor, 2> zoneout_masks{to_dtype(in.zoneout.mask[0], acc),
                                                to_dtype(in.zoneout.mask[1], acc)};
  const at::Tensor lengths = device_lengths(in.lengths, in.input.device());
  const auto acc_opts = in.input.options().dtype(acc);
  // The glue asks the CUDA kernels for every gradient and drops those output_mask does not
  // ask for (the kernels skip null outputs, a path no GPU run has verified yet).
  const OutputMask mask =
      split_output_mask(cell, OpName{kBackwardOp, cell.name}, output_mask, {d.layout.count()})[0];
  BackwardResult g = empty_grads(cell, d, acc_opts, OutputMask{});
  at::Tensor& dx = std::get<0>(g);
  std::vector<at::Tensor>& dstate = std::get<1>(g);
  std::vector<at::Tensor>& dweights = std::get<2>(g);

  kc::BackwardArgs a;
  a.cell = cell.id;
  a.dtype = acc == at::kDouble ? kc::DType::F64 : kc::DType::F32;
  a.tf32 = dt == at::kHalf || dt == at::kBFloat16;
  a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
  a.x = x.data_ptr();
  a.w_ih = ptr_or_null(w_ih);
  a.w_hh = ptr_or_null(w_hh);
  a.w_hr = ptr_or_null(w_hr);
  int n = 0;
  for (const at::Tensor& w : cell_w) a.cell_w[n++] = ptr_or_null(w);
  a.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.reverse = reverse;
  for (int k = 0; k < 2; ++k) {
    a.zoneout[k] = ptr_or_null(zoneout_masks[k]);
    a.zoneout_p[k] = in.zoneout.p[k];
  }
  a.ws = in.ws.data_ptr();
  a.dy = ptr_or_null(gy);
  a.dhy = ptr_or_null(ghy);
  a.dcy = ptr_or_null(gcy);
  a.dx = dx.data_ptr();
  a.dh0 = dstate[kStateH].data_ptr();
  a.dc0 = cell.cell_state ? dstate[kStateC].data_ptr() : nullptr;
  a.dw_ih = ptr_or_null(grad_of(dweights, d.layout, kWeightIh));
  a.dw_hh = ptr_or_null(grad_of(dweights, d.layout, kWeightHh));
  a.db_ih = ptr_or_null(grad_of(dweights, d.layout, kBiasIh));
  a.db_hh = ptr_or_null(grad_of(dweights, d.layout, kBiasHh));
  a.dw_hr = ptr_or_null(grad_of(dweights, d.layout, kWeightHr));
  n = 0;
  for (int i : cell_param_indices(cell)) a.dcell_w[n++] = ptr_or_null(grad_of(dweights, d.layout, i));
  auto scratch = at::empty({static_cast<int64_t>(kc::backward_scratch_bytes(a))},
                           in.input.options().dtype(at::kByte));
  kc::layer_backward(a, scratch.data_ptr(), at::cuda::getCurrentCUDAStream(),
                     at::cuda::getCurrentCUDABlasHandle());
  drop_unasked(g, mask);
  if (acc != dt) {
    if (dx.defined()) dx = dx.to(dt);
    for (at::Tensor& t : dstate)
      if (t.defined()) t = t.to(dt);
    for (at::Tensor& t : dweights)
      if (t.defined()) t = t.to(dt);
  }
  return none_if_undefined(std::move(g));
}

}  // namespace

RNNFAST_REGISTER_BACKEND(CUDA, forward_op, backward_op)

}  // namespace rnnfast
