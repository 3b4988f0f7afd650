// AVX-512F vectors (16 floats, 8 doubles). Included inside
// namespace rnnfast::core::avx512 by kernels_avx512.cpp, compiled for that target.

struct VecF16 {
  using Scalar = float;
  static constexpr int W = 16;
  __m512 v;
  static VecF16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static VecF16 set1(float x) { return {_mm512_set1_ps(x)}; }
  static VecF16 zero() { return {_mm512_setzero_ps()}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  // p 64-byte aligned; bypasses the caches (see FwdStep::ws_nt)
  void stream(float* p) const { _mm512_stream_ps(p, v); }
  float hsum() const { return _mm512_reduce_add_ps(v); }
  VecF16 operator+(VecF16 b) const { return {_mm512_add_ps(v, b.v)}; }
  VecF16 operator-(VecF16 b) const { return {_mm512_sub_ps(v, b.v)}; }
  VecF16 operator*(VecF16 b) const { return {_mm512_mul_ps(v, b.v)}; }
  VecF16 operator/(VecF16 b) const { return {_mm512_div_ps(v, b.v)}; }
  static VecF16 fmadd(VecF16 a, VecF16 b, VecF16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static VecF16 min(VecF16 a, VecF16 b) { return {_mm512_min_ps(a.v, b.v)}; }
  static VecF16 max(VecF16 a, VecF16 b) { return {_mm512_max_ps(a.v, b.v)}; }
  static VecF16 round(VecF16 a) {
    return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static VecF16 abs(VecF16 a) {
    return {_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(0x7fffffff)))};
  }
  static VecF16 copysign(VecF16 mag, VecF16 sgn) {
    const __m512i m = _mm512_set1_epi32(0x7fffffff);
    __m512i r = _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(mag.v), m),
                                _mm512_andnot_si512(m, _mm512_castps_si512(sgn.v)));
    return {_mm512_castsi512_ps(r)};
  }
  // p * 2^n for integral n (one instruction instead of building 2^n in the exponent bits)
  static VecF16 scale_pow2(VecF16 p, VecF16 n) { return {_mm512_scalef_ps(p.v, n.v)}; }
  static VecF16 sigmoid(VecF16 a) { return vsigmoid(a); }
  static VecF16 tanh(VecF16 a) { return vtanh(a); }
  static VecF16 relu(VecF16 a) { return {_mm512_max_ps(_mm512_setzero_ps(), a.v)}; }
  static VecF16 where_pos(VecF16 h, VecF16 d) {
    return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h.v, _mm512_setzero_ps(), _CMP_NLE_UQ), d.v)};
  }
};

struct VecD8 {
  using Scalar = double;
  static constexpr int W = 8;
  __m512d v;
  static VecD8 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static VecD8 set1(double x) { return {_mm512_set1_pd(x)}; }
  static VecD8 zero() { return {_mm512_setzero_pd()}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void stream(double* p) const { _mm512_stream_pd(p, v); }
  double hsum() const { return _mm512_reduce_add_pd(v); }
  VecD8 operator+(VecD8 b) const { return {_mm512_add_pd(v, b.v)}; }
  VecD8 operator-(VecD8 b) const { return {_mm512_sub_pd(v, b.v)}; }
  VecD8 operator*(VecD8 b) const { return {_mm512_mul_pd(v, b.v)}; }
  VecD8 operator/(VecD8 b) const { return {_mm512_div_pd(v, b.v)}; }
  static VecD8 fmadd(VecD8 a, VecD8 b, VecD8 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  static VecD8 min(VecD8 a, VecD8 b) { return {_mm512_min_pd(a.v, b.v)}; }
  static VecD8 max(VecD8 a, VecD8 b) { return {_mm512_max_pd(a.v, b.v)}; }
  static VecD8 round(VecD8 a) {
    return {_mm512_roundscale_pd(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static VecD8 abs(VecD8 a) {
    return {_mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a.v),
                                                 _mm512_set1_epi64(0x7fffffffffffffffLL)))};
  }
  static VecD8 copysign(VecD8 mag, VecD8 sgn) {
    const __m512i m = _mm512_set1_epi64(0x7fffffffffffffffLL);
    __m512i r = _mm512_or_si512(_mm512_and_si512(_mm512_castpd_si512(mag.v), m),
                                _mm512_andnot_si512(m, _mm512_castpd_si512(sgn.v)));
    return {_mm512_castsi512_pd(r)};
  }
  static VecD8 scale_pow2(VecD8 p, VecD8 n) { return {_mm512_scalef_pd(p.v, n.v)}; }
  static VecD8 sigmoid(VecD8 a) { return vsigmoid(a); }
  static VecD8 tanh(VecD8 a) { return vtanh(a); }
  static VecD8 relu(VecD8 a) { return {_mm512_max_pd(_mm512_setzero_pd(), a.v)}; }
  static VecD8 where_pos(VecD8 h, VecD8 d) {
    return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(h.v, _mm512_setzero_pd(), _CMP_NLE_UQ), d.v)};
  }
};

template <class T> struct Avx512VecOf;
template <> struct Avx512VecOf<float> { using type = VecF16; };
template <> struct Avx512VecOf<double> { using type = VecD8; };

struct SimdIsa {
  static constexpr int MR = 12;  // rows per GEMM register tile (32 vector registers)
  // gemm_dot's blocks (see vec_avx2.h): 4 x 4, one row against 8; unmeasured beyond that.
  static constexpr int kDotRows = 4;
  static constexpr int kDotCols[kDotRows + 1] = {0, 8, 4, 4, 4};
  // In place at every batch with rows of 4 vectors or more (see vec_avx2.h): not yet measured
  // against packing on an AVX-512 CPU.
  static constexpr int64_t kInPlaceMaxRows = INT64_MAX;
  template <class T>
  using Vec = typename Avx512VecOf<T>::type;
  template <class T>
  static constexpr int NR = 2 * Vec<T>::W;

  // A 16 x 16 float transpose for packing GEMM operands: out[k * ldo + r] = rows[r][k] for
  // r < nrows (at most 16; the other lanes of out are left alone) and k < 16, by in-register
  // shuffles instead of one scalar move per element. Every row is read (16 floats).
  static constexpr bool kTranspose16 = true;
  static void transpose16(const float* const* rows, float* out, int64_t ldo, int nrows) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows[i]);
    for (int i = 0; i < 8; ++i) {  // interleave the rows of each pair
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // 4 x 4 blocks transposed inside each 128-bit lane
      r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {  // then the 128-bit lanes, in two rounds
      t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
      t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
      t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
      t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
      r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
      r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
    }
    const __mmask16 keep = static_cast<__mmask16>((1u << nrows) - 1);
    for (int k = 0; k < 16; ++k) _mm512_mask_storeu_ps(out + k * ldo, keep, r[k]);
  }
};
