// Random masks drawn without a generator object: each element is a pure function of a
// 64-bit seed and its index, so a mask is the same whatever fills it (thread count, SIMD
// path, or a later regeneration of the same elements), and a caller needs to keep only the
// seed. Used for zoneout's per-step keep masks (the torch glue draws the seed from torch's
// generator, so torch.manual_seed reproduces the masks).
#pragma once

#include <cstdint>

namespace rnnfast {
namespace core {

// The SplitMix64 sequence (Steele, Lea and Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014): word k of seed s is the finaliser below applied to
// s + (k + 1) * gamma. It passes BigCrush; its counter form is what makes it indexable.
inline constexpr uint64_t kSplitMixGamma = 0x9E3779B97F4A7C15ull;
inline constexpr uint64_t splitmix64_word(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * kSplitMixGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Element i of a mask takes the 32-bit half (i % 2 == 0: low, 1: high) of word i / 2 as a
// uniform u on [0, 2^32), and is 1 when u < p * 2^32 (rounded down), else 0: Bernoulli(p)
// up to p's rounding to a multiple of 2^-32. p <= 0 gives all 0, p >= 1 all 1.
// Fills out[0, n) with elements [first, first + n) of the mask of `seed`, on the active SIMD
// path (rnn.h: active_isa; the elements are the same on every path).
void fill_keep_mask(float* out, int64_t n, double p, uint64_t seed, int64_t first = 0);
void fill_keep_mask(double* out, int64_t n, double p, uint64_t seed, int64_t first = 0);

}  // namespace core
}  // namespace rnnfast
