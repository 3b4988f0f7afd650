// The MXCSR denormal mode the CPU kernels run in, shared by every instruction set's kernels
// (included before any target pragma, so compiled for the baseline) and by the pair schedule.
#pragma once

#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>
#endif

namespace rnnfast {
namespace core {

// The denormal mode of a kernel call: the MXCSR bits FTZ (flush results to zero) and DAZ
// (read inputs as zero). Float32 calls set both: denormal arithmetic is 10-100x slower on
// x86 and float32 RNN states decay into that range. Float64 calls keep the caller's mode, as
// torch does (float64 denormals start at 2e-308, where states rarely go, and a user who
// needs them gets them). The worker threads of a call take the calling thread's mode, and
// every thread gets its own mode back when the call ends.
#if defined(__SSE__) || defined(__x86_64__)
constexpr unsigned kFlushDenormals = 0x8040u;
inline unsigned denormal_mode() { return _mm_getcsr() & kFlushDenormals; }
struct DenormalGuard {
  unsigned saved;
  explicit DenormalGuard(unsigned mode) : saved(_mm_getcsr()) {
    if ((saved & kFlushDenormals) != mode) _mm_setcsr((saved & ~kFlushDenormals) | mode);
  }
  ~DenormalGuard() { _mm_setcsr(saved); }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;
};
#else
constexpr unsigned kFlushDenormals = 0;
inline unsigned denormal_mode() { return 0; }
struct DenormalGuard {
  explicit DenormalGuard(unsigned) {}
};
#endif

}  // namespace core
}  // namespace rnnfast
