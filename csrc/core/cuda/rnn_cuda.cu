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

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class S>
__device__ __forceinline__ S from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <class S>
__device__ __forceinline__ S from_acc(double v) { return v; }

RNNFAST_HD float sigm(float v) { return 1.f / (1.f + expf(-v)); }
RNNFAST_HD double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }
RNNFAST_HD float tanh_(float v) { return tanhf(v); }
RNNFAST_HD double tanh_(double v) { return tanh(v); }

// The value type V of the cell math (cell_math.h) on CUDA: one thread computes one unit, so V
// is one scalar of the accumulation type A.
template <class A>
struct Value {
  A v;
  RNNFAST_HD Value operator+(Value b) const { return {v + b.v}; }
  RNNFAST_HD Value operator-(Value b) const { return {v - b.v}; }
  RNNFAST_HD Value operator*(Value b) const { return {v * b.v}; }
  RNNFAST_HD static Value set1(A x) { return {x}; }
  RNNFAST_HD static Value fmadd(Value a, Value b, Value c) { return {a.v * b.v + c.v}; }
  RNNFAST_HD static Value sigmoid(Value a) { return {sigm(a.v)}; }
  RNNFAST_HD static Value tanh(Value a) { return {tanh_(a.v)}; }
  // max(0, v) that keeps NaN, as torch.relu does.
  RNNFAST_HD static Value relu(Value a) { return {(a.v > A(0) || a.v != a.v) ? a.v : A(0)}; }
  // As torch's relu backward: passes d unless h <= 0 (so a NaN h passes d).
  RNNFAST_HD static Value where_pos(Value h, Value d) { return {h.v <= A(0) ? A(0) : d.v}; }
};

template <class S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// A storage type, as a value (visit_storage passes one to its function).
template <class S> struct Storage { using type = S; };

// Calls f(Storage<S>{}) with the storage type S of `dtype`.
template <class F>
decltype(auto) visit_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F64: return f(Storage<double>{});
    case DType::F16: return f(Storage<__half>{});
    case DType::BF16: return f(Storage<__nv_bfloat16>{});
    default: return f(Storage<float>{});
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
// A[M, K] (lda) or, with ta, A stored as [K, M]; op(B) is B[K, N] (ldb) or,
// with tb, B stored as [N, K]. A and B have type `in`, C has type `out`; the
// products accumulate in `acc` (F32 or F64). cuBLAS is column-major, so this
// computes C^T = op(B)^T op(A)^T.
struct Gemm {
  cublasHandle_t handle;
  cudaStream_t stream;
  DType in, out, acc;
  bool tf32;

  void operator()(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
                  const void* B, int64_t ldb, double beta, void* C, int64_t ldc,
                  const char* what) const {
    if (M == 0 || N == 0) return;
    if (K == 0) {  // cuBLAS leaves C alone for K = 0; the product is zero
      if (beta == 0.0)
        check_cuda(cudaMemset2DAsync(C, ldc * type_size(out), 0, N * type_size(out), M, stream),
                   what);
      return;
    }
    const cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float alpha_f = 1.f, beta_f = static_cast<float>(beta);
    const double alpha_d = 1.0, beta_d = beta;
    const bool dbl = acc == DType::F64;
    const cublasComputeType_t compute =
        dbl ? CUBLAS_COMPUTE_64F : (tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    check_blas(cublasGemmEx(handle, opB, opA, to_int(N, what), to_int(M, what), to_int(K, what),
                            dbl ? static_cast<const void*>(&alpha_d) : &alpha_f, B, cuda_type(in),
                            to_int(ldb, what), A, cuda_type(in), to_int(lda, what),
                            dbl ? static_cast<const void*>(&beta_d) : &beta_f, C, cuda_type(out),
                            to_int(ldc, what), compute, CUBLAS_GEMM_DEFAULT),
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

template <class S, class A = typename Acc<S>::type>
struct ForwardScratch {
  A* gx;      // [T, B, G*H]  x W_ih^T of every step
  A* gh;      // [B, G*H]     h_{t-1} W_hh^T (the cuBLAS path)
  S* h;       // [B, S]       the state
  S* h_alt;   // [B, S]       h_t of the fused step, which may not overwrite h_{t-1}
  A* c;       // [B, H]       the cell state (cells with one), or null
  S* hfull;   // [B, H]       with P: the projection input o * tanh(c_t), or null
  A* rproj;   // [B, P]       with P: hfull W_hr^T, or null
  size_t bytes;

  ForwardScratch(const ForwardArgs& a, void* base) {
    const ScratchSizes n(a);
    Carve carve{static_cast<char*>(base)};
    gx = carve.take<A>(n.T * n.B * n.GH);
    gh = carve.take<A>(n.B * n.GH);
    h = carve.take<S>(n.B * n.S);
    h_alt = carve.take<S>(n.B * n.S);
    c = n.cell.cell_state ? carve.take<A>(n.B * n.H) : nullptr;
    hfull = n.P > 0 ? carve.take<S>(n.B * n.H) : nullptr;
    rproj = n.P > 0 ? carve.take<A>(n.B * n.P) : nullptr;
    bytes = carve.used;
  }
};

template <class A>
struct BackwardScratch {
  A* dgx;     // [T, B, G*H]  gradient of the gate pre-activations, x side
  A* dgh;     // [T, B, G*H]  h side: its own array for cells with apart gates, else dgx
  A* dh;      // [B, S]       gradient w.r.t. the state
  A* dc;      // [B, H]       gradient w.r.t. the cell state (cells with one), or null
  A* dr;      // [T, B, P]    with P: gradient w.r.t. hfull W_hr^T, or null
  A* dhfull;  // [B, H]       with P: gradient w.r.t. the projection input, or null
  A* ones;    // [max(T*B, 1)] ones, for the bias gradients as GEMVs
  size_t bytes;

  BackwardScratch(const BackwardArgs& a, void* base) {
    const ScratchSizes n(a);
    const int64_t rows = n.T * n.B;
    Carve carve{static_cast<char*>(base)};
    dgx = carve.take<A>(rows * n.GH);
    dgh = n.cell.apart_gates ? carve.take<A>(rows * n.GH) : dgx;
    dh = carve.take<A>(n.B * n.S);
    dc = n.cell.cell_state ? carve.take<A>(n.B * n.H) : nullptr;
    dr = n.P > 0 ? carve.take<A>(rows * n.P) : nullptr;
    dhfull = n.P > 0 ? carve.take<A>(n.B * n.H) : nullptr;
    ones = carve.take<A>(rows > 0 ? rows : 1);
    bytes = carve.used;
  }
};

// ---------------------------------------------------------------------------
// Forward kernels (one thread per (b, j), j < H)
// ---------------------------------------------------------------------------

template <class S, class A>
struct FwdStep {
  int64_t B, H, S_, WS;
  int64_t hprev_col;       // column of h_{t-1} in a workspace row (cells.h)
  int64_t proj_input_col;  // column of the projection input (with P)
  const A* gx;        // [B, G*H]   x W_ih^T at this step
  const A* gh;        // [B, G*H]   h_{t-1} W_hh^T (unfused path)
  const S* b_ih;      // [G*H] or null
  const S* b_hh;      // [G*H] or null
  const int64_t* lengths;
  int64_t t;
  const S* h_in;      // [B, S]  h_{t-1}
  S* h_out;           // [B, S]  h_t (inactive rows: h_{t-1}); may alias h_in when the
                      //         recurrent product was computed by an earlier launch
  A* c;               // [B, H]  cell state (cells with one), updated in place
  S* hfull;           // [B, H]  with P: o * tanh(c) before projection
  S* y;               // [B, S]  output at this step
  A* ws;              // [B, WS] or null
};

template <class S, class A>
__device__ __forceinline__ A bias(const S* b, int64_t k) {
  return b ? to_acc(b[k]) : A(0);
}

// The forward step accessor of cell_math.h for unit j of batch row b. The recurrent product
// of gate k, (h_{t-1} W_hh^T)[b, k*H + j], is at gh[k * gh_stride]: in FwdStep::gh on the
// cuBLAS path, in shared memory on the fused one.
template <class Math, class S, class A>
struct ForwardUnit {
  using V = Value<A>;
  const FwdStep<S, A>& s;
  int64_t b, j;
  const A* gh;
  int64_t gh_stride;
  bool on;  // whether row b is active at this step: only then is the cell state updated

  __device__ V pre(int k) const {
    const int64_t col = k * s.H + j;
    A p = s.gx[b * Math::kGates * s.H + col];
    if (!apart_gate<Math>(k)) p += gh[k * gh_stride];
    p += bias<S, A>(s.b_ih, col);
    if (!apart_gate<Math>(k)) p += bias<S, A>(s.b_hh, col);
    return {p};
  }
  __device__ V recurrent(int k) const {
    return {gh[k * gh_stride] + bias<S, A>(s.b_hh, k * s.H + j)};
  }
  __device__ V h_prev() const { return {to_acc(s.h_in[b * s.S_ + j])}; }
  __device__ V c_prev() const { return {s.c[b * s.H + j]}; }
  __device__ void set_c(V c) const {
    if (on) s.c[b * s.H + j] = c.v;
  }
  __device__ void save(int q, V v) const {
    if (s.ws) s.ws[b * s.WS + q * s.H + j] = v.v;
  }
};

// The pointwise part of one forward step for unit j of batch row b: the cell's math, then the
// driver's part: saving h_{t-1} and the projection input, and the length mask on the output
// and the state.
template <class Math, class S, class A>
__device__ __forceinline__ void forward_point(const FwdStep<S, A>& s, int64_t b, int64_t j,
                                              const A* gh, int64_t gh_stride) {
  const bool on = active(s.lengths, b, s.t);
  ForwardUnit<Math, S, A> unit{s, b, j, gh, gh_stride, on};
  const A h = Math::template forward<Value<A>>(unit).v;
  if (s.ws) {
    A* w = s.ws + b * s.WS;
    if (j < s.S_) w[s.hprev_col + j] = to_acc(s.h_in[b * s.S_ + j]);
    if (s.hfull) w[s.proj_input_col + j] = h;
  }
  if (s.hfull) {
    s.hfull[b * s.H + j] = from_acc<S>(h);  // the projection epilogue masks rows
    return;
  }
  const int64_t k = b * s.H + j;  // S == H without projection
  const S hs = from_acc<S>(h);
  s.h_out[k] = on ? hs : s.h_in[k];
  s.y[k] = on ? hs : from_acc<S>(A(0));
}

// Pointwise step after a cuBLAS recurrent product: one thread per (b, j).
template <class Math, class S, class A>
__global__ void forward_step(FwdStep<S, A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H;
  forward_point<Math>(s, b, j, s.gh + b * Math::kGates * s.H + j, s.H);
}

// Small batches: the whole step in one launch. Block x owns hidden units
// [x*JT, x*JT + JT): it stages h_{t-1} in shared memory, its warps compute the
// G*JT rows of W_hh h_{t-1} for every batch row (lanes split the reduction,
// then a shuffle tree), and its threads finish the pointwise part. h_t goes to
// another buffer than h_{t-1}, which other blocks are still reading.
constexpr int kFusedMaxB = 8;
constexpr int kFusedThreads = 256;

template <class Math, class S, class A>
__global__ void __launch_bounds__(kFusedThreads) fused_forward_step(FwdStep<S, A> s,
                                                                    const S* __restrict__ w_hh,
                                                                    int JT) {
  constexpr int G = Math::kGates;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* hs = reinterpret_cast<A*>(smem_raw);     // [B][S]
  const int B = static_cast<int>(s.B), Sd = static_cast<int>(s.S_);
  const int64_t H = s.H;
  A* dots = hs + B * Sd;                      // [G*JT][kFusedMaxB]
  const int64_t j0 = blockIdx.x * int64_t(JT);
  const int jn = static_cast<int>(H - j0 < JT ? H - j0 : JT);
  for (int i = threadIdx.x; i < B * Sd; i += blockDim.x) hs[i] = to_acc(s.h_in[i]);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  for (int rr = warp; rr < G * jn; rr += nwarps) {
    const int q = rr / jn, jj = rr % jn;
    const S* w = w_hh + (q * H + j0 + jj) * Sd;
    A acc[kFusedMaxB];
#pragma unroll
    for (int b = 0; b < kFusedMaxB; ++b) acc[b] = A(0);
#pragma unroll 4
    for (int k = lane; k < Sd; k += 32) {
      const A wv = to_acc(w[k]);
#pragma unroll
      for (int b = 0; b < kFusedMaxB; ++b)
        if (b < B) acc[b] += wv * hs[b * Sd + k];
    }
#pragma unroll
    for (int b = 0; b < kFusedMaxB; ++b) {
      if (b < B) {
        A v = acc[b];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) dots[rr * kFusedMaxB + b] = v;
      }
    }
  }
  __syncthreads();
  // gate q of unit jj, row b is at dots[(q * jn + jj) * kFusedMaxB + b]
  for (int i = threadIdx.x; i < B * jn; i += blockDim.x) {
    const int b = i / jn, jj = i % jn;
    forward_point<Math>(s, b, j0 + jj, dots + jj * kFusedMaxB + b, int64_t(jn) * kFusedMaxB);
  }
}

// Units per block of the fused step: enough blocks (about 256) to spread the
// weight reads over the whole GPU.
int fused_units_per_block(int64_t H) { return static_cast<int>((H + 255) / 256); }

template <class A>
size_t fused_smem_bytes(int64_t B, int64_t S_, int G, int JT) {
  return sizeof(A) * (B * S_ + int64_t(G) * JT * kFusedMaxB);
}

template <class Math, class S, class A>
void launch_step(bool fused, const FwdStep<S, A>& st, const void* w_hh, cudaStream_t stream) {
  if (fused) {
    const int JT = fused_units_per_block(st.H);
    const unsigned grid = static_cast<unsigned>((st.H + JT - 1) / JT);
    fused_forward_step<Math, S, A>
        <<<grid, kFusedThreads, fused_smem_bytes<A>(st.B, st.S_, Math::kGates, JT), stream>>>(
            st, static_cast<const S*>(w_hh), JT);
  } else {
    forward_step<Math, S, A><<<blocks_for(st.B * st.H), kThreads, 0, stream>>>(st);
  }
  check_launch(fused ? "fused_forward_step" : "forward_step");
}

// Projection epilogue: r = hfull W_hr^T (in rproj) becomes the state and
// the output of active rows; inactive rows keep their state and output zeros.
template <class S, class A>
__global__ void projection_epilogue(int64_t B, int64_t P, const A* rproj, const int64_t* lengths,
                                    int64_t t, S* h, S* y) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  const S r = from_acc<S>(rproj[idx]);
  const bool on = active(lengths, b, t);
  if (on) h[idx] = r;
  y[idx] = on ? r : from_acc<S>(A(0));
}

// h = h0 (or 0); c = c0 (or 0), converted to the accumulation type.
template <class S, class A>
__global__ void init_state(int64_t nh, int64_t nc, const S* h0, const S* c0, S* h, A* c) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < nh) h[idx] = h0 ? h0[idx] : from_acc<S>(A(0));
  if (c && idx < nc) c[idx] = c0 ? to_acc(c0[idx]) : A(0);
}

template <class S, class A>
__global__ void store_state(int64_t n, const A* c, S* cy) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < n) cy[idx] = from_acc<S>(c[idx]);
}

// Whether the fused small-batch step applies: few rows, no projection, and
// h_{t-1} fits the default 48 KB of shared memory.
template <class Math, class A>
bool use_fused_step(int64_t B, int64_t H, int64_t P) {
  if (P > 0 || B < 1 || B > kFusedMaxB) return false;
  return fused_smem_bytes<A>(B, H, Math::kGates, fused_units_per_block(H)) <= 48 * 1024;
}

template <class Math, class S>
void forward_impl(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                  cublasHandle_t handle) {
  using A = typename Acc<S>::type;
  const CellInfo& cell = cell_info(Math::kCell);
  const int64_t T = a.T, B = a.B, H = a.H, P = a.P, S_ = P > 0 ? P : H;
  const int64_t GH = Math::kGates * H;
  const int64_t WS = cell.workspace_cols(H, P);
  if (T == 0 || B == 0) return;
  const bool fused = use_fused_step<Math, A>(B, H, P);

  const ForwardScratch<S> buf(a, scratch);
  S* h = buf.h;
  S* h_alt = buf.h_alt;

  const DType acc = accumulate_type(a.dtype);
  const Gemm gemm{handle, stream, a.dtype, acc, acc, false};

  // Input projection of every step at once.
  gemm(false, true, T * B, GH, a.I, a.x, a.I, a.w_ih, a.I, 0.0, buf.gx, GH, "x W_ih^T");

  const int64_t n_init = B * (Math::kCellState ? (S_ > H ? S_ : H) : S_);
  init_state<S, A><<<blocks_for(n_init), kThreads, 0, stream>>>(
      B * S_, B * H, static_cast<const S*>(a.h0), static_cast<const S*>(a.c0), h, buf.c);
  check_launch("init_state");

  FwdStep<S, A> st{};
  st.B = B; st.H = H; st.S_ = S_; st.WS = WS;
  st.hprev_col = cell.hprev_col(H, P);
  st.proj_input_col = cell.proj_input_col(H);
  st.gh = buf.gh;
  st.b_ih = static_cast<const S*>(a.b_ih);
  st.b_hh = static_cast<const S*>(a.b_hh);
  st.lengths = a.lengths;
  st.c = buf.c; st.hfull = buf.hfull;
  S* y = static_cast<S*>(a.y);
  A* ws = static_cast<A*>(a.ws);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? T - 1 - k : k;
    if (!fused) gemm(false, true, B, GH, S_, h, S_, a.w_hh, S_, 0.0, buf.gh, GH, "h W_hh^T");
    st.t = t;
    st.gx = buf.gx + t * B * GH;
    st.y = y + t * B * S_;
    st.ws = ws ? ws + t * B * WS : nullptr;
    st.h_in = h;
    st.h_out = fused ? h_alt : h;
    launch_step<Math>(fused, st, a.w_hh, stream);
    if (fused) std::swap(h, h_alt);
    if (P > 0) {
      gemm(false, true, B, P, H, buf.hfull, H, a.w_hr, H, 0.0, buf.rproj, P, "h W_hr^T");
      projection_epilogue<S, A><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, buf.rproj, a.lengths, t, h, y + t * B * S_);
      check_launch("projection_epilogue");
    }
  }
  check_cuda(cudaMemcpyAsync(a.hy, h, sizeof(S) * B * S_, cudaMemcpyDeviceToDevice, stream),
             "copy hy");
  if (Math::kCellState) {
    store_state<S, A><<<blocks_for(B * H), kThreads, 0, stream>>>(B * H, buf.c,
                                                                  static_cast<S*>(a.cy));
    check_launch("store_state");
  }
}

// ---------------------------------------------------------------------------
// Backward kernels (accumulation type A throughout)
// ---------------------------------------------------------------------------

template <class A>
struct BwdStep {
  int64_t B, H, S_, WS;
  int64_t hprev_col;  // column of h_{t-1} in a workspace row (cells.h)
  const A* ws;       // [B, WS] at this step
  const A* dy;       // [B, S] at this step, or null
  const A* dhfull;   // [B, H] with P: d(o tanh c) from the projection
  const int64_t* lengths;
  int64_t t;
  A* dh;             // [B, S] gradient w.r.t. the state; in: d h_t (recurrent part), out:
                     // the direct part of d h_{t-1} (the GEMM adds dG W_hh next)
  A* dc;             // [B, H] cells with a cell state: in d c_t, out d c_{t-1}
  A* dgx;            // [B, G*H] gradient of the gate pre-activations (input side)
  A* dgh;            // [B, G*H] hidden side (cells with apart gates; the same as dgx otherwise)
};

// The backward step accessor of cell_math.h for unit j of batch row b.
template <class Math, class A>
struct BackwardUnit {
  using V = Value<A>;
  static constexpr bool kSplit = Math::kApartGates != 0;  // dgh is not dgx
  const BwdStep<A>& s;
  int64_t b, j;

  __device__ int64_t gate(int k) const { return (b * Math::kGates + k) * s.H + j; }
  __device__ V saved(int q) const { return {s.ws[b * s.WS + q * s.H + j]}; }
  __device__ V h_prev() const { return {s.ws[b * s.WS + s.hprev_col + j]}; }
  __device__ V dc() const { return {s.dc[b * s.H + j]}; }
  __device__ void set_dc(V v) const { s.dc[b * s.H + j] = v.v; }
  __device__ void set_dpre(int k, V v) const {
    s.dgx[gate(k)] = v.v;
    if (kSplit && !apart_gate<Math>(k)) s.dgh[gate(k)] = v.v;
  }
  __device__ void set_dpre_apart(int k, V v) const { s.dgh[gate(k)] = v.v; }
};

// One backward step for unit j of batch row b, one thread per (b, j): dh_t (the recurrent part
// plus dy_t, or from the projection) through the cell's math. Inactive rows get zero gate
// gradients and pass dh and dc through unchanged.
template <class Math, class A>
__global__ void backward_step(BwdStep<A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, k = b * s.H + j;
  BackwardUnit<Math, A> unit{s, b, j};
  if (!active(s.lengths, b, s.t)) {
#pragma unroll
    for (int q = 0; q < Math::kGates; ++q) {
      s.dgx[unit.gate(q)] = A(0);
      if (BackwardUnit<Math, A>::kSplit) s.dgh[unit.gate(q)] = A(0);
    }
    return;
  }
  if (s.dhfull) {
    // With P, projection_backward has consumed dh; the cells that accept a projection (LSTM)
    // add nothing to dh_{t-1} outside W_hh.
    Math::template backward<Value<A>>(unit, Value<A>{s.dhfull[k]});
    return;
  }
  const A dh = s.dh[k] + (s.dy ? s.dy[k] : A(0));
  s.dh[k] = Math::template backward<Value<A>>(unit, Value<A>{dh}).v;
}

// With P, first stage of a step: dr = dh + dy for active rows
// (and dh is consumed), zero for inactive rows (whose dh passes through).
template <class A>
__global__ void projection_backward(int64_t B, int64_t P, const A* dy, const int64_t* lengths,
                                    int64_t t, A* dh, A* dr) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P;
  if (active(lengths, b, t)) {
    dr[idx] = dh[idx] + (dy ? dy[idx] : A(0));
    dh[idx] = A(0);
  } else {
    dr[idx] = A(0);
  }
}

template <class A>
__global__ void fill(int64_t n, A value, A* out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx < n) out[idx] = value;
}

template <class A>
void copy_or_zero(A* dst, const void* src, int64_t n, cudaStream_t stream, const char* what) {
  if (n == 0) return;
  if (src)
    check_cuda(cudaMemcpyAsync(dst, src, sizeof(A) * n, cudaMemcpyDeviceToDevice, stream), what);
  else
    check_cuda(cudaMemsetAsync(dst, 0, sizeof(A) * n, stream), what);
}

template <class Math, class A>
void backward_impl(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle) {
  const CellInfo& cell = cell_info(Math::kCell);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, S_ = P > 0 ? P : H;
  const int64_t GH = Math::kGates * H;
  const int64_t WS = cell.workspace_cols(H, P);

  const BackwardScratch<A> buf(a, scratch);
  A* dh = buf.dh;
  A* dc = buf.dc;

  const Gemm gemm{handle, stream, a.dtype, a.dtype, a.dtype, a.tf32};
  A* dw_ih = static_cast<A*>(a.dw_ih);
  A* dw_hh = static_cast<A*>(a.dw_hh);
  A* db_ih = static_cast<A*>(a.db_ih);
  A* db_hh = static_cast<A*>(a.db_hh);
  if (T * B == 0) {  // no rows: every gradient is zero
    for (auto [p, n] : {std::pair<void*, int64_t>{a.dx, T * B * I}, {a.dh0, B * S_},
                        {a.dc0, Math::kCellState ? B * H : 0}, {a.dw_ih, GH * I},
                        {a.dw_hh, GH * S_}, {a.db_ih, GH}, {a.db_hh, GH}, {a.dw_hr, P * H}})
      if (p && n) check_cuda(cudaMemsetAsync(p, 0, sizeof(A) * n, stream), "zero gradients");
    return;
  }

  copy_or_zero<A>(dh, a.dhy, B * S_, stream, "dh init");
  if (Math::kCellState) copy_or_zero<A>(dc, a.dcy, B * H, stream, "dc init");

  BwdStep<A> st{};
  st.B = B; st.H = H; st.S_ = S_; st.WS = WS;
  st.hprev_col = cell.hprev_col(H, P);
  st.lengths = a.lengths;
  st.dh = dh; st.dc = dc; st.dhfull = buf.dhfull;
  const A* ws = static_cast<const A*>(a.ws);
  const A* dy = static_cast<const A*>(a.dy);
  const unsigned grid = blocks_for(B * H);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? k : T - 1 - k;  // the forward order, reversed
    const A* dy_t = dy ? dy + t * B * S_ : nullptr;
    if (P > 0) {
      projection_backward<A><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, dy_t, a.lengths, t, dh, buf.dr + t * B * P);
      check_launch("projection_backward");
      gemm(false, false, B, H, P, buf.dr + t * B * P, P, a.w_hr, H, 0.0, buf.dhfull, H,
           "dr W_hr");
      st.dy = nullptr;
    } else {
      st.dy = dy_t;
    }
    st.t = t;
    st.ws = ws + t * B * WS;
    st.dgx = buf.dgx + t * B * GH;
    st.dgh = buf.dgh + t * B * GH;
    backward_step<Math, A><<<grid, kThreads, 0, stream>>>(st);
    check_launch("backward_step");
    // dh_{t-1} = direct part (left in dh by the step kernel) + dG_t W_hh
    gemm(false, false, B, S_, GH, st.dgh, GH, a.w_hh, S_, 1.0, dh, S_, "dG W_hh");
  }
  check_cuda(cudaMemcpyAsync(a.dh0, dh, sizeof(A) * B * S_, cudaMemcpyDeviceToDevice, stream),
             "copy dh0");
  if (Math::kCellState && a.dc0)
    check_cuda(cudaMemcpyAsync(a.dc0, dc, sizeof(A) * B * H, cudaMemcpyDeviceToDevice, stream),
               "copy dc0");

  const int64_t R = T * B;
  gemm(false, false, R, I, GH, buf.dgx, GH, a.w_ih, I, 0.0, a.dx, I, "dG W_ih");
  gemm(true, false, GH, I, R, buf.dgx, GH, a.x, I, 0.0, dw_ih, I, "dG^T x");
  gemm(true, false, GH, S_, R, buf.dgh, GH, ws + cell.hprev_col(H, P), WS, 0.0, dw_hh, S_,
       "dG^T h");
  if (P > 0)
    gemm(true, false, P, H, R, buf.dr, P, ws + cell.proj_input_col(H), WS, 0.0, a.dw_hr, H,
         "dr^T hfull");
  fill<A><<<blocks_for(R), kThreads, 0, stream>>>(R, A(1), buf.ones);
  check_launch("fill");
  gemm(true, false, GH, 1, R, buf.dgx, GH, buf.ones, 1, 0.0, db_ih, 1, "bias_ih gradient");
  gemm(true, false, GH, 1, R, buf.dgh, GH, buf.ones, 1, 0.0, db_hh, 1, "bias_hh gradient");
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
  bind_stream(handle, stream);
  visit_storage(a.dtype, [&](auto storage) {
    using S = typename decltype(storage)::type;
    visit_cell(a.cell, [&](auto math) {
      forward_impl<decltype(math), S>(a, scratch, stream, handle);
    });
  });
}

void layer_backward(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle) {
  if (a.dtype != DType::F64 && a.dtype != DType::F32)
    throw std::runtime_error("rnnfast CUDA: the backward pass runs in float32 or float64");
  check_projection(a.cell, a.P);
  bind_stream(handle, stream);
  visit_cell(a.cell, [&](auto math) {
    if (a.dtype == DType::F64)
      backward_impl<decltype(math), double>(a, scratch, stream, handle);
    else
      backward_impl<decltype(math), float>(a, scratch, stream, handle);
  });
}

}  // namespace cuda
}  // namespace core
}  // namespace rnnfast
