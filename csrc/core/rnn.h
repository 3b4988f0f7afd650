// rnnfast core: framework-free recurrent-layer kernels.
//
// Nothing here includes torch. Callers pass raw pointers, sizes and an Executor
// that runs parallel loops (the torch glue wraps at::parallel_for; the C++ unit
// tests use a plain serial or std::thread executor).
//
// Shape legend used in every comment below:
//   T  time steps            B  batch
//   I  input features        H  hidden units
//   P  projection size (LSTM proj_size; 0 = none)
//   S  recurrent state size  = P if P > 0 else H
//   G  gates per cell        = cell_info(cell).gates (cells.h)
//   WS workspace columns     = cell_info(cell).workspace_cols(H, P)
// All matrices are dense row-major with the last dimension contiguous.
// Gate row order is each cell's gate_names (cells.h): torch's for LSTM i,f,g,o and GRU r,z,n.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cells.h"

namespace rnnfast {
namespace core {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Runs parallel loops. run() must call fn(ctx, begin, end) over disjoint ranges
// that cover [0, n); it may call it from several threads at once and must
// return only when all calls have returned.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual int num_threads() const = 0;
  virtual void run(int64_t n, void (*fn)(void*, int64_t, int64_t), void* ctx) const = 0;
  // Runs fn(ctx, tid, nthreads) once on each thread of a team of nthreads <=
  // max_threads threads that run at the same time (so they may wait for each
  // other), and returns when all have returned. The default is a team of one.
  virtual void run_team(int max_threads, void (*fn)(void*, int, int), void* ctx) const {
    (void)max_threads;
    fn(ctx, 0, 1);
  }
};

// Runs everything on the calling thread.
class SerialExecutor final : public Executor {
 public:
  int num_threads() const override { return 1; }
  void run(int64_t n, void (*fn)(void*, int64_t, int64_t), void* ctx) const override {
    if (n > 0) fn(ctx, 0, n);
  }
};

// The arguments of one layer call: one layer, one direction, the whole sequence. Both backends
// take these fields: the CPU kernels as ForwardArgs<float> or <double>, the CUDA kernels as
// cuda::ForwardArgs (rnn_cuda.h), which is ForwardArgs<void> plus the element type behind its
// untyped pointers. Real is that element type: every tensor below has it, except where a
// backend's header says otherwise (the CUDA workspace).
//
// Every pointer addresses memory of the device that runs the kernels: host memory for the CPU
// kernels, device memory for the CUDA kernels (lengths included).
// Null, for both backends: an input may be null only where its comment gives null a meaning
// (zeros, no bias, every sequence full length); an output may be null where its comment says
// "null = not needed", and is then neither written nor computed for its own sake. Every other
// pointer the call uses must be valid (w_hr and dw_hr are used only with P > 0; c0, cy, dcy and
// dc0 only for cells with a cell state).
// The weights of a layer as its steps read them (packed), kept for several calls of that layer
// over pieces of one sequence (ForwardArgs::plan_T; layer_forward_stack): the first call
// given an empty cache packs the weights into it, the later ones read them from it. Owned by
// the caller, who must give it only to calls of the same weights and sizes; a call whose
// packing differs from the one kept (another plan of what is packed, element type or
// instruction set: `layout` says which) packs its own and leaves the cache as it is. Its blocks
// are freed with it.
class PackedWeightsCache {
 public:
  PackedWeightsCache() = default;
  PackedWeightsCache(const PackedWeightsCache&) = delete;
  PackedWeightsCache& operator=(const PackedWeightsCache&) = delete;
  ~PackedWeightsCache();
  bool filled = false;
  unsigned layout = 0;             // the packing kept (the CPU driver's key of it)
  void* block[3] = {};             // the CPU driver's packed W_hh, W_ih and W_hr (or null)
  bool from_scratch[3] = {};       // freed with scratch_free (else std::free)
};

template <class Real>
struct ForwardArgs {
  Cell cell = Cell::LSTM;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  const Real* x = nullptr;          // [T, B, I]  read
  const Real* h0 = nullptr;         // [B, S]     read; null = zeros
  const Real* c0 = nullptr;         // [B, H]     read (cells with a cell state); null = zeros
  const Real* w_ih = nullptr;       // [G*H, I]   read
  const Real* w_hh = nullptr;       // [G*H, S]   read
  const Real* b_ih = nullptr;       // [G*H]      read; null = no bias
  const Real* b_hh = nullptr;       // [G*H]      read; null = no bias
  const Real* w_hr = nullptr;       // [P, H]     read (P > 0)
  // The cell's own parameters (cell_info(cell).param_names, in that order; kLayerParams gives
  // their shapes), e.g. the peephole weights [H] each, the layer-norm gains [G*H]; read.
  const Real* cell_w[kMaxCellParams] = {};
  const int64_t* lengths = nullptr;  // [B] read; null = every sequence has length T.
                                     // Steps t >= lengths[b] leave row b's state unchanged
                                     // and write zeros to y[t, b].
  bool reverse = false;          // process t = T-1 .. 0
  // Packed layout (PackedSequence.data order; CPU kernels only, the CUDA ones reject it):
  // x, y and ws hold only the active (t, b), time-major: N = sum(lengths) rows, row
  // offset(t) + b for b < n(t), where n(t) = #{b : lengths[b] > t} and
  // offset(t) = n(0) + ... + n(t-1).
  // Needs lengths, non-increasing. Shapes below then read [N, ...] for [T, B, ...].
  bool packed = false;
  // Zoneout (Krueger et al. 2017) of state k (0: h [.., S], 1: c [.., H], cells with a cell
  // state): after the cell's update s~_t, an active row keeps
  //   s_t = m * s_{t-1} + (1 - m) * s~_t
  // with m = zoneout[k][t, b, j] (a mask, 1 = keep the previous value, in y's row layout:
  // [T, B, S_k], or [N, S_k] packed) or, where zoneout[k] is null, m = zoneout_p[k] (eval's
  // expectation; 0 = no zoneout). The output y_t is the zoned h_t. The cell's own math (its
  // saved activations, h_t of the projection input) uses s~_t.
  const Real* zoneout[2] = {};
  double zoneout_p[2] = {};
  Real* y = nullptr;                // [T, B, S]  written
  Real* hy = nullptr;               // [B, S]     written; null = not needed
  Real* cy = nullptr;               // [B, H]     written (cells with a cell state); null = not
                                    //            needed
  Real* ws = nullptr;               // [T, B, WS] written, for the backward pass; null = not
                                    //            needed (inference: nothing saved)
  // A call over a piece of a longer sequence (steps [t0, t0 + T) of plan_T; CPU kernels only;
  // the stacked schedule runs a layer in such pieces, layer_forward_stack): the choices its
  // plan makes from the number of steps are those of a call over plan_T steps. (Its other
  // choices still follow its own rows and thread count; the stacked schedule checks that each
  // piece's plan computes as the whole call's would.) 0 = T.
  int64_t plan_T = 0;
  // (With packed input a piece counts its own rows, so a long packed sequence's pieces may plan
  // otherwise than the whole; layer_forward_stack then falls back.)
  // x W_ih^T of the call's input rows, computed by the caller (project_input), no bias, in the
  // layout the call's plan gives its input projection: [T * B, G*H], or the active (t, b) only
  // where the plan compacts rows ([N, G*H] packed); read, and overwritten by the steps. Only for
  // a plan whose input projection is one GEMM (neither weights_in_place nor input_in_steps;
  // otherwise ignored). Null = the call computes it.
  Real* gx = nullptr;
  // The packed weights kept across the pieces of one layer (see PackedWeightsCache); null =
  // the call packs its own.
  PackedWeightsCache* packed_weights = nullptr;
};

template <class Real>
struct BackwardArgs {
  Cell cell = Cell::LSTM;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  const Real* x = nullptr;          // [T, B, I]  read
  const Real* w_ih = nullptr;       // [G*H, I]   read
  const Real* w_hh = nullptr;       // [G*H, S]   read
  const Real* w_hr = nullptr;       // [P, H]     read (P > 0)
  const Real* cell_w[kMaxCellParams] = {};  // as in ForwardArgs; read
  const int64_t* lengths = nullptr;  // [B] read; as in ForwardArgs
  bool reverse = false;
  bool packed = false;              // as in ForwardArgs: x, ws, dy, dx are [N, ...]
  const Real* zoneout[2] = {};      // as in ForwardArgs, the same as the forward call's
  double zoneout_p[2] = {};
  const Real* ws = nullptr;         // [T, B, WS] read (written by the forward pass)
  const Real* dy = nullptr;         // [T, B, S]  read; null = zeros
  const Real* dhy = nullptr;        // [B, S]     read; null = zeros
  const Real* dcy = nullptr;        // [B, H]     read (cells with a cell state); null = zeros
  Real* dx = nullptr;               // [T, B, I]  written; null = not needed
  Real* dh0 = nullptr;              // [B, S]     written; null = not needed
  Real* dc0 = nullptr;              // [B, H]     written (cells with a cell state); null = not
                                    //            needed
  Real* dw_ih = nullptr;            // [G*H, I]   written; null = not needed
  Real* dw_hh = nullptr;            // [G*H, S]   written; null = not needed
  Real* db_ih = nullptr;            // [G*H]      written; null = not needed
  Real* db_hh = nullptr;            // [G*H]      written; null = not needed
  Real* dw_hr = nullptr;            // [P, H]     written (P > 0); null = not needed
  Real* dcell_w[kMaxCellParams] = {};  // the gradients of cell_w, each of its shape; written;
                                       // null = not needed
};

// Whether state k of a call (ForwardArgs or BackwardArgs) has zoneout: a mask or a nonzero
// probability.
template <class Args>
constexpr bool zoneout_on(const Args& a, int k) {
  return a.zoneout[k] != nullptr || a.zoneout_p[k] != 0;
}

// The strategy of one CPU layer call: decided once per call from the shapes, the lengths and
// the thread count, before any work, by the active instruction set's planner (its register
// tile width enters), and then followed by the driver's phases (input projection, step loop,
// weight gradients).
struct LayerPlan {
  bool parallel = false;          // the step loop runs on a team of threads
  bool weights_in_place = false;  // few steps: the step GEMMs read the weight rows in place
                                  // (dot products), nothing is packed
  bool input_in_steps = false;    // forward: each step computes its units' x_t W_ih^T from W_ih
                                  // packed like W_hh, instead of one GEMM for all steps
  bool compact_rows = false;      // only the active (t, b) get rows in the whole-sequence
                                  // GEMMs (input projection; weight gradients)
  bool packed_panel = false;      // the step GEMM reads its left operand (h_{t-1} forward, the
                                  // gate gradients backward) from a packed panel
  bool stream_workspace = false;  // forward: workspace written with non-temporal stores
  bool row_split = false;         // each thread owns whole rows of the batch for the
                                  // whole call (one row block per thread), so the steps need
                                  // no barrier: rows never exchange data
  int64_t block_rows = 0;         // batch rows per row block of a step
  int64_t row_blocks = 0;
  int64_t strip_width = 0;        // hidden units per step task (the GEMM's register tile width)
};
// One line, "field=value ..." (for tests and debugging).
std::string to_string(const LayerPlan& plan);

LayerPlan plan_forward(const ForwardArgs<float>& a, int threads);
LayerPlan plan_forward(const ForwardArgs<double>& a, int threads);
LayerPlan plan_backward(const BackwardArgs<float>& a, int threads);
LayerPlan plan_backward(const BackwardArgs<double>& a, int threads);

// Entry points. They check nothing: the caller validates shapes.
void layer_forward(const ForwardArgs<float>& a, const Executor& ex);
void layer_forward(const ForwardArgs<double>& a, const Executor& ex);
void layer_backward(const BackwardArgs<float>& a, const Executor& ex);
void layer_backward(const BackwardArgs<double>& a, const Executor& ex);

// A bidirectional layer: its two directions, two calls over the same input (a forward, b
// reverse) that share nothing they write. The pair schedule runs them at the same time, one
// thread each and each call serial, so a step needs no barrier and no exchange between cores;
// otherwise they run one after the other, each on every thread. Their results are the same
// bits either way, because a call's results do not depend on its thread count.
// pair_concurrent says which schedule a pair gets on `threads` threads when each direction's
// W_hh takes up to `w_hh_bytes` bytes: the concurrent one on exactly 2 threads (the count it
// was measured at) and while W_hh is at most twice this CPU's L2 (cpu_l2_cache_bytes): each
// core then reads its direction's whole W_hh every step, where the one-after-the-other
// schedule's threads read half of one each. Measured on an AVX2 Zen 3 with 512 KB of L2 per
// core (bench/results/pair-2026-12-01.md): W_hh of 64 KB and 1 MB ran faster concurrently,
// 4 MB and 16 MB slower.
bool pair_concurrent(int threads, int64_t w_hh_bytes);
void layer_forward_pair(const ForwardArgs<float>& a, const ForwardArgs<float>& b,
                        const Executor& ex);
void layer_forward_pair(const ForwardArgs<double>& a, const ForwardArgs<double>& b,
                        const Executor& ex);
// The backward of a pair: a.dx and b.dx must be equal, the input's gradient (written: the sum
// of the two calls' input gradients, each computed whole and then added) or both null.
void layer_backward_pair(const BackwardArgs<float>& a, const BackwardArgs<float>& b,
                         const Executor& ex);
void layer_backward_pair(const BackwardArgs<double>& a, const BackwardArgs<double>& b,
                         const Executor& ex);

// Two stacked layers of one direction (a lower, b upper: b.x == a.y, b.I == a's S), forward
// (CPU, not reversed). The stacked schedule runs them as a wavefront on a team of two: one
// thread steps the lower layer through the sequence in pieces of a few steps while the other
// steps the upper layer one piece behind, each piece a serial call (plan_T above); the upper
// layer's input projection of a piece is split between the two. No barrier per step, no
// exchange of h between the cores; one hand-over per piece. Otherwise (stack_concurrent
// false, or plans the pieces cannot follow) the layers run one after the other on every
// thread. The results are the same bits either way.
// stack_concurrent: whether the stacked schedule is worth taking on `threads` threads for
// layers whose W_hh take up to `w_hh_bytes` each, over T steps of B rows (exactly 2 threads, and
// the sizes measured to gain: bench/results/stack-2026-12-02.md). Where it is, the schedule
// still needs pieces whose plans compute as the whole calls' would (else it falls back).
// stack_wavefronts: how many calls have taken the stacked schedule so far (for tests).
inline constexpr int64_t kStackMinSteps = 8;
bool stack_concurrent(int threads, int64_t w_hh_bytes, int64_t T, int64_t B);
int64_t stack_wavefronts();
// Whether layer_forward_stack(a, b) on `threads` threads takes the stacked schedule.
bool stack_schedule(const ForwardArgs<float>& a, const ForwardArgs<float>& b, int threads);
bool stack_schedule(const ForwardArgs<double>& a, const ForwardArgs<double>& b, int threads);
void layer_forward_stack(const ForwardArgs<float>& a, const ForwardArgs<float>& b,
                         const Executor& ex);
void layer_forward_stack(const ForwardArgs<double>& a, const ForwardArgs<double>& b,
                         const Executor& ex);
// gx[rows, N] = x[rows, K] w[N, K]^T with the GEMM a forward's phase 1 uses for its input
// projection of more than 8 rows (for fewer, phase 1 takes dot products; this always runs the
// GEMM), each row the same bits whatever the rows around it.
void project_input(const float* x, int64_t rows, int64_t K, const float* w, int64_t N, float* gx,
                   const Executor& ex);
void project_input(const double* x, int64_t rows, int64_t K, const double* w, int64_t N,
                   double* gx, const Executor& ex);

// The instruction set the entry points use. Chosen once: the best the CPU
// supports among the verified ones, or the one named by the environment
// variable RNNFAST_SIMD (scalar | avx2 | avx512) if the CPU supports it.
Isa active_isa();
const char* isa_name(Isa isa);
bool cpu_supports(Isa isa);
// Forces an instruction set (for tests); returns false if the CPU lacks it.
bool set_isa(Isa isa);
// The per-core L2 cache of this CPU in bytes, as the OS reports it (sysconf), or 512 KB when it
// does not say (the smallest of the CPUs this project targets: AMD Zen 1-3). Read once.
int64_t cpu_l2_cache_bytes();
// The row-by-row path of GEMMs of few k steps (the weight gradients of a call of a few rows; see
// gemm_impl.h, kFewK). On by default; off, those GEMMs take the blocked path of register tiles.
// Every output is the same sum in the same order on both, so the switch is for tests that
// compare them bit for bit, and for A/B timing (RNNFAST_GEMM_ROWS=0 starts with it off).
bool gemm_rows_enabled();
void set_gemm_rows(bool on);

// Host memory blocks of 64 KB and up kept for reuse: the CPU kernels take their scratch
// buffers from here, and the glue the saved workspace. A block given back is kept for the
// next request (up to 256 MB in all), so that calls after the first take no page faults.
// Blocks below 2 MB come in power-of-two sizes; from 2 MB they are 2 MB multiples, 2 MB-aligned
// and advised to use huge pages. Smaller requests are better served by malloc (its free lists
// keep them without returning them to the system).
inline constexpr size_t kScratchMinBytes = size_t(64) << 10;
inline constexpr size_t kScratchHugeBytes = size_t(2) << 20;
// A block of at least `bytes` (64-byte aligned; 4 KB-aligned, or 2 MB from 2 MB, while the
// cache is on). Its contents are undefined (NaN in the debug mode below).
void* scratch_alloc(size_t bytes);
// Gives a block from scratch_alloc back (the cache knows its size).
void scratch_free(void* p);
// The bytes kept now, and a way to free them.
size_t scratch_cached_bytes();
void release_scratch();
// Whether freed blocks are kept. On by default; off by default under AddressSanitizer (every
// block is then exact-sized and freed at once). RNNFAST_SCRATCH_CACHE=1 or =0, read once,
// overrides the default; set_scratch_cache changes it at run time (for tests; turning it off
// frees the kept blocks). With the cache on under ASan, a kept block is poisoned, and a
// block handed out for fewer bytes than its size has its tail poisoned, so that an access
// past the request or to a block after its free is still reported.
bool scratch_cache_enabled();
void set_scratch_cache(bool on);

// Debug mode for kernels that rely on scratch memory they never initialise: with the
// environment variable RNNFAST_DEBUG_NAN_SCRATCH=1 (read once, at the first kernel call),
// every scratch block a kernel gets (scratch_alloc, reused or new, and the kernels' smaller
// buffers) is filled with 0xFF bytes, a NaN in float and in double, so that any read of a
// value the call did not write poisons its results. Off by default (it costs a fill per block).
bool debug_nan_scratch();
// Fills [p, p + bytes) with 0xFF bytes if the debug mode is on.
void debug_fill_nan(void* p, size_t bytes);

}  // namespace core
}  // namespace rnnfast
