// The layer driver shared by every cell: input projection for all steps in one
// GEMM, then the time loop (recurrent GEMM + fused pointwise per step), and for
// backward the reverse loop followed by the weight-gradient GEMMs.
//
// Per step, one parallel region: task (row block, strip of NR hidden units)
// computes the recurrent GEMM for its units' G gates (W_hh is packed once per
// call in gate-blocked strips, so a task's gates are contiguous) and then the
// cell's pointwise epilogue on those units, so gates never leave the task.
// Layer-normalised cells split the region at each reduction over a whole row (the
// moments of the GEMMs' outputs; the LSTM's c_t; backward, the normalisations'
// gradient sums): every task does its strip's part, the team meets at a barrier,
// and every task merges the parts it needs in strip order, on the same units.
// With the row split (LayerPlan::row_split, small and mid-size batches) each thread owns one
// row block with all its strips, and the barriers go: rows never exchange data.
// Included inside namespace rnnfast::core::<isa>.

// Applies f(V-type tag, j) to units [j0, j1): full vectors, then a scalar tail.
template <class Real, class F>
inline void for_units(int64_t j0, int64_t j1, F&& f) {
  using V = Vec<Real>;
  int64_t j = j0;
  for (; j + V::W <= j1; j += V::W) f(V(), j);
  for (; j < j1; ++j) f(ScalarVec<Real>(), j);
}

template <class Real>
inline void copy_n(const Real* src, int64_t n, Real* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}
template <class Real>
inline void fill_n(Real* dst, int64_t n, Real v) {
  for (int64_t i = 0; i < n; ++i) dst[i] = v;
}

// Row blocks of a time step's tasks. Up to 128 rows stay in one block, so the tasks
// of a step split the hidden units (each thread keeps its slice of W_hh hot in its
// own cache, step after step); larger batches split into equal blocks.
inline int64_t step_row_blocks(int64_t B) { return B <= 128 ? 1 : ceil_div(B, 128); }

// Rows of each row block (a multiple of MR) for a step over B rows.
inline int64_t step_block_rows(int64_t B) {
  return imax(MR, ceil_div(ceil_div(B, step_row_blocks(B)), MR) * MR);
}

// Asks for the cache lines of p[0 .. n) into L2 (locality hint 1): the steps ask for
// what the next step reads, a whole step ahead, too early for L1.
template <class Real>
inline void prefetch_units(const Real* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(Real)); off += 64)
    __builtin_prefetch(c + off, 0, 1);
}

// dst[0, n) = src[0, n), into the workspace of a forward step (see FwdStep::stream_ws).
template <class Real>
inline void save_units(const FwdStep<Real>& st, const Real* src, int64_t n, Real* dst) {
  for_units<Real>(0, n, [&](auto v, int64_t j) {
    using V = decltype(v);
    save_value(st, V::load(src + j), dst + j);
  });
}

inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Rows whose recurrent GEMM a step needs. With non-increasing lengths (the order
// of a PackedSequence) the active rows at step t are the prefix [0, n(t)), and the
// GEMMs skip the rest; otherwise (or without lengths) every row: n(t) = B. In the
// prefix case the active (t, b) also pack densely, time-major: row offset(t) + b of
// an [total(), ...] matrix, which is how the input projection is stored.
class ActivePrefix {
 public:
  ActivePrefix(const int64_t* lengths, int64_t B, int64_t T) : n_(T > 0 ? T : 1), off_(T + 1) {
    prefix_ = lengths != nullptr;
    for (int64_t b = 1; prefix_ && b < B; ++b) prefix_ = lengths[b] <= lengths[b - 1];
    int64_t n = B;  // non-increasing in t
    off_.get()[0] = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (prefix_)
        while (n > 0 && lengths[n - 1] <= t) --n;
      n_.get()[t] = n;
      off_.get()[t + 1] = off_.get()[t] + n;
    }
  }
  int64_t operator[](int64_t t) const { return n_.get()[t]; }
  // Whether the lengths are non-increasing, so that the active rows of each step are a prefix.
  bool prefix() const { return prefix_; }
  int64_t offset(int64_t t) const { return off_.get()[t]; }
  int64_t total(int64_t T) const { return off_.get()[T]; }

 private:
  Buffer<int64_t> n_, off_;
  bool prefix_ = false;
};

// The active (t, b) of a [T, B] grid of rows, for lengths in any order: row k of a dense
// matrix of them is grid row at(k) = t * B + b, time-major, and step t's rows start at
// offset(t). With non-increasing lengths this is ActivePrefix's dense layout.
class ActiveRows {
 public:
  ActiveRows(const int64_t* lengths, int64_t B, int64_t T) : off_(T + 1) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) n += row_active(lengths, b, t);
    rows_.reset(n);
    int64_t k = 0;
    for (int64_t t = 0; t < T; ++t) {
      off_.get()[t] = k;
      for (int64_t b = 0; b < B; ++b)
        if (row_active(lengths, b, t)) rows_.get()[k++] = t * B + b;
    }
    off_.get()[T] = k;
    count_ = k;
  }
  int64_t count() const { return count_; }
  int64_t at(int64_t k) const { return rows_.get()[k]; }
  int64_t offset(int64_t t) const { return off_.get()[t]; }
  // Copies the active rows of src (grid row r at src + r * ld, cols wide) into the dense
  // [count(), cols] matrix dst.
  template <class Real>
  void gather(const Executor& ex, const Real* src, int64_t ld, int64_t cols, Real* dst) const {
    parallel_for(ex, count_, count_ * cols > 65536, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) copy_n(src + at(k) * ld, cols, dst + k * cols);
    });
  }

 private:
  Buffer<int64_t> rows_, off_;
  int64_t count_ = 0;
};

// The number of active (t, b) of a call (T * B without lengths), and whether the lengths are
// non-increasing (so that each step's active rows are a prefix of the batch).
struct LengthsSummary {
  int64_t active;
  bool prefix;
};
inline LengthsSummary summarize_lengths(const int64_t* lengths, int64_t B, int64_t T) {
  if (!lengths) return {T * B, false};
  LengthsSummary r{0, true};
  for (int64_t b = 0; b < B; ++b) {
    r.active += imin(imax(lengths[b], 0), T);
    if (b > 0 && lengths[b] > lengths[b - 1]) r.prefix = false;
  }
  return r;
}

// Layer normalisation (cells.h: layer_norm) reduces over all units of a row, which the tasks
// of a step split into strips: each task keeps the mean and squared deviations of its strip's
// values per row, and after the step's barrier every task merges them (in strip order, so the
// result does not depend on the thread count) by the parallel-variance formula, which has no
// E[v^2] - E[v]^2 cancellation.
template <class Real>
struct Moments {
  Real mean = 0, m2 = 0, n = 0;  // mean, sum of squared deviations, count
  Real rstd() const { return Real(1) / std::sqrt(m2 / n + Real(kLayerNormEps)); }
};

// The sum of f(V-type tag, n) over the columns n = k * H + j of gate blocks k < G and units j in
// [j0, j1) (a task's strip of a row), in vector accumulators: f returns a vector (or, for the
// scalar tail, a ScalarVec) of the terms at n.
template <class Real, class F>
inline Real strip_reduce(int64_t H, int64_t G, int64_t j0, int64_t j1, F&& f) {
  using V = Vec<Real>;
  V acc = V::zero();
  Real tail = 0;
  for (int64_t k = 0; k < G; ++k)
    for_units<Real>(k * H + j0, k * H + j1, [&](auto v, int64_t n) {
      using U = decltype(v);
      if constexpr (U::W == 1) tail += f(v, n).v;
      else acc = acc + f(v, n);
    });
  return acc.hsum() + tail;
}

// The mean and squared deviations of p[k * H + j] for gate blocks k < G and units j in [j0, j1):
// out[0] = mean, out[1] = m2 (two passes over the strip, which is in cache).
template <class Real>
inline void strip_moments(const Real* p, int64_t H, int64_t G, int64_t j0, int64_t j1,
                          Real* out) {
  const Real mean = strip_reduce<Real>(H, G, j0, j1, [&](auto v, int64_t n) {
                      return decltype(v)::load(p + n);
                    }) / Real(G * (j1 - j0));
  out[0] = mean;
  out[1] = strip_reduce<Real>(H, G, j0, j1, [&](auto v, int64_t n) {
    using U = decltype(v);
    const U d = U::load(p + n) - U::set1(mean);
    return d * d;
  });
}

// Merges the per-strip moments of one row: parts[s * stride + off + {0, 1}] (mean, squared
// deviations) for strips s < strips, each over G values per hidden unit of strip s (NR wide,
// the last one to H): the mean of the means weighted by their counts, then
// m2 = sum of (m2_s + n_s (mean_s - mean)^2). No division per strip (every task merges every
// row of its block).
template <class Real>
inline Moments<Real> merge_strips(const Real* parts, int64_t strips, int64_t stride,
                                  int64_t off, int64_t H, int64_t G, int64_t NR) {
  Moments<Real> m;
  const Real n_full = Real(G * NR);
  const int64_t last = strips - 1;
  const Real n_last = Real(G * (H - last * NR));
  Real weighted = 0;
  for (int64_t s = 0; s < strips; ++s)
    weighted += (s == last ? n_last : n_full) * parts[s * stride + off];
  m.n = Real(G * H);
  m.mean = weighted / m.n;
  for (int64_t s = 0; s < strips; ++s) {
    const Real d = parts[s * stride + off] - m.mean;
    m.m2 += parts[s * stride + off + 1] + (s == last ? n_last : n_full) * d * d;
  }
  return m;
}

// Task `task` of a step's (row block, strip) tasks over `width` units (strips of NR) and B
// rows in blocks of block_rows, at a step with `active` active rows (a prefix, or all).
struct StepTask {
  int64_t s, r0, r1, ra, j0, j1;  // strip; rows [r0, r1), of them [r0, ra) active; units
};
inline StepTask step_task(int64_t task, int64_t strips, int64_t block_rows, int64_t B,
                          int64_t width, int64_t NR, int64_t active) {
  StepTask k;
  k.s = task % strips;
  k.r0 = (task / strips) * block_rows;
  k.r1 = imin(B, k.r0 + block_rows);
  k.ra = imin(k.r1, active);
  k.j0 = k.s * NR;
  k.j1 = imin(width, k.j0 + NR);
  return k;
}

// out[i] = the sum over strips q < strips of parts[q * n + i], for i < n (in strip order).
template <class Real>
inline void sum_strips(const Real* parts, int64_t strips, int n, Real* out) {
  for (int i = 0; i < n; ++i) out[i] = 0;
  for (int64_t q = 0; q < strips; ++q)
    for (int i = 0; i < n; ++i) out[i] += parts[q * n + i];
}

// out[n] = the sum over rows r < rows of m[r * ld + n], for n < cols (in row order).
template <class Real>
inline void sum_rows(const Real* m, int64_t rows, int64_t cols, int64_t ld, Real* out) {
  fill_n(out, cols, Real(0));
  for (int64_t r = 0; r < rows; ++r)
    for_units<Real>(0, cols, [&](auto v, int64_t n) {
      using V = decltype(v);
      (V::load(out + n) + V::load(m + r * ld + n)).store(out + n);
    });
}

// Row split (LayerPlan::row_split): the rows of an RNN never exchange data, so when each
// thread owns whole rows (one row block per thread, every strip of it), a step needs no
// barrier. The (row block, strip) split of the other plans meets the team at the end of every
// step (and at each reduction of layer normalisation), which at small sizes costs a large
// share of the step. The price: every thread streams all of W_hh each step instead of its
// strips, and its register tiles get fewer rows. Measured, 2 threads, the row split's time over
// the strip split's (bench/row_split_ab.py, bench/results/row-split-2026-12-01.md; Intel Xeon
// with 2 MB of L2 per core, AVX-512 and AVX2 paths): from 4 rows per thread with W_hh up to
// 256 KB (H = 128 LSTM) inference 0.74-0.96, training (the backward step loses 1-3 barriers) 0.68-0.92; with W_hh of
// 1 MB (H = 256) 0.93-1.07 from 8 rows per thread, 1.00-1.07 at 4 rows on AVX-512; at 2 rows
// per thread up to 1.17. The 1 MB tier is taken only where W_hh fits in half of a core's L2:
// on CPUs with less L2 (AMD Zen: 512 KB-1 MB) it would stream from L3 every step, unmeasured.
// With sorted lengths (a PackedSequence) the first rows are the longest, so the blocks' work
// differs. With lengths drawn from [T/4, T] (the busiest block about 1.3x the average) the row
// split still measured 0.82-0.96 with W_hh up to 256 KB, but 1.04-1.11 for GRU 100,16,256,256
// (768 KB; LSTM there 0.91): it is taken while the busiest block has at most 1.5x the average
// work with W_hh up to 256 KB, 1.125x above (a batch of a few long and many short sequences
// goes to the strip split, which shares each step's rows whatever their lengths).
// A layer-normalised step meets the team three times each way under the strip split (the
// moments of both products, then those of the normalised output), so in training (forward
// saving the workspace, and backward) these cells take the row split from 2 rows per thread,
// with W_hh up to 256 KB: measured training 0.72-0.84 at 200,4,128,128 and 50,4,64,64 (LSTM and
// GRU, both paths) but LSTM 200,4,128,128 on AVX2 1.05; inference there 0.85-1.33, so
// inference keeps the rule above.
constexpr int64_t kRowSplitMinRows = 4;
constexpr int64_t kRowSplitMinRowsLnTraining = 2;
constexpr int64_t kRowSplitMaxRows = 128;  // (one row block of the other schedule)
constexpr int64_t kRowSplitSmallWeights = int64_t(256) << 10;  // from kRowSplitMinRows rows
constexpr int64_t kRowSplitMaxWeights = int64_t(1) << 20;      // from 8 rows per thread

// Sets p.row_split (and the row blocks: one per thread) for B rows over T steps with `lengths`
// (null: all T), a W_hh of weight_bytes and `threads` threads, forward and backward alike;
// ln_training: a layer-normalised cell's training call (see kRowSplitMinRowsLnTraining).
// RNNFAST_ROW_SPLIT=0 or 1 overrides the sizes' choice (for A/B runs: bench/row_split_ab.py; 1
// still needs at least one row per thread).
inline void choose_row_split(LayerPlan& p, int64_t B, int64_t T, const int64_t* lengths,
                             int64_t weight_bytes, int threads, bool ln_training) {
  const int64_t nth = imax(1, threads);
  const int64_t rows = ceil_div(B, nth);
  const bool possible = p.parallel && nth > 1 && !p.weights_in_place && B <= kRowSplitMaxRows &&
                        ceil_div(B, rows) == nth;
  const int64_t max_weights = imin(kRowSplitMaxWeights, cpu_l2_cache_bytes() / 2);
  const int64_t min_rows = ln_training ? kRowSplitMinRowsLnTraining : kRowSplitMinRows;
  bool want = rows >= min_rows &&
              (weight_bytes <= kRowSplitSmallWeights ||
               (rows >= 8 && weight_bytes <= max_weights));
  // The steps compute only the active prefix of sorted lengths; with lengths in any other
  // order every row takes part in every step's GEMM, and the blocks' work is equal.
  if (want && possible && lengths && summarize_lengths(lengths, B, T).prefix) {
    int64_t total = 0, busiest = 0;
    for (int64_t r0 = 0; r0 < B; r0 += rows) {
      int64_t work = 0;
      for (int64_t b = r0; b < imin(B, r0 + rows); ++b) work += imin(imax(lengths[b], 0), T);
      total += work;
      busiest = imax(busiest, work);
    }
    want = weight_bytes <= kRowSplitSmallWeights ? busiest * nth * 2 <= total * 3
                                                  : busiest * nth * 8 <= total * 9;
  }
  if (!possible) return;  // (no environment lookup on the cells' one-step calls)
  if (const char* force = std::getenv("RNNFAST_ROW_SPLIT"))
    if (force[0] == '0' || force[0] == '1') want = force[0] == '1';
  p.row_split = want;
  if (p.row_split) {
    p.block_rows = rows;
    p.row_blocks = nth;
  }
}

// One thread's view of the phases of a step (over tasks (row block, strip)) under a plan: its
// tasks of a phase over `strips` strips, and the barrier that ends a phase. With the row split
// a thread's tasks are every strip of its own row blocks (whatever the team's size), and no
// phase waits for another thread.
struct PhaseTeam {
  const TeamSlot& slot;
  bool row_split;
  int64_t row_blocks;
  void share(int64_t strips, int64_t* b, int64_t* e) const {
    if (row_split) {
      slot.share(row_blocks, b, e);
      *b *= strips, *e *= strips;
    } else {
      slot.share(row_blocks * strips, b, e);
    }
  }
  void sync() const {
    if (!row_split) slot.sync();
  }
};

// The forward strategy (rnn.h: LayerPlan).
template <class Real>
LayerPlan make_forward_plan(const ForwardArgs<Real>& a, int threads) {
  const CellInfo& cell = cell_info(a.cell);
  // (a piece of a longer sequence plans as the whole: ForwardArgs::plan_T)
  const int64_t T = a.plan_T > 0 ? a.plan_T : a.T, B = a.B, I = a.I, H = a.H, P = a.P;
  const int64_t S = P > 0 ? P : H, GH = cell.gates * H, WS = cell.workspace_cols(H, P);
  const int64_t bytes = sizeof(Real);
  LayerPlan p;
  p.strip_width = kNR<Real>;
  p.block_rows = step_block_rows(B);
  p.row_blocks = ceil_div(B, p.block_rows);
  p.parallel = B * GH * S > 16384;
  // With non-increasing lengths only the active (t, b) get an input projection, stored
  // densely (row offset(t) + b, see ActivePrefix). A packed input already is that matrix.
  const LengthsSummary lengths = summarize_lengths(a.lengths, B, T);
  p.compact_rows = a.packed || (lengths.prefix && lengths.active < T * B);
  const int64_t rows = p.compact_rows ? lengths.active : T * B;
  // The input projection x W_ih^T is one GEMM over every step, except in two cases where
  // each step computes its task's columns of it, into a one-step buffer:
  // - weights_in_place: calls of a few steps take dot products with the rows of the weights
  //   in place (packing them would cost more than it saves: a cell stepped from Python is a
  //   call of one step, which reads each weight once per row); both weight matrices are
  //   then split between the threads. Not for larger batches with short rows (I or S under
  //   4 vectors), where a dot product is mostly its horizontal sum, and the packed GEMM's
  //   register tiles win, nor from IsaTraits::kInPlaceMaxRows rows (AVX2: 64), where the
  //   dot blocks read each weight row once per few rows of the batch and the GEMM's packed
  //   strips are read fewer times;
  // - input_in_steps: long sequences of a small batch whose input projection would not stay
  //   in cache, while both weight matrices fit in the threads' L2 together: each step reads
  //   its thread's share of W_ih (packed like W_hh) from L2 instead of reading the
  //   projection back from memory (which it was also first written to).
  p.weights_in_place =
      T <= 3 && (B <= 8 || (imin(I, S) >= 4 * Vec<Real>::W && B < IsaTraits::kInPlaceMaxRows));
  p.input_in_steps = !p.weights_in_place && B <= 16 && B >= 2 &&
                     (I + S) * GH * bytes <= imax(1, threads) * (768 << 10) &&
                     rows * GH * bytes > (4 << 20);
  // The recurrent GEMM reads h_{t-1} in A-panel layout (see pack_a), each thread packing
  // its own copy at the start of the step from the rows the previous step wrote (scattering
  // h_t into a shared panel as it was produced would cost a cross-core ownership request per
  // store). For 4 rows or fewer it reads the rows of h in place: a panel would be mostly
  // padding, read with a stride of MR.
  p.packed_panel = !p.weights_in_place && B > 4;
  // Non-temporal workspace stores, for a workspace too large to stay in cache until the
  // backward pass reads it (a smaller one is better read back from cache). They need every
  // vector of it aligned: a 64-byte aligned base (the glue's allocators give that) and
  // widths that keep each row and block aligned. Only with vectors that fill a cache line
  // (AVX-512): a narrower store (AVX2, scalar) fills part of a line, and the epilogue writes
  // one vector of each of the row's H-wide blocks before the next vector of the first, so
  // every block is a partly written line waiting in a write-combining buffer. Measured:
  // - Intel Xeon (family 6, model 207), AVX2, GRU with layer normalisation (11 blocks)
  //   100,32,128,128: training forward 27 ms streamed, against 5.4 ms for the plain GRU
  //   (lines flushed half-full);
  // - AMD Zen 3, AVX2 (bench/results/stream-2026-12-02.md): a training step (forward and
  //   backward) of the plain LSTM (7 blocks) took 2.6-5.6% longer streamed at every size
  //   tried; GRU and RNN within 2.5% either way.
  // RNNFAST_STREAM_WS=0 turns the streaming off where it would be on (A/B runs only).
  const int64_t W = Vec<Real>::W;
  p.stream_workspace = a.ws && W * bytes >= 64 && rows * WS * bytes > (8 << 20) &&
                       reinterpret_cast<uintptr_t>(a.ws) % (W * bytes) == 0 && H % W == 0 &&
                       WS % W == 0;
  if (p.stream_workspace) p.stream_workspace = env_flag("RNNFAST_STREAM_WS", true);
  choose_row_split(p, B, T, a.lengths, GH * S * bytes, threads, cell.layer_norm() && a.ws);
  return p;
}

// The backward strategy (rnn.h: LayerPlan).
template <class Real>
LayerPlan make_backward_plan(const BackwardArgs<Real>& a, int threads) {
  const CellInfo& cell = cell_info(a.cell);
  const int64_t T = a.T, B = a.B, H = a.H, P = a.P;
  const int64_t S = P > 0 ? P : H, GH = cell.gates * H;
  LayerPlan p;
  p.strip_width = kNR<Real>;
  p.block_rows = step_block_rows(B);
  p.row_blocks = ceil_div(B, p.block_rows);
  p.parallel = B * GH * S > 16384;
  // W_hh and W_hr are packed once per call (each strip contiguous, used every step); a call
  // of a few steps reads them in place instead.
  p.weights_in_place = T <= 3;
  // The step GEMM dh_{t-1} = dG_t W_hh reads dG from a panel the previous step packed (for 4
  // rows or fewer, from the rows of dG in place, as forward does with h).
  p.packed_panel = B > 4;
  // The whole-sequence GEMMs (dx, dW_ih, dW_hh, dW_hr) run over the active (t, b) only.
  // Inactive ones have zero gate gradients, but their rows of x (the padding) may hold
  // anything: a NaN or Inf there, times a zero gate gradient, would still make dW_ih NaN. So
  // whenever the lengths leave some (t, b) inactive, the active rows are gathered densely
  // first. A packed call's rows already are.
  p.compact_rows = a.packed || summarize_lengths(a.lengths, B, T).active < T * B;
  choose_row_split(p, B, T, a.lengths, GH * S * int64_t(sizeof(Real)), threads,
                   cell.layer_norm());
  return p;
}

// Whether gate k of a cell keeps its recurrent product apart from the x side (cell_math.h).
template <class Math>
constexpr bool apart_gate(int64_t k) {
  return (Math::kApartGates >> k) & 1u;
}

// Forward phase 1, the input projection: gx[row] = x[row] W_ih^T for the rows of every step
// (all of them, or the active ones when the plan compacts rows: row active.offset(t) + b), in
// one GEMM; nothing when the plan has the steps compute it. Returns the input rows (gathered
// densely when compact), which the steps read when they compute it.
template <class Real>
const Real* input_projection(const ForwardArgs<Real>& a, const LayerPlan& plan,
                             const ActivePrefix& active, int64_t GH, const Executor& ex,
                             Buffer<Real>& x_compact, Real* gx) {
  const int64_t T = a.T, B = a.B, I = a.I;
  const bool gather = plan.compact_rows && !a.packed;
  const int64_t rows = plan.compact_rows ? active.total(T) : T * B;
  if (gather) {
    x_compact.reset(rows * I);
    ActiveRows(a.lengths, B, T).gather(ex, a.x, I, I, x_compact.get());
  }
  const Real* x = gather ? x_compact.get() : a.x;
  if (plan.weights_in_place || plan.input_in_steps) return x;  // the steps compute gx
  if (rows <= 8)  // a few rows: not worth packing W_ih
    gemm_dot<Real>(rows, GH, I, x, I, a.w_ih, I, gx, GH, /*acc=*/false);
  else
    gemm<Real>(ex, rows, GH, I, x, I, 1, a.w_ih, I, /*b_trans=*/true, gx, GH,
               /*accumulate=*/false);
  return x;
}

// The weights as the step GEMMs read them (LayerPlan::weights_in_place: none packed).
template <class Real>
struct PackedWeights {
  // W_hh^T per gate: panel (gate k, strip s) holds columns k*H + s*NR .. +NR of W_hh^T, i.e.
  // rows of W_hh, as [S, NR]; W_ih^T the same way ([I, NR] panels) if the steps project the
  // input; W_hr^T as [H, NR] panels.
  Buffer<Real> w_hh, w_ih, w_hr;
};

// Forward phase 2: packs the weights once per call.
template <class Real>
void pack_weights(const ForwardArgs<Real>& a, const LayerPlan& plan, int64_t G,
                  const Executor& ex, PackedWeights<Real>& w) {
  if (plan.weights_in_place) return;
  constexpr int NR = kNR<Real>;
  const int64_t I = a.I, H = a.H, P = a.P, S = P > 0 ? P : H;
  const int64_t hidden_strips = ceil_div(H, NR), proj_strips = P > 0 ? ceil_div(P, NR) : 0;
  w.w_hh.reset(G * hidden_strips * S * NR);
  if (plan.input_in_steps) w.w_ih.reset(G * hidden_strips * I * NR);
  parallel_for(ex, G * hidden_strips, plan.parallel, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t k = i / hidden_strips, s = i % hidden_strips;
      pack_b(a.w_hh + k * H * S, S, true, 0, S, 0, H, w.w_hh.get() + k * hidden_strips * S * NR,
             s, s + 1);
      if (plan.input_in_steps)
        pack_b(a.w_ih + k * H * I, I, true, 0, I, 0, H, w.w_ih.get() + k * hidden_strips * I * NR,
               s, s + 1);
    }
  });
  if (P > 0) {
    w.w_hr.reset(proj_strips * H * NR);
    pack_b(a.w_hr, H, true, 0, H, 0, P, w.w_hr.get(), 0, proj_strips);
  }
}

// One layer forward: plan, input projection, weight packing, then the step loop (phase 3).
template <class Math, class Real>
void layer_forward_impl(const ForwardArgs<Real>& a, const Executor& ex) {
  constexpr int NR = kNR<Real>;
  const CellInfo& cell = cell_info(a.cell);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P;
  const int64_t S = P > 0 ? P : H, G = Math::kGates, GH = G * H;
  const int64_t WS = cell.workspace_cols(H, P);
  const int64_t hprev_off = cell.hprev_col(H, P), proj_in_off = cell.proj_input_col(H);
  if (B == 0 || T == 0) {  // no step: the final state is the initial one; y and ws have no rows
    if (a.hy) {
      if (a.h0) copy_n(a.h0, B * S, a.hy); else fill_n(a.hy, B * S, Real(0));
    }
    if (Math::kCellState && a.cy) {
      if (a.c0) copy_n(a.c0, B * H, a.cy); else fill_n(a.cy, B * H, Real(0));
    }
    return;
  }
  const LayerPlan plan = make_forward_plan(a, ex.num_threads());
  const bool parallel = plan.parallel;
  const ActivePrefix active(a.lengths, B, T);
  const bool packed = a.packed;
  const bool compact = plan.compact_rows;
  // First row of step t in y and ws (of every row of it, or of its active ones if packed).
  auto row0 = [&](int64_t t) { return packed ? active.offset(t) : t * B; };
  const bool in_place = plan.weights_in_place;
  const bool input_in_steps = plan.input_in_steps;
  const bool step_input = in_place || input_in_steps;

  // 1. x W_ih^T for every step (or, in the steps, one step at a time; or given by the caller,
  //    ForwardArgs::gx). The biases (b_ih and the part of b_hh that folds in) are added by the
  //    steps.
  const int64_t x_rows = compact ? active.total(T) : T * B;
  const bool gx_given = a.gx && !step_input;
  Buffer<Real> gx_own(gx_given ? 0 : step_input ? B * GH : x_rows * GH), bias(GH), x_compact;
  Real* const gx_base = gx_given ? a.gx : gx_own.get();
  for (int64_t n = 0; n < GH; ++n)
    bias.get()[n] = (a.b_ih ? a.b_ih[n] : Real(0)) +
                    (a.b_hh && !apart_gate<Math>(n / H) ? a.b_hh[n] : Real(0));
  const Real* const x_rows_in =
      gx_given ? a.x : input_projection(a, plan, active, GH, ex, x_compact, gx_base);

  // 2. The weights as the steps read them (packed here, or by an earlier piece of the layer:
  //    ForwardArgs::packed_weights).
  PackedWeights<Real> packed_weights;
  // (what pack_weights packs, and its strips' width, which the instruction set and element
  // type set: a cache filled otherwise is not used)
  const unsigned layout = 1u | unsigned(plan.weights_in_place) << 1 |
                          unsigned(plan.input_in_steps) << 2 | unsigned(P > 0) << 3 |
                          unsigned(sizeof(Real)) << 4 | unsigned(NR) << 8;
  PackedWeightsCache* cache = a.packed_weights;
  if (cache && cache->filled && cache->layout != layout) cache = nullptr;
  if (!cache || !cache->filled) pack_weights(a, plan, G, ex, packed_weights);
  if (cache && !cache->filled) {
    Buffer<Real>* bufs[3] = {&packed_weights.w_hh, &packed_weights.w_ih, &packed_weights.w_hr};
    for (int i = 0; i < 3; ++i) cache->block[i] = bufs[i]->detach(&cache->from_scratch[i]);
    cache->layout = layout;
    cache->filled = true;
  }
  const Real* const whh = cache ? static_cast<const Real*>(cache->block[0])
                                : packed_weights.w_hh.get();
  const Real* const wih = cache ? static_cast<const Real*>(cache->block[1])
                                : packed_weights.w_ih.get();
  const Real* const whr = cache ? static_cast<const Real*>(cache->block[2])
                                : packed_weights.w_hr.get();
  const int64_t hidden_strips = ceil_div(H, NR), proj_strips = P > 0 ? ceil_div(P, NR) : 0;

  // 3. The step loop. States: h ping-pongs between two buffers, so that a step reads h_{t-1}
  //    while writing h_t.
  Buffer<Real> hbuf0(B * S), hbuf1(B * S), cbuf(Math::kCellState ? B * H : 0),
      rg(Math::kApartGates || Math::kLayerNorm ? B * GH : 0),
      hpre(P > 0 ? B * H : 0);
  if (a.h0) copy_n(a.h0, B * S, hbuf0.get()); else fill_n(hbuf0.get(), B * S, Real(0));
  // With unsorted lengths the projection GEMM also reads the rows of inactive batch
  // rows (their results are discarded): keep them defined.
  if (P > 0) fill_n(hpre.get(), B * H, Real(0));
  // h_{t-1} in A-panel layout, one panel per thread (see LayerPlan::packed_panel)
  const bool pack_h = plan.packed_panel;
  const bool row_split = plan.row_split;
  const int64_t panel_size = pack_h ? ceil_div(B, MR) * MR * S : 0;
  Buffer<Real> h_panels(panel_size * imax(1, ex.num_threads()));
  if (Math::kCellState) {
    if (a.c0) copy_n(a.c0, B * H, cbuf.get()); else fill_n(cbuf.get(), B * H, Real(0));
  }
  const int64_t block_rows = plan.block_rows, row_blocks = plan.row_blocks;
  const int64_t blocks_before_hprev = cell.blocks_before_hprev(P);

  Real* const hbufs[2] = {hbuf0.get(), hbuf1.get()};
  const bool stream_ws = plan.stream_workspace;
  // Zoneout (ForwardArgs::zoneout): of h here (and in the projection phase), of c in the
  // step accessor's set_c.
  const bool zone_h = zoneout_on(a, 0);
  const bool zone_c = Math::kCellState && zoneout_on(a, 1);
  const Real zh_p = static_cast<Real>(a.zoneout_p[0]);
  // Layer normalisation (Math::kLayerNorm): per (row, strip) moments of x W_ih^T and h W_hh^T
  // ([B, strips, 4]: mean and m2 of each), each thread's merged row statistics ([B, 4] per
  // thread: FwdStep::ln_row), and, with a normalised output (Math::kNormOut), the moments of
  // the value the cell normalises ([B, strips, 2]) and that value with the cell's stash.
  constexpr bool kLn = Math::kLayerNorm, kNormOut = Math::kNormOut;
  const int64_t ln_stats_off = kLn ? cell.ln_stats_col(H, P) : 0;
  // A thread merges a row's strips once per step, at the first of its tasks in the row's
  // block (its tasks come in order, all strips of a block before the next block), into its
  // own ln_rows (and out_rows: mean and 1/sqrt(var + eps) of the normalised output's value).
  Buffer<Real> ln_part(kLn ? B * hidden_strips * 4 : 0),
      ln_rows(kLn ? B * 4 * imax(1, ex.num_threads()) : 0),
      out_part(kNormOut ? B * hidden_strips * 2 : 0),
      out_rows(kNormOut ? B * 2 * imax(1, ex.num_threads()) : 0),
      stage(kNormOut ? B * (1 + Math::kStash) * H : 0);
  run_steps(ex, T, parallel, [&](int64_t step, const TeamSlot& slot) {
    const int64_t t = a.reverse ? T - 1 - step : step;
    int64_t ln_merged = -1, out_merged = -1;  // the row block this thread merged last
    Real* const hcur = hbufs[step % 2];
    Real* const hnext = hbufs[(step + 1) % 2];
    Real* const h_panel = h_panels.get() + slot.tid * panel_size;
    int64_t task_begin, task_end;
    const PhaseTeam team{slot, row_split, row_blocks};
    FwdStep<Real> st;
    st.H = H; st.P = P; st.S = S; st.GH = GH; st.WS = WS;
    st.b_apart = Math::kApartGates ? a.b_hh : nullptr;
    const int64_t xrow = compact ? active.offset(t) : t * B;  // step t's first row of x and gx
    st.gx = gx_base + (step_input ? 0 : xrow * GH);  // rows b < active[t] if compact
    // The next step's rows of x W_ih^T: this thread works on the same units then, and
    // asks for them into L2 one row at a time during this step's epilogue. Fetched only
    // when needed, their scattered (row, gate) pieces stalled the epilogue on memory.
    const int64_t tn = a.reverse ? t - 1 : t + 1;
    const bool has_next = step + 1 < T && !step_input;
    const Real* const gx_next =
        has_next ? gx_base + (compact ? active.offset(tn) : tn * B) * GH : nullptr;
    const int64_t active_next = has_next ? active[tn] : 0;
    st.rg = rg.get();
    st.bias = bias.get();
    st.h = hcur;
    st.c = cbuf.get();
    st.ws = a.ws ? a.ws + row0(t) * WS : nullptr;
    st.stream_ws = stream_ws;
    st.cell_w = a.cell_w;
    st.params = Math::kParams;
    st.zone_c = zone_c;
    st.zc = a.zoneout[1] ? a.zoneout[1] + row0(t) * H : nullptr;
    st.zc_p = static_cast<Real>(a.zoneout_p[1]);
    if constexpr (kLn) {
      st.ln_gain_ih = a.cell_w[Math::kLnIh];
      st.ln_gain_hh = a.cell_w[Math::kLnHh];
      st.ln_row = ln_rows.get() + slot.tid * B * 4;
      st.fold_gates = ~Math::kApartGates;
      st.ln_block = Math::kSavedBlocks - 2 * G;
      st.G = G;
    }
    st.stage = stage.get();
    st.stage_cols = (1 + Math::kStash) * H;
    const Real* const zh = a.zoneout[0] ? a.zoneout[0] + row0(t) * S : nullptr;  // [B, S]
    // h_t before the projection: the state, or (with P) the projection's input
    Real* const hout = P > 0 ? hpre.get() : hnext;
    const int64_t ld_hout = P > 0 ? H : S;
    Real* ytn = a.y + row0(t) * S;
    // h_t of unit j of active row b: zoneout (without projection), then the state and y_t,
    // or the projection's input
    auto emit = [&](auto h, int64_t b, int64_t j) {
      using V = decltype(h);
      if (P == 0 && zone_h) {  // h_t = m h_{t-1} + (1 - m) h~_t
        const V m = zh ? V::load(zh + b * S + j) : V::set1(zh_p);
        h = V::fmadd(m, V::load(hcur + b * S + j), (V::set1(1) - m) * h);
      }
      h.store(hout + b * ld_hout + j);
      if (P == 0) h.store(ytn + b * S + j);
      else if (st.ws) save_value(st, h, st.ws + b * WS + proj_in_off + j);
    };
    // Task (row block, strip) of the step's tasks: its rows and units.
    using Task = StepTask;
    auto task_of = [&](int64_t task) {
      return step_task(task, hidden_strips, block_rows, B, H, NR, active[t]);
    };

    // The GEMMs of a task: its units' gate pre-activations (and, with layer normalisation,
    // their moments per row).
    auto gemms = [&](const Task& k) {
      const int64_t r0 = k.r0, ra = k.ra, j0 = k.j0, j1 = k.j1, s = k.s;
      if (step == 0 && !step_input)  // the first step has no previous one to ask ahead
        for (int64_t b = r0; b < ra; ++b)
          for (int64_t q = 0; q < G; ++q) prefetch_units(st.gx + b * GH + q * H + j0, j1 - j0);
      // The task's G gate strips of a weight matrix go to the GEMM in one call (a register
      // tile of few rows then spans several of them: gemm_impl.h, group_strips).
      const Real* strips[Math::kGates];
      Real* outs[Math::kGates];
      bool accs[Math::kGates];
      if (step_input && ra > r0) {  // this task's columns of x_t W_ih^T (see step 1)
        const Real* xr = x_rows_in + (xrow + r0) * I;
        for (int64_t q = 0; q < G; ++q) {
          outs[q] = st.gx + r0 * GH + q * H + j0;
          if (in_place)
            gemm_dot<Real>(ra - r0, j1 - j0, I, xr, I, a.w_ih + (q * H + j0) * I, I, outs[q], GH,
                           false);
          else {
            strips[q] = wih + (q * hidden_strips + s) * I * NR;
            accs[q] = false;
          }
        }
        if (!in_place)
          strips_rows<Real, false>(ra - r0, I, xr, I, 1, G, strips, NR, outs, GH, j1 - j0, accs);
      }
      // With the row split, a thread packs the rows of h_{t-1} of each of its row blocks as
      // it comes to the block (its first strip), at the start of its panel.
      if (row_split && pack_h && s == 0 && ra > r0) pack_a(ra - r0, S, hcur + r0 * S, S, 1, h_panel);
      // Gates whose h_{t-1} W_hh^T adds straight onto x_t W_ih^T accumulate into gx
      // in place: the register tile loads those gx values once, at its end, and the
      // epilogue then finds the sum in cache. The others (and all, with layer
      // normalisation) go to rg.
      if (ra > r0) {
        for (int64_t q = 0; q < G; ++q) {
          accs[q] = !kLn && !apart_gate<Math>(q);  // onto gx
          outs[q] = (accs[q] ? st.gx : rg.get()) + r0 * GH + q * H + j0;
          if (in_place)
            gemm_dot<Real>(ra - r0, j1 - j0, S, hcur + r0 * S, S, a.w_hh + (q * H + j0) * S, S,
                           outs[q], GH, accs[q]);
          else
            strips[q] = whh + (q * hidden_strips + s) * S * NR;
        }
        if (!in_place && pack_h)
          strips_rows<Real, true>(ra - r0, S, h_panel + (row_split ? 0 : r0 * S), 0, 0, G,
                                  strips, NR, outs, GH, j1 - j0, accs);
        else if (!in_place)
          strips_rows<Real, false>(ra - r0, S, hcur + r0 * S, S, 1, G, strips, NR, outs, GH,
                                   j1 - j0, accs);
      }
      if constexpr (kLn)
        for (int64_t b = r0; b < ra; ++b) {
          Real* part = ln_part.get() + (b * hidden_strips + s) * 4;
          strip_moments(st.gx + b * GH, H, G, j0, j1, part);
          strip_moments(rg.get() + b * GH, H, G, j0, j1, part + 2);
        }
    };

    // The cell's forward on a task's units (with a normalised output: its first half).
    auto epilogue = [&](const Task& k) {
      const int64_t r0 = k.r0, r1 = k.r1, ra = k.ra, j0 = k.j0, j1 = k.j1, s = k.s;
      if constexpr (kLn) {
        if (r0 != ln_merged) {  // the row statistics, merged in strip order
          ln_merged = r0;
          for (int64_t b = r0; b < ra; ++b) {
            const Real* parts = ln_part.get() + b * hidden_strips * 4;
            const Moments<Real> ma = merge_strips(parts, hidden_strips, 4, 0, H, G, NR);
            const Moments<Real> mr = merge_strips(parts, hidden_strips, 4, 2, H, G, NR);
            Real* row = ln_rows.get() + (slot.tid * B + b) * 4;
            row[0] = ma.mean, row[1] = ma.rstd(), row[2] = mr.mean, row[3] = mr.rstd();
          }
        }
        if (s == 0 && st.ws)
          for (int64_t b = r0; b < ra; ++b) {
            if (!row_active(a.lengths, b, t)) continue;
            const Real* row = ln_rows.get() + (slot.tid * B + b) * 4;
            Real* stats = st.ws + b * WS + ln_stats_off;
            fill_n(stats, kLnStatsCols, Real(0));
            stats[0] = row[1];
            stats[1] = row[3];
          }
      }
      for (int64_t b = r0; b < r1; ++b) {
        if (b < active_next && (compact || row_active(a.lengths, b, tn)))
          for (int64_t q = 0; q < G; ++q)
            prefetch_units(gx_next + b * GH + q * H + j0, j1 - j0);
        if (row_active(a.lengths, b, t)) {
          for_units<Real>(j0, j1, [&](auto v, int64_t j) {
            using V = decltype(v);
            ForwardUnit<V, Real, kLn> unit{st, b, j};
            const V h = Math::template forward<V>(unit);
            if constexpr (kNormOut) h.store(stage.get() + b * st.stage_cols + j);
            else emit(h, b, j);
          });
          if constexpr (kNormOut)
            strip_moments(stage.get() + b * st.stage_cols, H, 1, j0, j1,
                          out_part.get() + (b * hidden_strips + s) * 2);
        } else {  // inactive: the state carries over; y and ws get zeros (no row if packed)
          if (P == 0) {
            copy_n(hcur + b * S + j0, j1 - j0, hnext + b * S + j0);
            if (!packed) fill_n(ytn + b * S + j0, j1 - j0, Real(0));
          }
          if (st.ws && !packed) {
            for (int64_t q = 0; q < blocks_before_hprev; ++q)
              fill_n(st.ws + b * WS + q * H + j0, j1 - j0, Real(0));
            if (kLn && s == 0) fill_n(st.ws + b * WS + ln_stats_off, kLnStatsCols, Real(0));
          }
        }
        if (P == 0) {
          if (st.ws && (!packed || b < ra))
            save_units(st, hcur + b * S + j0, j1 - j0, st.ws + b * WS + hprev_off + j0);
        }
      }
    };

    // The second half of a normalised-output cell's forward: h_t from the normalised value.
    auto epilogue_out = [&](const Task& k) {
      if constexpr (kNormOut) {
      Real* const rows = out_rows.get() + slot.tid * B * 2;
      if (k.r0 != out_merged) {
        out_merged = k.r0;
        for (int64_t b = k.r0; b < k.ra; ++b) {
          if (!row_active(a.lengths, b, t)) continue;
          const Moments<Real> m = merge_strips(out_part.get() + b * hidden_strips * 2,
                                               hidden_strips, 2, 0, H, 1, NR);
          rows[b * 2] = m.mean, rows[b * 2 + 1] = m.rstd();
        }
      }
      for (int64_t b = k.r0; b < k.ra; ++b) {
        if (!row_active(a.lengths, b, t)) continue;
        const Real mean = rows[b * 2], rstd = rows[b * 2 + 1];
        if (k.s == 0 && st.ws) st.ws[b * WS + ln_stats_off + 2] = rstd;
        const Real* v = stage.get() + b * st.stage_cols;
        for_units<Real>(k.j0, k.j1, [&](auto vec, int64_t j) {
          using V = decltype(vec);
          ForwardUnit<V, Real, kLn> unit{st, b, j};
          const V vh = (V::load(v + j) - V::set1(mean)) * V::set1(rstd);
          emit(Math::template forward_out<V>(unit, vh), b, j);
        });
      }
      }
    };

    team.share(hidden_strips, &task_begin, &task_end);
    if (!row_split && pack_h && task_begin < task_end) pack_a(active[t], S, hcur, S, 1, h_panel);
    if constexpr (kLn) {  // the row statistics need every strip's GEMMs first
      for (int64_t task = task_begin; task < task_end; ++task) gemms(task_of(task));
      team.sync();
    }
    for (int64_t task = task_begin; task < task_end; ++task) {
      const Task k = task_of(task);
      if constexpr (!kLn) gemms(k);
      epilogue(k);
    }
    if constexpr (kNormOut) {
      team.sync();
      for (int64_t task = task_begin; task < task_end; ++task) epilogue_out(task_of(task));
    }
    if (stream_ws) store_fence();
    team.sync();

    if (P > 0) {  // h_t = (o * tanh(c_t)) W_hr^T, then y_t and the saved h_{t-1}
      team.share(proj_strips, &task_begin, &task_end);
      for (int64_t task = task_begin; task < task_end; ++task) {
        {
          const int64_t rb = task / proj_strips, s = task % proj_strips;
          const int64_t r0 = rb * block_rows, r1 = imin(B, r0 + block_rows);
          const int64_t ra = imin(r1, active[t]);
          const int64_t j0 = s * NR, j1 = imin(P, j0 + NR);
          if (ra > r0 && in_place)
            gemm_dot<Real>(ra - r0, j1 - j0, H, hpre.get() + r0 * H, H, a.w_hr + j0 * H, H,
                        hnext + r0 * S + j0, S, false);
          else if (ra > r0)
            strip_rows<Real>(ra - r0, H, hpre.get() + r0 * H, H, 1, whr + s * H * NR, NR,
                          hnext + r0 * S + j0, S, j1 - j0, false);
          for (int64_t b = r0; b < r1; ++b) {
            if (row_active(a.lengths, b, t)) {
              Real* hn = hnext + b * S;
              if (zone_h)  // h_t = m h_{t-1} + (1 - m) h~_t
                for (int64_t j = j0; j < j1; ++j) {
                  const Real m = zh ? zh[b * S + j] : zh_p;
                  hn[j] = m * hcur[b * S + j] + (Real(1) - m) * hn[j];
                }
              copy_n(hn + j0, j1 - j0, ytn + b * S + j0);
            } else {
              copy_n(hcur + b * S + j0, j1 - j0, hnext + b * S + j0);
              if (!packed) fill_n(ytn + b * S + j0, j1 - j0, Real(0));
            }
            if (st.ws && (!packed || b < ra))
              save_units(st, hcur + b * S + j0, j1 - j0, st.ws + b * WS + hprev_off + j0);
          }
        }
      }
      if (stream_ws) store_fence();
      team.sync();
    }
  });
  if (a.hy) copy_n(hbufs[T % 2], B * S, a.hy);
  if (Math::kCellState && a.cy) copy_n(cbuf.get(), B * H, a.cy);
}

// What the step loop of a backward call leaves for its weight-gradient phase: the gate
// gradients of every step row (T * B, or the active ones if packed; row row0(t) + b).
template <class Real>
struct GateGradients {
  const Real* dgx;        // [rows, GH] x side
  const Real* dgh;        // [rows, GH] h side (the same as dgx unless the cell has apart gates)
  const Real* dproj;      // [rows, P]  gradient of the projection's outputs, or null
  const Real* bias_sums;  // [sets, groups, GH] per group of rows sums over the steps of dgx
                          // (set 0) and, with two sets, of dgh (set 1)
  int64_t sets, groups;
};

// Backward phase 3, the weight gradients: dx, dW_ih, dW_hh, dW_hr as whole-sequence GEMMs over
// the active (t, b) only (LayerPlan::compact_rows: their rows are first gathered densely,
// unless the call is packed), and the bias gradients from the per-block sums.
template <class Real>
void weight_gradients(const BackwardArgs<Real>& a, const LayerPlan& plan, const CellInfo& cell,
                      const ActivePrefix& active, const GateGradients<Real>& g,
                      const Executor& ex) {
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P, S = P > 0 ? P : H, TB = T * B;
  const int64_t GH = cell.gates * H, WS = cell.workspace_cols(H, P);
  const bool packed = a.packed;
  const bool compact = plan.compact_rows && !packed;
  const ActiveRows active_grid(compact ? a.lengths : nullptr, compact ? B : 0, compact ? T : 0);
  const int64_t N = packed ? active.total(T) : compact ? active_grid.count() : TB;
  auto dense = [&](const Real* src, int64_t ld, int64_t cols, Buffer<Real>& buf) -> const Real* {
    if (!compact) return src;
    buf.reset(N * cols);
    active_grid.gather(ex, src, ld, cols, buf.get());
    return buf.get();
  };
  // Columns [off, ...) of the saved workspace (none if nothing was saved: an empty call).
  auto ws_cols = [&](int64_t off) -> const Real* { return a.ws ? a.ws + off : nullptr; };
  Buffer<Real> dgx_b, dgh_b, x_b, hp_b, dr_b, hq_b, dx_b;
  const Real* dgx_c = dense(g.dgx, GH, GH, dgx_b);
  const Real* dgh_c = g.dgh != g.dgx ? dense(g.dgh, GH, GH, dgh_b) : dgx_c;
  if (a.dx) {
    Real* out = a.dx;
    if (compact) {
      dx_b.reset(N * I);
      out = dx_b.get();
    }
    gemm<Real>(ex, N, I, GH, dgx_c, GH, 1, a.w_ih, I, false, out, I, false);
    if (compact)  // scatter back; inactive rows get zeros
      parallel_for(ex, T, TB * I > 65536, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          int64_t k = active_grid.offset(t);
          for (int64_t r = 0; r < B; ++r) {
            Real* d = a.dx + (t * B + r) * I;
            if (row_active(a.lengths, r, t))
              copy_n(out + (k++) * I, I, d);
            else
              fill_n(d, I, Real(0));
          }
        }
      });
  }
  if (a.dw_ih)
    gemm<Real>(ex, GH, I, N, dgx_c, 1, GH, dense(a.x, I, I, x_b), I, false, a.dw_ih, I, false,
               /*cold_output=*/true);
  if (a.dw_hh)
    gemm<Real>(ex, GH, S, N, dgh_c, 1, GH, dense(ws_cols(cell.hprev_col(H, P)), WS, S, hp_b),
               compact ? S : WS, false, a.dw_hh, S, false, /*cold_output=*/true);
  Real* const db_out[2] = {a.db_ih, a.db_hh};
  for (int q = 0; q < 2; ++q) {
    if (!db_out[q]) continue;
    sum_rows(g.bias_sums + (g.sets == 2 ? q : 0) * g.groups * GH, g.groups, GH, GH, db_out[q]);
  }
  if (a.dw_hr && P > 0)
    gemm<Real>(ex, P, H, N, dense(g.dproj, P, P, dr_b), 1, P,
               dense(ws_cols(cell.proj_input_col(H)), WS, H, hq_b), compact ? H : WS, false,
               a.dw_hr, H, false, /*cold_output=*/true);
}

// One layer backward: plan, the reverse step loop (phases 1 and 2 of each step), the final
// state gradients, then the weight gradients.
template <class Math, class Real>
void layer_backward_impl(const BackwardArgs<Real>& a, const Executor& ex) {
  constexpr int NR = kNR<Real>;
  // dG differs between the x and h sides: apart gates, or layer normalisation
  constexpr bool kSplit = Math::kApartGates != 0 || Math::kLayerNorm;
  const CellInfo& cell = cell_info(a.cell);
  const int64_t T = a.T, B = a.B, H = a.H, P = a.P;
  const int64_t S = P > 0 ? P : H, G = Math::kGates, GH = G * H, TB = T * B;
  const int64_t WS = cell.workspace_cols(H, P);
  const int64_t hprev_off = cell.hprev_col(H, P);
  const LayerPlan plan = make_backward_plan(a, ex.num_threads());
  const bool parallel = plan.parallel;

  const ActivePrefix active(a.lengths, B, T);
  const bool packed = a.packed;
  // Rows of the per-step buffers (dG, dR): every (t, b), or the active ones if packed,
  // at row row0(t) + b as in ForwardArgs::packed.
  const int64_t grad_rows = packed ? active.total(T) : TB;
  auto row0 = [&](int64_t t) { return packed ? active.offset(t) : t * B; };
  Buffer<Real> dgx(grad_rows * GH), dgh_own(kSplit ? grad_rows * GH : 0);
  Real* dgh = kSplit ? dgh_own.get() : dgx.get();
  Buffer<Real> carry(B * S), dc(Math::kCellState ? B * H : 0), rec(B * S);
  if (a.dhy) copy_n(a.dhy, B * S, carry.get()); else fill_n(carry.get(), B * S, Real(0));
  if (Math::kCellState) {
    if (a.dcy) copy_n(a.dcy, B * H, dc.get()); else fill_n(dc.get(), B * H, Real(0));
  }

  // W_hh as the [GH, S] right operand of dh_{t-1} = dG_t W_hh; W_hr as [P, H] (packed, or
  // read in place: LayerPlan::weights_in_place).
  const int64_t state_strips = ceil_div(S, NR), hidden_strips = ceil_div(H, NR);
  const bool in_place = plan.weights_in_place;
  RightOperand<Real> whh(a.w_hh, S, false, 0, GH, S, &ex, in_place);
  RightOperand<Real> whr(a.w_hr, H, false, 0, P, P > 0 ? H : 0, &ex, in_place);
  Buffer<Real> dR(P > 0 ? grad_rows * P : 0), dhpre(P > 0 ? B * H : 0);
  const int64_t block_rows = plan.block_rows, row_blocks = plan.row_blocks;
  const int64_t blocks_before_hprev = cell.blocks_before_hprev(P);
  // dG (h side) of each step also in A-panel layout, for the next step's GEMM (see
  // LayerPlan::packed_panel). No initial fill: a step's GEMM reads only rows the step
  // before packed (finish_block).
  const bool pack_dgate = plan.packed_panel;
  const bool row_split = plan.row_split;
  // Each row block's part of the panel starts at a multiple of MR rows (the row split's
  // blocks need not be MR rows high; the other plans' are).
  const int64_t panel_block_rows = ceil_div(block_rows, MR) * MR;
  const int64_t dgate_panel_rows = pack_dgate ? row_blocks * panel_block_rows : 0;
  Buffer<Real> dgate_panel0(dgate_panel_rows * GH), dgate_panel1(dgate_panel_rows * GH);
  Real* const dgate_panels[2] = {dgate_panel0.get(), dgate_panel1.get()};
  auto panel_off = [&](int64_t r0) { return (r0 / block_rows) * panel_block_rows * GH; };
  // The bias gradients are the column sums of dG (x side for b_ih, h side for b_hh), kept
  // per group of group_rows rows (summed over the groups after the loop): a task adds its rows
  // while they are still in cache, only the thread that owns a row adds to its group's sums,
  // and no sum's order depends on the thread count. Up to kRowSplitMaxRows rows (where the row
  // split, whose blocks follow the thread count, may run) a group is one row; above, a row
  // block of the (row block, strip) schedule, whose blocks follow B alone.
  const int64_t group_rows = B <= kRowSplitMaxRows ? 1 : block_rows;
  const int64_t groups = ceil_div(B, group_rows);
  const int64_t bias_sums = (a.db_ih || a.db_hh) ? (kSplit ? 2 : 1) : 0;
  Buffer<Real> dbsum(bias_sums * groups * GH);
  fill_n(dbsum.get(), bias_sums * groups * GH, Real(0));
  // The gradients of the cell's own parameters, summed the same way (BwdStep::dparam_sums).
  Buffer<Real> dparam_sums(groups * Math::kParams * H);
  fill_n(dparam_sums.get(), groups * Math::kParams * H, Real(0));
  // Once the rows of its block are done, a task
  // - packs the block for the next step's GEMM: rows [r0, r1) (rows of the block's panel past
  //   r1 become zeros, and are never read) and, in each gate, units [j0, j1), by an
  //   in-register transpose (cheaper than scattering each value to its panel slot as it is
  //   computed);
  // - adds the block's columns to its groups' bias-gradient sums.
  // With layer normalisation the bias sums come first (the biases add after the
  // normalisation), and the packing after the gate gradients went through it.
  auto pack_block = [&](Real* pk, int64_t t, int64_t r0, int64_t r1, int64_t j0, int64_t j1) {
    const Real* src = dgh + row0(t) * GH;
    Real* const block = pk + panel_off(r0);
    for (int64_t p0 = r0; pack_dgate && p0 < r1; p0 += MR)
      for (int64_t k = 0; k < G; ++k)
        pack_a(imin(MR, r1 - p0), j1 - j0, src + p0 * GH + k * H + j0, GH, 1,
               block + (p0 - r0) * GH + (k * H + j0) * MR);
  };
  auto bias_block = [&](int64_t t, int64_t r0, int64_t r1, int64_t j0, int64_t j1) {
    const Real* gsrc[2] = {dgx.get() + row0(t) * GH, dgh + row0(t) * GH};
    for (int64_t q = 0; q < bias_sums; ++q)
      for (int64_t g0 = r0, g1; g0 < r1; g0 = g1) {  // the task's rows of each group
        g1 = imin(r1, (g0 / group_rows + 1) * group_rows);
        Real* sum = dbsum.get() + (q * groups + g0 / group_rows) * GH;
        for (int64_t k = 0; k < G; ++k)
          for_units<Real>(k * H + j0, k * H + j1, [&](auto v, int64_t n) {
            using V = decltype(v);
            V acc = V::load(sum + n);
            for (int64_t b = g0; b < g1; ++b) acc = acc + V::load(gsrc[q] + b * GH + n);
            acc.store(sum + n);
          });
      }
  };

  // Layer normalisation (Math::kLayerNorm; as the forward pass): per (row, strip) sums of the
  // gate gradients times the gains, and of those times the normalised values, x side then h
  // side ([B, strips, 4]); the gains' gradients per group of rows ([groups, 2, GH]); with a
  // normalised output, the sums of dL/d(normalised value) and of it times that value
  // ([B, strips, 2]), and that gradient with the cell's stash.
  constexpr bool kLn = Math::kLayerNorm, kNormOut = Math::kNormOut;
  const int64_t ln_stats_off = kLn ? cell.ln_stats_col(H, P) : 0;
  const int64_t ln_block = Math::kSavedBlocks - 2 * G;
  Buffer<Real> gate_part(kLn ? B * hidden_strips * 4 : 0),
      out_part(kNormOut ? B * hidden_strips * 2 : 0),
      stage(kNormOut ? B * (1 + Math::kStash) * H : 0), ln_sums(kLn ? groups * 2 * GH : 0);
  fill_n(ln_sums.get(), kLn ? groups * 2 * GH : 0, Real(0));
  const Real* const gain_ih = kLn ? a.cell_w[Math::kLnIh] : nullptr;
  const Real* const gain_hh = kLn ? a.cell_w[Math::kLnHh] : nullptr;

  // Zoneout (BackwardArgs::zoneout): of h here, of c in the step accessor.
  const bool zone_h = zoneout_on(a, 0);
  const bool zone_c = Math::kCellState && zoneout_on(a, 1);
  const Real zh_p = static_cast<Real>(a.zoneout_p[0]);

  auto time_of = [&](int64_t step) { return a.reverse ? step : T - 1 - step; };
  run_steps(ex, T, parallel, [&](int64_t step, const TeamSlot& slot) {
    const int64_t t = time_of(step);
    // dG (h side) of the step processed just before, if any; it is zero on the rows
    // [nrec, B) that were inactive there, so dG_prev W_hh is needed on [0, nrec) only
    const Real* prev = step > 0 ? dgh + row0(time_of(step - 1)) * GH : nullptr;
    const int64_t nrec = prev ? active[time_of(step - 1)] : 0;
    const Real* const dgate_panel_prev = dgate_panels[(step + 1) % 2];
    Real* const dgate_panel_cur = dgate_panels[step % 2];
    int64_t task_begin, task_end;
    BwdStep<Real> st;
    st.H = H; st.S = S; st.GH = GH; st.WS = WS;
    st.hprev_col = hprev_off;
    st.ws = a.ws + row0(t) * WS;
    st.dc = dc.get();
    st.dgx = dgx.get() + row0(t) * GH;
    st.dgh = dgh + row0(t) * GH;
    st.cell_w = a.cell_w;
    st.dparam_sums = dparam_sums.get();
    st.group_rows = group_rows;
    st.params = Math::kParams;
    st.zone_c = zone_c;
    st.zc = a.zoneout[1] ? a.zoneout[1] + row0(t) * H : nullptr;
    st.zc_p = static_cast<Real>(a.zoneout_p[1]);
    st.stage = stage.get();
    st.stage_cols = (1 + Math::kStash) * H;
    const Real* const zh = a.zoneout[0] ? a.zoneout[0] + row0(t) * S : nullptr;  // [B, S]
    const Real* dyt = a.dy ? a.dy + row0(t) * S : nullptr;
    // The next step's saved activations and dy, asked into L2 a row at a time during
    // this step (as the forward pass does with x W_ih^T).
    const bool has_next = step + 1 < T;
    const int64_t tn = has_next ? time_of(step + 1) : t;
    const Real* const ws_next = has_next ? a.ws + row0(tn) * WS : nullptr;
    const Real* const dy_next = has_next && a.dy ? a.dy + row0(tn) * S : nullptr;
    const int64_t active_next = has_next ? active[tn] : 0;
    const PhaseTeam team{slot, row_split, row_blocks};

    // dh[b, j] = carry + dy_t (active rows) + (dG_{prev} W_hh)[b, j]; returns it and
    // leaves carry ready for the rows that are inactive at t.
    auto total_dh = [&](int64_t b, int64_t j0, int64_t j1, Real* out) {
      const Real* cr = carry.get() + b * S;
      const Real* rc = b < nrec ? rec.get() + b * S : nullptr;
      const Real* dy = dyt && row_active(a.lengths, b, t) ? dyt + b * S : nullptr;
      for_units<Real>(j0, j1, [&](auto v, int64_t j) {
        using V = decltype(v);
        V d = V::load(cr + j);
        if (rc) d = d + V::load(rc + j);
        if (dy) d = d + V::load(dy + j);
        d.store(out + (j - j0));
      });
    };
    auto zero_grads = [&](int64_t b, int64_t j0, int64_t j1) {
      for (int64_t k = 0; k < G; ++k) {
        fill_n(st.dgx + b * GH + k * H + j0, j1 - j0, Real(0));
        if (kSplit) fill_n(st.dgh + b * GH + k * H + j0, j1 - j0, Real(0));
      }
    };
    // Layer normalisation: row b's sums over units [j0, j1) of every gate for the
    // normalisation's backward (gate_part), and its share of the gains' gradients.
    auto gate_sums = [&](int64_t b, int64_t s, int64_t j0, int64_t j1) {
      if constexpr (kLn) {
        const Real* w = st.ws + b * WS + ln_block * H;  // the normalised values, x then h side
        Real* lsum = ln_sums.get() + (b / group_rows) * 2 * GH;
        Real* part = gate_part.get() + (b * hidden_strips + s) * 4;
        const Real* grads[2] = {st.dgx + b * GH, st.dgh + b * GH};
        const Real* gains[2] = {gain_ih, gain_hh};
        for (int side = 0; side < 2; ++side) {
          const Real *d = grads[side], *g = gains[side], *vh = w + side * GH;
          Real* ls = lsum + side * GH;
          part[2 * side] = strip_reduce<Real>(H, G, j0, j1, [&](auto v, int64_t n) {
            using U = decltype(v);
            return U::load(d + n) * U::load(g + n);
          });
          part[2 * side + 1] = strip_reduce<Real>(H, G, j0, j1, [&](auto v, int64_t n) {
            using U = decltype(v);
            const U dv = U::load(d + n), vv = U::load(vh + n);
            U::fmadd(dv, vv, U::load(ls + n)).store(ls + n);  // the gain's gradient
            return dv * U::load(g + n) * vv;
          });
        }
      }
    };
    // The cell's backward on units [j0, j1) of active row b from dh (indexed j - j0); with
    // zoneout of h (and no projection) the carry takes m dh_t. With a normalised output this
    // is the first half: it keeps dL/d(normalised value) and its row sums.
    auto cell_backward = [&](int64_t b, int64_t s, int64_t j0, int64_t j1, const Real* dh,
                             bool zoned) {
      Real* cr = carry.get() + b * S;
      for_units<Real>(j0, j1, [&](auto v, int64_t j) {
        using V = decltype(v);
        BackwardUnit<Math, V, Real> unit{st, b, j};
        const V d = V::load(dh + (j - j0));
        // zoneout: dh~_t = (1 - m) dh_t; dh_{t-1} += m dh_t
        const V m = !zoned ? V::set1(0) : zh ? V::load(zh + b * S + j) : V::set1(zh_p);
        const V r = Math::template backward<V>(unit, zoned ? (V::set1(1) - m) * d : d);
        if constexpr (kNormOut) {
          r.store(stage.get() + b * st.stage_cols + j);
          if (P == 0) (m * d).store(cr + j);
        } else if (P == 0) {
          (zoned ? V::fmadd(m, d, r) : r).store(cr + j);
        }
      });
      if constexpr (kNormOut) {
        const Real* g = stage.get() + b * st.stage_cols;
        const Real* vh = st.ws + b * WS + Math::kNormedBlock * H;
        Real* part = out_part.get() + (b * hidden_strips + s) * 2;
        part[0] = strip_reduce<Real>(H, 1, j0, j1, [&](auto v, int64_t n) {
          return decltype(v)::load(g + n);
        });
        part[1] = strip_reduce<Real>(H, 1, j0, j1, [&](auto v, int64_t n) {
          using U = decltype(v);
          return U::load(g + n) * U::load(vh + n);
        });
      } else {
        gate_sums(b, s, j0, j1);
      }
    };
    // The cell's step is done on a task's rows [r0, r1) (r1p: of them, those with dG rows):
    // bias sums, and the panel for the next step's GEMM unless layer normalisation still
    // has to transform the gradients.
    auto cell_done = [&](int64_t r0, int64_t r1p, int64_t j0, int64_t j1) {
      bias_block(t, r0, r1p, j0, j1);
      if (!kLn) pack_block(dgate_panel_cur, t, r0, r1p, j0, j1);
    };

    // Phase 1, over strips of the S state units: dh = carry + dy_t + dG_prev W_hh; then,
    // without a projection, the cell's derivatives; with one, only dR_t (phase 2 does the cell).
    Real* dRt = P > 0 ? dR.get() + row0(t) * P : nullptr;
    team.share(state_strips, &task_begin, &task_end);
    {
      alignas(64) Real dh[kNR<Real>];
      int64_t gemm_end = task_begin;  // this thread's tasks whose GEMM is done
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t rb = task / state_strips, s = task % state_strips;
        const int64_t r0 = rb * block_rows, r1 = imin(B, r0 + block_rows);
        const int64_t j0 = s * NR, j1 = imin(S, j0 + NR);
        if (P == 0 && step == 0)  // the first step's saved activations (later ones: below)
          for (int64_t b = r0; b < imin(r1, active[t]); ++b)
            for (int64_t q = 0; q < blocks_before_hprev; ++q)
              prefetch_units(st.ws + b * WS + q * H + j0, j1 - j0);
        const int64_t rr = imin(r1, nrec);
        if (rr > r0 && task >= gemm_end) {
          // This task's strip and the next full ones of the row block among this thread's
          // tasks, in one call (a register tile of few rows then spans several of them:
          // gemm_impl.h, group_strips).
          constexpr int64_t kRun = 4;
          const Real* bs[kRun];
          Real* outs[kRun];
          const bool accs[kRun] = {};
          int64_t ld = 0, n = 0;
          for (; n < kRun && task + n < task_end && s + n < state_strips; ++n) {
            const int64_t sn = s + n;
            int64_t ldn;
            const Real* w = whh.strip(sn, &ldn);
            if (n > 0 && ((sn + 1) * NR > S || ldn != ld)) break;
            bs[n] = w, ld = ldn, outs[n] = rec.get() + r0 * S + sn * NR;
          }
          gemm_end = task + n;
          if (pack_dgate)
            strips_rows<Real, true>(rr - r0, GH, dgate_panel_prev + panel_off(r0), 0, 0, n, bs,
                                    ld, outs, S, j1 - j0, accs);
          else
            strips_rows<Real, false>(rr - r0, GH, prev + r0 * GH, GH, 1, n, bs, ld, outs, S,
                                     j1 - j0, accs);
        }
        for (int64_t b = r0; b < r1; ++b) {
          if (P == 0 && b < active_next && row_active(a.lengths, b, tn)) {
            for (int64_t q = 0; q < blocks_before_hprev; ++q)
              prefetch_units(ws_next + b * WS + q * H + j0, j1 - j0);
            if (dy_next) prefetch_units(dy_next + b * S + j0, j1 - j0);
          }
          total_dh(b, j0, j1, dh);
          const bool row_is_active = row_active(a.lengths, b, t);
          Real* cr = carry.get() + b * S;
          if (P > 0 && row_is_active && zone_h) {  // dh~_t = (1 - m) dh_t; dh_{t-1} += m dh_t
            for (int64_t j = j0; j < j1; ++j) {
              const Real m = zh ? zh[b * S + j] : zh_p;
              dRt[b * P + j] = (Real(1) - m) * dh[j - j0];
              cr[j] = m * dh[j - j0];
            }
          } else if (P > 0 && row_is_active) {
            copy_n(dh, j1 - j0, dRt + b * P + j0);
            fill_n(cr + j0, j1 - j0, Real(0));
          } else if (P > 0) {  // inactive: dh passes to h_{t-1}, dR_t is zero (no row if packed)
            if (!packed) fill_n(dRt + b * P + j0, j1 - j0, Real(0));
            copy_n(dh, j1 - j0, cr + j0);
          } else if (row_is_active) {
            cell_backward(b, s, j0, j1, dh, zone_h);
          } else {
            copy_n(dh, j1 - j0, cr + j0);
            // packed: no row; the next step's GEMM reads the active rows only
            if (!packed) zero_grads(b, j0, j1);
          }
        }
        if (P == 0 && !kNormOut) cell_done(r0, packed ? imin(r1, active[t]) : r1, j0, j1);
      }
    }
    team.sync();
    if (P > 0) {
      team.share(hidden_strips, &task_begin, &task_end);
      {
        for (int64_t task = task_begin; task < task_end; ++task) {
          const int64_t rb = task / hidden_strips, s = task % hidden_strips;
          const int64_t r0 = rb * block_rows, r1 = imin(B, r0 + block_rows);
          const int64_t j0 = s * NR, j1 = imin(H, j0 + NR);
          const int64_t ra = imin(r1, active[t]);
          int64_t ld;
          const Real* bs = whr.strip(s, &ld);
          if (ra > r0)
            strip_rows<Real>(ra - r0, P, dRt + r0 * P, P, 1, bs, ld, dhpre.get() + r0 * H + j0, H,
                          j1 - j0, false);
          for (int64_t b = r0; b < r1; ++b) {
            if (row_active(a.lengths, b, t))
              cell_backward(b, s, j0, j1, dhpre.get() + b * H + j0, false);
            else if (!packed)
              zero_grads(b, j0, j1);
          }
          if (!kNormOut) cell_done(r0, packed ? ra : r1, j0, j1);
        }
      }
      team.sync();
    }
    // The tasks of the phases below: (row block, strip of the H hidden units).
    if (kNormOut || kLn) team.share(hidden_strips, &task_begin, &task_end);
    if constexpr (kNormOut) {  // the second half of the cell: through the normalisation
      for (int64_t task = task_begin; task < task_end; ++task) {
        const StepTask tk = step_task(task, hidden_strips, block_rows, B, H, NR, active[t]);
        const int64_t s = tk.s, r0 = tk.r0, r1 = tk.r1, ra = tk.ra, j0 = tk.j0, j1 = tk.j1;
        for (int64_t b = r0; b < ra; ++b) {
          if (!row_active(a.lengths, b, t)) continue;
          Real sum[2];
          sum_strips(out_part.get() + b * hidden_strips * 2, hidden_strips, 2, sum);
          const Real rstd = st.ws[b * WS + ln_stats_off + 2];
          const Real mean_g = sum[0] / Real(H), mean_gv = sum[1] / Real(H);
          const Real* g = stage.get() + b * st.stage_cols;
          const Real* vh = st.ws + b * WS + Math::kNormedBlock * H;
          Real* cr = carry.get() + b * S;
          for_units<Real>(j0, j1, [&](auto v, int64_t j) {
            using V = decltype(v);
            BackwardUnit<Math, V, Real> unit{st, b, j};
            const V dv = V::set1(rstd) * (V::load(g + j) - V::set1(mean_g) -
                                          V::load(vh + j) * V::set1(mean_gv));
            const V r = Math::template backward_in<V>(unit, dv);
            if (P == 0) (V::load(cr + j) + r).store(cr + j);
          });
          gate_sums(b, s, j0, j1);
        }
        cell_done(r0, packed ? ra : r1, j0, j1);
      }
      team.sync();
    }
    if constexpr (kLn) {  // the gate gradients through the normalisations, then the panel
      for (int64_t task = task_begin; task < task_end; ++task) {
        const StepTask tk = step_task(task, hidden_strips, block_rows, B, H, NR, active[t]);
        const int64_t r0 = tk.r0, r1 = tk.r1, ra = tk.ra, j0 = tk.j0, j1 = tk.j1;
        for (int64_t b = r0; b < ra; ++b) {
          if (!row_active(a.lengths, b, t)) continue;
          Real sum[4];
          sum_strips(gate_part.get() + b * hidden_strips * 4, hidden_strips, 4, sum);
          const Real* stats = st.ws + b * WS + ln_stats_off;
          const Real* w = st.ws + b * WS + ln_block * H;
          const Real* gains[2] = {gain_ih, gain_hh};
          Real* grads[2] = {st.dgx + b * GH, st.dgh + b * GH};
          for (int side = 0; side < 2; ++side) {
            const Real rstd = stats[side], mean_g = sum[2 * side] / Real(GH),
                       mean_gv = sum[2 * side + 1] / Real(GH);
            const Real* vh = w + side * GH;
            for (int64_t k = 0; k < G; ++k)
              for_units<Real>(k * H + j0, k * H + j1, [&](auto v, int64_t n) {
                using V = decltype(v);
                const V gv = V::load(grads[side] + n) * V::load(gains[side] + n);
                (V::set1(rstd) * (gv - V::set1(mean_g) - V::load(vh + n) * V::set1(mean_gv)))
                    .store(grads[side] + n);
              });
          }
        }
        pack_block(dgate_panel_cur, t, r0, packed ? ra : r1, j0, j1);
      }
      team.sync();
    }
  });
  // the last step processed; its rows past nlast were inactive (zero dG, or none if packed)
  const Real* prev = T > 0 ? dgh + row0(time_of(T - 1)) * GH : nullptr;
  const int64_t nlast = T > 0 ? active[time_of(T - 1)] : 0;

  // dh0 = carry + dG_first W_hh ; dc0 = dc
  if (a.dh0) {
    copy_n(carry.get(), B * S, a.dh0);
    if (prev && nlast > 0)
      gemm<Real>(ex, nlast, S, GH, prev, GH, 1, a.w_hh, S, false, a.dh0, S, true);
  }
  if (Math::kCellState && a.dc0) copy_n(dc.get(), B * H, a.dc0);
  for (int n = 0; n < Math::kParams; ++n) {
    if (!a.dcell_w[n]) continue;
    if (Math::kLayerNorm && (n == Math::kLnIh || n == Math::kLnHh)) {  // [GH] gains
      const int side = n == Math::kLnIh ? 0 : 1;
      sum_rows(ln_sums.get() + side * GH, groups, GH, 2 * GH, a.dcell_w[n]);
      continue;
    }
    sum_rows(dparam_sums.get() + n * H, groups, H, Math::kParams * H, a.dcell_w[n]);
  }

  const GateGradients<Real> grads{dgx.get(), dgh, P > 0 ? dR.get() : nullptr, dbsum.get(),
                                  bias_sums, groups};
  weight_gradients(a, plan, cell, active, grads, ex);
}

template <class Real>
void forward_entry(const ForwardArgs<Real>& a, const Executor& ex) {
  DenormalGuard g(call_denormal_mode<Real>());
  visit_cell(a.cell, [&](auto math) { layer_forward_impl<decltype(math), Real>(a, ex); });
}

template <class Real>
void backward_entry(const BackwardArgs<Real>& a, const Executor& ex) {
  DenormalGuard g(call_denormal_mode<Real>());
  visit_cell(a.cell, [&](auto math) { layer_backward_impl<decltype(math), Real>(a, ex); });
}
