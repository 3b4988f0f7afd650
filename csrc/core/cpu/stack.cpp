// The stacked schedule of two layers of one direction (rnn.h: layer_forward_stack).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <vector>

#include "../rnn.h"
#include "denormal.h"
#include "spin.h"

namespace rnnfast {
namespace core {
namespace {

template <class Real>
int64_t state_cols(const ForwardArgs<Real>& a) {
  return a.P > 0 ? a.P : a.H;
}

template <class Real>
int64_t w_hh_bytes(const ForwardArgs<Real>& a) {
  return cell_info(a.cell).gates * a.H * state_cols(a) * int64_t(sizeof(Real));
}

// The pieces a layer's sequence is stepped in: piece k covers steps [t[k], t[k + 1]), and
// rows [r[k], r[k + 1]) of x, y and the workspace (t * B, or the active (t, b) before t when
// packed); lengths[k] are its sequences' lengths within it (none without lengths).
struct Pieces {
  std::vector<int64_t> t, r;
  std::vector<std::vector<int64_t>> lengths;
  int64_t count() const { return int64_t(t.size()) - 1; }
};

// About 8 pieces: each hand-over costs a little, and the pipeline's fill and drain (the upper
// layer waits for the lower one's first piece, the lower one is idle during the upper one's
// last) cost a piece each.
constexpr int64_t kPieces = 8;

template <class Real>
Pieces make_pieces(const ForwardArgs<Real>& a) {
  const int64_t T = a.T, B = a.B;
  const int64_t n = std::min(kPieces, T);
  Pieces p;
  for (int64_t k = 0; k <= n; ++k) p.t.push_back(T * k / n);
  for (int64_t k = 0; k <= n; ++k) {
    const int64_t t = p.t[k];
    int64_t rows = t * B;
    if (a.packed) {
      rows = 0;
      for (int64_t b = 0; b < B; ++b) rows += std::min(std::max<int64_t>(a.lengths[b], 0), t);
    }
    p.r.push_back(rows);
  }
  if (a.lengths) {
    p.lengths.resize(n);
    for (int64_t k = 0; k < n; ++k)
      for (int64_t b = 0; b < B; ++b)
        p.lengths[k].push_back(
            std::min(std::max<int64_t>(a.lengths[b] - p.t[k], 0), p.t[k + 1] - p.t[k]));
  }
  return p;
}

// A layer's state between its pieces: two buffers each, a piece reading one and writing the
// other.
template <class Real>
struct Carry {
  std::vector<Real> h[2], c[2];
  Carry(const ForwardArgs<Real>& a) {
    const bool cell_state = cell_info(a.cell).cell_state;
    for (int i = 0; i < 2; ++i) {
      h[i].resize(a.B * state_cols(a));
      if (cell_state) c[i].resize(a.B * a.H);
    }
  }
};

// The call of piece k of a: its steps, rows, lengths, the state carried in and out (the
// call's own initial state first, its own final-state outputs last), and gx (the rows of
// x W_ih^T computed for the whole call, or null).
template <class Real>
ForwardArgs<Real> piece(const ForwardArgs<Real>& a, const Pieces& p, int64_t k,
                        Carry<Real>& carry, Real* gx, PackedWeightsCache* packed = nullptr) {
  const CellInfo& cell = cell_info(a.cell);
  const int64_t S = state_cols(a), r0 = p.r[k];
  const bool last = k + 1 == p.count();
  ForwardArgs<Real> c = a;
  c.T = p.t[k + 1] - p.t[k];
  c.plan_T = a.T;
  c.x = a.x + r0 * a.I;
  c.y = a.y + r0 * S;
  c.ws = a.ws ? a.ws + r0 * cell.workspace_cols(a.H, a.P) : nullptr;
  c.zoneout[0] = a.zoneout[0] ? a.zoneout[0] + r0 * S : nullptr;
  c.zoneout[1] = a.zoneout[1] ? a.zoneout[1] + r0 * a.H : nullptr;
  c.lengths = a.lengths ? p.lengths[k].data() : nullptr;
  c.gx = gx ? gx + r0 * cell.gates * a.H : nullptr;
  c.packed_weights = packed;
  c.h0 = k == 0 ? a.h0 : carry.h[(k - 1) % 2].data();
  c.hy = last ? a.hy : carry.h[k % 2].data();
  if (cell.cell_state) {
    c.c0 = k == 0 ? a.c0 : carry.c[(k - 1) % 2].data();
    c.cy = last ? a.cy : carry.c[k % 2].data();
  }
  return c;
}

bool same_steps(const LayerPlan& x, const LayerPlan& y) {
  return x.weights_in_place == y.weights_in_place && x.input_in_steps == y.input_in_steps &&
         x.compact_rows == y.compact_rows;
}

// Whether every piece of a, as a serial call, computes what the whole call of a (planned as
// `whole`) would: the same choices of how the steps get their input and weights (the other
// choices of a plan split the work differently but leave every sum in its order).
template <class Real>
bool pieces_follow(const ForwardArgs<Real>& a, const LayerPlan& whole, const Pieces& p) {
  if (whole.weights_in_place) return false;
  Carry<Real> none(ForwardArgs<Real>{});  // (plans read no state)
  for (int64_t k = 0; k < p.count(); ++k) {
    const ForwardArgs<Real> one = piece(a, p, k, none, static_cast<Real*>(nullptr));
    if (!same_steps(whole, plan_forward(one, 1))) return false;
  }
  return true;
}

// Waits until done > k, or until the other thread failed (then returns false).
bool wait_for(const std::atomic<int64_t>& done, int64_t k, const std::atomic<bool>& failed) {
  for (int spins = 0; done.load(std::memory_order_acquire) <= k; ++spins) {
    if (failed.load(std::memory_order_acquire)) return false;
    spin_pause(spins);
  }
  return true;
}

// How a call of two layers runs: as a wavefront (else one layer after the other), in which
// pieces, and which layers' input projections the wavefront computes itself (where the
// layer's plan has it as one GEMM over the rows, for more than 8 rows, as project_input
// computes it; the other plans compute it in the steps).
struct Schedule {
  bool wavefront = false;
  Pieces pieces;
  bool project_a = false, project_b = false;
};

// RNNFAST_STACK=0 or 1 overrides the sizes' choice (stack_concurrent; for A/B runs:
// bench/stack_probe.py). 1 still needs exactly 2 threads and kStackMinSteps steps.
template <class Real>
Schedule schedule(const ForwardArgs<Real>& a, const ForwardArgs<Real>& b, int threads) {
  Schedule s;
  if (a.reverse || b.reverse || (a.lengths && !a.packed)) return s;
  bool want = stack_concurrent(threads, std::max(w_hh_bytes(a), w_hh_bytes(b)), a.T, a.B);
  if (const char* force = std::getenv("RNNFAST_STACK"))
    if (force[0] == '0' || force[0] == '1')
      want = force[0] == '1' && threads == 2 && a.T >= kStackMinSteps;
  if (!want) return s;
  s.pieces = make_pieces(a);
  const LayerPlan whole_a = plan_forward(a, threads), whole_b = plan_forward(b, threads);
  if (!pieces_follow(a, whole_a, s.pieces) || !pieces_follow(b, whole_b, s.pieces)) return s;
  const int64_t rows = s.pieces.r.back();
  s.project_a = !whole_a.input_in_steps && rows > 8;
  s.project_b = !whole_b.input_in_steps && rows > 8;
  s.wavefront = true;
  return s;
}

std::atomic<int64_t> g_wavefronts{0};

template <class Real>
void forward_stack(const ForwardArgs<Real>& a, const ForwardArgs<Real>& b, const Executor& ex) {
  const Schedule s = schedule(a, b, ex.num_threads());
  if (!s.wavefront) {
    layer_forward(a, ex);
    layer_forward(b, ex);
    return;
  }
  g_wavefronts.fetch_add(1, std::memory_order_relaxed);
  const Pieces& pieces = s.pieces;
  const int64_t gates = cell_info(a.cell).gates, rows = pieces.r.back();
  // The input projections computed here: the lower layer's for all steps at once, on every
  // thread, before the pipeline starts; the upper layer's piece by piece, each split between
  // the two threads.
  const ScratchBlock<Real> gx_a(s.project_a ? rows * gates * a.H : 0),
      gx_b(s.project_b ? rows * gates * b.H : 0);
  if (gx_a.get()) project_input(a.x, rows, a.I, a.w_ih, gates * a.H, gx_a.get(), ex);
  Carry<Real> carry_a(a), carry_b(b);
  PackedWeightsCache packed_a, packed_b;  // each layer's weights, packed by its first piece

  struct Ctx {
    const ForwardArgs<Real>*a, *b;
    const Pieces* pieces;
    Carry<Real>*carry_a, *carry_b;
    PackedWeightsCache *packed_a, *packed_b;
    Real *gx_a, *gx_b;
    int64_t GH;  // the upper layer's G * H
    unsigned mode;
    std::atomic<int64_t> lower_done{0}, upper_input{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error[2] = {};
  } ctx{&a, &b, &pieces, &carry_a, &carry_b, &packed_a, &packed_b, gx_a.get(), gx_b.get(),
        gates * b.H, denormal_mode()};
  ex.run_team(2, [](void* p, int tid, int nthreads) {
    Ctx& c = *static_cast<Ctx*>(p);
    const SerialExecutor serial;
    const DenormalGuard guard(c.mode);
    const ForwardArgs<Real>& b = *c.b;
    // rows [r0, r1) of the upper layer's x W_ih^T
    auto project = [&](int64_t r0, int64_t r1) {
      if (c.gx_b && r1 > r0)
        project_input(b.x + r0 * b.I, r1 - r0, b.I, b.w_ih, c.GH, c.gx_b + r0 * c.GH, serial);
    };
    try {
      for (int64_t k = 0; k < c.pieces->count(); ++k) {
        const int64_t r0 = c.pieces->r[k], r1 = c.pieces->r[k + 1], mid = r0 + (r1 - r0) / 2;
        if (tid == 0) {  // the lower layer, then the first half of the upper one's projection
          layer_forward(piece(*c.a, *c.pieces, k, *c.carry_a, c.gx_a, c.packed_a), serial);
          c.lower_done.store(k + 1, std::memory_order_release);
          project(r0, nthreads == 1 ? r1 : mid);
          c.upper_input.store(k + 1, std::memory_order_release);
        }
        if (tid == 1 || nthreads == 1) {  // the second half of the projection, the upper layer
          if (!wait_for(c.lower_done, k, c.failed)) return;
          if (nthreads > 1) project(mid, r1);
          if (!wait_for(c.upper_input, k, c.failed)) return;
          layer_forward(piece(b, *c.pieces, k, *c.carry_b, c.gx_b, c.packed_b), serial);
        }
      }
    } catch (...) {
      c.error[tid] = std::current_exception();
      c.failed.store(true, std::memory_order_release);
    }
  }, &ctx);
  for (const std::exception_ptr& e : ctx.error)
    if (e) std::rethrow_exception(e);
}

}  // namespace

PackedWeightsCache::~PackedWeightsCache() {
  for (int i = 0; i < 3; ++i) {
    if (!block[i]) continue;
    if (from_scratch[i]) scratch_free(block[i]); else std::free(block[i]);
  }
}

int64_t stack_wavefronts() { return g_wavefronts.load(std::memory_order_relaxed); }

// Measured on an AVX2 Zen 3 with 512 KB of L2 per core (bench/results/stack-2026-12-02.md): the
// wavefront was faster than one layer after the other with W_hh of 12-64 KB at 1-16 rows, and
// no faster (mostly slower) from 108 KB, or at 64 rows.
bool stack_concurrent(int threads, int64_t w_hh_bytes, int64_t T, int64_t B) {
  return threads == 2 && w_hh_bytes <= (int64_t(64) << 10) && B <= 16 && T >= kStackMinSteps;
}

bool stack_schedule(const ForwardArgs<float>& a, const ForwardArgs<float>& b, int threads) {
  return schedule(a, b, threads).wavefront;
}
bool stack_schedule(const ForwardArgs<double>& a, const ForwardArgs<double>& b, int threads) {
  return schedule(a, b, threads).wavefront;
}
void layer_forward_stack(const ForwardArgs<float>& a, const ForwardArgs<float>& b,
                         const Executor& ex) {
  forward_stack(a, b, ex);
}
void layer_forward_stack(const ForwardArgs<double>& a, const ForwardArgs<double>& b,
                         const Executor& ex) {
  forward_stack(a, b, ex);
}

}  // namespace core
}  // namespace rnnfast
