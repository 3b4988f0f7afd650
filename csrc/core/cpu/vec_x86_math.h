// Vectorised exp / sigmoid / tanh shared by the AVX2 and AVX-512 paths, float32 and float64.
// The vector type V provides the elementary operations used below and its element type as
// V::Scalar. Error: exp within 2 ulp on [-87, 88] (float32); tanh and sigmoid within a few
// ulp in both precisions (tests/cpp/test_core.cpp sweeps float32 against double and float64
// against long double).

// The clamps of exp's argument per element type: 2^n stays exact in scale_pow2, and
// (float64) every x past ln(DBL_MAX) still overflows to inf as the C library's exp does, so
// that sigmoid of a large negative value is exactly 0, as torch's is (float64 keeps the
// denormals that float32's flush-to-zero makes 0). tanh_lo: below it, expm1 is -1 to the
// type's precision (tanh 1).
template <class T> struct ExpLimits;
template <> struct ExpLimits<float> {
  static constexpr float lo = -87.3365478515625f, hi = 88.0f, tanh_lo = -88.0f;
};
template <> struct ExpLimits<double> {
  static constexpr double lo = -708.0, hi = 710.0, tanh_lo = -40.0;
};

// Shared by exp and expm1: x = n ln2 + r with |r| <= ln2/2 (n integral, as a vector of the
// element type), and expm1(r) = r + r^2 q(r). Float32: a minimax q. Float64: ln2 split in a high
// part with zeros in its low bits (n ln2_hi exact for |n| < 2^11) and the rest, and q the Taylor
// series of (e^r - 1 - r) / r^2 to 1/15!, whose first omitted term is below 3e-19 relative at
// |r| = ln2/2.
template <class V>
inline void vexp_reduce(V x, V* n, V* r2q) {
  if constexpr (std::is_same<typename V::Scalar, float>::value) {
    *n = V::round(x * V::set1(1.44269504088896341f));
    V r = V::fmadd(*n, V::set1(-0.693359375f), x);
    r = V::fmadd(*n, V::set1(2.12194440e-4f), r);
    V q = V::set1(1.9875691500E-4f);
    q = V::fmadd(q, r, V::set1(1.3981999507E-3f));
    q = V::fmadd(q, r, V::set1(8.3334519073E-3f));
    q = V::fmadd(q, r, V::set1(4.1665795894E-2f));
    q = V::fmadd(q, r, V::set1(1.6666665459E-1f));
    q = V::fmadd(q, r, V::set1(5.0000001201E-1f));
    *r2q = V::fmadd(q, r * r, r);
  } else {
    *n = V::round(x * V::set1(1.4426950408889634074));
    V r = V::fmadd(*n, V::set1(-6.93147180369123816490e-01), x);
    r = V::fmadd(*n, V::set1(-1.90821492927058770002e-10), r);
    static constexpr double kInvFact[] = {  // 1/15!, 1/14!, ..., 1/2!
        1.0 / 1307674368000.0, 1.0 / 87178291200.0, 1.0 / 6227020800.0, 1.0 / 479001600.0,
        1.0 / 39916800.0,      1.0 / 3628800.0,     1.0 / 362880.0,     1.0 / 40320.0,
        1.0 / 5040.0,          1.0 / 720.0,         1.0 / 120.0,        1.0 / 24.0,
        1.0 / 6.0,             1.0 / 2.0};
    V q = V::set1(kInvFact[0]);
    for (int k = 1; k < 14; ++k) q = V::fmadd(q, r, V::set1(kInvFact[k]));
    *r2q = V::fmadd(q, r * r, r);
  }
}

template <class V>
inline V vexp(V x) {
  // Clamped (ExpLimits); min/max return their second operand when either is NaN, so NaN
  // flows through.
  using L = ExpLimits<typename V::Scalar>;
  x = V::min(V::set1(L::hi), V::max(V::set1(L::lo), x));
  V n, em1;
  vexp_reduce(x, &n, &em1);
  return V::scale_pow2(em1 + V::set1(1), n);
}

template <class V>
inline V vsigmoid(V x) {
  return V::set1(1) / (V::set1(1) + vexp(V::zero() - x));
}

template <class V>
inline V vtanh(V x) {
  // tanh|x| = -m / (m + 2) with m = expm1(-2|x|) in (-1, 0]: no cancellation anywhere, so
  // small |x| needs no series of its own. m = 2^n (1 + e) - 1 = 2^n e + (2^n - 1), e =
  // expm1(r); m = e for n = 0.
  V y = V::max(V::set1(ExpLimits<typename V::Scalar>::tanh_lo), V::set1(-2) * V::abs(x));
  V n, e;
  vexp_reduce(y, &n, &e);
  V p = V::scale_pow2(V::set1(1), n);
  V m = V::fmadd(p, e, p - V::set1(1));
  return V::copysign(m / (V::set1(-2) - m), x);
}
