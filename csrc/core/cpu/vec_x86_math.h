// Vectorised float32 exp / sigmoid / tanh shared by the AVX2 and AVX-512 paths.
// `VF` is the float vector type; it provides the elementary operations used
// below. Error: exp within 2 ulp on [-87, 88]; tanh and sigmoid within a few
// ulp (tested against torch in tests/).

template <class VF>
inline VF vexp(VF x) {
  // Clamp so that 2^n stays a normal float; min/max return their second
  // operand when either is NaN, so NaN flows through.
  const VF hi = VF::set1(88.0f), lo = VF::set1(-87.3365478515625f);
  x = VF::min(hi, VF::max(lo, x));
  // x = n*ln2 + r, |r| <= ln2/2
  VF n = VF::round(x * VF::set1(1.44269504088896341f));
  VF r = VF::fmadd(n, VF::set1(-0.693359375f), x);
  r = VF::fmadd(n, VF::set1(2.12194440e-4f), r);
  VF p = VF::set1(1.9875691500E-4f);
  p = VF::fmadd(p, r, VF::set1(1.3981999507E-3f));
  p = VF::fmadd(p, r, VF::set1(8.3334519073E-3f));
  p = VF::fmadd(p, r, VF::set1(4.1665795894E-2f));
  p = VF::fmadd(p, r, VF::set1(1.6666665459E-1f));
  p = VF::fmadd(p, r, VF::set1(5.0000001201E-1f));
  p = VF::fmadd(p, r * r, r + VF::set1(1.0f));
  return VF::scale_pow2(p, n);
}

template <class VF>
inline VF vsigmoid(VF x) {
  return VF::set1(1.0f) / (VF::set1(1.0f) + vexp(VF::zero() - x));
}

template <class VF>
inline VF vtanh(VF x) {
  VF ax = VF::abs(x);
  // Large |x|: 1 - 2/(exp(2|x|)+1) written as (1-e)/(1+e) with e = exp(-2|x|).
  VF e = vexp(VF::set1(-2.0f) * ax);
  VF big = (VF::set1(1.0f) - e) / (VF::set1(1.0f) + e);
  // Small |x| (< 0.4): odd Taylor series through x^13 (truncation < 1 ulp).
  VF x2 = ax * ax;
  VF p = VF::set1(21844.0f / 6081075.0f);
  p = VF::fmadd(p, x2, VF::set1(-1382.0f / 155925.0f));
  p = VF::fmadd(p, x2, VF::set1(62.0f / 2835.0f));
  p = VF::fmadd(p, x2, VF::set1(-17.0f / 315.0f));
  p = VF::fmadd(p, x2, VF::set1(2.0f / 15.0f));
  p = VF::fmadd(p, x2, VF::set1(-1.0f / 3.0f));
  VF small = VF::fmadd(p * x2, ax, ax);
  VF r = VF::blend_lt(ax, VF::set1(0.4f), small, big);
  return VF::copysign(r, x);
}
