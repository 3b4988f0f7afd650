// Pieces shared by the kernels' thread runtime (runtime_impl.h) and the two-layer schedules
// (pair.cpp, stack.cpp): how a thread waits for another, and a scratch block owned by a scope.
// Compiled for the baseline target (included before any target pragma).
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../rnn.h"

namespace rnnfast {
namespace core {

// One round of a wait for another thread of the team, the spins-th: a pause while the wait is
// short (the steps a team's threads hand over are microseconds apart), then the core is
// yielded, in case the team shares it with other work.
inline void spin_pause(int spins) {
  if (spins < 4000) {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  } else {
    std::this_thread::yield();
  }
}

// n values of scratch memory (rnn.h: scratch_alloc; none for n = 0), given back at the end of
// its scope.
template <class Real>
class ScratchBlock {
 public:
  explicit ScratchBlock(int64_t n)
      : p_(n > 0 ? static_cast<Real*>(scratch_alloc(sizeof(Real) * size_t(n))) : nullptr) {}
  ~ScratchBlock() {
    if (p_) scratch_free(p_);
  }
  ScratchBlock(const ScratchBlock&) = delete;
  ScratchBlock& operator=(const ScratchBlock&) = delete;
  Real* get() const { return p_; }

 private:
  Real* p_;
};

}  // namespace core
}  // namespace rnnfast
