// rnnfast core, CUDA: framework-free recurrent-layer kernels for NVIDIA GPUs.
//
// Nothing here includes torch. The caller passes device pointers, sizes, a
// stream, a cuBLAS handle whose stream is that stream, and a scratch buffer of
// at least *_scratch_bytes() bytes (16-byte aligned). Shapes and gate order are
// those of csrc/core/rnn.h (same legend), and so is the workspace layout (one per
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
//             whole-sequence GEMMs and the bias gradients as GEMVs with a ones
//             vector. No atomics anywhere: every run gives the same bits.
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

struct ForwardArgs {
  Cell cell = Cell::LSTM;
  DType dtype = DType::F32;        // storage type of every tensor except ws
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  const void* x = nullptr;         // [T, B, I]
  const void* h0 = nullptr;        // [B, S]; null = zeros
  const void* c0 = nullptr;        // [B, H] (LSTM); null = zeros
  const void* w_ih = nullptr;      // [G*H, I]
  const void* w_hh = nullptr;      // [G*H, S]
  const void* b_ih = nullptr;      // [G*H]; null = no bias
  const void* b_hh = nullptr;      // [G*H]; null = no bias
  const void* w_hr = nullptr;      // [P, H] (LSTM with P > 0)
  const int64_t* lengths = nullptr;  // [B] on the device; null = all T
  bool reverse = false;
  void* y = nullptr;               // [T, B, S]
  void* hy = nullptr;              // [B, S]
  void* cy = nullptr;              // [B, H] (LSTM)
  void* ws = nullptr;              // [T, B, WS] in the accumulation type; null = inference
};

// Every pointer in the accumulation type (F32 or F64).
struct BackwardArgs {
  Cell cell = Cell::LSTM;
  DType dtype = DType::F32;        // F32 or F64
  bool tf32 = false;               // allow TF32 tensor-core GEMMs (F32 only)
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  const void* x = nullptr;
  const void* w_ih = nullptr;
  const void* w_hh = nullptr;
  const void* w_hr = nullptr;
  const int64_t* lengths = nullptr;
  bool reverse = false;
  const void* ws = nullptr;        // written by the forward pass
  const void* dy = nullptr;        // [T, B, S]; null = zeros
  const void* dhy = nullptr;       // [B, S]; null = zeros
  const void* dcy = nullptr;       // [B, H]; null = zeros
  void* dx = nullptr;              // [T, B, I]   every output is written (none may be null,
  void* dh0 = nullptr;             // [B, S]       except dc0 for non-LSTM and dw_hr
  void* dc0 = nullptr;             // [B, H]       without projection)
  void* dw_ih = nullptr;           // [G*H, I]
  void* dw_hh = nullptr;           // [G*H, S]
  void* db_ih = nullptr;           // [G*H]
  void* db_hh = nullptr;           // [G*H]
  void* dw_hr = nullptr;           // [P, H]
};

size_t forward_scratch_bytes(const ForwardArgs& a);
size_t backward_scratch_bytes(const BackwardArgs& a);

// Enqueue the work on `stream`; they return before it runs. They throw
// std::runtime_error on a CUDA or cuBLAS error, on sizes past cuBLAS's
// 32-bit limits and on a projection (P > 0) for a cell that accepts none.
void layer_forward(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle);
void layer_backward(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle);

}  // namespace cuda
}  // namespace core
}  // namespace rnnfast
