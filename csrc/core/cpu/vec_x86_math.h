// Vectorised float32 exp / sigmoid / tanh shared by the AVX2 and AVX-512 paths.
// `VF` is the float vector type; it provides the elementary operations used
// below. Error: exp within 2 ulp on [-87, 88]; tanh and sigmoid within a few
// ulp (tests/cpp/test_core.cpp sweeps them against double precision).

// Shared by exp and expm1: x = n ln2 + r with |r| <= ln2/2 (n integral, as a float), and
// q(r) with exp(r) = 1 + r + r^2 q(r).
template <class VF>
inline void vexp_reduce(VF x, VF* n, VF* r2q) {
  *n = VF::round(x * VF::set1(1.44269504088896341f));
  VF r = VF::fmadd(*n, VF::set1(-0.693359375f), x);
  r = VF::fmadd(*n, VF::set1(2.12194440e-4f), r);
  VF q = VF::set1(1.9875691500E-4f);
  q = VF::fmadd(q, r, VF::set1(1.3981999507E-3f));
  q = VF::fmadd(q, r, VF::set1(8.3334519073E-3f));
  q = VF::fmadd(q, r, VF::set1(4.1665795894E-2f));
  q = VF::fmadd(q, r, VF::set1(1.6666665459E-1f));
  q = VF::fmadd(q, r, VF::set1(5.0000001201E-1f));
  *r2q = VF::fmadd(q, r * r, r);  // expm1(r) = r + r^2 q(r)
}

template <class VF>
inline VF vexp(VF x) {
  // Clamp so that 2^n stays a normal float; min/max return their second
  // operand when either is NaN, so NaN flows through.
  const VF hi = VF::set1(88.0f), lo = VF::set1(-87.3365478515625f);
  x = VF::min(hi, VF::max(lo, x));
  VF n, em1;
  vexp_reduce(x, &n, &em1);
  return VF::scale_pow2(em1 + VF::set1(1.0f), n);
}

template <class VF>
inline VF vsigmoid(VF x) {
  return VF::set1(1.0f) / (VF::set1(1.0f) + vexp(VF::zero() - x));
}

template <class VF>
inline VF vtanh(VF x) {
  // tanh|x| = -m / (m + 2) with m = expm1(-2|x|) in (-1, 0]: no cancellation anywhere, so
  // small |x| needs no series of its own. m = 2^n (1 + e) - 1 = 2^n e + (2^n - 1), e =
  // expm1(r); m = e for n = 0. Below -88, m is -1 to float precision (tanh 1).
  VF y = VF::max(VF::set1(-88.0f), VF::set1(-2.0f) * VF::abs(x));
  VF n, e;
  vexp_reduce(y, &n, &e);
  VF p = VF::scale_pow2(VF::set1(1.0f), n);
  VF m = VF::fmadd(p, e, p - VF::set1(1.0f));
  return VF::copysign(m / (VF::set1(-2.0f) - m), x);
}
