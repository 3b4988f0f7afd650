// AVX2 + FMA vectors (8 floats, 4 doubles). Included inside
// namespace rnnfast::core::avx2 by kernels_avx2.cpp, compiled for that target.

struct VecF8 {
  using Scalar = float;
  static constexpr int W = 8;
  __m256 v;
  static VecF8 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static VecF8 set1(float x) { return {_mm256_set1_ps(x)}; }
  static VecF8 zero() { return {_mm256_setzero_ps()}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  // p 32-byte aligned; bypasses the caches (see FwdStep::ws_nt)
  void stream(float* p) const { _mm256_stream_ps(p, v); }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  VecF8 operator+(VecF8 b) const { return {_mm256_add_ps(v, b.v)}; }
  VecF8 operator-(VecF8 b) const { return {_mm256_sub_ps(v, b.v)}; }
  VecF8 operator*(VecF8 b) const { return {_mm256_mul_ps(v, b.v)}; }
  VecF8 operator/(VecF8 b) const { return {_mm256_div_ps(v, b.v)}; }
  static VecF8 fmadd(VecF8 a, VecF8 b, VecF8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static VecF8 min(VecF8 a, VecF8 b) { return {_mm256_min_ps(a.v, b.v)}; }
  static VecF8 max(VecF8 a, VecF8 b) { return {_mm256_max_ps(a.v, b.v)}; }
  static VecF8 round(VecF8 a) {
    return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static VecF8 abs(VecF8 a) {
    return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)};
  }
  static VecF8 copysign(VecF8 mag, VecF8 sgn) {
    const __m256 m = _mm256_set1_ps(-0.0f);
    return {_mm256_or_ps(_mm256_andnot_ps(m, mag.v), _mm256_and_ps(m, sgn.v))};
  }
  // p * 2^n for integral n in [-127, 127]; n = -127 gives 0 (vtanh needs only that m = -1 there)
  static VecF8 scale_pow2(VecF8 p, VecF8 n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(e))};
  }
  static VecF8 sigmoid(VecF8 a) { return vsigmoid(a); }
  static VecF8 tanh(VecF8 a) { return vtanh(a); }
  static VecF8 relu(VecF8 a) { return {_mm256_max_ps(_mm256_setzero_ps(), a.v)}; }
  static VecF8 where_pos(VecF8 h, VecF8 d) {
    return {_mm256_and_ps(_mm256_cmp_ps(h.v, _mm256_setzero_ps(), _CMP_NLE_UQ), d.v)};
  }
};

struct VecD4 {
  using Scalar = double;
  static constexpr int W = 4;
  __m256d v;
  static VecD4 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static VecD4 set1(double x) { return {_mm256_set1_pd(x)}; }
  static VecD4 zero() { return {_mm256_setzero_pd()}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void stream(double* p) const { _mm256_stream_pd(p, v); }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  VecD4 operator+(VecD4 b) const { return {_mm256_add_pd(v, b.v)}; }
  VecD4 operator-(VecD4 b) const { return {_mm256_sub_pd(v, b.v)}; }
  VecD4 operator*(VecD4 b) const { return {_mm256_mul_pd(v, b.v)}; }
  VecD4 operator/(VecD4 b) const { return {_mm256_div_pd(v, b.v)}; }
  static VecD4 fmadd(VecD4 a, VecD4 b, VecD4 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  static VecD4 min(VecD4 a, VecD4 b) { return {_mm256_min_pd(a.v, b.v)}; }
  static VecD4 max(VecD4 a, VecD4 b) { return {_mm256_max_pd(a.v, b.v)}; }
  static VecD4 round(VecD4 a) {
    return {_mm256_round_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static VecD4 abs(VecD4 a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
  static VecD4 copysign(VecD4 mag, VecD4 sgn) {
    const __m256d m = _mm256_set1_pd(-0.0);
    return {_mm256_or_pd(_mm256_andnot_pd(m, mag.v), _mm256_and_pd(m, sgn.v))};
  }
  // p * 2^n for integral n in [-1021, 1024]: 2^(n-1) built in the exponent bits (a normal
  // double over that range), then times 2, so that n = 1024 overflows as p * 2^n does
  static VecD4 scale_pow2(VecD4 p, VecD4 n) {
    const __m256i e = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n.v)),
                                       _mm256_set1_epi64x(1022));
    const __m256d half = _mm256_castsi256_pd(_mm256_slli_epi64(e, 52));
    return {_mm256_mul_pd(_mm256_mul_pd(p.v, half), _mm256_set1_pd(2.0))};
  }
  static VecD4 sigmoid(VecD4 a) { return vsigmoid(a); }
  static VecD4 tanh(VecD4 a) { return vtanh(a); }
  static VecD4 relu(VecD4 a) { return {_mm256_max_pd(_mm256_setzero_pd(), a.v)}; }
  static VecD4 where_pos(VecD4 h, VecD4 d) {
    return {_mm256_and_pd(_mm256_cmp_pd(h.v, _mm256_setzero_pd(), _CMP_NLE_UQ), d.v)};
  }
};

template <class T> struct Avx2VecOf;
template <> struct Avx2VecOf<float> { using type = VecF8; };
template <> struct Avx2VecOf<double> { using type = VecD4; };

struct SimdIsa {
  static constexpr int MR = 6;  // rows per GEMM register tile (16 vector registers)
  // gemm_dot's blocks: up to kDotRows rows of A against kDotCols[r] rows of W for a block of r
  // rows, so that the r x c accumulators, the c vectors of W and one of A fit in 16 registers
  // (4 x 4 needed 21: two accumulators lived on the stack, each FMA on them waiting for a store
  // to forward) and every W load serves as many rows as fit.
  static constexpr int kDotRows = 6;
  static constexpr int kDotCols[kDotRows + 1] = {0, 8, 5, 3, 3, 2, 2};
  // A call of a few steps reads the weights in place (dot products) for batches below this,
  // and packs them from it (make_forward_plan). On an AMD Zen 3 a cell call at B = 64-128 took
  // 0.77-0.86 of the in-place time packed in inference, 0.88-0.99 in training
  // (bench/results/build-ab-20261201-inplace-max-rows.json, cpu-2026-12-01-zen3.md).
  static constexpr int64_t kInPlaceMaxRows = 64;
  template <class T>
  using Vec = typename Avx2VecOf<T>::type;
  template <class T>
  static constexpr int NR = 2 * Vec<T>::W;
  // No vectorised operand packing on this path (see vec_avx512.h).
  static constexpr bool kTranspose16 = false;
  static void transpose16(const float* const*, float*, int64_t, int) {}
};
