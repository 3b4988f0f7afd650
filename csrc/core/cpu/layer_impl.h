// The layer driver shared by every cell: input projection for all steps in one
// GEMM, then the time loop (recurrent GEMM + fused pointwise per step), and for
// backward the reverse loop followed by the weight-gradient GEMMs.
//
// Per step, one parallel region: task (row block, strip of NR hidden units)
// computes the recurrent GEMM for its units' G gates (W_hh is packed once per
// call in gate-blocked strips, so a task's gates are contiguous) and then the
// cell's pointwise epilogue on those units, so gates never leave the task.
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

// Row blocks of rbs rows (a multiple of MR) for a step over B rows.
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

// dst[0, n) = src[0, n), into the workspace of a forward step (see FwdStep::ws_nt).
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

// Whether gate k of a cell keeps its recurrent product apart from the x side (cell_math.h).
template <class Math>
constexpr bool apart_gate(int64_t k) {
  return (Math::kApartGates >> k) & 1u;
}

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
  const bool big = B * GH * S > 16384;
  const ActivePrefix nact(a.lengths, B, T);
  // With prefix lengths only the active (t, b) get an input projection, stored
  // densely: row nact.offset(t) + b. A packed input already is that matrix.
  const bool packed = a.packed;
  const bool compact = packed || (nact.prefix() && nact.total(T) < T * B);
  const int64_t NX = compact ? nact.total(T) : T * B;
  Buffer<Real> xc(compact && !packed ? NX * I : 0);
  if (compact && !packed) ActiveRows(a.lengths, B, T).gather(ex, a.x, I, I, xc.get());
  const Real* const xin = compact && !packed ? xc.get() : a.x;
  // First row of step t in y and ws (of every row of it, or of its active ones if packed).
  auto row0 = [&](int64_t t) { return packed ? nact.offset(t) : t * B; };

  // 1. gx[t, b] = x[t, b] W_ih^T, all steps at once. The biases (b_ih and the part
  //    of b_hh that folds in) are added by the steps' epilogues.
  //    Two cases compute it inside the steps instead, each task for its own units, into a
  //    one-step buffer:
  //    - dot: calls of a few steps of a small batch take dot products with the rows of the
  //      weights in place (packing them would cost more than it saves); both weight
  //      matrices are then split between the threads (a B = 1 step at I = H = 128 reads
  //      512 KB of weights);
  //    - fused: long sequences of a small batch whose input projection would not stay in
  //      cache, while both weight matrices fit in the threads' L2 together: each step
  //      reads its thread's share of W_ih (packed like W_hh) from L2 instead of reading a
  //      gx row set back from memory (which was also written there first).
  const bool dot = T <= 3 && B <= 8;
  const int64_t nth = imax(1, ex.num_threads());
  const bool fused = !dot && B <= 16 && B >= 2 &&
                     (I + S) * GH * static_cast<int64_t>(sizeof(Real)) <= nth * (768 << 10) &&
                     NX * GH * static_cast<int64_t>(sizeof(Real)) > (4 << 20);
  const bool in_step = dot || fused;
  Buffer<Real> gx(in_step ? B * GH : NX * GH), bias(GH);
  for (int64_t n = 0; n < GH; ++n)
    bias.get()[n] = (a.b_ih ? a.b_ih[n] : Real(0)) +
                    (a.b_hh && !apart_gate<Math>(n / H) ? a.b_hh[n] : Real(0));
  if (in_step) {
    // computed by the steps
  } else if (NX <= 8) {  // a few rows: not worth packing W_ih
    gemm_dot<Real>(NX, GH, I, xin, I, a.w_ih, I, gx.get(), GH, /*acc=*/false);
  } else {
    gemm<Real>(ex, NX, GH, I, xin, I, 1, a.w_ih, I, /*b_trans=*/true, gx.get(), GH,
            /*accumulate=*/false);
  }

  // 2. W_hh^T packed per gate: panel (gate k, strip s) holds columns
  //    k*H + s*NR .. +NR of W_hh^T, i.e. rows of W_hh, as [S, NR] (not in the dot
  //    case above: the steps then read the rows of W_hh in place).
  const int64_t nsH = ceil_div(H, NR);
  Buffer<Real> whh(dot ? 0 : G * nsH * S * NR), wih(fused ? G * nsH * I * NR : 0);
  if (!dot)
    parallel_for(ex, G * nsH, big, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t k = i / nsH, s = i % nsH;
        pack_b(a.w_hh + k * H * S, S, true, 0, S, 0, H, whh.get() + k * nsH * S * NR, s, s + 1);
        if (fused)
          pack_b(a.w_ih + k * H * I, I, true, 0, I, 0, H, wih.get() + k * nsH * I * NR, s, s + 1);
      }
    });
  const int64_t nsP = P > 0 ? ceil_div(P, NR) : 0;
  Buffer<Real> whr(dot ? 0 : nsP * H * NR);
  if (P > 0 && !dot) pack_b(a.w_hr, H, true, 0, H, 0, P, whr.get(), 0, nsP);

  // 3. States (ping-pong h so that a step reads h_{t-1} while writing h_t).
  Buffer<Real> hbuf0(B * S), hbuf1(B * S), cbuf(Math::kCellState ? B * H : 0),
      rg(Math::kApartGates ? B * GH : 0),
      hpre(P > 0 ? B * H : 0);
  if (a.h0) copy_n(a.h0, B * S, hbuf0.get()); else fill_n(hbuf0.get(), B * S, Real(0));
  // With unsorted lengths the projection GEMM also reads the rows of inactive batch
  // rows (their results are discarded): keep them defined.
  if (P > 0) fill_n(hpre.get(), B * H, Real(0));
  // The recurrent GEMM reads h_{t-1} in A-panel layout (see pack_a): each thread packs
  // its own copy at the start of the step, from the rows the previous step wrote (half of
  // them by the other thread). Scattering h_t into a shared panel as it was produced cost
  // a cross-core ownership request per store. For 4 rows or fewer the GEMM reads the rows
  // of h in place instead: a panel would be mostly padding, read with a stride of MR
  // (5-20% faster per step at B = 1..4 on Zen 4; from B = 8 the panel wins).
  const bool pack_h = !dot && B > 4;
  const int64_t pan_elems = pack_h ? ceil_div(B, MR) * MR * S : 0;
  Buffer<Real> hpk(pan_elems * imax(1, ex.num_threads()));
  if (Math::kCellState) {
    if (a.c0) copy_n(a.c0, B * H, cbuf.get()); else fill_n(cbuf.get(), B * H, Real(0));
  }
  const int64_t rbs = step_block_rows(B), nrb = ceil_div(B, rbs);
  const int64_t nblk = hprev_off / H;  // H-wide workspace blocks before h_{t-1}

  Real* const hbufs[2] = {hbuf0.get(), hbuf1.get()};
  // Non-temporal workspace stores, for a workspace too large to stay in cache until the
  // backward pass reads it (a smaller one is then read from cache: 1.4 MB written this way
  // made that pass stall on memory). They need every vector of it aligned: a 64-byte
  // aligned base (the allocators of the glue give that) and widths that keep each row and
  // block aligned.
  constexpr int64_t W = Vec<Real>::W;
  const bool ws_nt = a.ws && NX * WS * static_cast<int64_t>(sizeof(Real)) > (8 << 20) &&
                     reinterpret_cast<uintptr_t>(a.ws) % (W * sizeof(Real)) == 0 && H % W == 0 &&
                     WS % W == 0;
  run_steps(ex, T, big, [&](int64_t step, const TeamSlot& slot) {
    const int64_t t = a.reverse ? T - 1 - step : step;
    Real* const hcur = hbufs[step % 2];
    Real* const hnext = hbufs[(step + 1) % 2];
    Real* const hpk_mine = hpk.get() + slot.tid * pan_elems;
    int64_t tb, te;
    FwdStep<Real> st;
    st.H = H; st.P = P; st.S = S; st.GH = GH; st.WS = WS;
    st.b_apart = Math::kApartGates ? a.b_hh : nullptr;
    const int64_t xrow = compact ? nact.offset(t) : t * B;  // step t's first row of x and gx
    st.gx = gx.get() + (in_step ? 0 : xrow * GH);  // rows b < nact[t] if compact
    // The next step's rows of x W_ih^T: this thread works on the same units then, and
    // asks for them into L2 one row at a time during this step's epilogue. Fetched only
    // when needed, their scattered (row, gate) pieces stalled the epilogue on memory.
    const int64_t tn = a.reverse ? t - 1 : t + 1;
    const bool has_next = step + 1 < T && !in_step;
    const Real* const gx_next =
        has_next ? gx.get() + (compact ? nact.offset(tn) : tn * B) * GH : nullptr;
    const int64_t nact_next = has_next ? nact[tn] : 0;
    st.rg = rg.get();
    st.bias = bias.get();
    st.h = hcur;
    st.c = cbuf.get();
    st.ws = a.ws ? a.ws + row0(t) * WS : nullptr;
    st.ws_nt = ws_nt;
    // h_t before the projection: the state, or (with P) the projection's input
    Real* const hout = P > 0 ? hpre.get() : hnext;
    const int64_t ld_hout = P > 0 ? H : S;
    Real* ytn = a.y + row0(t) * S;

    slot.share(nrb * nsH, &tb, &te);
    if (pack_h && tb < te) pack_a(nact[t], S, hcur, S, 1, hpk_mine);
    {
      for (int64_t task = tb; task < te; ++task) {
        const int64_t rb = task / nsH, s = task % nsH;
        const int64_t r0 = rb * rbs, r1 = imin(B, r0 + rbs);
        const int64_t ra = imin(r1, nact[t]);  // rows [ra, r1) are inactive at t
        const int64_t j0 = s * NR, j1 = imin(H, j0 + NR);
        if (step == 0 && !in_step)  // the first step has no previous one to ask ahead
          for (int64_t b = r0; b < ra; ++b)
            for (int64_t k = 0; k < G; ++k) prefetch_units(st.gx + b * GH + k * H + j0, j1 - j0);
        if (in_step)  // this task's columns of x_t W_ih^T (see step 1)
          for (int64_t k = 0; k < G && ra > r0; ++k) {
            const Real* xr = xin + (xrow + r0) * I;
            Real* out = st.gx + r0 * GH + k * H + j0;
            if (dot)
              gemm_dot<Real>(ra - r0, j1 - j0, I, xr, I, a.w_ih + (k * H + j0) * I, I, out, GH, false);
            else
              strip_rows<Real>(ra - r0, I, xr, I, 1, wih.get() + (k * nsH + s) * I * NR, NR, out, GH,
                            j1 - j0, false);
          }
        // Gates whose h_{t-1} W_hh^T adds straight onto x_t W_ih^T accumulate into gx
        // in place: the register tile loads those gx values once, at its end, and the
        // epilogue then finds the sum in cache. The others go to rg.
        for (int64_t k = 0; k < G && ra > r0; ++k) {
          const bool onto_gx = !apart_gate<Math>(k);
          Real* out = (onto_gx ? st.gx : rg.get()) + r0 * GH + k * H + j0;
          if (dot)
            gemm_dot<Real>(ra - r0, j1 - j0, S, hcur + r0 * S, S, a.w_hh + (k * H + j0) * S, S, out,
                        GH, onto_gx);
          else if (pack_h)
            strip_rows_packed<Real>(ra - r0, S, hpk_mine + r0 * S, whh.get() + (k * nsH + s) * S * NR,
                                 NR, out, GH, j1 - j0, onto_gx);
          else
            strip_rows<Real>(ra - r0, S, hcur + r0 * S, S, 1, whh.get() + (k * nsH + s) * S * NR, NR,
                          out, GH, j1 - j0, onto_gx);
        }
        for (int64_t b = r0; b < r1; ++b) {
          if (b < nact_next && (compact || row_active(a.lengths, b, tn)))
            for (int64_t k = 0; k < G; ++k)
              prefetch_units(gx_next + b * GH + k * H + j0, j1 - j0);
          if (row_active(a.lengths, b, t)) {
            for_units<Real>(j0, j1, [&](auto v, int64_t j) {
              using V = decltype(v);
              ForwardUnit<V, Real> unit{st, b, j};
              const V h = Math::template forward<V>(unit);
              h.store(hout + b * ld_hout + j);
              if (P == 0) h.store(ytn + b * S + j);
              else if (st.ws) save_value(st, h, st.ws + b * WS + proj_in_off + j);
            });
          } else {  // inactive: the state carries over; y and ws get zeros (no row if packed)
            if (P == 0) {
              copy_n(hcur + b * S + j0, j1 - j0, hnext + b * S + j0);
              if (!packed) fill_n(ytn + b * S + j0, j1 - j0, Real(0));
            }
            if (st.ws && !packed)
              for (int64_t q = 0; q < nblk; ++q) fill_n(st.ws + b * WS + q * H + j0, j1 - j0, Real(0));
          }
          if (P == 0) {
            if (st.ws && (!packed || b < ra))
              save_units(st, hcur + b * S + j0, j1 - j0, st.ws + b * WS + hprev_off + j0);
          }
        }
      }
    }
    if (ws_nt) store_fence();
    slot.sync();

    if (P > 0) {  // h_t = (o * tanh(c_t)) W_hr^T, then y_t and the saved h_{t-1}
      slot.share(nrb * nsP, &tb, &te);
      for (int64_t task = tb; task < te; ++task) {
        {
          const int64_t rb = task / nsP, s = task % nsP;
          const int64_t r0 = rb * rbs, r1 = imin(B, r0 + rbs);
          const int64_t ra = imin(r1, nact[t]);
          const int64_t j0 = s * NR, j1 = imin(P, j0 + NR);
          if (ra > r0 && dot)
            gemm_dot<Real>(ra - r0, j1 - j0, H, hpre.get() + r0 * H, H, a.w_hr + j0 * H, H,
                        hnext + r0 * S + j0, S, false);
          else if (ra > r0)
            strip_rows<Real>(ra - r0, H, hpre.get() + r0 * H, H, 1, whr.get() + s * H * NR, NR,
                          hnext + r0 * S + j0, S, j1 - j0, false);
          for (int64_t b = r0; b < r1; ++b) {
            if (row_active(a.lengths, b, t)) {
              copy_n(hnext + b * S + j0, j1 - j0, ytn + b * S + j0);
            } else {
              copy_n(hcur + b * S + j0, j1 - j0, hnext + b * S + j0);
              if (!packed) fill_n(ytn + b * S + j0, j1 - j0, Real(0));
            }
            if (st.ws && (!packed || b < ra))
              save_units(st, hcur + b * S + j0, j1 - j0, st.ws + b * WS + hprev_off + j0);
          }
        }
      }
      if (ws_nt) store_fence();
      slot.sync();
    }
  });
  if (a.hy) copy_n(hbufs[T % 2], B * S, a.hy);
  if (Math::kCellState && a.cy) copy_n(cbuf.get(), B * H, a.cy);
}

template <class Math, class Real>
void layer_backward_impl(const BackwardArgs<Real>& a, const Executor& ex) {
  constexpr int NR = kNR<Real>;
  constexpr bool kSplit = Math::kApartGates != 0;  // dG differs between the x and h sides
  const CellInfo& cell = cell_info(a.cell);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, P = a.P;
  const int64_t S = P > 0 ? P : H, G = Math::kGates, GH = G * H, TB = T * B;
  const int64_t WS = cell.workspace_cols(H, P);
  const int64_t hprev_off = cell.hprev_col(H, P), proj_in_off = cell.proj_input_col(H);
  const bool big = B * GH * S > 16384;

  const ActivePrefix nact(a.lengths, B, T);
  const bool packed = a.packed;
  // Rows of the per-step buffers (dG, dR): every (t, b), or the active ones if packed,
  // at row row0(t) + b as in ForwardArgs::packed.
  const int64_t NR_ = packed ? nact.total(T) : TB;
  auto row0 = [&](int64_t t) { return packed ? nact.offset(t) : t * B; };
  Buffer<Real> dgx(NR_ * GH), dgh_own(kSplit ? NR_ * GH : 0);
  Real* dgh = kSplit ? dgh_own.get() : dgx.get();
  Buffer<Real> carry(B * S), dc(Math::kCellState ? B * H : 0), rec(B * S);
  if (a.dhy) copy_n(a.dhy, B * S, carry.get()); else fill_n(carry.get(), B * S, Real(0));
  if (Math::kCellState) {
    if (a.dcy) copy_n(a.dcy, B * H, dc.get()); else fill_n(dc.get(), B * H, Real(0));
  }

  // W_hh as the [GH, S] right operand of dh_{t-1} = dG_t W_hh; W_hr as [P, H].
  // Packed once per call (each strip contiguous, used every step); a call of a
  // few steps reads them in place instead.
  const int64_t nsS = ceil_div(S, NR), nsH = ceil_div(H, NR);
  const bool direct = T <= 3;
  RightOperand<Real> whh(a.w_hh, S, false, 0, GH, S, &ex, direct);
  RightOperand<Real> whr(a.w_hr, H, false, 0, P, P > 0 ? H : 0, &ex, direct);
  Buffer<Real> dR(P > 0 ? NR_ * P : 0), dhpre(P > 0 ? B * H : 0);
  const int64_t rbs = step_block_rows(B), nrb = ceil_div(B, rbs);
  const int64_t nblk = hprev_off / H;  // H-wide workspace blocks before h_{t-1}
  // dG (h side) of each step also in A-panel layout, for the next step's GEMM
  // (for 4 rows or fewer the GEMM reads the rows of dG in place instead, as above).
  // No initial fill: a step's GEMM reads only rows the step before packed (finish_block).
  const bool pack_d = B > 4;
  const int64_t npan = pack_d ? ceil_div(B, MR) : 0;
  Buffer<Real> dpk0(npan * GH * MR), dpk1(npan * GH * MR);
  Real* const dpks[2] = {dpk0.get(), dpk1.get()};
  // The bias gradients are the column sums of dG (x side for b_ih, h side for b_hh), kept
  // per row block: a task adds its block while it is still in cache, and the (row block,
  // strip) of a task is the same thread's every step, so no two threads add to one sum.
  const int64_t nsum = (a.db_ih || a.db_hh) ? (kSplit ? 2 : 1) : 0;
  Buffer<Real> dbsum(nsum * nrb * GH);
  fill_n(dbsum.get(), nsum * nrb * GH, Real(0));
  // Once the rows of its block are done, a task
  // - packs the block for the next step's GEMM: rows [r0, r1) (r0 a multiple of MR; rows of
  //   the panel past r1 become zeros, and are never read) and, in each gate, units [j0, j1),
  //   by an in-register transpose, where scattering every value to its panel slot as it
  //   was computed took 5% of a training step;
  // - adds the block's columns to its bias-gradient sums.
  auto finish_block = [&](Real* pk, int64_t t, int64_t r0, int64_t r1, int64_t j0, int64_t j1) {
    const Real* gsrc[2] = {dgx.get() + row0(t) * GH, dgh + row0(t) * GH};
    for (int64_t p0 = r0; pack_d && p0 < r1; p0 += MR)
      for (int64_t k = 0; k < G; ++k)
        pack_a(imin(MR, r1 - p0), j1 - j0, gsrc[1] + p0 * GH + k * H + j0, GH, 1,
               pk + p0 * GH + (k * H + j0) * MR);
    for (int64_t q = 0; q < nsum; ++q) {
      Real* sum = dbsum.get() + (q * nrb + r0 / rbs) * GH;
      for (int64_t k = 0; k < G; ++k)
        for_units<Real>(k * H + j0, k * H + j1, [&](auto v, int64_t n) {
          using V = decltype(v);
          V acc = V::load(sum + n);
          for (int64_t b = r0; b < r1; ++b) acc = acc + V::load(gsrc[q] + b * GH + n);
          acc.store(sum + n);
        });
    }
  };

  auto time_of = [&](int64_t step) { return a.reverse ? step : T - 1 - step; };
  run_steps(ex, T, big, [&](int64_t step, const TeamSlot& slot) {
    const int64_t t = time_of(step);
    // dG (h side) of the step processed just before, if any; it is zero on the rows
    // [nrec, B) that were inactive there, so dG_prev W_hh is needed on [0, nrec) only
    const Real* prev = step > 0 ? dgh + row0(time_of(step - 1)) * GH : nullptr;
    const int64_t nrec = prev ? nact[time_of(step - 1)] : 0;
    const Real* const dpk_prev = dpks[(step + 1) % 2];
    Real* const dpk_cur = dpks[step % 2];
    int64_t tb, te;
    BwdStep<Real> st;
    st.H = H; st.S = S; st.GH = GH; st.WS = WS;
    st.hprev_col = hprev_off;
    st.ws = a.ws + row0(t) * WS;
    st.dc = dc.get();
    st.dgx = dgx.get() + row0(t) * GH;
    st.dgh = dgh + row0(t) * GH;
    const Real* dyt = a.dy ? a.dy + row0(t) * S : nullptr;
    // The next step's saved activations and dy, asked into L2 a row at a time during
    // this step (as the forward pass does with x W_ih^T).
    const bool has_next = step + 1 < T;
    const int64_t tn = has_next ? time_of(step + 1) : t;
    const Real* const ws_next = has_next ? a.ws + row0(tn) * WS : nullptr;
    const Real* const dy_next = has_next && a.dy ? a.dy + row0(tn) * S : nullptr;
    const int64_t nact_next = has_next ? nact[tn] : 0;

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

    // Phase 1, over strips of the S state units: dh = carry + dy_t + dG_prev W_hh; then,
    // without a projection, the cell's derivatives; with one, only dR_t (phase 2 does the cell).
    Real* dRt = P > 0 ? dR.get() + row0(t) * P : nullptr;
    slot.share(nrb * nsS, &tb, &te);
    {
      alignas(64) Real dh[kNR<Real>];
      for (int64_t task = tb; task < te; ++task) {
        const int64_t rb = task / nsS, s = task % nsS;
        const int64_t r0 = rb * rbs, r1 = imin(B, r0 + rbs);
        const int64_t j0 = s * NR, j1 = imin(S, j0 + NR);
        if (P == 0 && step == 0)  // the first step's saved activations (later ones: below)
          for (int64_t b = r0; b < imin(r1, nact[t]); ++b)
            for (int64_t q = 0; q < nblk; ++q)
              prefetch_units(st.ws + b * WS + q * H + j0, j1 - j0);
        const int64_t rr = imin(r1, nrec);
        if (rr > r0) {
          int64_t ld;
          const Real* bs = whh.strip(s, &ld);
          if (pack_d)
            strip_rows_packed<Real>(rr - r0, GH, dpk_prev + r0 * GH, bs, ld, rec.get() + r0 * S + j0,
                                 S, j1 - j0, false);
          else
            strip_rows<Real>(rr - r0, GH, prev + r0 * GH, GH, 1, bs, ld, rec.get() + r0 * S + j0, S,
                          j1 - j0, false);
        }
        for (int64_t b = r0; b < r1; ++b) {
          if (P == 0 && b < nact_next && row_active(a.lengths, b, tn)) {
            for (int64_t q = 0; q < nblk; ++q)
              prefetch_units(ws_next + b * WS + q * H + j0, j1 - j0);
            if (dy_next) prefetch_units(dy_next + b * S + j0, j1 - j0);
          }
          total_dh(b, j0, j1, dh);
          const bool active = row_active(a.lengths, b, t);
          Real* cr = carry.get() + b * S;
          if (P > 0 && active) {
            copy_n(dh, j1 - j0, dRt + b * P + j0);
            fill_n(cr + j0, j1 - j0, Real(0));
          } else if (P > 0) {  // inactive: dh passes to h_{t-1}, dR_t is zero (no row if packed)
            if (!packed) fill_n(dRt + b * P + j0, j1 - j0, Real(0));
            copy_n(dh, j1 - j0, cr + j0);
          } else if (active) {
            for_units<Real>(j0, j1, [&](auto v, int64_t j) {
              using V = decltype(v);
              BackwardUnit<Math, V, Real> unit{st, b, j};
              Math::template backward<V>(unit, V::load(dh + (j - j0))).store(cr + j);
            });
          } else {
            copy_n(dh, j1 - j0, cr + j0);
            // packed: no row; the next step's GEMM reads the active rows only
            if (!packed) zero_grads(b, j0, j1);
          }
        }
        if (P == 0) finish_block(dpk_cur, t, r0, packed ? imin(r1, nact[t]) : r1, j0, j1);
      }
    }
    slot.sync();
    if (P > 0) {
      slot.share(nrb * nsH, &tb, &te);
      {
        for (int64_t task = tb; task < te; ++task) {
          const int64_t rb = task / nsH, s = task % nsH;
          const int64_t r0 = rb * rbs, r1 = imin(B, r0 + rbs);
          const int64_t j0 = s * NR, j1 = imin(H, j0 + NR);
          const int64_t ra = imin(r1, nact[t]);
          int64_t ld;
          const Real* bs = whr.strip(s, &ld);
          if (ra > r0)
            strip_rows<Real>(ra - r0, P, dRt + r0 * P, P, 1, bs, ld, dhpre.get() + r0 * H + j0, H,
                          j1 - j0, false);
          for (int64_t b = r0; b < r1; ++b) {
            if (row_active(a.lengths, b, t)) {
              const Real* dhp = dhpre.get() + b * H;
              for_units<Real>(j0, j1, [&](auto v, int64_t j) {
                using V = decltype(v);
                BackwardUnit<Math, V, Real> unit{st, b, j};
                Math::template backward<V>(unit, V::load(dhp + j));
              });
            } else if (!packed) {
              zero_grads(b, j0, j1);
            }
          }
          finish_block(dpk_cur, t, r0, packed ? ra : r1, j0, j1);
        }
      }
      slot.sync();
    }
  });
  // the last step processed; its rows past nlast were inactive (zero dG, or none if packed)
  const Real* prev = T > 0 ? dgh + row0(time_of(T - 1)) * GH : nullptr;
  const int64_t nlast = T > 0 ? nact[time_of(T - 1)] : 0;

  // dh0 = carry + dG_first W_hh ; dc0 = dc
  if (a.dh0) {
    copy_n(carry.get(), B * S, a.dh0);
    if (prev && nlast > 0) gemm<Real>(ex, nlast, S, GH, prev, GH, 1, a.w_hh, S, false, a.dh0, S, true);
  }
  if (Math::kCellState && a.dc0) copy_n(dc.get(), B * H, a.dc0);

  // Whole-sequence GEMMs, over the active (t, b) only. Inactive ones have zero gate
  // gradients, but their rows of x (the padding) may hold anything: a NaN or Inf there,
  // times a zero gate gradient, would still make dW_ih NaN. So whenever the lengths leave
  // some (t, b) inactive, the rows of the active ones are first gathered densely (ActiveRows),
  // which also spares the GEMMs the inactive rows. A packed call's buffers already are dense.
  int64_t n_active = packed ? nact.total(T) : TB;
  if (!packed && a.lengths) {
    n_active = 0;
    for (int64_t b = 0; b < B; ++b) n_active += imin(imax(a.lengths[b], 0), T);
  }
  const bool compact = !packed && n_active < TB;
  const ActiveRows active(compact ? a.lengths : nullptr, compact ? B : 0, compact ? T : 0);
  const int64_t N = n_active;
  auto dense = [&](const Real* src, int64_t ld, int64_t cols, Buffer<Real>& buf) -> const Real* {
    if (!compact) return src;
    buf.reset(N * cols);
    active.gather(ex, src, ld, cols, buf.get());
    return buf.get();
  };
  // Columns [off, ...) of the saved workspace (none if nothing was saved: an empty call).
  auto ws_cols = [&](int64_t off) -> const Real* { return a.ws ? a.ws + off : nullptr; };
  Buffer<Real> dgx_b, dgh_b, x_b, hp_b, dr_b, hq_b, dx_b;
  const Real* dgx_c = dense(dgx.get(), GH, GH, dgx_b);
  const Real* dgh_c = kSplit ? dense(dgh, GH, GH, dgh_b) : dgx_c;
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
          int64_t k = active.offset(t);
          for (int64_t r = 0; r < B; ++r) {
            Real* d = a.dx + (t * B + r) * I;
            if (row_active(a.lengths, r, t)) copy_n(out + (k++) * I, I, d); else fill_n(d, I, Real(0));
          }
        }
      });
  }
  if (a.dw_ih) gemm<Real>(ex, GH, I, N, dgx_c, 1, GH, dense(a.x, I, I, x_b), I, false, a.dw_ih, I, false);
  if (a.dw_hh)
    gemm<Real>(ex, GH, S, N, dgh_c, 1, GH, dense(ws_cols(hprev_off), WS, S, hp_b), compact ? S : WS,
            false, a.dw_hh, S, false);
  Real* const db_out[2] = {a.db_ih, a.db_hh};
  for (int q = 0; q < 2; ++q) {
    if (!db_out[q]) continue;
    const Real* sums = dbsum.get() + (nsum == 2 ? q : 0) * nrb * GH;
    for (int64_t n = 0; n < GH; ++n) {
      Real v = Real(0);
      for (int64_t rb = 0; rb < nrb; ++rb) v += sums[rb * GH + n];
      db_out[q][n] = v;
    }
  }
  if (a.dw_hr && P > 0)
    gemm<Real>(ex, P, H, N, dense(dR.get(), P, P, dr_b), 1, P, dense(ws_cols(proj_in_off), WS, H, hq_b),
            compact ? H : WS, false, a.dw_hr, H, false);
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
