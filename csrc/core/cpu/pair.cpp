// The pair schedule of a bidirectional layer's two directions (rnn.h: layer_forward_pair).
#include <algorithm>
#include <cstdint>
#include <exception>

#include "../rnn.h"
#include "denormal.h"
#include "spin.h"

namespace rnnfast {
namespace core {
namespace {

// The bytes of a call's W_hh [G*H, S].
template <class Real, template <class> class Args>
int64_t w_hh_bytes(const Args<Real>& a) {
  return cell_info(a.cell).gates * a.H * (a.P > 0 ? a.P : a.H) * int64_t(sizeof(Real));
}

// Runs call(a, ·) and call(b, ·): at the same time on a team of two, each with a serial
// executor, where the schedule says so; otherwise one after the other on ex. An exception
// (an allocation that fails) leaves the team as a stored exception and is rethrown here,
// never across the team's parallel region. The caller's denormal mode (denormal.h) is set on
// the member threads: a float64 call keeps its caller's mode, so both directions must see it.
template <class Args, class Call>
void run_pair(const Args& a, const Args& b, const Executor& ex, Call call) {
  if (!pair_concurrent(ex.num_threads(), std::max(w_hh_bytes(a), w_hh_bytes(b)))) {
    call(a, ex);
    call(b, ex);
    return;
  }
  struct Ctx {
    const Args* args[2];
    Call* call;
    unsigned mode;
    std::exception_ptr error[2];
  } ctx{{&a, &b}, &call, denormal_mode(), {}};
  ex.run_team(2, [](void* p, int tid, int nthreads) {
    Ctx& c = *static_cast<Ctx*>(p);
    const SerialExecutor serial;
    const DenormalGuard guard(c.mode);
    // a team of one (inside another parallel region) runs both
    for (int k = tid; k < 2; k += nthreads) {
      try {
        (*c.call)(*c.args[k], serial);
      } catch (...) {
        c.error[k] = std::current_exception();
      }
    }
  }, &ctx);
  for (const std::exception_ptr& e : ctx.error)
    if (e) std::rethrow_exception(e);
}

// The rows of an input-shaped tensor of a call: T * B, or the active (t, b) when packed.
template <class Args>
int64_t input_rows(const Args& a) {
  if (!a.packed) return a.T * a.B;
  int64_t n = 0;
  for (int64_t b = 0; b < a.B; ++b) n += a.lengths[b];
  return n;
}

template <class Real>
void forward_pair(const ForwardArgs<Real>& a, const ForwardArgs<Real>& b, const Executor& ex) {
  run_pair(a, b, ex, [](const ForwardArgs<Real>& x, const Executor& e) { layer_forward(x, e); });
}

template <class Real>
void backward_pair(const BackwardArgs<Real>& a, const BackwardArgs<Real>& b0,
                   const Executor& ex) {
  BackwardArgs<Real> b = b0;
  const int64_t n = a.dx ? input_rows(a) * a.I : 0;
  // b's input gradient goes to scratch, then is added to a's
  const ScratchBlock<Real> dx_b(n);
  b.dx = n > 0 ? dx_b.get() : a.dx;  // (n == 0: nothing is written)
  run_pair(a, b, ex, [](const BackwardArgs<Real>& x, const Executor& e) { layer_backward(x, e); });
  if (n > 0) {
    struct Sum {
      Real* out;
      const Real* in;
      unsigned mode;
    } sum{a.dx, b.dx, denormal_mode()};
    ex.run(n, [](void* p, int64_t begin, int64_t end) {
      const Sum& s = *static_cast<const Sum*>(p);
      const DenormalGuard guard(s.mode);
      for (int64_t i = begin; i < end; ++i) s.out[i] += s.in[i];
    }, &sum);
  }
}

}  // namespace

bool pair_concurrent(int threads, int64_t w_hh_bytes) {
  return threads == 2 && w_hh_bytes <= 2 * cpu_l2_cache_bytes();
}

void layer_forward_pair(const ForwardArgs<float>& a, const ForwardArgs<float>& b,
                        const Executor& ex) {
  forward_pair(a, b, ex);
}
void layer_forward_pair(const ForwardArgs<double>& a, const ForwardArgs<double>& b,
                        const Executor& ex) {
  forward_pair(a, b, ex);
}
void layer_backward_pair(const BackwardArgs<float>& a, const BackwardArgs<float>& b,
                         const Executor& ex) {
  backward_pair(a, b, ex);
}
void layer_backward_pair(const BackwardArgs<double>& a, const BackwardArgs<double>& b,
                         const Executor& ex) {
  backward_pair(a, b, ex);
}

}  // namespace core
}  // namespace rnnfast
