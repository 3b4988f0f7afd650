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

const void* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr() : nullptr;
}

at::Tensor device_lengths(const c10::optional<at::Tensor>& lengths, const at::Device& device) {
  if (!lengths) return at::Tensor();
  return lengths->to(device, /*non_blocking=*/false);
}

template <core::Cell cell>
ForwardResult forward_op(const at::Tensor& input_, const c10::optional<at::Tensor>& hx_,
                         const c10::optional<at::Tensor>& cx_, const at::Tensor& w_ih_,
                         const at::Tensor& w_hh_, const c10::optional<at::Tensor>& b_ih_,
                         const c10::optional<at::Tensor>& b_hh_,
                         const c10::optional<at::Tensor>& w_hr_,
                         const c10::optional<at::Tensor>& lengths_, bool reverse, bool training) {
  const ForwardInputs f = prepare_forward(cell, input_, hx_, cx_, w_ih_, w_hh_, b_ih_, b_hh_,
                                          w_hr_, lengths_, cuda_dtype_ok(input_), kDtypes,
                                          /*allow_packed=*/false);
  const Dims& d = f.d;
  TORCH_CHECK(d.H > 0, "rnnfast::", cell_name(cell), ": the CUDA kernels need hidden_size > 0, "
              "got weight_ih of shape ", f.w_ih.sizes());
  const c10::cuda::CUDAGuard guard(f.input.device());
  const auto opts = f.input.options();
  const auto acc_opts = opts.dtype(accumulate_dtype(f.input.scalar_type()));
  ForwardResult out = empty_outputs(cell, d, opts, acc_opts, training);
  at::Tensor &y = std::get<0>(out), &hy = std::get<1>(out), &cy = std::get<2>(out),
             &ws = std::get<3>(out);
  const at::Tensor lengths = device_lengths(f.lengths, f.input.device());

  kc::ForwardArgs a;
  a.cell = cell;
  a.dtype = to_core(f.input.scalar_type());
  a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
  a.x = f.input.data_ptr();
  a.h0 = ptr_or_null(f.hx);
  a.c0 = ptr_or_null(f.cx);
  a.w_ih = f.w_ih.data_ptr();
  a.w_hh = f.w_hh.data_ptr();
  a.b_ih = ptr_or_null(f.b_ih);
  a.b_hh = ptr_or_null(f.b_hh);
  a.w_hr = ptr_or_null(f.w_hr);
  a.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.reverse = reverse;
  a.y = y.data_ptr();
  a.hy = hy.data_ptr();
  a.cy = cell == core::Cell::LSTM ? cy.data_ptr() : nullptr;
  a.ws = training ? ws.data_ptr() : nullptr;
  auto scratch = at::empty({static_cast<int64_t>(kc::forward_scratch_bytes(a))},
                           opts.dtype(at::kByte));
  kc::layer_forward(a, scratch.data_ptr(), at::cuda::getCurrentCUDAStream(),
                    at::cuda::getCurrentCUDABlasHandle());
  return out;
}

c10::optional<at::Tensor> to_dtype(const c10::optional<at::Tensor>& t, at::ScalarType dt) {
  if (!t) return c10::nullopt;
  return t->to(dt).contiguous();
}

template <core::Cell cell>
BackwardResult backward_op(const c10::optional<at::Tensor>& grad_output,
                           const c10::optional<at::Tensor>& grad_hy,
                           const c10::optional<at::Tensor>& grad_cy, const at::Tensor& input_,
                           const at::Tensor& w_ih_, const at::Tensor& w_hh_,
                           const c10::optional<at::Tensor>& w_hr_,
                           const c10::optional<at::Tensor>& lengths_,
                           const at::Tensor& workspace, bool reverse) {
  const bool ok = cuda_dtype_ok(input_);
  const auto dt = ok ? input_.scalar_type() : at::kFloat;
  const auto acc = accumulate_dtype(dt);
  const BackwardInputs in = prepare_backward(cell, grad_output, grad_hy, grad_cy, input_, w_ih_,
                                             w_hh_, w_hr_, lengths_, workspace, acc, ok, kDtypes,
                                             /*allow_packed=*/false);
  const Dims& d = in.d;
  TORCH_CHECK(d.H > 0, "rnnfast::", cell_name(cell), "_backward: the CUDA kernels need "
              "hidden_size > 0, got weight_ih of shape ", in.w_ih.sizes());
  const c10::cuda::CUDAGuard guard(in.input.device());
  // The backward pass runs in the accumulation type: 16-bit tensors go up to
  // float32 here and the gradients come back down at the end.
  const auto x = in.input.to(acc).contiguous();
  const auto w_ih = in.w_ih.to(acc).contiguous();
  const auto w_hh = in.w_hh.to(acc).contiguous();
  const auto w_hr = to_dtype(in.w_hr, acc);
  const auto gy = to_dtype(in.gy, acc);
  const auto ghy = to_dtype(in.ghy, acc);
  const auto gcy = to_dtype(in.gcy, acc);
  const at::Tensor lengths = device_lengths(in.lengths, in.input.device());
  Grads g = empty_grads(cell, d, in.input.options().dtype(acc));

  kc::BackwardArgs a;
  a.cell = cell;
  a.dtype = acc == at::kDouble ? kc::DType::F64 : kc::DType::F32;
  a.tf32 = dt == at::kHalf || dt == at::kBFloat16;
  a.T = d.T; a.B = d.B; a.I = d.I; a.H = d.H; a.P = d.P;
  a.x = x.data_ptr();
  a.w_ih = w_ih.data_ptr();
  a.w_hh = w_hh.data_ptr();
  a.w_hr = ptr_or_null(w_hr);
  a.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.reverse = reverse;
  a.ws = in.ws.data_ptr();
  a.dy = ptr_or_null(gy);
  a.dhy = ptr_or_null(ghy);
  a.dcy = ptr_or_null(gcy);
  a.dx = g.dx.data_ptr();
  a.dh0 = g.dh0.data_ptr();
  a.dc0 = cell == core::Cell::LSTM ? g.dc0.data_ptr() : nullptr;
  a.dw_ih = g.dw_ih.data_ptr();
  a.dw_hh = g.dw_hh.data_ptr();
  a.db_ih = g.db_ih.data_ptr();
  a.db_hh = g.db_hh.data_ptr();
  a.dw_hr = d.P > 0 ? g.dw_hr.data_ptr() : nullptr;
  auto scratch = at::empty({static_cast<int64_t>(kc::backward_scratch_bytes(a))},
                           in.input.options().dtype(at::kByte));
  kc::layer_backward(a, scratch.data_ptr(), at::cuda::getCurrentCUDAStream(),
                     at::cuda::getCurrentCUDABlasHandle());
  if (acc != dt) {
    for (at::Tensor* t : {&g.dx, &g.dh0, &g.dc0, &g.dw_ih, &g.dw_hh, &g.db_ih, &g.db_hh, &g.dw_hr})
      *t = t->to(dt);
  }
  return g.tuple();
}

}  // namespace

RNNFAST_REGISTER_BACKEND(CUDA, forward_op, backward_op)

}  // namespace rnnfast
