// Small-footprint GEMM for the RNN kernels: B packed into column strips of NR,
// A read in place through (row, column) strides, an MR x NR register tile.
//
// Included inside namespace rnnfast::core::<isa> by a kernels_<isa>.cpp after
// `IsaTraits` (ScalarIsa or SimdIsa) is defined and runtime_impl.h is included, so every
// instruction set gets its own copy compiled for its own target.

constexpr int MR = IsaTraits::MR;  // rows per register tile (the ISA's register file decides)
constexpr int MB = 48;        // rows per parallel task (a multiple of MR)
static_assert(MB % MR == 0, "MB must be a multiple of MR");

template <class T>
using Vec = typename IsaTraits::template Vec<T>;
template <class T>
constexpr int kNR = IsaTraits::template NR<T>;

// Sixteen zeros: the rows past the end of an operand, for the 16 x 16 packing transposes.
alignas(64) inline constexpr float kZeros16[16] = {};

// Packs rows [k0, k0 + kc) and columns [n0, n0 + n) of the K x N operand B
// into strips [s_begin, s_end) of kc x NR values (columns past n are zero).
//   B      [K, N] with row stride ldb, or [N, K] if b_trans   read
//   out    [ceil(n / NR), kc, NR]                            written
template <class T>
void pack_b(const T* B, int64_t ldb, bool b_trans, int64_t k0, int64_t kc, int64_t n0, int64_t n,
            T* out, int64_t s_begin, int64_t s_end) {
  constexpr int NR = kNR<T>;
  for (int64_t s = s_begin; s < s_end; ++s) {
    T* dst = out + s * kc * NR;
    const int64_t c0 = n0 + s * NR;
    const int64_t nc = imin(NR, n0 + n - c0);
    int64_t k = 0;
    if constexpr (IsaTraits::kTranspose16 && std::is_same<T, float>::value && NR % 16 == 0) {
      // B given as [N, K]: 16 of its rows (columns of the strip) by 16 k at a time through
      // the in-register transpose, where a scalar loop read each value with a stride of ldb.
      if (b_trans)
        for (; k + 16 <= kc; k += 16)
          for (int c = 0; c < NR; c += 16) {
            const float* r16[16];
            for (int i = 0; i < 16; ++i)
              r16[i] = c + i < nc ? B + (c0 + c + i) * ldb + (k0 + k) : kZeros16;
            IsaTraits::transpose16(r16, dst + k * NR + c, NR, 16);
          }
    }
    for (; k < kc; ++k) {
      T* d = dst + k * NR;
      if (b_trans) {
        const T* src = B + c0 * ldb + (k0 + k);
        for (int64_t c = 0; c < nc; ++c) d[c] = src[c * ldb];
      } else {
        const T* src = B + (k0 + k) * ldb + c0;
        for (int64_t c = 0; c < nc; ++c) d[c] = src[c];
      }
      for (int64_t c = nc; c < NR; ++c) d[c] = T(0);
    }
  }
}

// C_i[M x ncols] (+)= A[M x kc] * Bp_i[kc x NR] for M <= MR rows and NS strips i, one
// register tile of M x NS strips.
//   A     element (r, k) at A[r * a_rs + k * a_cs]; with PackedA at A[k * MR + r]   read
//   Bp_i  strip i [kc, NR], row stride ldbp (NR if packed)                        read
//   C_i   [M, ncols] with row stride ldc                                          written (added to if acc_i)
// PackedA lets every broadcast use one base register with a constant offset. Every output is
// the same sum in the same order whatever NS is (k ascending into one accumulator, then C):
// NS only lets tiles of few rows keep enough FMAs in flight (see group_strips).
// Stream: full strips are written with non-temporal stores (C_i and ldc aligned to a vector).
template <class T, int M, int NS, bool PackedA, bool Stream = false>
void micro_tile_group(int64_t kc, const T* A, int64_t a_rs, int64_t a_cs, const T* const* Bp,
                      int64_t ldbp, T* const* C, int64_t ldc, int64_t ncols, const bool* acc) {
  using V = Vec<T>;
  constexpr int NR = kNR<T>;
  constexpr int NV = NR / V::W;
  V c[M][NS][NV];
  for (int r = 0; r < M; ++r)
    for (int i = 0; i < NS; ++i)
      for (int v = 0; v < NV; ++v) c[r][i][v] = V::zero();
  for (int i = 0; i < NS; ++i)
    if (acc[i])  // C is read once, after the k loop: ask for it now, while the loop runs
      for (int r = 0; r < M; ++r)
        for (int64_t off = 0; off < ncols * static_cast<int64_t>(sizeof(T)); off += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(C[i] + r * ldc) + off, 1, 3);
  const T* bp[NS];
  for (int i = 0; i < NS; ++i) bp[i] = Bp[i];
  for (int64_t k = 0; k < kc; ++k) {
    V b[NS][NV];
    for (int i = 0; i < NS; ++i)
      for (int v = 0; v < NV; ++v) b[i][v] = V::load(bp[i] + k * ldbp + v * V::W);
    const T* ak = PackedA ? A + k * MR : A + k * a_cs;
    for (int r = 0; r < M; ++r) {
      V av = V::set1(PackedA ? ak[r] : ak[r * a_rs]);
      for (int i = 0; i < NS; ++i)
        for (int v = 0; v < NV; ++v) c[r][i][v] = V::fmadd(av, b[i][v], c[r][i][v]);
    }
  }
  for (int i = 0; i < NS; ++i) {
    if (ncols == NR) {
      for (int r = 0; r < M; ++r)
        for (int v = 0; v < NV; ++v) {
          T* p = C[i] + r * ldc + v * V::W;
          V out = acc[i] ? c[r][i][v] + V::load(p) : c[r][i][v];
          if constexpr (Stream) out.stream(p); else out.store(p);
        }
    } else {
      alignas(64) T tile[NR];
      for (int r = 0; r < M; ++r) {
        for (int v = 0; v < NV; ++v) c[r][i][v].store(tile + v * V::W);
        T* p = C[i] + r * ldc;
        for (int64_t j = 0; j < ncols; ++j) p[j] = acc[i] ? p[j] + tile[j] : tile[j];
      }
    }
  }
}

// Strips per register tile of m rows. Each FMA waits for the previous one into its
// accumulator (4 cycles on Zen 2-4 and on Intel cores since Skylake, which issue two per
// cycle), so a tile needs 8 accumulators to keep the FMA units busy; one strip of m rows has
// m * NR / W. Tiles of few rows (a small batch, or the rows left after full tiles) therefore
// take up to 4 strips at once, up to 12 accumulators (AVX2 has 16 registers). Measured on AMD
// Zen 3 (AVX2, 2 threads), time against one strip per tile: LSTM 200,1,128,128 inference 0.80,
// training 0.85; 2-layer LSTM 64,1,64,256 training 0.81 (bench/results/cpu-2026-12-01-zen3.md).
template <class T>
constexpr int group_strips(int m) {
  const int per_strip = m * (kNR<T> / Vec<T>::W);
  const int n = (8 + per_strip - 1) / per_strip;
  return n < 1 ? 1 : (n > 4 ? 4 : n);
}

// Runs ns strips (any count) of the same M rows as tiles of NS strips, then one of fewer.
template <class T, int M, int NS, bool PackedA, bool Stream = false>
struct StripGroups {
  static void run(int64_t ns, int64_t kc, const T* A, int64_t a_rs, int64_t a_cs,
                  const T* const* Bp, int64_t ldbp, T* const* C, int64_t ldc, int64_t ncols,
                  const bool* acc) {
    for (; ns >= NS; ns -= NS, Bp += NS, C += NS, acc += NS)
      micro_tile_group<T, M, NS, PackedA, Stream>(kc, A, a_rs, a_cs, Bp, ldbp, C, ldc, ncols,
                                                  acc);
    if (ns > 0)
      StripGroups<T, M, NS - 1, PackedA, Stream>::run(ns, kc, A, a_rs, a_cs, Bp, ldbp, C, ldc,
                                                      ncols, acc);
  }
};
template <class T, int M, bool PackedA, bool Stream>
struct StripGroups<T, M, 0, PackedA, Stream> {
  static void run(int64_t, int64_t, const T*, int64_t, int64_t, const T* const*, int64_t,
                  T* const*, int64_t, int64_t, const bool*) {}
};

// Rows [0, M) of ns strips as tiles of MR rows, then the m rows left (m < MR, a run-time
// count) as tiles of m rows, each over group_strips(m) strips at a time.
template <class T, int M, bool PackedA>
struct RowTiles {
  static void run(int64_t m, int64_t kc, const T* A, int64_t a_rs, int64_t a_cs, int64_t ns,
                  const T* const* Bp, int64_t ldbp, T* const* C, int64_t ldc, int64_t ncols,
                  const bool* acc) {
    if (m == M)
      StripGroups<T, M, group_strips<T>(M), PackedA>::run(ns, kc, A, a_rs, a_cs, Bp, ldbp, C,
                                                          ldc, ncols, acc);
    else
      RowTiles<T, M - 1, PackedA>::run(m, kc, A, a_rs, a_cs, ns, Bp, ldbp, C, ldc, ncols, acc);
  }
};
template <class T, bool PackedA>
struct RowTiles<T, 0, PackedA> {
  static void run(int64_t, int64_t, const T*, int64_t, int64_t, int64_t, const T* const*,
                  int64_t, T* const*, int64_t, int64_t, const bool*) {}
};

// Rows [0, M) of C_i = A * Bp_i for ns strips i (M arbitrary), A packed by pack_a (PackedA)
// or read through its strides. Strip i's outputs go to C[i] (row stride ldc), added to its
// contents if acc[i].
template <class T, bool PackedA>
void strips_rows(int64_t M, int64_t kc, const T* A, int64_t a_rs, int64_t a_cs, int64_t ns,
                 const T* const* Bp, int64_t ldbp, T* const* C, int64_t ldc, int64_t ncols,
                 const bool* acc) {
  constexpr int64_t kChunk = 8;  // strips per pass over the rows
  T* c[kChunk];
  for (int64_t i0 = 0; i0 < ns; i0 += kChunk) {
    const int64_t n = imin(kChunk, ns - i0);
    for (int64_t r = 0; r < M; r += MR) {
      const T* a = PackedA ? A + r * kc : A + r * a_rs;
      for (int64_t i = 0; i < n; ++i) c[i] = C[i0 + i] + r * ldc;
      RowTiles<T, MR, PackedA>::run(imin(MR, M - r), kc, a, a_rs, a_cs, n, Bp + i0, ldbp, c,
                                    ldc, ncols, acc + i0);
    }
  }
}

// Rows [0, M) of C = A * Bp for one strip, M arbitrary (tiles of MR rows).
template <class T>
void strip_rows(int64_t M, int64_t kc, const T* A, int64_t a_rs, int64_t a_cs, const T* Bp,
                int64_t ldbp, T* C, int64_t ldc, int64_t ncols, bool acc) {
  strips_rows<T, false>(M, kc, A, a_rs, a_cs, 1, &Bp, ldbp, &C, ldc, ncols, &acc);
}

// Packs rows [0, M) and columns [0, kc) of A (element (m, k) at A[m * a_rs + k * a_cs])
// into panels of MR rows: panel p is [kc, MR] at out + p * kc * MR (rows past M are zero).
template <class T>
void pack_a(int64_t M, int64_t kc, const T* A, int64_t a_rs, int64_t a_cs, T* out) {
  int64_t p0 = 0;
  if (a_rs == 1 && M >= MR) {
    // A transposed in memory: each k gives the M values of all panels contiguously. One
    // pass over k for every full panel at once reads each source row (often a new page,
    // e.g. a row of dG) once, as a few whole lines, instead of once per panel.
    p0 = M / MR;
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = A + k * a_cs;
      for (int64_t p = 0; p < p0; ++p)
        std::memcpy(out + p * kc * MR + k * MR, s + p * MR, MR * sizeof(T));
    }
  }
  for (int64_t p = p0; p * MR < M; ++p) {
    T* dst = out + p * kc * MR;
    const int64_t rows = imin(MR, M - p * MR);
    const T* src = A + p * MR * a_rs;
    // MR sequential row streams in (rows past M read as zeros), one sequential stream out
    int64_t k = 0;
    if constexpr (IsaTraits::kTranspose16 && std::is_same<T, float>::value) {
      static_assert(MR <= 16, "a panel of at most 16 rows");
      if (a_cs == 1)
        for (; k + 16 <= kc; k += 16) {
          const float* r16[16];
          for (int r = 0; r < 16; ++r) r16[r] = r < rows ? src + r * a_rs + k : kZeros16;
          IsaTraits::transpose16(r16, dst + k * MR, MR, MR);
        }
    }
    for (; k < kc; ++k) {
      for (int64_t r = 0; r < rows; ++r) dst[k * MR + r] = src[r * a_rs + k * a_cs];
      for (int64_t r = rows; r < MR; ++r) dst[k * MR + r] = T(0);
    }
  }
}

// Rows [0, M) of C = Ap * Bp for one strip, A packed by pack_a.
template <class T>
void strip_rows_packed(int64_t M, int64_t kc, const T* Ap, const T* Bp, int64_t ldbp, T* C,
                       int64_t ldc, int64_t ncols, bool acc) {
  strips_rows<T, true>(M, kc, Ap, 0, 0, 1, &Bp, ldbp, &C, ldc, ncols, &acc);
}

// The right operand of a GEMM as NR-column strips, packed so that each strip is
// contiguous [kc, NR]. A row-major B[K, N] may instead be read in place (its
// strips are rows of NR values, stride ldb; only a partial last strip is
// copied): cheaper for a single use, but a strip then touches a new page every
// row or two once ldb is large, so callers allow it only for small operands or
// calls that cannot amortise the copy.
template <class T>
class RightOperand {
 public:
  // Rows [k0, k0 + kc) and columns [0, N) of B; b_trans: B is given as [N, K].
  RightOperand(const T* B, int64_t ldb, bool b_trans, int64_t k0, int64_t kc, int64_t N,
               const Executor* ex = nullptr, bool allow_direct = false)
      : N_(N), kc_(kc), ns_(ceil_div(N, kNR<T>)) {
    constexpr int NR = kNR<T>;
    if (!b_trans && allow_direct) {
      direct_ = B + k0 * ldb;
      ldb_ = ldb;
      if (N % NR != 0) {
        packed_.reset(kc * NR);
        pack_b(B, ldb, false, k0, kc, (ns_ - 1) * NR, N - (ns_ - 1) * NR, packed_.get(), 0, 1);
      }
    } else {
      packed_.reset(ns_ * kc * NR);
      T* out = packed_.get();
      auto work = [&](int64_t b, int64_t e) { pack_b(B, ldb, b_trans, k0, kc, 0, N, out, b, e); };
      if (ex) parallel_for(*ex, ns_, ns_ * kc * NR > 65536, work); else work(0, ns_);
    }
  }
  int64_t strips() const { return ns_; }
  // Strip s and its row stride.
  const T* strip(int64_t s, int64_t* ld) const {
    constexpr int NR = kNR<T>;
    if (direct_ && (s + 1) * NR <= N_) {
      *ld = ldb_;
      return direct_ + s * NR;
    }
    *ld = NR;
    return direct_ ? packed_.get() : packed_.get() + s * kc_ * NR;
  }

 private:
  const T* direct_ = nullptr;
  int64_t ldb_ = 0, N_, kc_, ns_;
  Buffer<T> packed_;
};

// Rows [r0, r1) of C = A * Bp over all its strips, one row at a time (tiles of one row and
// group_strips(1) strips), the full strips with non-temporal stores if Stream.
//   Bp  ns packed strips [kc, NR], strip s at Bp + s * kc * NR; the last covers ncols_last
template <class T, bool Stream>
void rows_all_strips(int64_t r0, int64_t r1, int64_t kc, const T* A, int64_t a_rs,
                     int64_t a_cs, const T* Bp, int64_t ns, int64_t ncols_last, T* C,
                     int64_t ldc, bool accumulate) {
  constexpr int NR = kNR<T>;
  constexpr int64_t kChunk = 8;
  const int64_t full = ncols_last == NR ? ns : ns - 1;
  const T* bp[kChunk];
  T* c[kChunk];
  bool acc[kChunk];
  for (int64_t i = 0; i < kChunk; ++i) acc[i] = accumulate;
  for (int64_t r = r0; r < r1; ++r) {
    const T* a = A + r * a_rs;
    for (int64_t i0 = 0; i0 < full; i0 += kChunk) {
      const int64_t n = imin(kChunk, full - i0);
      for (int64_t i = 0; i < n; ++i) {
        bp[i] = Bp + (i0 + i) * kc * NR;
        c[i] = C + r * ldc + (i0 + i) * NR;
      }
      StripGroups<T, 1, group_strips<T>(1), false, Stream>::run(n, kc, a, a_rs, a_cs, bp, NR,
                                                                c, ldc, NR, acc);
    }
    if (full < ns) {
      bp[0] = Bp + full * kc * NR;
      c[0] = C + r * ldc + full * NR;
      micro_tile_group<T, 1, 1, false>(kc, a, a_rs, a_cs, bp, NR, c, ldc, ncols_last, acc);
    }
  }
  if constexpr (Stream) store_fence();
}

// Weight gradients of a call of few rows (a cell stepped from Python: K = B) are GEMMs of few
// k steps into a large C that nothing reads again soon: little arithmetic per output, so their
// time is the time to write C, and that depends on the order it is written in. The register
// tiles of the blocked path write MR-row x NR-column pieces (MR = 6 on AVX2) of 48-row blocks
// in turn, a new page for nearly every row once rows are long. Row by row instead is one
// sequential stream per thread, with non-temporal stores (when C's rows are aligned to a
// vector). Measured on AMD Zen 3: a rank-1 update of 8 MB of doubles out of cache took 0.50 ms
// streamed row by row, 1.05 ms row by row with plain stores and 1.5-2.5 ms in tiles
// (rank1-writes-20261201.txt); cells' training steps with 6-32 MB of weight gradients took
// 0.67-0.98 of the blocked path's time (most 0.80-0.87), while below 4 MB the two were within
// this host's noise (gemm-rows-2026-12-01.md, in bench/results). Each output is the same sum in
// the same order as in the tiles (k ascending into one accumulator, then C), so the results do
// not change. Only callers that say C is cold (gemm's cold_output) take this path: an input
// projection with few inputs is read back by the steps right away, better from cache.
constexpr int64_t kFewK = 8;
constexpr int64_t kFewKMinBytes = 4 << 20;  // smaller outputs keep the blocked path

// C[M, N] (+)= A[M, K] * B[K, N], parallel over (row block, column strip).
//   A  element (m, k) at A[m * a_rs + k * a_cs]          read
//   B  [K, N] row stride ldb, or [N, K] if b_trans      read
//   C  [M, N] row stride ldc                            written (added to if accumulate)
// cold_output: C is not read again soon (a weight gradient), so with few k steps and a large C
// it is written row by row and streamed (kFewK above).
template <class T>
void gemm(const Executor& ex, int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs,
          const T* B, int64_t ldb, bool b_trans, T* C, int64_t ldc, bool accumulate,
          bool cold_output = false) {
  constexpr int NR = kNR<T>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = T(0);
    return;
  }
  const int64_t c_bytes = M * N * static_cast<int64_t>(sizeof(T));
  if (cold_output && K <= kFewK && c_bytes >= kFewKMinBytes && gemm_rows_enabled()) {
    RightOperand<T> rb(B, ldb, b_trans, 0, K, N, &ex, /*allow_direct=*/false);
    int64_t ld;
    const T* bp = rb.strip(0, &ld);
    const int64_t ns = rb.strips(), last = N - (ns - 1) * NR;
    constexpr uintptr_t kVecBytes = Vec<T>::W * sizeof(T);
    // (not when adding to C: it is read first, and streaming would then evict the lines read)
    const bool stream = !accumulate && reinterpret_cast<uintptr_t>(C) % kVecBytes == 0 &&
                        (ldc * sizeof(T)) % kVecBytes == 0;
    parallel_for(ex, M, true, [&](int64_t b, int64_t e) {
      if (stream)
        rows_all_strips<T, true>(b, e, K, A, a_rs, a_cs, bp, ns, last, C, ldc, accumulate);
      else
        rows_all_strips<T, false>(b, e, K, A, a_rs, a_cs, bp, ns, last, C, ldc, accumulate);
    });
    return;
  }
  const int64_t KC = 512;
  // Row blocks of MB rows; a few blocks (fewer than 4 per thread) are made equal instead, and
  // as many as a multiple of the thread count, so that no thread gets a short last block
  // where another gets a full one (M = 200: 5 blocks of 48, 48, 48, 48 and 8 rows split 2.5 : 1.5
  // between two threads; now 6 blocks of 34 or fewer, 3 each). A row's arithmetic is the same
  // in any block.
  const int64_t nth = imax(1, ex.num_threads());
  int64_t mbr = MB, nmb = ceil_div(M, MB);
  if (nmb >= nth && nmb < 4 * nth) {
    mbr = ceil_div(M, ceil_div(nmb, nth) * nth);
    nmb = ceil_div(M, mbr);
  }
  const bool big = M * N * K > 32768;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = imin(KC, K - k0);
    // In place while the whole chunk spans little memory (few pages per strip), or when
    // a single row block reads each strip only once: packing would then read and write all
    // of B to save one strided read of it (a cell's step, dx = dG W_ih at T = 1: the copy
    // took a third of the GEMM's time).
    const bool direct = kc * ldb * static_cast<int64_t>(sizeof(T)) <= (64 << 10) || nmb == 1;
    RightOperand<T> rb(B, ldb, b_trans, k0, kc, N, &ex, direct);
    const int64_t ns = rb.strips();
    // Tasks: (row block, group of strips); each packs its rows of A once.
    const int64_t want = 4 * nth;
    const int64_t ngroups = imin(ns, imax(1, ceil_div(want, nmb)));
    const int64_t per_group = ceil_div(ns, ngroups);
    const bool acc = accumulate || k0 > 0;
    parallel_for(ex, nmb * ngroups, big, [&](int64_t b, int64_t e) {
      Buffer<T> ap(MB * kc, /*cached=*/false);  // one per thread and call
      int64_t packed_mb = -1;
      for (int64_t task = b; task < e; ++task) {
        const int64_t mb = task / ngroups, g = task % ngroups;
        const int64_t r0 = mb * mbr, rows = imin(mbr, M - r0);
        if (mb != packed_mb) {
          pack_a(rows, kc, A + r0 * a_rs + k0 * a_cs, a_rs, a_cs, ap.get());
          packed_mb = mb;
        }
        for (int64_t s = g * per_group; s < imin(ns, (g + 1) * per_group); ++s) {
          int64_t ld;
          const T* bs = rb.strip(s, &ld);
          strip_rows_packed<T>(rows, kc, ap.get(), bs, ld, C + r0 * ldc + s * NR, ldc,
                               imin(NR, N - s * NR), acc);
        }
      }
    });
  }
}

// Dot products of R rows of A with C rows of W, all of length K (contiguous).
// out[r * ldo + c] (+)= <A_r, W_c>. Rows of W past nc alias row 0 and are not stored.
template <class T, int R, int C>
inline void dot_block(int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, int64_t nc,
                      T* out, int64_t ldo, bool acc) {
  using V = Vec<T>;
  const T* a[R];
  const T* w[C];
  for (int r = 0; r < R; ++r) a[r] = A + r * lda;
  for (int c = 0; c < C; ++c) w[c] = W + (c < nc ? c : 0) * ldw;
  V s[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) s[r][c] = V::zero();
  int64_t k = 0;
  for (; k + V::W <= K; k += V::W) {
    V wv[C];
    for (int c = 0; c < C; ++c) wv[c] = V::load(w[c] + k);
    for (int r = 0; r < R; ++r) {
      V av = V::load(a[r] + k);
      for (int c = 0; c < C; ++c) s[r][c] = V::fmadd(av, wv[c], s[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C && c < nc; ++c) {
      T v = s[r][c].hsum();
      for (int64_t kk = k; kk < K; ++kk) v += a[r][kk] * w[c][kk];
      T* o = out + r * ldo + c;
      *o = acc ? *o + v : v;
    }
}

// Blocks of r rows of A (r <= R, a run-time count) against IsaTraits::kDotCols[r] rows of W
// at a time, over all N rows of W.
template <class T, int R>
struct DotRows {
  static void run(int64_t r, int64_t N, int64_t K, const T* A, int64_t lda, const T* W,
                  int64_t ldw, T* C, int64_t ldc, bool acc) {
    if (r < R) {
      DotRows<T, R - 1>::run(r, N, K, A, lda, W, ldw, C, ldc, acc);
      return;
    }
    constexpr int kCols = IsaTraits::kDotCols[R];
    for (int64_t n = 0; n < N; n += kCols)
      dot_block<T, R, kCols>(K, A, lda, W + n * ldw, ldw, imin(kCols, N - n), C + n, ldc, acc);
  }
};
template <class T>
struct DotRows<T, 0> {
  static void run(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t,
                  bool) {}
};

// C[M, N] (+)= A[M, K] W[N, K]^T for few rows M, reading W in place (no packing):
// the right kernel when a call does too little work to pay for packing W. Each output is one
// dot product, summed in the same order whatever block computes it.
//   A [M, K] row stride lda (read); W [N, K] row stride ldw (read); C [M, N] stride ldc
template <class T>
void gemm_dot(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw,
              T* C, int64_t ldc, bool acc) {
  constexpr int R = IsaTraits::kDotRows;
  for (int64_t m = 0; m < M; m += R)
    DotRows<T, R>::run(imin(R, M - m), N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, acc);
}
