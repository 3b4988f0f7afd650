// Keep masks from the counter-based generator of random.h, compiled for each instruction set
// (the word loop vectorises: 64-bit multiplies in vector lanes). Included inside namespace
// rnnfast::core::<isa> by kernels_body.h.

template <class Real>
void fill_keep_mask_impl(Real* out, int64_t n, double p, uint64_t seed, int64_t first) {
  if (n <= 0) return;
  if (!(p > 0) || p >= 1) {  // (NaN p: all 0, as p <= 0; the glue rejects it anyway)
    const Real v = p >= 1 ? Real(1) : Real(0);
    for (int64_t i = 0; i < n; ++i) out[i] = v;
    return;
  }
  // keep iff u < threshold, with threshold = floor(p * 2^32) in [0, 2^32)
  const uint64_t threshold = static_cast<uint64_t>(std::ldexp(p, 32));
  int64_t i = 0;
  const uint64_t start = static_cast<uint64_t>(first);
  if (start & 1) {  // the odd element of the first word
    const uint64_t u = splitmix64_word(seed, start >> 1) >> 32;
    out[i++] = u < threshold ? Real(1) : Real(0);
  }
  // whole words, two elements each
  const uint64_t word0 = (start + static_cast<uint64_t>(i)) >> 1;
  const int64_t pairs = (n - i) / 2;
  Real* o = out + i;
  for (int64_t k = 0; k < pairs; ++k) {
    const uint64_t w = splitmix64_word(seed, word0 + static_cast<uint64_t>(k));
    o[2 * k] = (w & 0xFFFFFFFFull) < threshold ? Real(1) : Real(0);
    o[2 * k + 1] = (w >> 32) < threshold ? Real(1) : Real(0);
  }
  i += 2 * pairs;
  if (i < n) {  // the even element of the last word
    const uint64_t u = splitmix64_word(seed, word0 + static_cast<uint64_t>(pairs)) & 0xFFFFFFFFull;
    out[i] = u < threshold ? Real(1) : Real(0);
  }
}
