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

__device__ __forceinline__ float sigm(float v) { return 1.f / (1.f + expf(-v)); }
__device__ __forceinline__ double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
// max(0, v) that keeps NaN, as torch.relu does.
template <class A>
__device__ __forceinline__ A relu_(A v) { return (v > A(0) || v != v) ? v : A(0); }

template <class S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

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

// Carves aligned pieces out of the caller's scratch buffer (or, with a null
// base, just adds up their sizes).
struct Carve {
  char* base;
  size_t used = 0;
  void* take(size_t bytes) {
    void* p = base ? base + used : nullptr;
    used += (bytes + 255) / 256 * 256;
    return p;
  }
};

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ bool active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// ---------------------------------------------------------------------------
// Forward kernels (one thread per (b, j), j < H)
// ---------------------------------------------------------------------------

template <class S, class A>
struct FwdStep {
  int64_t B, H, S_, WS;
  const A* gx;        // [B, G*H]   x W_ih^T at this step
  const A* gh;        // [B, G*H]   h_{t-1} W_hh^T (unfused path)
  const S* b_ih;      // [G*H] or null
  const S* b_hh;      // [G*H] or null
  const int64_t* lengths;
  int64_t t;
  const S* h_in;      // [B, S]  h_{t-1}
  S* h_out;           // [B, S]  h_t (inactive rows: h_{t-1}); may alias h_in when the
                      //         recurrent product was computed by an earlier launch
  A* c;               // [B, H]  LSTM cell state, updated in place
  S* hfull;           // [B, H]  LSTM with P: o * tanh(c) before projection
  S* y;               // [B, S]  output at this step
  A* ws;              // [B, WS] or null
};

template <class S, class A>
__device__ __forceinline__ A bias(const S* b, int64_t k) {
  return b ? to_acc(b[k]) : A(0);
}

// The pointwise part of one step for unit (b, j), given gh[q] = (h_{t-1} W_hh^T)[b, q*H + j].
struct LstmOp {
  static constexpr int G = 4;
  template <class S, class A>
  __device__ static void point(const FwdStep<S, A>& s, int64_t b, int64_t j, const A* gh) {
    const int64_t H = s.H, GH = 4 * H;
    const A* gx = s.gx + b * GH;
    A pre[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t k = q * H + j;
      pre[q] = gx[k] + gh[q] + bias<S, A>(s.b_ih, k) + bias<S, A>(s.b_hh, k);
    }
    const A i = sigm(pre[0]), f = sigm(pre[1]), g = tanh_(pre[2]), o = sigm(pre[3]);
    const A c_prev = s.c[b * H + j];
    const A c = f * c_prev + i * g;
    const A tc = tanh_(c);
    const A h = o * tc;
    const bool on = active(s.lengths, b, s.t);
    if (s.ws) {
      A* w = s.ws + b * s.WS;
      w[j] = i;
      w[H + j] = f;
      w[2 * H + j] = g;
      w[3 * H + j] = o;
      w[4 * H + j] = c_prev;
      w[5 * H + j] = tc;
      if (j < s.S_) w[6 * H + j] = to_acc(s.h_in[b * s.S_ + j]);
      if (s.hfull) w[6 * H + s.S_ + j] = h;
    }
    if (on) s.c[b * H + j] = c;
    if (s.hfull) {
      s.hfull[b * H + j] = from_acc<S>(h);  // the projection epilogue masks rows
    } else {
      const S hs = from_acc<S>(h);
      s.h_out[b * H + j] = on ? hs : s.h_in[b * H + j];
      s.y[b * H + j] = on ? hs : from_acc<S>(A(0));
    }
  }
};

struct GruOp {
  static constexpr int G = 3;
  template <class S, class A>
  __device__ static void point(const FwdStep<S, A>& s, int64_t b, int64_t j, const A* gh) {
    const int64_t H = s.H;
    const A* gx = s.gx + b * 3 * H;
    const A r = sigm(gx[j] + bias<S, A>(s.b_ih, j) + gh[0] + bias<S, A>(s.b_hh, j));
    const A z = sigm(gx[H + j] + bias<S, A>(s.b_ih, H + j) + gh[1] + bias<S, A>(s.b_hh, H + j));
    const A hn = gh[2] + bias<S, A>(s.b_hh, 2 * H + j);
    const A n = tanh_(gx[2 * H + j] + bias<S, A>(s.b_ih, 2 * H + j) + r * hn);
    const S h_prev_s = s.h_in[b * H + j];
    const A h_prev = to_acc(h_prev_s);
    const A h = (A(1) - z) * n + z * h_prev;
    const bool on = active(s.lengths, b, s.t);
    if (s.ws) {
      A* w = s.ws + b * s.WS;
      w[j] = r;
      w[H + j] = z;
      w[2 * H + j] = n;
      w[3 * H + j] = hn;
      w[4 * H + j] = h_prev;
    }
    const S hs = from_acc<S>(h);
    s.h_out[b * H + j] = on ? hs : h_prev_s;
    s.y[b * H + j] = on ? hs : from_acc<S>(A(0));
  }
};

template <bool Relu>
struct ElmanOp {
  static constexpr int G = 1;
  template <class S, class A>
  __device__ static void point(const FwdStep<S, A>& s, int64_t b, int64_t j, const A* gh) {
    const int64_t H = s.H;
    const A pre = s.gx[b * H + j] + gh[0] + bias<S, A>(s.b_ih, j) + bias<S, A>(s.b_hh, j);
    const A h = Relu ? relu_(pre) : tanh_(pre);
    const bool on = active(s.lengths, b, s.t);
    const S h_prev_s = s.h_in[b * H + j];
    if (s.ws) {
      A* w = s.ws + b * s.WS;
      w[j] = h;
      w[H + j] = to_acc(h_prev_s);
    }
    const S hs = from_acc<S>(h);
    s.h_out[b * H + j] = on ? hs : h_prev_s;
    s.y[b * H + j] = on ? hs : from_acc<S>(A(0));
  }
};

// Pointwise step after a cuBLAS recurrent product: one thread per (b, j).
template <class Op, class S, class A>
__global__ void forward_step(FwdStep<S, A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, GH = Op::G * s.H;
  A gh[Op::G];
#pragma unroll
  for (int q = 0; q < Op::G; ++q) gh[q] = s.gh[b * GH + q * s.H + j];
  Op::template point<S, A>(s, b, j, gh);
}

// Small batches: the whole step in one launch. Block x owns hidden units
// [x*JT, x*JT + JT): it stages h_{t-1} in shared memory, its warps compute the
// G*JT rows of W_hh h_{t-1} for every batch row (lanes split the reduction,
// then a shuffle tree), and its threads finish the pointwise part. h_t goes to
// another buffer than h_{t-1}, which other blocks are still reading.
constexpr int kFusedMaxB = 8;
constexpr int kFusedThreads = 256;

template <class Op, class S, class A>
__global__ void __launch_bounds__(kFusedThreads) fused_forward_step(FwdStep<S, A> s,
                                                                    const S* __restrict__ w_hh,
                                                                    int JT) {
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
  for (int rr = warp; rr < Op::G * jn; rr += nwarps) {
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
  for (int i = threadIdx.x; i < B * jn; i += blockDim.x) {
    const int b = i / jn, jj = i % jn;
    A gh[Op::G];
#pragma unroll
    for (int q = 0; q < Op::G; ++q) gh[q] = dots[(q * jn + jj) * kFusedMaxB + b];
    Op::template point<S, A>(s, b, j0 + jj, gh);
  }
}

// Units per block of the fused step: enough blocks (about 256) to spread the
// weight reads over the whole GPU.
int fused_units_per_block(int64_t H) { return static_cast<int>((H + 255) / 256); }

template <class A>
size_t fused_smem_bytes(int64_t B, int64_t S_, int G, int JT) {
  return sizeof(A) * (B * S_ + int64_t(G) * JT * kFusedMaxB);
}

template <class Op, class S, class A>
void launch_step(bool fused, const FwdStep<S, A>& st, const void* w_hh, cudaStream_t stream) {
  if (fused) {
    const int JT = fused_units_per_block(st.H);
    const unsigned grid = static_cast<unsigned>((st.H + JT - 1) / JT);
    fused_forward_step<Op, S, A>
        <<<grid, kFusedThreads, fused_smem_bytes<A>(st.B, st.S_, Op::G, JT), stream>>>(
            st, static_cast<const S*>(w_hh), JT);
  } else {
    forward_step<Op, S, A><<<blocks_for(st.B * st.H), kThreads, 0, stream>>>(st);
  }
  check_launch(fused ? "fused_forward_step" : "forward_step");
}

// LSTM projection epilogue: r = hfull W_hr^T (in rproj) becomes the state and
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
template <class A>
bool use_fused_step(Cell cell, int64_t B, int64_t H, int64_t P) {
  if (P > 0 || B < 1 || B > kFusedMaxB) return false;
  const int G = cell_info(cell).gates;
  return fused_smem_bytes<A>(B, H, G, fused_units_per_block(H)) <= 48 * 1024;
}

template <class S>
void forward_typed(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle) {
  using A = typename Acc<S>::type;
  const int64_t T = a.T, B = a.B, H = a.H, P = a.P, S_ = P > 0 ? P : H;
  const int64_t GH = cell_info(a.cell).gates * H;
  const int64_t WS = cell_info(a.cell).workspace_cols(H, P);
  const bool lstm = a.cell == Cell::LSTM;
  if (T == 0 || B == 0) return;
  const bool fused = use_fused_step<A>(a.cell, B, H, P);

  Carve carve{static_cast<char*>(scratch)};
  A* gx = static_cast<A*>(carve.take(sizeof(A) * T * B * GH));
  A* gh = static_cast<A*>(carve.take(sizeof(A) * B * GH));
  S* h = static_cast<S*>(carve.take(sizeof(S) * B * S_));
  S* h_alt = static_cast<S*>(carve.take(sizeof(S) * B * S_));
  A* c = lstm ? static_cast<A*>(carve.take(sizeof(A) * B * H)) : nullptr;
  S* hfull = P > 0 ? static_cast<S*>(carve.take(sizeof(S) * B * H)) : nullptr;
  A* rproj = P > 0 ? static_cast<A*>(carve.take(sizeof(A) * B * P)) : nullptr;

  const DType acc = accumulate_type(a.dtype);
  const Gemm gemm{handle, stream, a.dtype, acc, acc, false};

  // Input projection of every step at once.
  gemm(false, true, T * B, GH, a.I, a.x, a.I, a.w_ih, a.I, 0.0, gx, GH, "x W_ih^T");

  const int64_t n_init = B * (lstm ? (S_ > H ? S_ : H) : S_);
  init_state<S, A><<<blocks_for(n_init), kThreads, 0, stream>>>(
      B * S_, B * H, static_cast<const S*>(a.h0), static_cast<const S*>(a.c0), h, c);
  check_launch("init_state");

  FwdStep<S, A> st{};
  st.B = B; st.H = H; st.S_ = S_; st.WS = WS;
  st.gh = gh;
  st.b_ih = static_cast<const S*>(a.b_ih);
  st.b_hh = static_cast<const S*>(a.b_hh);
  st.lengths = a.lengths;
  st.c = c; st.hfull = hfull;
  S* y = static_cast<S*>(a.y);
  A* ws = static_cast<A*>(a.ws);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? T - 1 - k : k;
    if (!fused) gemm(false, true, B, GH, S_, h, S_, a.w_hh, S_, 0.0, gh, GH, "h W_hh^T");
    st.t = t;
    st.gx = gx + t * B * GH;
    st.y = y + t * B * S_;
    st.ws = ws ? ws + t * B * WS : nullptr;
    st.h_in = h;
    st.h_out = fused ? h_alt : h;
    switch (a.cell) {
      case Cell::LSTM: launch_step<LstmOp>(fused, st, a.w_hh, stream); break;
      case Cell::GRU: launch_step<GruOp>(fused, st, a.w_hh, stream); break;
      case Cell::RNN_TANH: launch_step<ElmanOp<false>>(fused, st, a.w_hh, stream); break;
      case Cell::RNN_RELU: launch_step<ElmanOp<true>>(fused, st, a.w_hh, stream); break;
    }
    if (fused) std::swap(h, h_alt);
    if (P > 0) {
      gemm(false, true, B, P, H, hfull, H, a.w_hr, H, 0.0, rproj, P, "h W_hr^T");
      projection_epilogue<S, A><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, rproj, a.lengths, t, h, y + t * B * S_);
      check_launch("projection_epilogue");
    }
  }
  check_cuda(cudaMemcpyAsync(a.hy, h, sizeof(S) * B * S_, cudaMemcpyDeviceToDevice, stream),
             "copy hy");
  if (lstm) {
    store_state<S, A><<<blocks_for(B * H), kThreads, 0, stream>>>(B * H, c,
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
  const A* ws;       // [B, WS] at this step
  const A* dy;       // [B, S] at this step, or null
  const A* dhfull;   // [B, H] LSTM with P: d(o tanh c) from the projection
  const int64_t* lengths;
  int64_t t;
  A* dh;             // [B, S] gradient w.r.t. the state; in: d h_t (recurrent part), out:
                     // the direct part of d h_{t-1} (the GEMM adds dG W_hh next)
  A* dc;             // [B, H] LSTM: in d c_t, out d c_{t-1}
  A* dgx;            // [B, G*H] gradient of the gate pre-activations (input side)
  A* dgh;            // [B, G*H] hidden side (GRU; the same as dgx otherwise)
};

template <class A>
__global__ void lstm_backward_step(BwdStep<A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, H = s.H;
  A* dg = s.dgx + b * 4 * H;
  if (!active(s.lengths, b, s.t)) {
    dg[j] = dg[H + j] = dg[2 * H + j] = dg[3 * H + j] = A(0);
    return;  // dh and dc pass through unchanged
  }
  const A* w = s.ws + b * s.WS;
  const A i = w[j], f = w[H + j], g = w[2 * H + j], o = w[3 * H + j];
  const A c_prev = w[4 * H + j], tc = w[5 * H + j];
  A dht;
  if (s.dhfull) {
    dht = s.dhfull[b * H + j];
  } else {
    dht = s.dh[b * H + j] + (s.dy ? s.dy[b * H + j] : A(0));
    s.dh[b * H + j] = A(0);
  }
  const A dct = s.dc[b * H + j] + dht * o * (A(1) - tc * tc);
  dg[j] = dct * g * i * (A(1) - i);
  dg[H + j] = dct * c_prev * f * (A(1) - f);
  dg[2 * H + j] = dct * i * (A(1) - g * g);
  dg[3 * H + j] = dht * tc * o * (A(1) - o);
  s.dc[b * H + j] = dct * f;
}

template <class A>
__global__ void gru_backward_step(BwdStep<A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, H = s.H;
  A* dgx = s.dgx + b * 3 * H;
  A* dgh = s.dgh + b * 3 * H;
  if (!active(s.lengths, b, s.t)) {
    dgx[j] = dgx[H + j] = dgx[2 * H + j] = A(0);
    dgh[j] = dgh[H + j] = dgh[2 * H + j] = A(0);
    return;
  }
  const A* w = s.ws + b * s.WS;
  const A r = w[j], z = w[H + j], n = w[2 * H + j], hn = w[3 * H + j], h_prev = w[4 * H + j];
  const A dht = s.dh[b * H + j] + (s.dy ? s.dy[b * H + j] : A(0));
  const A dn = dht * (A(1) - z) * (A(1) - n * n);
  const A dr = dn * hn * r * (A(1) - r);
  const A dz = dht * (h_prev - n) * z * (A(1) - z);
  dgx[j] = dr;
  dgx[H + j] = dz;
  dgx[2 * H + j] = dn;
  dgh[j] = dr;
  dgh[H + j] = dz;
  dgh[2 * H + j] = dn * r;
  s.dh[b * H + j] = dht * z;
}

template <class A, bool Relu>
__global__ void elman_backward_step(BwdStep<A> s) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= s.B * s.H) return;
  const int64_t b = idx / s.H, j = idx % s.H, H = s.H;
  if (!active(s.lengths, b, s.t)) {
    s.dgx[b * H + j] = A(0);
    return;
  }
  const A h = s.ws[b * s.WS + j];
  const A dht = s.dh[b * H + j] + (s.dy ? s.dy[b * H + j] : A(0));
  // relu: as torch, pass the gradient unless h <= 0 (a NaN h passes it)
  s.dgx[b * H + j] = Relu ? (h <= A(0) ? A(0) : dht) : dht * (A(1) - h * h);
  s.dh[b * H + j] = A(0);
}

// LSTM with projection, first stage of a step: dr = dh + dy for active rows
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

template <class A>
void backward_typed(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle) {
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, S_ = P > 0 ? P : H;
  const int64_t GH = cell_info(a.cell).gates * H;
  const int64_t WS = cell_info(a.cell).workspace_cols(H, P);
  const bool lstm = a.cell == Cell::LSTM, gru = a.cell == Cell::GRU;
  // offsets of h_{t-1} and (LSTM with P) o*tanh(c) in a workspace row
  const int64_t off_hprev = lstm ? 6 * H : (gru ? 4 * H : H);
  const int64_t off_hfull = 6 * H + S_;

  Carve carve{static_cast<char*>(scratch)};
  A* dgx = static_cast<A*>(carve.take(sizeof(A) * T * B * GH));
  A* dgh = gru ? static_cast<A*>(carve.take(sizeof(A) * T * B * GH)) : dgx;
  A* dh = static_cast<A*>(carve.take(sizeof(A) * B * S_));
  A* dc = lstm ? static_cast<A*>(carve.take(sizeof(A) * B * H)) : nullptr;
  A* dr = P > 0 ? static_cast<A*>(carve.take(sizeof(A) * T * B * P)) : nullptr;
  A* dhfull = P > 0 ? static_cast<A*>(carve.take(sizeof(A) * B * H)) : nullptr;
  A* ones = static_cast<A*>(carve.take(sizeof(A) * (T * B > 0 ? T * B : 1)));

  const Gemm gemm{handle, stream, a.dtype, a.dtype, a.dtype, a.tf32};
  A* dw_ih = static_cast<A*>(a.dw_ih);
  A* dw_hh = static_cast<A*>(a.dw_hh);
  A* db_ih = static_cast<A*>(a.db_ih);
  A* db_hh = static_cast<A*>(a.db_hh);
  if (T * B == 0) {  // no rows: every gradient is zero
    for (auto [p, n] : {std::pair<void*, int64_t>{a.dx, T * B * I}, {a.dh0, B * S_},
                        {a.dc0, lstm ? B * H : 0}, {a.dw_ih, GH * I}, {a.dw_hh, GH * S_},
                        {a.db_ih, GH}, {a.db_hh, GH}, {a.dw_hr, P * H}})
      if (p && n) check_cuda(cudaMemsetAsync(p, 0, sizeof(A) * n, stream), "zero gradients");
    return;
  }

  copy_or_zero<A>(dh, a.dhy, B * S_, stream, "dh init");
  if (lstm) copy_or_zero<A>(dc, a.dcy, B * H, stream, "dc init");

  BwdStep<A> st{};
  st.B = B; st.H = H; st.S_ = S_; st.WS = WS;
  st.lengths = a.lengths;
  st.dh = dh; st.dc = dc; st.dhfull = dhfull;
  const A* ws = static_cast<const A*>(a.ws);
  const A* dy = static_cast<const A*>(a.dy);
  const unsigned grid = blocks_for(B * H);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = a.reverse ? k : T - 1 - k;  // the forward order, reversed
    const A* dy_t = dy ? dy + t * B * S_ : nullptr;
    if (P > 0) {
      projection_backward<A><<<blocks_for(B * P), kThreads, 0, stream>>>(
          B, P, dy_t, a.lengths, t, dh, dr + t * B * P);
      check_launch("projection_backward");
      gemm(false, false, B, H, P, dr + t * B * P, P, a.w_hr, H, 0.0, dhfull, H, "dr W_hr");
      st.dy = nullptr;
    } else {
      st.dy = dy_t;
    }
    st.t = t;
    st.ws = ws + t * B * WS;
    st.dgx = dgx + t * B * GH;
    st.dgh = dgh + t * B * GH;
    switch (a.cell) {
      case Cell::LSTM: lstm_backward_step<A><<<grid, kThreads, 0, stream>>>(st); break;
      case Cell::GRU: gru_backward_step<A><<<grid, kThreads, 0, stream>>>(st); break;
      case Cell::RNN_TANH: elman_backward_step<A, false><<<grid, kThreads, 0, stream>>>(st); break;
      case Cell::RNN_RELU: elman_backward_step<A, true><<<grid, kThreads, 0, stream>>>(st); break;
    }
    check_launch("backward step");
    // dh_{t-1} = direct part (left in dh by the step kernel) + dG_t W_hh
    gemm(false, false, B, S_, GH, st.dgh, GH, a.w_hh, S_, 1.0, dh, S_, "dG W_hh");
  }
  check_cuda(cudaMemcpyAsync(a.dh0, dh, sizeof(A) * B * S_, cudaMemcpyDeviceToDevice, stream),
             "copy dh0");
  if (lstm && a.dc0)
    check_cuda(cudaMemcpyAsync(a.dc0, dc, sizeof(A) * B * H, cudaMemcpyDeviceToDevice, stream),
               "copy dc0");

  const int64_t R = T * B;
  gemm(false, false, R, I, GH, dgx, GH, a.w_ih, I, 0.0, a.dx, I, "dG W_ih");
  gemm(true, false, GH, I, R, dgx, GH, a.x, I, 0.0, dw_ih, I, "dG^T x");
  gemm(true, false, GH, S_, R, dgh, GH, ws + off_hprev, WS, 0.0, dw_hh, S_, "dG^T h");
  if (P > 0)
    gemm(true, false, P, H, R, dr, P, ws + off_hfull, WS, 0.0, a.dw_hr, H, "dr^T hfull");
  fill<A><<<blocks_for(R), kThreads, 0, stream>>>(R, A(1), ones);
  check_launch("fill");
  gemm(true, false, GH, 1, R, dgx, GH, ones, 1, 0.0, db_ih, 1, "bias_ih gradient");
  gemm(true, false, GH, 1, R, dgh, GH, ones, 1, 0.0, db_hh, 1, "bias_hh gradient");
}

}  // namespace

DType accumulate_type(DType storage) { return storage == DType::F64 ? DType::F64 : DType::F32; }

size_t forward_scratch_bytes(const ForwardArgs& a) {
  const int64_t S_ = a.P > 0 ? a.P : a.H, GH = cell_info(a.cell).gates * a.H;
  const size_t acc = type_size(accumulate_type(a.dtype)), st = type_size(a.dtype);
  Carve c{nullptr};
  c.take(acc * a.T * a.B * GH);
  c.take(acc * a.B * GH);
  c.take(st * a.B * S_);
  c.take(st * a.B * S_);
  if (a.cell == Cell::LSTM) c.take(acc * a.B * a.H);
  if (a.P > 0) {
    c.take(st * a.B * a.H);
    c.take(acc * a.B * a.P);
  }
  return c.used;
}

size_t backward_scratch_bytes(const BackwardArgs& a) {
  const int64_t S_ = a.P > 0 ? a.P : a.H, GH = cell_info(a.cell).gates * a.H;
  const size_t acc = type_size(a.dtype);
  Carve c{nullptr};
  c.take(acc * a.T * a.B * GH);
  if (a.cell == Cell::GRU) c.take(acc * a.T * a.B * GH);
  c.take(acc * a.B * S_);
  if (a.cell == Cell::LSTM) c.take(acc * a.B * a.H);
  if (a.P > 0) {
    c.take(acc * a.T * a.B * a.P);
    c.take(acc * a.B * a.H);
  }
  c.take(acc * (a.T * a.B > 0 ? a.T * a.B : 1));
  return c.used;
}

void layer_forward(const ForwardArgs& a, void* scratch, cudaStream_t stream,
                   cublasHandle_t handle) {
  bind_stream(handle, stream);
  switch (a.dtype) {
    case DType::F32: forward_typed<float>(a, scratch, stream, handle); break;
    case DType::F64: forward_typed<double>(a, scratch, stream, handle); break;
    case DType::F16: forward_typed<__half>(a, scratch, stream, handle); break;
    case DType::BF16: forward_typed<__nv_bfloat16>(a, scratch, stream, handle); break;
  }
}

void layer_backward(const BackwardArgs& a, void* scratch, cudaStream_t stream,
                    cublasHandle_t handle) {
  bind_stream(handle, stream);
  if (a.dtype == DType::F64)
    backward_typed<double>(a, scratch, stream, handle);
  else if (a.dtype == DType::F32)
    backward_typed<float>(a, scratch, stream, handle);
  else
    throw std::runtime_error("rnnfast CUDA: the backward pass runs in float32 or float64");
}

}  // namespace cuda
}  // namespace core
}  // namespace rnnfast
