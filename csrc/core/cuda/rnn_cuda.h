// rnnfast core, CUDA: framework-free recurrent-layer kernels for NVIDIA GPUs.
//
// Nothing here includes torch. The caller passes the arguments of csrc/core/rnn.h
// (ForwardArgs, BackwardArgs: the same fields, shapes, legend and meaning of null
// for both backends) with device pointers, a stream, a cuBLAS handle whose stream
// is that stream, and a scratch buffer of at least *_scratch_bytes() bytes
// (16-byte aligned). Gate order is rnn.h's too, and so is the workspace layout (one per
// cell, shared with the CPU kernels: csrc/core/cell_math.h), saved here in the
// accumulation type (float32 for 16-bit data). The pointwise math of each cell is
// the CPU kernels' too (cell_math.h).
//
// Algorithm (one layer, one direction):
//   forward : gx = x W_ih^T for every step in one GEMM; then per step one GEMM
//             h_{t-1} W_hh^T and one fused pointwise kernel (gates, state
//             update, output, saved activations); LSTM projection adds one GEMM
//             and a small epilogue per step.
//   backward: per step (reverse order) one fused pointwise kernel (gate
//             gradients from the saved activations) and one GEMM
//             dh_{t-1} += dG_t W_hh; then dx, dW_ih, dW_hh (and dW_hr) as
//             whole-sequence GEMMs and the bias gradients (and those of a cell's
//             own parameters, from their per-(t, b) parts) as GEMVs with a ones
//             vector, each only for an output that is not null. No atomics
//             anywhere: every run gives the same bits.
//   layer normalisation (cells.h: layer_norm): the step kernel, forward and
//             backward, runs one block per batch row, whose threads reduce the
//             row's moments (and, backward, the normalisations' gradient sums)
//             as block sums in a fixed order, around the same cell math.
//
// Precision: the forward pass reads and writes the storage type (float32,
// float64, float16 or bfloat16); GEMMs accumulate in float32 (float64 for
// float64), gate pre-activations, the LSTM cell state and the saved workspace
// are kept in the accumulation type. The backward pass runs entirely in the
// accumulation type (the caller converts 16-bit tensors to float32 and back);
// with tf32 = true its GEMMs may use TF32 tensor cores, which is still finer
// than the 16-bit data they differentiate.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../rnn.h"

namespace rnnfast {
namespace core {
namespace cuda {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// float64 for F64, float32 for the others.
DType accumulate_type(DType storage);

// The CUDA kernels' arguments: the fields of core::ForwardArgs (rnn.h documents each, with
// its shape and what null means), with untyped device pointers, plus the type behind them.
// The packed layout is not supported (packed must be false).
struct ForwardArgs : core::ForwardArgs<void> {
  DType dtype = DType::F32;  // the storage type of every tensor except ws, which is in
                             // accumulate_type(dtype)
};

// The fields of core::BackwardArgs (rnn.h), untyped, plus their type and the GEMM precision.
// The backward pass runs in the accumulation type: every tensor, inputs and outputs, has it.
struct BackwardArgs : core::BackwardArgs<void> {
  DType dtype = DType::F32;  // F32 or F64: the type of every tensor
  bool tf32 = false;         // allow TF32 tensor-core GEMMs (F32 only)
};

size_t forward_scratch_bytes(const ForwardArgs& a);
size_t backward_scratch_bytes(const BackwardArgs& a);

// Enqueue the work on `stream`; they return before it runs. They throw
// std::runtime_error on a CUDA or cuBLAS error, on sizes past cuBLAS's
// 32-bit limits, on a projection (P > 0) for a cell that accepts none and on
// the packed layout.
void layer_forward(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle);
void layer_backward(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle);

}  // namespace cuda
}  // namespace core
}  // namespace rnnfast
