// CUDA recurrent layers: see rnn_cuda.h for the algorithm and contracts.
#include "rnn_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <stdexcept>
#include <string>
#include <utility>

namespace rnnfast {
namespace core {
namespace cuda {

// The pointwise math of every cell, shared with the CPU kernels (cells::Lstm, ...; visit_cell).
#include "../cell_math.h"

namespace {

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("rnnfast CUDA: ") + what + ": " + cudaGetErrorString(e));
}

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("rnnfast cuBLAS: ") + what + " failed with status " +
                             std::to_string(static_cast<int>(s)));
}

int to_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw std::runtime_error(std::string("rnnfast CUDA: ") + what + " = " + std::to_string(v) +
                             " exceeds cuBLAS's 32-bit size limit");
  return static_cast<int>(v);
}

// ---------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------
// Two types run through the code below: Storage, the type the tensors are stored in (float,
// double, __half or __nv_bfloat16: DType), and Acc, the accumulation type the arithmetic runs
// in (double for double, float for the others: AccumulationOf). to_acc and from_acc convert
// between them.

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class Storage>
__device__ __forceinline__ Storage from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <class Storage>
__device__ __forceinline__ Storage from_acc(double v) { return v; }

RNNFAST_HD float sigmoid_of(float v) { return 1.f / (1.f + expf(-v)); }
RNNFAST_HD double sigmoid_of(double v) { return 1.0 / (1.0 + exp(-v)); }
RNNFAST_HD float tanh_of(float v) { return tanhf(v); }
RNNFAST_HD double tanh_of(double v) { return tanh(v); }

// The value type V of the cell math (cell_math.h) on CUDA: one thread computes one unit, so V
// is one scalar of the accumulation type Acc.
template <class Acc>
struct Value {
  Acc v;
  RNNFAST_HD Value operator+(Value b) const { return {v + b.v}; }
  RNNFAST_HD Value operator-(Value b) const { return {v - b.v}; }
  RNNFAST_HD Value operator*(Value b) const { return {v * b.v}; }
  RNNFAST_HD static Value set1(Acc x) { return {x}; }
  RNNFAST_HD static Value fmadd(Value a, Value b, Value c) { return {a.v * b.v + c.v}; }
  RNNFAST_HD static Value sigmoid(Value a) { return {sigmoid_of(a.v)}; }
  RNNFAST_HD static Value tanh(Value a) { return {tanh_of(a.v)}; }
  // max(0, v) that keeps NaN, as torch.relu does.
  RNNFAST_HD static Value relu(Value a) {
    return {(a.v > Acc(0) || a.v != a.v) ? a.v : Acc(0)};
  }
  // As torch's relu backward: passes d unless h <= 0 (so a NaN h passes d).
  RNNFAST_HD static Value where_pos(Value h, Value d) { return {h.v <= Acc(0) ? Acc(0) : d.v}; }
};

template <class Storage> struct AccumulationOf { using type = float; };
template <> struct AccumulationOf<double> { using type = double; };

// A storage type, as a value (visit_storage passes one to its function).
template <class Storage> struct StorageTag { using type = Storage; };

// Calls f(StorageTag<Storage>{}) with the storage type of `dtype`.
template <class F>
decltype(auto) visit_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F64: return f(StorageTag<double>{});
    case DType::F16: return f(StorageTag<__half>{});
    case DType::BF16: return f(StorageTag<__nv_bfloat16>{});
    default: return f(StorageTag<float>{});
  }
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F64: return CUDA_R_64F;
    case DType::F16: return CUDA_R_16F;
    default: return CUDA_R_16BF;
  }
}

size_t type_size(DType t) {
  switch (t) {
    case DType::F64: return 8;
    case DType::F32: return 4;
    default: return 2;
  }
}

// ---------------------------------------------------------------------------
// GEMM on row-major matrices
// ---------------------------------------------------------------------------

// C[M, N] = alpha * op(A) op(B) + beta * C with row-major operands: op(A) is
// A[M, K] (lda) or, with transpose_a, A stored as [K, M]; op(B) is B[K, N] (ldb) or,
// with transpose_b, B stored as [N, K]. A and B have type `input_type`, C has type
// `output_type`; the products accumulate in `acc_type` (F32 or F64). cuBLAS is
// column-major, so this computes C^T = op(B)^T op(A)^T.
struct Gemm {
  cublasHandle_t handle;
  cudaStream_t stream;
  DType input_type, output_type, acc_type;
  bool tf32;

  void operator()(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K,
                  const void* A, int64_t lda, const void* B, int64_t ldb, double beta, void* C,
                  int64_t ldc, const char* what) const {
    if (M == 0 || N == 0) return;
    if (K == 0) {  // cuBLAS leaves C alone for K = 0; the product is zero
      if (beta == 0.0)
        check_cuda(cudaMemset2DAsync(C, ldc * type_size(output_type), 0,
                                     N * type_size(output_type), M, stream),
                   what);
      return;
    }
    const cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float alpha_float = 1.f, beta_float = static_cast<float>(beta);
    const double alpha_double = 1.0, beta_double = beta;
    const bool in_double = acc_type == DType::F64;
    const void* alpha = in_double ? static_cast<const void*>(&alpha_double) : &alpha_float;
    const void* beta_scalar = in_double ? static_cast<const void*>(&beta_double) : &beta_float;
    const cublasComputeType_t compute =
        in_double ? CUBLAS_COMPUTE_64F
                  : (tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    check_blas(cublasGemmEx(handle, op_b, op_a, to_int(N, what), to_int(M, what),
                            to_int(K, what), alpha, B, cuda_type(input_type), to_int(ldb, what),
                            A, cuda_type(input_type), to_int(lda, what), beta_scalar, C,
                            cuda_type(output_type), to_int(ldc, what), compute,
                            CUBLAS_GEMM_DEFAULT),
               what);
  }
};

void bind_stream(cublasHandle_t handle, cudaStream_t stream) {
  cudaStream_t current = nullptr;
  check_blas(cublasGetStream(handle, &current), "cublasGetStream");
  if (current != stream) check_blas(cublasSetStream(handle, stream), "cublasSetStream");
  check_blas(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
}

// Carves aligned arrays out of the caller's scratch buffer (or, with a null
// base, just adds up their sizes and returns null pointers).
struct Carve {
  char* base;
  size_t used = 0;
  template <class E>
  E* take(int64_t count) {
    E* p = base ? reinterpret_cast<E*>(base + used) : nullptr;
    used += (sizeof(E) * count + 255) / 256 * 256;
    return p;
  }
};

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ bool active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Whether gate k of a cell keeps its recurrent product apart from the x side (cell_math.h).
template <class Math>
RNNFAST_HD constexpr bool apart_gate(int k) {
  return (Math::kApartGates >> k) & 1u;
}

// P >= 0, and P > 0 only for the cells that accept a projection (cells.h).
void check_projection(Cell cell, int64_t P) {
  const CellInfo& info = cell_info(cell);
  if (P < 0)
    throw std::runtime_error("rnnfast CUDA: the projection size P must be >= 0, got " +
                             std::to_string(P));
  if (P > 0 && !info.projection)
    throw std::runtime_error(std::string("rnnfast CUDA: the ") + info.name +
                             " cell takes no projection, got P = " + std::to_string(P));
}

// The packed layout (rnn.h) is for the CPU kernels only.
void check_not_packed(bool packed) {
  if (packed)
    throw std::runtime_error("rnnfast CUDA: the packed layout (packed = true) is not supported; "
                             "pass padded [T, B, ...] tensors with lengths");
}

// ---------------------------------------------------------------------------
// Scratch buffers
// ---------------------------------------------------------------------------
// Each is carved out of `base` in the order of its fields. With a null base every pointer is
// null and only `bytes` is computed: that is what *_scratch_bytes() report, so the size and
// the pointers the kernels use come from this one description.

// The sizes a scratch layout depends on, from ForwardArgs or BackwardArgs.
struct ScratchSizes {
  const CellInfo& cell;
  int64_t T, B, H, P;
  int64_t S;   // state size: P if P > 0, else H
  int64_t GH;  // gate rows: G * H

  template <class Args>
  explicit ScratchSizes(const Args& a)
      : cell(cell_info(a.cell)), T(a.T), B(a.B), H(a.H), P(a.P), S(a.P > 0 ? a.P : a.H),
        GH(cell_info(a.cell).gates * a.H) {}
};

template <class Storage, class Acc = typename AccumulationOf<Storage>::type>
struct ForwardScratch {
  Acc* gx;              // [T, B, G*H]  x W_ih^T of every step
  Acc* gh;              // [B, G*H]     h_{t-1} W_hh^T (the cuBLAS path)
  Storage* h;           // [B, S]       the state
  Storage* h_alt;       // [B, S]       h_t of the fused step, which may not overwrite h_{t-1}
  Acc* c;               // [B, H]       the cell state (cells with one), or null
  Storage* proj_input;  // [B, H]       with P: the projection input o * tanh(c_t), or null
  Acc* projected;       // [B, P]       with P: proj_input W_hr^T, or null
  Acc* stage;           // [B, 2, H]    a normalised output (norm_out): the value to
                        //              normalise, then the cell's stash; or null
  size_t bytes;

  ForwardScratch(const ForwardArgs& a, void* base) {
    const ScratchSizes n(a);
    Carve carve{static_cast<char*>(base)};
    gx = carve.take<Acc>(n.T * n.B * n.GH);
    gh = carve.take<Acc>(n.B * n.GH);
    h = carve.take<Storage>(n.B * n.S);
    h_alt = carve.take<Storage>(n.B * n.S);
    c = n.cell.cell_state ? carve.take<Acc>(n.B * n.H) : nullptr;
    proj_input = n.P > 0 ? carve.take<Storage>(n.B * n.H) : nullptr;
    projected = n.P > 0 ? carve.take<Acc>(n.B * n.P) : nullptr;
    stage = n.cell.norm_out() ? carve.take<Acc>(n.B * 2 * n.H) : nullptr;
    bytes = carve.used;
  }
};

template <class Acc>
struct BackwardScratch {
  Acc* dgx;          // [T, B, G*H]  gradient of the gate pre-activations, x side
  Acc* dgh;          // [T, B, G*H]  h side: its own array for cells with apart gates or layer
                     //              normalisation, else dgx
  Acc* dh;           // [B, S]       gradient w.r.t. the state
  Acc* dc;           // [B, H]       gradient w.r.t. the cell state (cells with one), or null
  Acc* dprojected;   // [T, B, P]    with P: gradient w.r.t. proj_input W_hr^T, or null
  Acc* dproj_input;  // [B, H]       with P: gradient w.r.t. the projection input, or null
  Acc* dparams;      // [T, B, params, H] each (t, b)'s part of the gradients of the cell's
                     //              own parameters (zero for inactive rows), or null
  Acc* ones;         // [max(T*B, 1)] ones, for the bias and own parameter gradients as GEMVs;
                     //              null when none of them is wanted
  Acc* ln_parts;     // [B, 4, G*H]  layer normalisation: per row, the sums over the steps of
                     //              the gradient of the normalised pre-activations, x side and
                     //              h side (the biases' parts), then of those times the
                     //              normalised values (the gains' parts); or null
  Acc* stage;        // [B, 2, H]    a normalised output: dL/d(normalised value), then the
                     //              cell's stash; or null
  size_t bytes;

  BackwardScratch(const BackwardArgs& a, void* base) {
    const ScratchSizes n(a);
    const int64_t rows = n.T * n.B;
    Carve carve{static_cast<char*>(base)};
    dgx = carve.take<Acc>(rows * n.GH);
    dgh = n.cell.apart_gates || n.cell.layer_norm() ? carve.take<Acc>(rows * n.GH) : dgx;
    dh = carve.take<Acc>(n.B * n.S);
    dc = n.cell.cell_state ? carve.take<Acc>(n.B * n.H) : nullptr;
    dprojected = n.P > 0 ? carve.take<Acc>(rows * n.P) : nullptr;
    dproj_input = n.P > 0 ? carve.take<Acc>(n.B * n.H) : nullptr;
    dparams = n.cell.params() ? carve.take<Acc>(rows * n.cell.params() * n.H) : nullptr;
    // (from the cell, not from dparams, which is null when only the size is computed)
    ones = (a.db_ih || a.db_hh || n.cell.params()) ? carve.take<Acc>(rows > 0 ? rows : 1)
                                                   : nullptr;
    ln_parts = n.cell.layer_norm() ? carve.take<Acc>(n.B * 4 * n.GH) : nullptr;
    stage = n.cell.norm_out() ? carve.take<Acc>(n.B * 2 * n.H) : nullptr;
    bytes = carve.used;
  }
};

// ---------------------------------------------------------------------------
// Forward kernels (one thread per (b, j), j < H)
// ---------------------------------------------------------------------------

// The arguments of one forward step kernel.
template <class Storage, class Acc>
struct ForwardStepArgs {
  int64_t B, H, S, WS;
  int64_t hprev_col;          // column of h_{t-1} in a workspace row (cells.h)
  int64_t proj_input_col;     // column of the projection input (with P)
  const Acc* gx;              // [B, G*H]  x W_ih^T at this step
  const Acc* gh;              // [B, G*H]  h_{t-1} W_hh^T (unfused path)
  const Storage* b_ih;        // [G*H] or null
  const Storage* b_hh;        // [G*H] or null
  const int64_t* lengths;
  int64_t t;
  const Storage* h_in;        // [B, S]  h_{t-1}
  Storage* h_out;             // [B, S]  h_t (inactive rows: h_{t-1}); may alias h_in when the
                              //         recurrent product was computed by an earlier launch
  Acc* c;                     // [B, H]  cell state (cells with one), updated in place
  Storage* proj_input;        // [B, H]  with P: o * tanh(c) before projection
  Storage* y;                 // [B, S]  output at this step
  Acc* ws;                    // [B, WS] or null
  const Storage* cell_w[kMaxCellParams];  // the cell's own parameters (ForwardArgs::cell_w)
  // Zoneout (ForwardArgs::zoneout) of h and c: this step's masks ([B, S], [B, H]) or, where
  // null, the probabilities.
  bool zone_h, zone_c;
  const Storage* zh;
  const Storage* zc;
  Acc zh_p, zc_p;
  // Layer normalisation (cells.h: layer_norm): the column of the statistics in a workspace
  // row, and ForwardScratch::stage.
  int64_t ln_stats_col;
  Acc* stage;
};

// The zoneout fields of a step's arguments (ForwardStepArgs, BackwardStepArgs) from the call's.
template <class Acc, class StepArgs, class Args>
void set_zoneout(StepArgs& step, const Args& a, bool cell_state) {
  step.zone_h = zoneout_on(a, 0);
  step.zone_c = cell_state && zoneout_on(a, 1);
  step.zh_p = static_cast<Acc>(a.zoneout_p[0]);
  step.zc_p = static_cast<Acc>(a.zoneout_p[1]);
}

// The zoneout blend s_t = m * s_{t-1} + (1 - m) * s~_t, m from the mask or the probability
// (exactly s_{t-1} for m = 1).
template <class Storage, class Acc>
__device__ __forceinline__ Acc zoned(Acc fresh, Acc prev, const Storage* mask, int64_t k,
                                     Acc p) {
  const Acc m = mask ? to_acc(mask[k]) : p;
  return m * prev + (Acc(1) - m) * fresh;
}

template <class Storage, class Acc>
__device__ __forceinline__ Acc bias(const Storage* b, int64_t k) {
  return b ? to_acc(b[k]) : Acc(0);
}

// The forward step accessor of cell_math.h for unit j of batch row b. The recurrent product
// of gate k, (h_{t-1} W_hh^T)[b, k*H + j], is at gh[k * gh_stride]: in ForwardStepArgs::gh on
// the cuBLAS path, in shared memory on the fused one.
template <class Math, class Storage, class Acc>
struct ForwardUnit {
  using V = Value<Acc>;
  const ForwardStepArgs<Storage, Acc>& s;
  int64_t b, j;
  const Acc* gh;
  int64_t gh_stride;
  bool on;  // whether row b is active at this step: only then is the cell state updated
  // Layer normalisation (Math::kLayerNorm): the mean and 1 / sqrt(var + eps) of row b of
  // x W_ih^T and of h W_hh^T.
  Acc mu_a = 0, rs_a = 0, mu_r = 0, rs_r = 0;

  __device__ V pre(int k) const {
    const int64_t col = k * s.H + j;
    const Acc a = s.gx[b * Math::kGates * s.H + col];
    if constexpr (Math::kLayerNorm) {  // LN(x W_ih^T) * gain + b_ih, plus the folded h side
      const Acc ah = (a - mu_a) * rs_a;
      save(Math::kSavedBlocks - 2 * Math::kGates + k, V{ah});  // (cell_math.h: saved blocks)
      Acc p = ah * to_acc(s.cell_w[Math::kLnIh][col]) + bias<Storage, Acc>(s.b_ih, col);
      if (!apart_gate<Math>(k)) p += recurrent(k).v;
      return {p};
    } else {
      Acc p = a;
      if (!apart_gate<Math>(k)) p += gh[k * gh_stride];
      p += bias<Storage, Acc>(s.b_ih, col);
      if (!apart_gate<Math>(k)) p += bias<Storage, Acc>(s.b_hh, col);
      return {p};
    }
  }
  // h_{t-1} W_hh^T + b_hh of gate k (layer normalisation: LN(h_{t-1} W_hh^T) * gain + b_hh,
  // saving the normalised value)
  __device__ V recurrent(int k) const {
    const int64_t col = k * s.H + j;
    Acc r = gh[k * gh_stride];
    if constexpr (Math::kLayerNorm) {
      const Acc rh = (r - mu_r) * rs_r;
      save(Math::kSavedBlocks - Math::kGates + k, V{rh});
      r = rh * to_acc(s.cell_w[Math::kLnHh][col]);
    }
    return {r + bias<Storage, Acc>(s.b_hh, col)};
  }
  __device__ V h_prev() const { return {to_acc(s.h_in[b * s.S + j])}; }
  __device__ V c_prev() const { return {s.c[b * s.H + j]}; }
  __device__ void set_c(V c) const {
    if (!on) return;
    const int64_t k = b * s.H + j;
    s.c[k] = s.zone_c ? zoned(c.v, s.c[k], s.zc, k, s.zc_p) : c.v;
  }
  __device__ V param(int n) const { return {to_acc(s.cell_w[n][j])}; }
  __device__ void save(int q, V v) const {
    if (s.ws) s.ws[b * s.WS + q * s.H + j] = v.v;
  }
  __device__ void stash(int q, V v) const { s.stage[(b * 2 + q + 1) * s.H + j] = v.v; }
  __device__ V stashed(int q) const { return {s.stage[(b * 2 + q + 1) * s.H + j]}; }
};

// The driver's part of a forward step for unit j of row b, after the cell gave h_t: saving
// h_{t-1} and the projection input, zoneout of h, and the length mask on the output and the
// state.
template <class Storage, class Acc>
__device__ __forceinline__ void forward_emit(const ForwardStepArgs<Storage, Acc>& s, int64_t b,
                                             int64_t j, Acc h, bool on) {
  if (s.ws) {
    Acc* w = s.ws + b * s.WS;
    if (j < s.S) w[s.hprev_col + j] = to_acc(s.h_in[b * s.S + j]);
    if (s.proj_input) w[s.proj_input_col + j] = h;
  }
  if (s.proj_input) {
    s.proj_input[b * s.H + j] = from_acc<Storage>(h);  // the projection epilogue masks rows
    return;
  }
  const int64_t k = b * s.H + j;  // S == H without projection
  const Storage h_stored =
      from_acc<Storage>(s.zone_h ? zoned(h, to_acc(s.h_in[k]), s.zh, k, s.zh_p) : h);
  s.h_out[k] = on ? h_stored : s.h_in[k];
  s.y[k] = on ? h_stored : from_acc<Storage>(Acc(0));
}

// The pointwise part of one forward step for unit j of batch row b: the cell's math, then the
// driver's part (forward_emit).
template <class Math, class Storage, class Acc>
__device__ __forceinline__ void forward_point(const ForwardStepArgs<Storage, Acc>& s, int64_t b,
                                              int64_t j, const Acc* gh, int64_t gh_stride) {
  const bool on = active(s.lengths, b, s.t);
  ForwardUnit<Math, Storage, Acc> unit{s, b, j, gh, gh_stride, on};
  forward_emit(s, b, j, Math::template forward<Value<Acc>>(unit).v, on);
}

// Pointwise step after a cuBLAS recurrent product: one thread per (b, j).
template <class Math, class Storage, class Acc>
__global__ void forward_step(ForwardStepArgs<Storage, Acc> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H;
  forward_point<Math>(s, b, j, s.gh + b * Math::kGates * s.H + j, s.H);
}

// ---------------------------------------------------------------------------
// Layer normalisation (cells.h: layer_norm): one block per batch row
// ---------------------------------------------------------------------------
// A layer-normalised step reduces over whole rows (G*H pre-activations of each side, and the
// H values of a normalised output), so one block of kThreads threads takes one batch row,
// with the reductions as block sums in a fixed order (no atomics: the same bits every run).

// The sum of every thread's v over the block, returned to every thread. `red` is kThreads /
// 32 values of shared memory; the call begins with a barrier, so it may be reused at once.
template <class Acc>
__device__ Acc block_sum(Acc v, Acc* red) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();  // every thread is past its reads of red from an earlier call
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  Acc total = Acc(0);
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += red[w];
  return total;
}

// The mean and 1 / sqrt(var + eps) (biased variance, two passes) of v[0, n).
template <class Acc>
__device__ void row_moments(const Acc* v, int64_t n, Acc* red, Acc& mean, Acc& rstd) {
  Acc sum = Acc(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += v[i];
  mean = block_sum(sum, red) / Acc(n);
  Acc m2 = Acc(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const Acc d = v[i] - mean;
    m2 += d * d;
  }
  rstd = Acc(1) / sqrt(block_sum(m2, red) / Acc(n) + Acc(kLayerNormEps));
}

// A layer-normalised forward step after the cuBLAS recurrent product, block b = row b: the
// moments of x W_ih^T and h W_hh^T, the cell's math on normalised pre-activations and, with
// a normalised output, the moments of its value and the second half of the math. Saves the
// 1 / sqrt(var + eps) of each normalisation in the workspace's statistics columns.
template <class Math, class Storage, class Acc>
__global__ void __launch_bounds__(kThreads) ln_forward_step(ForwardStepArgs<Storage, Acc> s) {
  __shared__ Acc red[kThreads / 32];
  const int64_t b = blockIdx.x, H = s.H, GH = Math::kGates * H;
  const bool on = active(s.lengths, b, s.t);
  Acc mu_a, rs_a, mu_r, rs_r;
  row_moments(s.gx + b * GH, GH, red, mu_a, rs_a);
  row_moments(s.gh + b * GH, GH, red, mu_r, rs_r);
  Acc* stats = s.ws ? s.ws + b * s.WS + s.ln_stats_col : nullptr;
  if (stats && threadIdx.x < kLnStatsCols)
    stats[threadIdx.x] = threadIdx.x == 0 ? rs_a : threadIdx.x == 1 ? rs_r : Acc(0);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    ForwardUnit<Math, Storage, Acc> unit{s, b, j, s.gh + b * GH + j, H, on};
    unit.mu_a = mu_a, unit.rs_a = rs_a, unit.mu_r = mu_r, unit.rs_r = rs_r;
    const Acc v = Math::template forward<Value<Acc>>(unit).v;
    if constexpr (Math::kNormOut) s.stage[b * 2 * H + j] = v;
    else forward_emit(s, b, j, v, on);
  }
  if constexpr (Math::kNormOut) {
    __syncthreads();  // the row's values, from every thread
    const Acc* v = s.stage + b * 2 * H;
    Acc mean, rstd;
    row_moments(v, H, red, mean, rstd);
    if (stats && threadIdx.x == 0) stats[2] = rstd;  // after the zeros (row_moments' barriers)
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      ForwardUnit<Math, Storage, Acc> unit{s, b, j, s.gh + b * GH + j, H, on};
      const Value<Acc> normed{(v[j] - mean) * rstd};
      forward_emit(s, b, j, Math::template forward_out<Value<Acc>>(unit, normed).v, on);
    }
  }
}

// Small batches: the whole step in one launch. Block x owns the units_per_block hidden units
// from x * units_per_block: it stages h_{t-1} in shared memory, its warps compute the
// G * units_per_block rows of W_hh h_{t-1} for every batch row (lanes split the reduction,
// then a shuffle tree), and its threads finish the pointwise part. h_t goes to
// another buffer than h_{t-1}, which other blocks are still reading.
constexpr int kFusedMaxBatch = 8;
constexpr int kFusedThreads = 256;

template <class Math, class Storage, class Acc>
__global__ void __launch_bounds__(kFusedThreads)
    fused_forward_step(ForwardStepArgs<Storage, Acc> s, const Storage* __restrict__ w_hh,
                       int units_per_block) {
  constexpr int G = Math::kGates;
  extern __shared__ __align__(16) unsigned char shared_memory[];
  const int B = static_cast<int>(s.B), S = static_cast<int>(s.S);
  const int64_t H = s.H;
  Acc* h_shared = reinterpret_cast<Acc*>(shared_memory);  // [B][S]
  Acc* dots = h_shared + B * S;  // [G * units_per_block][kFusedMaxBatch]
  const int64_t first_unit = blockIdx.x * int64_t(units_per_block);
  // this block's units: units_per_block, fewer in the last block
  const int units =
      static_cast<int>(H - first_unit < units_per_block ? H - first_unit : units_per_block);
  for (int i = threadIdx.x; i < B * S; i += blockDim.x) h_shared[i] = to_acc(s.h_in[i]);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  // The warps take this block's rows of W_hh in turn: row = gate * units + unit is the row of
  // gate `gate` for hidden unit first_unit + unit.
  for (int row = warp; row < G * units; row += warps) {
    const int gate = row / units, unit = row % units;
    const Storage* w = w_hh + (gate * H + first_unit + unit) * S;
    Acc sums[kFusedMaxBatch];
#pragma unroll
    for (int b = 0; b < kFusedMaxBatch; ++b) sums[b] = Acc(0);
#pragma unroll 4
    for (int k = lane; k < S; k += 32) {
      const Acc weight = to_acc(w[k]);
#pragma unroll
      for (int b = 0; b < kFusedMaxBatch; ++b)
        if (b < B) sums[b] += weight * h_shared[b * S + k];
    }
#pragma unroll
    for (int b = 0; b < kFusedMaxBatch; ++b) {
      if (b < B) {
        Acc v = sums[b];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
          v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0) dots[row * kFusedMaxBatch + b] = v;
      }
    }
  }
  __syncthreads();
  // gate q of the block's unit `unit`, row b, is at dots[(q * units + unit) * kFusedMaxBatch + b]
  for (int i = threadIdx.x; i < B * units; i += blockDim.x) {
    const int b = i / units, unit = i % units;
    forward_point<Math>(s, b, first_unit + unit, dots + unit * kFusedMaxBatch + b,
                        int64_t(units) * kFusedMaxBatch);
  }
}

// Units per block of the fused step: enough blocks (about 256) to spread the
// weight reads over the whole GPU.
int fused_units_per_block(int64_t H) { return static_cast<int>((H + 255) / 256); }

template <class Acc>
size_t fused_shared_bytes(int64_t B, int64_t S, int G, int units_per_block) {
  return sizeof(Acc) * (B * S + int64_t(G) * units_per_block * kFusedMaxBatch);
}

template <class Math, class Storage, class Acc>
void launch_step(bool fused, const ForwardStepArgs<Storage, Acc>& step, const void* w_hh,
                 cudaStream_t stream) {
  if constexpr (Math::kLayerNorm) {
    ln_forward_step<Math, Storage, Acc><<<static_cast<unsigned>(step.B), kThreads, 0, stream>>>(
        step);
    check_launch("ln_forward_step");
  } else if (fused) {
    const int units_per_block = fused_units_per_block(step.H);
    const unsigned grid = static_cast<unsigned>((step.H + units_per_block - 1) / units_per_block);
    const size_t shared_bytes =
        fused_shared_bytes<Acc>(step.B, step.S, Math::kGates, units_per_block);
    fused_forward_step<Math, Storage, Acc><<<grid, kFusedThreads, shared_bytes, stream>>>(
        step, static_cast<const Storage*>(w_hh), units_per_block);
    check_launch("fused_forward_step");
  } else {
    forward_step<Math, Storage, Acc><<<blocks_for(step.B * step.H), kThreads, 0, stream>>>(step);
    check_launch("forward_step");
  }
}

// Projection epilogue: r = proj_input W_hr^T (in projected) becomes the state and
// the output of active rows; inactive rows keep their state and output zeros.
template <class Storage, class Acc>
__global__ void projection_epilogue(int64_t B, int64_t P, const Acc* projected,
                                    const int64_t* lengths, int64_t t, Storage* h, Storage* y,
                                    bool zone_h, const Storage* zh, Acc zh_p) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  const bool on = active(lengths, b, t);
  const Acc fresh = projected[idx];
  // with zoneout, h_t = m h_{t-1} + (1 - m) h~_t (h holds h_{t-1} until written below)
  const Storage r = from_acc<Storage>(zone_h && on ? zoned(fresh, to_acc(h[idx]), zh, idx, zh_p)
                                                   : fresh);
  if (on) h[idx] = r;
  y[idx] = on ? r : from_acc<Storage>(Acc(0));
}

// h = h0 (or 0); c = c0 (or 0), converted to the accumulation type.
// h and h0 have h_count elements, c and c0 c_count.
template <class Storage, class Acc>
__global__ void init_state(int64_t h_count, int64_t c_count, const Storage* h0,
                           const Storage* c0, Storage* h, Acc* c) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < h_count) h[idx] = h0 ? h0[idx] : from_acc<Storage>(Acc(0));
  if (c && idx < c_count) c[idx] = c0 ? to_acc(c0[idx]) : Acc(0);
}

template <class Storage, class Acc>
__global__ void store_state(int64_t n, const Acc* c, Storage* cy) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < n) cy[idx] = from_acc<Storage>(c[idx]);
}

// Whether the fused small-batch step applies: no layer normalisation, few rows, no projection,
// and h_{t-1} fits the default 48 KB of shared memory.
template <class Math, class Acc>
bool use_fused_step(int64_t B, int64_t H, int64_t P) {
  if (Math::kLayerNorm || P > 0 || B < 1 || B > kFusedMaxBatch) return false;
  return fused_shared_bytes<Acc>(B, H, Math::kGates, fused_units_per_block(H)) <= 48 * 1024;
}

template <class Math, class Storage>
void forward_impl(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                  cublasHandle_t handle) {
  using Acc = typename AccumulationOf<Storage>::type;
  const CellInfo& cell = cell_info(Math::kCell);
  const int64_t T = a.T, B = a.B, H = a.H, P = a.P, S = P > 0 ? P : H;
  const int64_t GH = Math::kGates * H;
  const int64_t WS = cell.workspace_cols(H, P);
  // No rows: nothing to write. No steps (T = 0): the final state is the initial one.
  if (B == 0) return;
  const bool fused = use_fused_step<Math, Acc>(B, H, P);

  const ForwardScratch<Storage> buf(a, scratch);
  Storage* h = buf.h;
  Storage* h_alt = buf.h_alt;

  const DType acc_type = accumulate_type(a.dtype);
  const Gemm gemm{handle, stream, a.dtype, acc_type, acc_type, false};

  // Input projection of every step at once.
  gemm(false, true, T * B, GH, a.I, a.x, a.I, a.w_ih, a.I, 0.0, buf.gx, GH, "x W_ih^T");

  const int64_t init_threads = B * (Math::kCellState ? (S > H ? S : H) : S);
  init_state<Storage, Acc><<<blocks_for(init_threads), kThreads, 0, stream>>>(
      B * S, B * H, static_cast<const Storage*>(a.h0), static_cast<const Storage*>(a.c0), h,
      buf.c);
  check_launch("init_state");

  ForwardStepArgs<Storage, Acc> step{};
  step.B = B; step.H = H; step.S = S; step.WS = WS;
  step.hprev_col = cell.hprev_col(H, P);
  step.proj_input_col = cell.proj_input_col(H);
  step.gh = buf.gh;
  step.b_ih = static_cast<const Storage*>(a.b_ih);
  step.b_hh = static_cast<const Storage*>(a.b_hh);
  step.lengths = a.lengths;
  step.c = buf.c; step.proj_input = buf.proj_input;
  step.ln_stats_col = Math::kLayerNorm ? cell.ln_stats_col(H, P) : 0;
  step.stage = buf.stage;
  for (int n = 0; n < Math::kParams; ++n) step.cell_w[n] = static_cast<const Storage*>(a.cell_w[n]);
  set_zoneout<Acc>(step, a, Math::kCellState);
  const Storage* const zh = static_cast<const Storage*>(a.zoneout[0]);
  const Storage* const zc = static_cast<const Storage*>(a.zoneout[1]);
  Storage* y = static_cast<Storage*>(a.y);
  Acc* ws = static_cast<Acc*>(a.ws);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? T - 1 - k : k;
    if (!fused) gemm(false, true, B, GH, S, h, S, a.w_hh, S, 0.0, buf.gh, GH, "h W_hh^T");
    step.t = t;
    step.gx = buf.gx + t * B * GH;
    step.y = y + t * B * S;
    step.ws = ws ? ws + t * B * WS : nullptr;
    step.zh = zh ? zh + t * B * S : nullptr;
    step.zc = zc ? zc + t * B * H : nullptr;
    step.h_in = h;
    step.h_out = fused ? h_alt : h;
    launch_step<Math>(fused, step, a.w_hh, stream);
    if (fused) std::swap(h, h_alt);
    if (P > 0) {
      gemm(false, true, B, P, H, buf.proj_input, H, a.w_hr, H, 0.0, buf.projected, P,
           "h W_hr^T");
      projection_epilogue<Storage, Acc><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, buf.projected, a.lengths, t, h, y + t * B * S, step.zone_h, step.zh, step.zh_p);
      check_launch("projection_epilogue");
    }
  }
  if (a.hy)
    check_cuda(cudaMemcpyAsync(a.hy, h, sizeof(Storage) * B * S, cudaMemcpyDeviceToDevice,
                               stream),
               "copy hy");
  if (Math::kCellState && a.cy) {
    store_state<Storage, Acc><<<blocks_for(B * H), kThreads, 0, stream>>>(
        B * H, buf.c, static_cast<Storage*>(a.cy));
    check_launch("store_state");
  }
}

// ---------------------------------------------------------------------------
// Backward kernels (accumulation type Acc throughout)
// ---------------------------------------------------------------------------

// The arguments of one backward step kernel.
template <class Acc>
struct BackwardStepArgs {
  int64_t B, H, S, WS;
  int64_t hprev_col;         // column of h_{t-1} in a workspace row (cells.h)
  const Acc* ws;             // [B, WS] at this step
  const Acc* dy;             // [B, S] at this step, or null
  const Acc* dproj_input;    // [B, H] with P: d(o tanh c) from the projection
  const int64_t* lengths;
  int64_t t;
  Acc* dh;                   // [B, S] gradient w.r.t. the state; in: d h_t (recurrent part),
                             // out: the direct part of d h_{t-1} (the GEMM adds dG W_hh next)
  Acc* dc;                   // [B, H] cells with a cell state: in d c_t, out d c_{t-1}
  Acc* dgx;                  // [B, G*H] gradient of the gate pre-activations (input side)
  Acc* dgh;                  // [B, G*H] hidden side (cells with apart gates; else dgx)
  const Acc* cell_w[kMaxCellParams];  // the cell's own parameters (BackwardArgs::cell_w)
  Acc* dparams;              // [B, params, H] this step's parts of their gradients (zeroed)
  bool zone_h, zone_c;       // zoneout, as in ForwardStepArgs
  const Acc* zh;
  const Acc* zc;
  Acc zh_p, zc_p;
  // Layer normalisation: the statistics' column in a workspace row, BackwardScratch::ln_parts
  // (each row's sums, added to by every step in turn) and BackwardScratch::stage.
  int64_t ln_stats_col;
  Acc* ln_parts;
  Acc* stage;
};

// The backward step accessor of cell_math.h for unit j of batch row b.
template <class Math, class Acc>
struct BackwardUnit {
  using V = Value<Acc>;
  // dgh is not dgx: apart gates, or a normalised h side
  static constexpr bool kSplit = Math::kApartGates != 0 || Math::kLayerNorm;
  const BackwardStepArgs<Acc>& s;
  int64_t b, j;

  __device__ int64_t gate(int k) const { return (b * Math::kGates + k) * s.H + j; }
  __device__ V saved(int q) const { return {s.ws[b * s.WS + q * s.H + j]}; }
  __device__ V h_prev() const { return {s.ws[b * s.WS + s.hprev_col + j]}; }
  // with zoneout of c the cell sees (1 - m) dc_t, and dc_{t-1} also gets m dc_t
  __device__ Acc mask_c() const { return s.zc ? s.zc[b * s.H + j] : s.zc_p; }
  __device__ V dc() const {
    const Acc d = s.dc[b * s.H + j];
    return {s.zone_c ? (Acc(1) - mask_c()) * d : d};
  }
  // called once, after dc(): s.dc still holds dc_t
  __device__ void set_dc(V v) const {
    const int64_t k = b * s.H + j;
    s.dc[k] = s.zone_c ? v.v + mask_c() * s.dc[k] : v.v;
  }
  __device__ void set_dpre(int k, V v) const {
    s.dgx[gate(k)] = v.v;
    if (kSplit && !apart_gate<Math>(k)) s.dgh[gate(k)] = v.v;
  }
  __device__ void set_dpre_apart(int k, V v) const { s.dgh[gate(k)] = v.v; }
  __device__ V param(int n) const { return {s.cell_w[n][j]}; }
  // one thread per (b, j): no other thread adds to this element
  __device__ void add_dparam(int n, V v) const {
    s.dparams[(b * Math::kParams + n) * s.H + j] += v.v;
  }
  __device__ void stash(int q, V v) const { s.stage[(b * 2 + q + 1) * s.H + j] = v.v; }
  __device__ V stashed(int q) const { return {s.stage[(b * 2 + q + 1) * s.H + j]}; }
};

// One backward step for unit j of batch row b, one thread per (b, j): dh_t (the recurrent part
// plus dy_t, or from the projection) through the cell's math. Inactive rows get zero gate
// gradients and pass dh and dc through unchanged.
template <class Math, class Acc>
__global__ void backward_step(BackwardStepArgs<Acc> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, k = b * s.H + j;
  BackwardUnit<Math, Acc> unit{s, b, j};
  if (!active(s.lengths, b, s.t)) {
#pragma unroll
    for (int q = 0; q < Math::kGates; ++q) {
      s.dgx[unit.gate(q)] = Acc(0);
      if (BackwardUnit<Math, Acc>::kSplit) s.dgh[unit.gate(q)] = Acc(0);
    }
    return;
  }
  if (s.dproj_input) {
    // With P, projection_backward has consumed dh; the cells that accept a projection (LSTM)
    // add nothing to dh_{t-1} outside W_hh.
    Math::template backward<Value<Acc>>(unit, Value<Acc>{s.dproj_input[k]});
    return;
  }
  const Acc dh = s.dh[k] + (s.dy ? s.dy[k] : Acc(0));
  // with zoneout of h the cell gets (1 - m) dh_t, and dh_{t-1} also m dh_t
  const Acc m = s.zone_h ? (s.zh ? s.zh[k] : s.zh_p) : Acc(0);
  s.dh[k] = Math::template backward<Value<Acc>>(unit, Value<Acc>{(Acc(1) - m) * dh}).v + m * dh;
}

// A layer-normalised backward step, block b = row b: the cell's backward (with a normalised
// output, its two halves around the normalisation's backward), which leaves the gradients of
// the normalised pre-activations (dz) in dgx and dgh; their parts of the bias and gain
// gradients add to the row's sums in ln_parts (only this block touches them, and the steps
// run in order: the same sums every run); then dgx and dgh become the gradients of x W_ih^T
// and h W_hh^T through the normalisations:
//   d = rstd * (dz * gain - mean(dz * gain) - vh * mean(dz * gain * vh))
// with vh the saved normalised values and the means over the row's G*H columns. Inactive rows
// get zero gate gradients, add nothing, and pass dh and dc through unchanged.
template <class Math, class Acc>
__global__ void __launch_bounds__(kThreads) ln_backward_step(BackwardStepArgs<Acc> s) {
  __shared__ Acc red[kThreads / 32];
  constexpr int G = Math::kGates;
  const int64_t b = blockIdx.x, H = s.H, GH = G * H;
  Acc* const dg[2] = {s.dgx + b * GH, s.dgh + b * GH};
  Acc* const parts = s.ln_parts + b * 4 * GH;
  if (!active(s.lengths, b, s.t)) {
    for (int64_t n = threadIdx.x; n < GH; n += blockDim.x) dg[0][n] = dg[1][n] = Acc(0);
    return;
  }
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    BackwardUnit<Math, Acc> unit{s, b, j};
    if (s.dproj_input) {  // with P (LSTM): dh went through the projection already
      const Value<Acc> d{s.dproj_input[b * H + j]};
      if constexpr (Math::kNormOut)
        s.stage[b * 2 * H + j] = Math::template backward<Value<Acc>>(unit, d).v;
      else
        Math::template backward<Value<Acc>>(unit, d);
      continue;
    }
    const int64_t k = b * H + j;  // S == H without projection
    const Acc dh = s.dh[k] + (s.dy ? s.dy[k] : Acc(0));
    const Acc m = s.zone_h ? (s.zh ? s.zh[k] : s.zh_p) : Acc(0);
    const Acc r = Math::template backward<Value<Acc>>(unit, Value<Acc>{(Acc(1) - m) * dh}).v;
    if constexpr (Math::kNormOut) {
      s.stage[b * 2 * H + j] = r;  // dL/d(normalised value); the direct dh_{t-1} part is m dh
      s.dh[k] = m * dh;
    } else {
      s.dh[k] = r + m * dh;
    }
  }
  if constexpr (Math::kNormOut) {  // the normalisation of the output, then the second half
    __syncthreads();  // the row's gradients, from every thread
    const Acc* g = s.stage + b * 2 * H;
    const Acc* vh = s.ws + b * s.WS + Math::kNormedBlock * H;
    Acc sum_g = Acc(0), sum_gv = Acc(0);
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      sum_g += g[j];
      sum_gv += g[j] * vh[j];
    }
    const Acc mean_g = block_sum(sum_g, red) / Acc(H);
    const Acc mean_gv = block_sum(sum_gv, red) / Acc(H);
    const Acc rstd = s.ws[b * s.WS + s.ln_stats_col + 2];
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      BackwardUnit<Math, Acc> unit{s, b, j};
      Math::template backward_in<Value<Acc>>(unit,
                                             Value<Acc>{rstd * (g[j] - mean_g - vh[j] * mean_gv)});
    }
  }
  __syncthreads();  // dz of the whole row, from every thread
  const Acc* const vh = s.ws + b * s.WS + (Math::kSavedBlocks - 2 * G) * H;  // x, then h side
  for (int side = 0; side < 2; ++side) {
    Acc* const d = dg[side];
    const Acc* const gain = s.cell_w[side == 0 ? Math::kLnIh : Math::kLnHh];
    const Acc* const v = vh + side * GH;
    Acc sum_g = Acc(0), sum_gv = Acc(0);
    for (int64_t n = threadIdx.x; n < GH; n += blockDim.x) {
      const Acc dz = d[n], gdz = dz * gain[n];
      parts[side * GH + n] += dz;
      parts[(2 + side) * GH + n] += dz * v[n];
      sum_g += gdz;
      sum_gv += gdz * v[n];
    }
    const Acc mean_g = block_sum(sum_g, red) / Acc(GH);
    const Acc mean_gv = block_sum(sum_gv, red) / Acc(GH);
    const Acc rstd = s.ws[b * s.WS + s.ln_stats_col + side];
    for (int64_t n = threadIdx.x; n < GH; n += blockDim.x)  // (the element this thread read)
      d[n] = rstd * (d[n] * gain[n] - mean_g - v[n] * mean_gv);
  }
}

// With P, first stage of a step: dprojected = dh + dy for active rows
// (and dh is consumed), zero for inactive rows (whose dh passes through).
template <class Acc>
__global__ void projection_backward(int64_t B, int64_t P, const Acc* dy, const int64_t* lengths,
                                    int64_t t, Acc* dh, Acc* dprojected, bool zone_h,
                                    const Acc* zh, Acc zh_p) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  if (active(lengths, b, t)) {
    // with zoneout of h: (1 - m) of dh_t goes through the projection, m to dh_{t-1}
    const Acc d = dh[idx] + (dy ? dy[idx] : Acc(0));
    const Acc m = zone_h ? (zh ? zh[idx] : zh_p) : Acc(0);
    dprojected[idx] = (Acc(1) - m) * d;
    dh[idx] = m * d;
  } else {
    dprojected[idx] = Acc(0);
  }
}

template <class Acc>
__global__ void fill(int64_t n, Acc value, Acc* out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < n) out[idx] = value;
}

template <class Acc>
void copy_or_zero(Acc* dst, const void* src, int64_t n, cudaStream_t stream, const char* what) {
  if (n == 0) return;
  if (src)
    check_cuda(cudaMemcpyAsync(dst, src, sizeof(Acc) * n, cudaMemcpyDeviceToDevice, stream),
               what);
  else
    check_cuda(cudaMemsetAsync(dst, 0, sizeof(Acc) * n, stream), what);
}

template <class Math, class Acc>
void backward_impl(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle) {
  const CellInfo& cell = cell_info(Math::kCell);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, S = P > 0 ? P : H;
  const int64_t GH = Math::kGates * H;
  const int64_t WS = cell.workspace_cols(H, P);

  const BackwardScratch<Acc> buf(a, scratch);
  Acc* dh = buf.dh;
  Acc* dc = buf.dc;

  const Gemm gemm{handle, stream, a.dtype, a.dtype, a.dtype, a.tf32};
  if (T * B == 0) {  // no rows: the initial state's gradients are the final state's, the
                     // weights' are zero
    if (a.dh0) copy_or_zero<Acc>(static_cast<Acc*>(a.dh0), a.dhy, B * S, stream, "copy dh0");
    if (Math::kCellState && a.dc0)
      copy_or_zero<Acc>(static_cast<Acc*>(a.dc0), a.dcy, B * H, stream, "copy dc0");
    for (auto [p, n] : {std::pair<void*, int64_t>{a.dx, T * B * I}, {a.dw_ih, GH * I},
                        {a.dw_hh, GH * S}, {a.db_ih, GH}, {a.db_hh, GH}, {a.dw_hr, P * H}})
      if (p && n) check_cuda(cudaMemsetAsync(p, 0, sizeof(Acc) * n, stream), "zero gradients");
    for (int n = 0; n < Math::kParams; ++n) {  // [H] each, the layer-norm gains [G*H]
      const int64_t count = Math::kLayerNorm && (n == Math::kLnIh || n == Math::kLnHh) ? GH : H;
      if (a.dcell_w[n] && count)
        check_cuda(cudaMemsetAsync(a.dcell_w[n], 0, sizeof(Acc) * count, stream),
                   "zero gradients");
    }
    return;
  }

  copy_or_zero<Acc>(dh, a.dhy, B * S, stream, "dh init");
  if (Math::kCellState) copy_or_zero<Acc>(dc, a.dcy, B * H, stream, "dc init");

  BackwardStepArgs<Acc> step{};
  step.B = B; step.H = H; step.S = S; step.WS = WS;
  step.hprev_col = cell.hprev_col(H, P);
  step.lengths = a.lengths;
  step.dh = dh; step.dc = dc; step.dproj_input = buf.dproj_input;
  for (int n = 0; n < Math::kParams; ++n) step.cell_w[n] = static_cast<const Acc*>(a.cell_w[n]);
  set_zoneout<Acc>(step, a, Math::kCellState);
  step.ln_stats_col = Math::kLayerNorm ? cell.ln_stats_col(H, P) : 0;
  step.stage = buf.stage;
  step.ln_parts = buf.ln_parts;
  if (buf.ln_parts)
    check_cuda(cudaMemsetAsync(buf.ln_parts, 0, sizeof(Acc) * B * 4 * GH, stream),
               "zero ln_parts");
  const Acc* const zh = static_cast<const Acc*>(a.zoneout[0]);
  const Acc* const zc = static_cast<const Acc*>(a.zoneout[1]);
  if (buf.dparams)
    check_cuda(cudaMemsetAsync(buf.dparams, 0, sizeof(Acc) * T * B * Math::kParams * H, stream),
               "zero dparams");
  const Acc* ws = static_cast<const Acc*>(a.ws);
  const Acc* dy = static_cast<const Acc*>(a.dy);
  const unsigned grid = blocks_for(B * H);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? k : T - 1 - k;  // the forward order, reversed
    const Acc* dy_t = dy ? dy + t * B * S : nullptr;
    step.zh = zh ? zh + t * B * S : nullptr;
    step.zc = zc ? zc + t * B * H : nullptr;
    if (P > 0) {
      projection_backward<Acc><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, dy_t, a.lengths, t, dh, buf.dprojected + t * B * P, step.zone_h, step.zh,
          step.zh_p);
      check_launch("projection_backward");
      gemm(false, false, B, H, P, buf.dprojected + t * B * P, P, a.w_hr, H, 0.0,
           buf.dproj_input, H, "dprojected W_hr");
      step.dy = nullptr;
    } else {
      step.dy = dy_t;
    }
    step.t = t;
    step.ws = ws + t * B * WS;
    step.dgx = buf.dgx + t * B * GH;
    step.dgh = buf.dgh + t * B * GH;
    step.dparams = buf.dparams ? buf.dparams + t * B * Math::kParams * H : nullptr;
    if constexpr (Math::kLayerNorm) {
      ln_backward_step<Math, Acc><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(step);
      check_launch("ln_backward_step");
    } else {
      backward_step<Math, Acc><<<grid, kThreads, 0, stream>>>(step);
      check_launch("backward_step");
    }
    // dh_{t-1} = direct part (left in dh by the step kernel) + dG_t W_hh; after the last
    // step processed, dh is dh0, needed only when dh0 is
    if (k + 1 < T || a.dh0)
      gemm(false, false, B, S, GH, step.dgh, GH, a.w_hh, S, 1.0, dh, S, "dG W_hh");
  }
  if (a.dh0)
    check_cuda(cudaMemcpyAsync(a.dh0, dh, sizeof(Acc) * B * S, cudaMemcpyDeviceToDevice, stream),
               "copy dh0");
  if (Math::kCellState && a.dc0)
    check_cuda(cudaMemcpyAsync(a.dc0, dc, sizeof(Acc) * B * H, cudaMemcpyDeviceToDevice, stream),
               "copy dc0");

  // The whole-sequence gradients, each only if wanted.
  const int64_t rows = T * B;
  if (a.dx) gemm(false, false, rows, I, GH, buf.dgx, GH, a.w_ih, I, 0.0, a.dx, I, "dG W_ih");
  if (a.dw_ih) gemm(true, false, GH, I, rows, buf.dgx, GH, a.x, I, 0.0, a.dw_ih, I, "dG^T x");
  if (a.dw_hh)
    gemm(true, false, GH, S, rows, buf.dgh, GH, ws + cell.hprev_col(H, P), WS, 0.0, a.dw_hh, S,
         "dG^T h");
  if (P > 0 && a.dw_hr)
    gemm(true, false, P, H, rows, buf.dprojected, P, ws + cell.proj_input_col(H), WS, 0.0,
         a.dw_hr, H, "dprojected^T proj_input");
  if (buf.ones) {  // at least one bias gradient is wanted
    fill<Acc><<<blocks_for(rows), kThreads, 0, stream>>>(rows, Acc(1), buf.ones);
    check_launch("fill");
  }
  // The biases add after a layer normalisation: their gradients are the sums of the
  // normalised pre-activations' (ln_parts blocks 0 and 1, already summed over the steps per
  // row), and the gains' of those times the normalised values (blocks 2 and 3).
  const Acc* const db_src[2] = {Math::kLayerNorm ? buf.ln_parts : buf.dgx,
                                Math::kLayerNorm ? buf.ln_parts + GH : buf.dgh};
  const int64_t db_ld = Math::kLayerNorm ? 4 * GH : GH;
  const int64_t db_rows = Math::kLayerNorm ? B : rows;
  if (a.db_ih)
    gemm(true, false, GH, 1, db_rows, db_src[0], db_ld, buf.ones, 1, 0.0, a.db_ih, 1,
         "bias_ih gradient");
  if (a.db_hh)
    gemm(true, false, GH, 1, db_rows, db_src[1], db_ld, buf.ones, 1, 0.0, a.db_hh, 1,
         "bias_hh gradient");
  for (int n = 0; n < Math::kParams; ++n) {
    if (!a.dcell_w[n]) continue;
    if (Math::kLayerNorm && (n == Math::kLnIh || n == Math::kLnHh))  // [G*H] gains
      gemm(true, false, GH, 1, B, buf.ln_parts + (n == Math::kLnIh ? 2 : 3) * GH, 4 * GH,
           buf.ones, 1, 0.0, a.dcell_w[n], 1, "layer-norm gain gradient");
    else
      gemm(true, false, H, 1, rows, buf.dparams + n * H, Math::kParams * H, buf.ones, 1, 0.0,
           a.dcell_w[n], 1, "own parameter gradient");
  }
}

}  // namespace

DType accumulate_type(DType storage) { return storage == DType::F64 ? DType::F64 : DType::F32; }

size_t forward_scratch_bytes(const ForwardArgs& a) {
  return visit_storage(a.dtype, [&](auto storage) {
    return ForwardScratch<typename decltype(storage)::type>(a, nullptr).bytes;
  });
}

size_t backward_scratch_bytes(const BackwardArgs& a) {
  return a.dtype == DType::F64 ? BackwardScratch<double>(a, nullptr).bytes
                               : BackwardScratch<float>(a, nullptr).bytes;
}

void layer_forward(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle) {
  check_projection(a.cell, a.P);
  check_not_packed(a.packed);
  bind_stream(handle, stream);
  visit_storage(a.dtype, [&](auto storage) {
    using Storage = typename decltype(storage)::type;
    visit_cell(a.cell, [&](auto math) {
      using Math = decltype(math);
      forward_impl<Math, Storage>(a, scratch, stream, handle);
    });
  });
}

void layer_backward(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle) {
  if (a.dtype != DType::F64 && a.dtype != DType::F32)
    throw std::runtime_error("rnnfast CUDA: the backward pass runs in float32 or float64");
  check_projection(a.cell, a.P);
  check_not_packed(a.packed);
  bind_stream(handle, stream);
  visit_cell(a.cell, [&](auto math) {
    using Math = decltype(math);
    if (a.dtype == DType::F64)
      backward_impl<Math, double>(a, scratch, stream, handle);
    else
      backward_impl<Math, float>(a, scratch, stream, handle);
  });
}

}  // namespace cuda
}  // namespace core
}  // namespace rnnfast
