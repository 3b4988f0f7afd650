// Unit tests of csrc/core without torch:
//  * backward agrees with central finite differences of forward (float64), for
//    every cell, with and without projection, lengths, reverse and biases;
//  * every SIMD path the CPU supports computes what the scalar path computes;
//  * the threaded executor gives bit-identical results to the serial one.
// Exit code 0 = pass; prints one line per failure and a summary line.
#include <algorithm>
#include <functional>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/rnn.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define TEST_X86 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#if defined(TEST_ASAN)
#include <sanitizer/asan_interface.h>
#endif

using namespace rnnfast::core;

namespace {

int g_failures = 0;
int g_checks = 0;

// The larger of an error so far and a new one, where NaN wins and stays (std::max would
// drop a NaN, and a kernel that reads memory it never wrote shows as NaN in the debug mode).
double worse(double so_far, double e) { return std::isnan(so_far) || e <= so_far ? so_far : e; }

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

// Runs tasks on std::threads (two by default) to exercise the parallel paths.
class ThreadExecutor final : public Executor {
 public:
  explicit ThreadExecutor(int n) : n_(n) {}
  int num_threads() const override { return n_; }
  void run(int64_t n, void (*fn)(void*, int64_t, int64_t), void* ctx) const override {
    std::vector<std::thread> threads;
    const int64_t chunk = (n + n_ - 1) / n_;
    for (int i = 0; i < n_; ++i) {
      int64_t b = i * chunk, e = std::min<int64_t>(n, b + chunk);
      if (b < e) threads.emplace_back([=] { fn(ctx, b, e); });
    }
    for (auto& t : threads) t.join();
  }
  void run_team(int max_threads, void (*fn)(void*, int, int), void* ctx) const override {
    const int n = std::min(max_threads, n_);
    std::vector<std::thread> threads;
    for (int i = 1; i < n; ++i) threads.emplace_back([=] { fn(ctx, i, n); });
    fn(ctx, 0, n);
    for (auto& t : threads) t.join();
  }

 private:
  int n_;
};

// Says it has two threads, but its teams have one member (as an OpenMP pool inside another
// parallel region gives): a team schedule must then run every member's work on the one.
class TeamOfOneExecutor final : public Executor {
 public:
  int num_threads() const override { return 2; }
  void run(int64_t n, void (*fn)(void*, int64_t, int64_t), void* ctx) const override {
    if (n > 0) fn(ctx, 0, n);
  }
};

// Every cell of cells.h.
std::vector<Cell> all_cells() {
  std::vector<Cell> cells;
  for (const CellInfo& c : kCells) cells.push_back(c.id);
  return cells;
}

struct Problem {
  Cell cell;
  int64_t T, B, I, H, P;
  bool reverse, bias, use_lengths;
  bool sorted_lengths = false;  // non-increasing, as from a PackedSequence
  int zoneout = 0;  // 0: none; 1: masks (training); 2: probabilities (eval's expectation)
};

template <class Real>
struct Tensors {
  std::vector<Real> x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ry, rh, rc;
  std::vector<Real> cw;  // the cell's own parameters, one after the other (cell_param_offset)
  std::vector<Real> zh, zc;  // zoneout masks of h [T, B, S] and c [T, B, H] (0 or 1)
  std::vector<int64_t> lengths;
};

// The zoneout of problem p (ForwardArgs::zoneout): masks zh, zc (or, packed, their active
// rows), or probabilities.
constexpr double kZoneoutP[2] = {0.3, 0.6};
template <class Args, class Real>
void wire_zoneout(Args& a, const Problem& p, const std::vector<Real>& zh,
                  const std::vector<Real>& zc) {
  if (p.zoneout == 1) {
    a.zoneout[0] = zh.data();
    a.zoneout[1] = cell_info(p.cell).cell_state ? zc.data() : nullptr;
  } else if (p.zoneout == 2) {
    a.zoneout_p[0] = kZoneoutP[0];
    a.zoneout_p[1] = cell_info(p.cell).cell_state ? kZoneoutP[1] : 0.0;
  }
}

// Where the cell's own parameter n starts in a buffer of all of them, one after the other
// (n = params(): their total size); each is [H] or [G*H] (kLayerParams).
int64_t cell_param_offset(Cell cell, int64_t H, int n) {
  const CellInfo& c = cell_info(cell);
  int64_t off = 0;
  for (int i = 0, k = 0; i < kLayerParamCount && k < n; ++i)
    if (c.has_param(i)) {
      off += kLayerParams[i].rows == Extent::GateRows ? c.gates * H : H;
      ++k;
    }
  return off;
}
// Points args.cell_w at the cell's own parameters in cw.
template <class Args, class Real>
void wire_cell_params(Args& a, Cell cell, int64_t H, const std::vector<Real>& cw) {
  for (int n = 0; n < cell_info(cell).params(); ++n)
    a.cell_w[n] = cw.data() + cell_param_offset(cell, H, n);
}
// Points args.dcell_w at gradient buffers in dcw (laid out as cw).
template <class Real>
void wire_cell_grads(BackwardArgs<Real>& a, Cell cell, int64_t H, std::vector<Real>& dcw) {
  for (int n = 0; n < cell_info(cell).params(); ++n)
    a.dcell_w[n] = dcw.data() + cell_param_offset(cell, H, n);
}

template <class Real>
Tensors<Real> make(const Problem& p, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-0.8, 0.8);
  auto fill = [&](int64_t n) {
    std::vector<Real> v(n);
    for (auto& e : v) e = static_cast<Real>(u(gen));
    return v;
  };
  const int64_t G = cell_info(p.cell).gates, S = p.P > 0 ? p.P : p.H;
  Tensors<Real> t;
  t.x = fill(p.T * p.B * p.I);
  t.h0 = fill(p.B * S);
  t.c0 = fill(p.B * p.H);
  t.w_ih = fill(G * p.H * p.I);
  t.w_hh = fill(G * p.H * S);
  t.b_ih = fill(G * p.H);
  t.b_hh = fill(G * p.H);
  t.w_hr = fill(p.P * p.H);
  t.cw = fill(cell_param_offset(p.cell, p.H, cell_info(p.cell).params()));
  std::bernoulli_distribution keep(0.4);
  t.zh.resize(p.T * p.B * S);
  t.zc.resize(p.T * p.B * p.H);
  for (auto& e : t.zh) e = keep(gen) ? Real(1) : Real(0);
  for (auto& e : t.zc) e = keep(gen) ? Real(1) : Real(0);
  t.ry = fill(p.T * p.B * S);
  t.rh = fill(p.B * S);
  t.rc = fill(p.B * p.H);
  for (int64_t b = 0; b < p.B; ++b) t.lengths.push_back(p.use_lengths ? (b * 2) % (p.T + 1) : p.T);
  if (p.sorted_lengths) std::sort(t.lengths.begin(), t.lengths.end(), std::greater<int64_t>());
  return t;
}

// 64-byte aligned storage, as the torch glue gives the kernels (on AVX-512 a workspace over
// 8 MB is then written with non-temporal stores wherever the widths keep its vectors aligned).
template <class Real>
struct Aligned64 {
  using value_type = Real;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  Real* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(Real) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<Real*>(p);
  }
  void deallocate(Real* p, size_t) { std::free(p); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};

template <class Real>
struct Result {
  std::vector<Real> y, hy, cy;
  std::vector<Real, Aligned64<Real>> ws;
};

// The arguments of p's forward call over t, writing into r (allocated here).
template <class Real>
ForwardArgs<Real> forward_args(const Problem& p, const Tensors<Real>& t, Result<Real>& r,
                               bool save) {
  const int64_t S = p.P > 0 ? p.P : p.H;
  r.y.assign(p.T * p.B * S, Real(-7));
  r.hy.assign(p.B * S, Real(-7));
  r.cy.assign(p.B * p.H, Real(-7));
  if (save) r.ws.assign(p.T * p.B * cell_info(p.cell).workspace_cols(p.H, p.P), Real(-7));
  ForwardArgs<Real> a;
  a.cell = p.cell; a.T = p.T; a.B = p.B; a.I = p.I; a.H = p.H; a.P = p.P;
  a.x = t.x.data(); a.h0 = t.h0.data();
  a.c0 = cell_info(p.cell).cell_state ? t.c0.data() : nullptr;
  a.w_ih = t.w_ih.data(); a.w_hh = t.w_hh.data();
  a.b_ih = p.bias ? t.b_ih.data() : nullptr;
  a.b_hh = p.bias ? t.b_hh.data() : nullptr;
  a.w_hr = p.P > 0 ? t.w_hr.data() : nullptr;
  wire_cell_params(a, p.cell, p.H, t.cw);
  wire_zoneout(a, p, t.zh, t.zc);
  a.lengths = p.use_lengths ? t.lengths.data() : nullptr;
  a.reverse = p.reverse;
  a.y = r.y.data(); a.hy = r.hy.data();
  a.cy = cell_info(p.cell).cell_state ? r.cy.data() : nullptr;
  a.ws = save ? r.ws.data() : nullptr;
  return a;
}

template <class Real>
Result<Real> run_forward(const Problem& p, const Tensors<Real>& t, const Executor& ex, bool save) {
  Result<Real> r;
  layer_forward(forward_args(p, t, r, save), ex);
  return r;
}

// The scalar loss whose gradient backward computes: <y, ry> + <hy, rh> + <cy, rc>.
double loss(const Problem& p, const Tensors<double>& t) {
  SerialExecutor ex;
  auto r = run_forward(p, t, ex, false);
  double s = 0;
  for (size_t i = 0; i < r.y.size(); ++i) s += r.y[i] * t.ry[i];
  for (size_t i = 0; i < r.hy.size(); ++i) s += r.hy[i] * t.rh[i];
  if (cell_info(p.cell).cell_state)
    for (size_t i = 0; i < r.cy.size(); ++i) s += r.cy[i] * t.rc[i];
  return s;
}

std::string describe(const Problem& p) {
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "cell=%d T=%lld B=%lld I=%lld H=%lld P=%lld rev=%d bias=%d len=%d zoneout=%d",
                static_cast<int>(p.cell), (long long)p.T, (long long)p.B, (long long)p.I,
                (long long)p.H, (long long)p.P, p.reverse, p.bias, p.use_lengths, p.zoneout);
  return buf;
}

// The gradient outputs of one backward call, sized for p, and their wiring into its args.
struct GradBuffers {
  std::vector<double> dx, dh0, dc0, dwih, dwhh, dbih, dbhh, dwhr, dcw;
  GradBuffers(const Problem& p, const Tensors<double>& t)
      : dx(t.x.size()), dh0(t.h0.size()), dc0(t.c0.size()), dwih(t.w_ih.size()),
        dwhh(t.w_hh.size()), dbih(cell_info(p.cell).gates * p.H), dbhh(cell_info(p.cell).gates * p.H),
        dwhr(t.w_hr.size()), dcw(t.cw.size()) {}
  void wire(const Problem& p, BackwardArgs<double>& a) {
    a.dx = dx.data(); a.dh0 = dh0.data();
    a.dc0 = cell_info(p.cell).cell_state ? dc0.data() : nullptr;
    a.dw_ih = dwih.data(); a.dw_hh = dwhh.data();
    a.db_ih = dbih.data(); a.db_hh = dbhh.data();
    a.dw_hr = p.P > 0 ? dwhr.data() : nullptr;
    wire_cell_grads(a, p.cell, p.H, dcw);
  }
};

// The arguments of p's backward call over t and its forward's result fr, into gr.
BackwardArgs<double> backward_args(const Problem& p, const Tensors<double>& t,
                                   const Result<double>& fr, GradBuffers& gr) {
  BackwardArgs<double> a;
  a.cell = p.cell; a.T = p.T; a.B = p.B; a.I = p.I; a.H = p.H; a.P = p.P;
  a.x = t.x.data(); a.w_ih = t.w_ih.data(); a.w_hh = t.w_hh.data();
  a.w_hr = p.P > 0 ? t.w_hr.data() : nullptr;
  wire_cell_params(a, p.cell, p.H, t.cw);
  wire_zoneout(a, p, t.zh, t.zc);
  a.lengths = p.use_lengths ? t.lengths.data() : nullptr;
  a.reverse = p.reverse;
  a.ws = fr.ws.data();
  a.dy = t.ry.data(); a.dhy = t.rh.data();
  a.dcy = cell_info(p.cell).cell_state ? t.rc.data() : nullptr;
  gr.wire(p, a);
  return a;
}

void check_gradients(const Problem& p) {
  auto t = make<double>(p, 1234);
  const int64_t S = p.P > 0 ? p.P : p.H;
  SerialExecutor ex;
  auto fr = run_forward(p, t, ex, true);
  GradBuffers gr(p, t);
  std::vector<double> &dx = gr.dx, &dh0 = gr.dh0, &dc0 = gr.dc0, &dwih = gr.dwih,
                      &dwhh = gr.dwhh, &dbih = gr.dbih, &dbhh = gr.dbhh, &dwhr = gr.dwhr;
  const BackwardArgs<double> a = backward_args(p, t, fr, gr);
  layer_backward(a, ex);

  auto fd = [&](std::vector<double>& param, const std::vector<double>& grad, const char* name) {
    const double eps = 1e-6;
    double worst = 0;
    for (size_t i = 0; i < param.size(); ++i) {
      const double keep = param[i];
      param[i] = keep + eps;
      double lp = loss(p, t);
      param[i] = keep - eps;
      double lm = loss(p, t);
      param[i] = keep;
      double num = (lp - lm) / (2 * eps);
      worst = worse(worst, std::fabs(num - grad[i]) / (1.0 + std::fabs(num)));
    }
    expect(worst < 1e-6, describe(p) + " grad " + name + " max rel err " + std::to_string(worst));
  };
  fd(t.x, dx, "x");
  fd(t.h0, dh0, "h0");
  if (cell_info(p.cell).cell_state) fd(t.c0, dc0, "c0");
  fd(t.w_ih, dwih, "w_ih");
  fd(t.w_hh, dwhh, "w_hh");
  if (p.bias) {
    fd(t.b_ih, dbih, "b_ih");
    fd(t.b_hh, dbhh, "b_hh");
  }
  if (p.P > 0) fd(t.w_hr, dwhr, "w_hr");
  if (!t.cw.empty()) fd(t.cw, gr.dcw, "own parameters");
  (void)S;

  // With lengths: the same call with NaN in the padding of x and of dy (the (t, b) past each
  // length) gives the same outputs and gradients, bit for bit, and zeros in dx's padding.
  if (p.use_lengths) {
    Tensors<double> tn = t;
    for (int64_t s = 0; s < p.T; ++s)
      for (int64_t b = 0; b < p.B; ++b)
        if (s >= t.lengths[b]) {
          for (int64_t i = 0; i < p.I; ++i) tn.x[(s * p.B + b) * p.I + i] = NAN;
          for (int64_t i = 0; i < S; ++i) tn.ry[(s * p.B + b) * S + i] = NAN;
        }
    auto fn = run_forward(p, tn, ex, true);
    expect(fn.y == fr.y && fn.hy == fr.hy && fn.cy == fr.cy,
           describe(p) + " forward with NaN padding in x");
    GradBuffers en(p, t);
    std::vector<double> &ex_ = en.dx, &eh0 = en.dh0, &ec0 = en.dc0, &ewih = en.dwih,
                        &ewhh = en.dwhh, &ebih = en.dbih, &ebhh = en.dbhh, &ewhr = en.dwhr;
    BackwardArgs<double> an = a;
    an.x = tn.x.data(); an.dy = tn.ry.data(); an.ws = fn.ws.data();
    en.wire(p, an);
    layer_backward(an, ex);
    bool pad_zero = true;
    for (int64_t s = 0; s < p.T; ++s)
      for (int64_t b = 0; b < p.B; ++b)
        if (s >= t.lengths[b])
          for (int64_t i = 0; i < p.I; ++i) pad_zero = pad_zero && ex_[(s * p.B + b) * p.I + i] == 0.0;
    expect(pad_zero && ex_ == dx && eh0 == dh0 && ec0 == dc0 && ewih == dwih && ewhh == dwhh &&
               ebih == dbih && ebhh == dbhh && ewhr == dwhr && en.dcw == gr.dcw,
           describe(p) + " gradients with NaN padding in x and dy");
  }
}

// Largest |a - b| relative to the scale of b (ReLU states grow large).
template <class Real>
double max_diff(const std::vector<Real>& a, const std::vector<Real>& b) {
  double m = 0, scale = 1;
  for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs(double(b[i])));
  for (size_t i = 0; i < a.size(); ++i) m = worse(m, std::fabs(double(a[i]) - double(b[i])));
  return m / scale;
}

// Packed layout (ForwardArgs::packed) against the padded call with the same sorted
// lengths: outputs, states and every gradient, on the active rows.
void check_packed(const Problem& p, const Executor& ex) {
  auto t = make<double>(p, 4321);
  const int64_t S = p.P > 0 ? p.P : p.H, G = cell_info(p.cell).gates;
  const int64_t WS = cell_info(p.cell).workspace_cols(p.H, p.P);
  std::vector<int64_t> n(p.T), off(p.T + 1, 0);
  for (int64_t s = 0; s < p.T; ++s) {
    n[s] = 0;
    for (int64_t b = 0; b < p.B; ++b) n[s] += t.lengths[b] > s;
    off[s + 1] = off[s] + n[s];
  }
  const int64_t N = off[p.T];
  auto gather = [&](const std::vector<double>& v, int64_t cols) {
    std::vector<double> out(N * cols);
    for (int64_t s = 0; s < p.T; ++s)
      std::copy(v.begin() + s * p.B * cols, v.begin() + (s * p.B + n[s]) * cols,
                out.begin() + off[s] * cols);
    return out;
  };
  struct Grads {
    std::vector<double> dx, dh0, dc0, dwih, dwhh, dbih, dbhh, dwhr, dcw;
  };
  auto run = [&](bool packed, Result<double>& fr, Grads& g) {
    Tensors<double> tt = t;
    if (packed) {
      tt.x = gather(t.x, p.I);
      tt.zh = gather(t.zh, S);
      tt.zc = gather(t.zc, p.H);
    }
    const int64_t rows = packed ? N : p.T * p.B;
    fr.y.assign(rows * S, -7);
    fr.hy.assign(p.B * S, -7);
    fr.cy.assign(p.B * p.H, -7);
    fr.ws.assign(rows * WS, -7);
    ForwardArgs<double> a;
    a.cell = p.cell; a.T = p.T; a.B = p.B; a.I = p.I; a.H = p.H; a.P = p.P;
    a.x = tt.x.data(); a.h0 = t.h0.data();
    a.c0 = cell_info(p.cell).cell_state ? t.c0.data() : nullptr;
    a.w_ih = t.w_ih.data(); a.w_hh = t.w_hh.data();
    a.b_ih = t.b_ih.data(); a.b_hh = t.b_hh.data();
    a.w_hr = p.P > 0 ? t.w_hr.data() : nullptr;
    wire_cell_params(a, p.cell, p.H, t.cw);
    wire_zoneout(a, p, tt.zh, tt.zc);
    a.lengths = t.lengths.data(); a.reverse = p.reverse; a.packed = packed;
    a.y = fr.y.data(); a.hy = fr.hy.data();
    a.cy = cell_info(p.cell).cell_state ? fr.cy.data() : nullptr;
    a.ws = fr.ws.data();
    layer_forward(a, ex);
    std::vector<double> dy = packed ? gather(t.ry, S) : t.ry;
    g.dx.assign(rows * p.I, -7); g.dh0.assign(p.B * S, -7); g.dc0.assign(p.B * p.H, -7);
    g.dwih.assign(t.w_ih.size(), -7); g.dwhh.assign(t.w_hh.size(), -7);
    g.dbih.assign(G * p.H, -7); g.dbhh.assign(G * p.H, -7); g.dwhr.assign(t.w_hr.size(), -7);
    g.dcw.assign(t.cw.size(), -7);
    BackwardArgs<double> b;
    b.cell = p.cell; b.T = p.T; b.B = p.B; b.I = p.I; b.H = p.H; b.P = p.P;
    b.x = tt.x.data(); b.w_ih = t.w_ih.data(); b.w_hh = t.w_hh.data();
    b.w_hr = p.P > 0 ? t.w_hr.data() : nullptr;
    wire_cell_params(b, p.cell, p.H, t.cw);
    wire_cell_grads(b, p.cell, p.H, g.dcw);
    wire_zoneout(b, p, tt.zh, tt.zc);
    b.lengths = t.lengths.data(); b.reverse = p.reverse; b.packed = packed;
    b.ws = fr.ws.data(); b.dy = dy.data(); b.dhy = t.rh.data();
    b.dcy = cell_info(p.cell).cell_state ? t.rc.data() : nullptr;
    b.dx = g.dx.data(); b.dh0 = g.dh0.data();
    b.dc0 = cell_info(p.cell).cell_state ? g.dc0.data() : nullptr;
    b.dw_ih = g.dwih.data(); b.dw_hh = g.dwhh.data();
    b.db_ih = g.dbih.data(); b.db_hh = g.dbhh.data();
    b.dw_hr = p.P > 0 ? g.dwhr.data() : nullptr;
    layer_backward(b, ex);
  };
  Result<double> fpad, fpk;
  Grads gpad, gpk;
  run(false, fpad, gpad);
  run(true, fpk, gpk);
  const double tol = 1e-12;
  const std::string tag = describe(p) + " packed";
  expect(max_diff(fpk.y, gather(fpad.y, S)) < tol, tag + " y");
  expect(max_diff(fpk.hy, fpad.hy) < tol, tag + " hy");
  if (cell_info(p.cell).cell_state) expect(max_diff(fpk.cy, fpad.cy) < tol, tag + " cy");
  expect(max_diff(gpk.dx, gather(gpad.dx, p.I)) < tol, tag + " dx");
  expect(max_diff(gpk.dh0, gpad.dh0) < tol, tag + " dh0");
  if (cell_info(p.cell).cell_state) expect(max_diff(gpk.dc0, gpad.dc0) < tol, tag + " dc0");
  expect(max_diff(gpk.dwih, gpad.dwih) < tol, tag + " dw_ih");
  expect(max_diff(gpk.dwhh, gpad.dwhh) < tol, tag + " dw_hh");
  expect(max_diff(gpk.dbih, gpad.dbih) < tol, tag + " db_ih");
  expect(max_diff(gpk.dbhh, gpad.dbhh) < tol, tag + " db_hh");
  if (p.P > 0) expect(max_diff(gpk.dwhr, gpad.dwhr) < tol, tag + " dw_hr");
  expect(max_diff(gpk.dcw, gpad.dcw) < tol, tag + " own parameters");
}

// The sigmoid and tanh of the active instruction set, float32 swept against double precision
// and float64 against long double. An LSTM step with W_ih = identity, W_hh and biases zero
// saves i f g o = sigmoid, sigmoid, tanh, sigmoid of its input in the workspace.
// Returns the largest error in units in the last place of the rounded reference (tanh and
// sigmoid separately); results below the type's smallest normal (flushed to zero, or sigmoid
// of a large negative value) count as exact.
template <class Real>
void activation_errors(double* ulp_sigmoid, double* ulp_tanh, bool* nan_ok) {
  const int64_t H = 64, G4 = 4 * H, B = 512;
  std::vector<Real> x(B * G4), w(G4 * G4, Real(0)), whh(G4 * H, Real(0));
  for (int64_t i = 0; i < G4; ++i) w[i * G4 + i] = Real(1);
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int64_t n = 0; n < B * G4; ++n) {
    double v;
    if (n % 2) v = -12.0 + 24.0 * u(rng);                    // the range that matters
    else v = std::pow(10.0, -9.0 + 11.0 * u(rng)) * (u(rng) < 0.5 ? -1 : 1);  // 1e-9 .. 100
    x[n] = static_cast<Real>(v);
  }
  const bool f32 = sizeof(Real) == 4;
  const double specials32[] = {0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 88.5, -88.5,
                               200.0, -200.0, 1e30, -1e30, 3.4e38, -3.4e38, NAN};
  const double specials64[] = {0.0, -0.0, 1e-300, -1e-300, 19.0, -19.0, 21.0, -21.0,
                               708.0, -708.0, 710.0, -710.0, 800.0, -800.0, 1e300, -1e300,
                               1.7e308, -1.7e308, NAN};
  const double* specials = f32 ? specials32 : specials64;
  const size_t nspecial = f32 ? sizeof(specials32) / sizeof(double) : sizeof(specials64) / sizeof(double);
  for (size_t i = 0; i < nspecial; ++i)
    for (int64_t q = 0; q < 4; ++q) x[i * G4 + q * H] = static_cast<Real>(specials[i]);
  ForwardArgs<Real> a;
  a.cell = Cell::LSTM; a.T = 1; a.B = B; a.I = G4; a.H = H;
  std::vector<Real> y(B * H), hy(B * H), cy(B * H), ws(B * cell_info(Cell::LSTM).workspace_cols(H, 0));
  a.x = x.data(); a.w_ih = w.data(); a.w_hh = whh.data();
  a.y = y.data(); a.hy = hy.data(); a.cy = cy.data(); a.ws = ws.data();
  SerialExecutor ex;
  layer_forward(a, ex);
  *ulp_sigmoid = *ulp_tanh = 0;
  *nan_ok = true;
  const long double tiny = std::numeric_limits<Real>::min();
  const int64_t WS = cell_info(Cell::LSTM).workspace_cols(H, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < G4; ++n) {
      const bool is_tanh = n / H == 2;
      const long double in = x[b * G4 + n], got = ws[b * WS + n];
      if (std::isnan(in)) {
        *nan_ok = *nan_ok && std::isnan(got);
        continue;
      }
      // Where exp(-x) overflows (as the C library's and torch's do), sigmoid is exactly 0:
      // a denormal instead would turn torch's 0 * inf = NaN gradients into infinities.
      const long double overflow = f32 ? 88.8L : 709.8L;
      if (!is_tanh && -in > overflow) *nan_ok = *nan_ok && got == 0;
      const long double ref = is_tanh ? std::tanh(in) : 1.0L / (1.0L + std::exp(-in));
      const Real rf = static_cast<Real>(ref);
      if (std::fabs(ref) < tiny && std::fabs(got) < tiny) continue;
      const long double ulp =
          std::nextafter(std::fabs(rf), std::numeric_limits<Real>::infinity()) - std::fabs(rf);
      const double e = static_cast<double>(std::fabs(got - ref) / ulp);
      double* worst = is_tanh ? ulp_tanh : ulp_sigmoid;
      if (!(e <= *worst)) *worst = e;  // NaN results count as the worst
    }
}

template <class Real>
void check_isas_and_threads(const Problem& p, double tol) {
  auto t = make<Real>(p, 99);
  SerialExecutor serial;
  ThreadExecutor threads(2);
  set_isa(Isa::Scalar);
  auto ref = run_forward(p, t, serial, true);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    set_isa(isa);
    auto r = run_forward(p, t, serial, true);
    auto rt = run_forward(p, t, threads, true);
    std::string tag = describe(p) + " isa=" + isa_name(isa) + (sizeof(Real) == 4 ? " f32" : " f64");
    expect(max_diff(r.y, ref.y) < tol && max_diff(r.hy, ref.hy) < tol, tag + " forward vs scalar");
    expect(r.y == rt.y && r.hy == rt.hy && r.ws == rt.ws, tag + " threaded forward bit-identical");
  }
}

// The pair schedule of a bidirectional layer (layer_forward_pair, layer_backward_pair), on
// one thread and on two (where the directions run at the same time): each direction's results
// are its own call's, bit for bit, and the input gradient is the sum of the two calls'.
void check_pair(Problem p) {
  Problem pr = p;
  p.reverse = false;
  pr.reverse = true;
  auto t = make<double>(p, 5), tr = make<double>(p, 6);
  tr.x = t.x;  // one input
  SerialExecutor serial;
  auto f = run_forward(p, t, serial, true), fr = run_forward(pr, tr, serial, true);
  GradBuffers g(p, t), gr(pr, tr);
  layer_backward(backward_args(p, t, f, g), serial);
  layer_backward(backward_args(pr, tr, fr, gr), serial);
  std::vector<double> dx_sum(g.dx.size());
  for (size_t i = 0; i < dx_sum.size(); ++i) dx_sum[i] = g.dx[i] + gr.dx[i];
  ThreadExecutor two(2);
  for (const Executor* ex : {static_cast<const Executor*>(&serial),
                             static_cast<const Executor*>(&two)}) {
    const int64_t w_hh = cell_info(p.cell).gates * p.H * (p.P > 0 ? p.P : p.H) * 8;
    const std::string tag = describe(p) + " pair on " + std::to_string(ex->num_threads()) +
                            " threads" +
                            (pair_concurrent(ex->num_threads(), w_hh) ? " (concurrent)" : "");
    Result<double> a, b;
    layer_forward_pair(forward_args(p, t, a, true), forward_args(pr, tr, b, true), *ex);
    expect(a.y == f.y && a.hy == f.hy && a.cy == f.cy && a.ws == f.ws && b.y == fr.y &&
               b.hy == fr.hy && b.cy == fr.cy && b.ws == fr.ws,
           tag + ": forward");
    GradBuffers ga(p, t), gb(pr, tr);
    BackwardArgs<double> ba = backward_args(p, t, a, ga), bb = backward_args(pr, tr, b, gb);
    bb.dx = ba.dx;
    layer_backward_pair(ba, bb, *ex);
    expect(ga.dx == dx_sum, tag + ": input gradient, the sum of both directions'");
    expect(ga.dh0 == g.dh0 && ga.dc0 == g.dc0 && ga.dwih == g.dwih && ga.dwhh == g.dwhh &&
               ga.dbih == g.dbih && ga.dbhh == g.dbhh && ga.dwhr == g.dwhr && ga.dcw == g.dcw,
           tag + ": forward direction's gradients");
    expect(gb.dh0 == gr.dh0 && gb.dc0 == gr.dc0 && gb.dwih == gr.dwih && gb.dwhh == gr.dwhh &&
               gb.dbih == gr.dbih && gb.dbhh == gr.dbhh && gb.dwhr == gr.dwhr && gb.dcw == gr.dcw,
           tag + ": reverse direction's gradients");
  }
}

// The stacked schedule of two layers (layer_forward_stack): lower layer p, upper layer q
// (q.I = p's S), on one, two and three threads; both layers' outputs, final states and
// workspaces are those of the two calls one after the other, bit for bit, and on two threads
// the stacked schedule is taken.
template <class Real>
void check_stack(const Problem& p, const Problem& q) {
  auto t = make<Real>(p, 7), u = make<Real>(q, 8);
  SerialExecutor serial;
  for (bool save : {false, true}) {
    Result<Real> f = run_forward(p, t, serial, save);
    u.x = f.y;
    Result<Real> g = run_forward(q, u, serial, save);
    for (int threads : {1, 2, 3, -2}) {  // -2: two threads in teams of one
      ThreadExecutor team(threads);
      TeamOfOneExecutor team_of_one;
      const Executor& ex = threads == 1    ? static_cast<const Executor&>(serial)
                           : threads == -2 ? static_cast<const Executor&>(team_of_one)
                                           : team;
      threads = ex.num_threads();
      Result<Real> a, b;
      ForwardArgs<Real> fa = forward_args(p, t, a, save);
      auto v = u;
      ForwardArgs<Real> fb = forward_args(q, v, b, save);
      fb.x = a.y.data();
      const bool stacked = stack_schedule(fa, fb, threads);
      const std::string tag = describe(p) + " / " + describe(q) + " stacked on " +
                              std::to_string(threads) + " threads" +
                              (&ex == &team_of_one ? " in teams of one" : "") +
                              (save ? ", saving" : "") + (stacked ? " (wavefront)" : "");
      if (threads == 2) expect(stacked, tag + ": takes the stacked schedule");
      layer_forward_stack(fa, fb, ex);
      expect(a.y == f.y && a.hy == f.hy && a.cy == f.cy && a.ws == f.ws, tag + ": lower layer");
      expect(b.y == g.y && b.hy == g.hy && b.cy == g.cy && b.ws == g.ws, tag + ": upper layer");
    }
  }
}

// p's backward into g on ex, with its weight gradients (dW_ih, dW_hh, dW_hr) written to blocks
// that start `offset` doubles past a 64-byte boundary (0: every row of a width of whole vectors
// aligned, as non-temporal stores need; 1: none aligned), then copied into g.
void backward_at_offset(const Problem& p, const Tensors<double>& t, const Result<double>& f,
                        GradBuffers& g, const Executor& ex, int64_t offset) {
  BackwardArgs<double> a = backward_args(p, t, f, g);
  std::vector<double>* outs[3] = {&g.dwih, &g.dwhh, &g.dwhr};
  double** args[3] = {&a.dw_ih, &a.dw_hh, &a.dw_hr};
  std::vector<double> store[3];
  double* at[3] = {};
  for (int i = 0; i < 3; ++i) {
    if (!*args[i]) continue;
    store[i].assign(outs[i]->size() + 16, 0.0);
    const uintptr_t addr = reinterpret_cast<uintptr_t>(store[i].data());
    at[i] = store[i].data() + (64 - addr % 64) % 64 / sizeof(double) + offset;
    *args[i] = at[i];
  }
  layer_backward(a, ex);
  for (int i = 0; i < 3; ++i)
    if (at[i]) std::copy(at[i], at[i] + outs[i]->size(), outs[i]->begin());
}

// The weight gradients of a call of few rows (T B <= kFewK in gemm_impl.h) are GEMMs of few k
// steps, written row by row (streamed where aligned) unless set_gemm_rows(false) sends them to
// the blocked path: every gradient is the same bits either way, on every SIMD path and thread
// count, into aligned and unaligned outputs. Gradients of 4 MB and up take that path: W_ih with
// rows of 515 doubles (a partial last strip), W_hh, a projection's W_hr, and lengths.
void check_gemm_rows() {
  const std::vector<Problem> problems = {
      {Cell::LSTM, 1, 3, 515, 512, 0, false, true, false},
      {Cell::GRU, 2, 4, 64, 512, 0, true, true, false},
      {Cell::LSTM, 2, 4, 32, 1024, 512, false, true, true},
      {Cell::RNN_TANH, 1, 1, 1024, 1024, 0, false, false, false},
  };
  const Isa initial = active_isa();
  const bool rows_before = gemm_rows_enabled();
  SerialExecutor serial;
  ThreadExecutor two(2), three(3);
  const Executor* executors[] = {&serial, &two, &three};
  for (const Problem& p : problems) {
    auto t = make<double>(p, 21);
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
      if (!set_isa(isa)) continue;
      auto f = run_forward(p, t, serial, true);
      set_gemm_rows(false);
      GradBuffers ref(p, t);
      layer_backward(backward_args(p, t, f, ref), serial);
      set_gemm_rows(true);
      for (const Executor* ex : executors)
        for (int64_t offset : {0, 1}) {
          GradBuffers g(p, t);
          backward_at_offset(p, t, f, g, *ex, offset);
          expect(g.dx == ref.dx && g.dh0 == ref.dh0 && g.dc0 == ref.dc0 && g.dwih == ref.dwih &&
                     g.dwhh == ref.dwhh && g.dbih == ref.dbih && g.dbhh == ref.dbhh &&
                     g.dwhr == ref.dwhr,
                 describe(p) + " isa=" + isa_name(isa) + " on " +
                     std::to_string(ex->num_threads()) + " threads, outputs " +
                     (offset ? "unaligned" : "aligned") +
                     ": gradients row by row equal the blocked GEMM's");
        }
    }
  }
  set_gemm_rows(rows_before);
  set_isa(initial);
}

}  // namespace

// The scratch cache, switched on whatever the build's default (under ASan it is off unless
// asked for, so this is how its code runs sanitized):
// - a block keeps its own size: a 512 KB block that served a 200 KB request is cached again
//   as 512 KB (counting it at the request's size would let the cache exceed its cap);
// - at most 32 blocks and 256 MB are kept, the oldest dropped first; a larger block never is;
// - under ASan a kept block is poisoned, and so is the tail of a block past its request.
void check_scratch_cache() {
  const bool was_on = scratch_cache_enabled();
  set_scratch_cache(true);
  release_scratch();
  void* a = scratch_alloc(512 << 10);
  scratch_free(a);
  const size_t kept = scratch_cached_bytes();
  expect(kept == (512 << 10), "scratch: a freed 512 KB block is cached as 512 KB, got " +
                                  std::to_string(kept));
  void* b = scratch_alloc(200 << 10);
  expect(b == a, "scratch: a 200 KB request reuses the cached 512 KB block");
  expect(scratch_cached_bytes() == 0, "scratch: a reused block leaves the cache");
  if (debug_nan_scratch()) {
    const unsigned char* c = static_cast<const unsigned char*>(b);
    expect(c[0] == 0xFF && c[(200 << 10) - 1] == 0xFF,
           "scratch: the debug mode fills a reused block with NaN bytes");
  }
#if defined(TEST_ASAN)
  const char* bc = static_cast<const char*>(b);
  expect(!__asan_address_is_poisoned(bc) && !__asan_address_is_poisoned(bc + (200 << 10) - 1),
         "scratch (ASan): the request's bytes of a reused block are addressable");
  expect(__asan_address_is_poisoned(bc + (200 << 10)) &&
             __asan_address_is_poisoned(bc + (512 << 10) - 1),
         "scratch (ASan): the tail of a reused block past the request is poisoned");
#endif
  scratch_free(b);
  expect(scratch_cached_bytes() == (512 << 10),
         "scratch: the reused block comes back at 512 KB, got " +
             std::to_string(scratch_cached_bytes()));
#if defined(TEST_ASAN)
  expect(__asan_address_is_poisoned(a), "scratch (ASan): a cached block is poisoned");
  void* fresh = scratch_alloc((100 << 10) + 8);  // a new 128 KB block
  const char* fc = static_cast<const char*>(fresh);
  expect(!__asan_address_is_poisoned(fc + (100 << 10) + 7) &&
             __asan_address_is_poisoned(fc + (100 << 10) + 8),
         "scratch (ASan): the tail of a new block past the request is poisoned");
  scratch_free(fresh);
#endif
  release_scratch();
  expect(scratch_cached_bytes() == 0, "scratch: release_scratch empties the cache");

  // At most 32 blocks: 40 freed, the 32 last kept.
  std::vector<void*> small;
  for (int i = 0; i < 40; ++i) small.push_back(scratch_alloc(64 << 10));
  for (void* p : small) scratch_free(p);
  expect(scratch_cached_bytes() == size_t(32) * (64 << 10),
         "scratch: 40 freed 64 KB blocks keep 32, got " + std::to_string(scratch_cached_bytes()));
  release_scratch();
  // At most 256 MB: five 64 MB blocks keep four, the oldest dropped.
  std::vector<void*> large;
  for (int i = 0; i < 5; ++i) large.push_back(scratch_alloc(size_t(64) << 20));
  for (void* p : large) scratch_free(p);
  expect(scratch_cached_bytes() == (size_t(256) << 20),
         "scratch: five freed 64 MB blocks keep 256 MB, got " +
             std::to_string(scratch_cached_bytes()));
  void* again = scratch_alloc(size_t(64) << 20);
  expect(again != large[0], "scratch: the oldest 64 MB block was the one dropped");
  scratch_free(again);
  // A block over the cap is freed at once and leaves the cache as it was.
  void* huge = scratch_alloc(size_t(300) << 20);
  scratch_free(huge);
  expect(scratch_cached_bytes() == (size_t(256) << 20),
         "scratch: a freed 300 MB block is not kept, got " +
             std::to_string(scratch_cached_bytes()));
  // Switching the cache off frees what it keeps; a block handed out before is still freed
  // correctly after (and one handed out while off, once on again).
  void* before = scratch_alloc(1 << 20);
  set_scratch_cache(false);
  expect(scratch_cached_bytes() == 0, "scratch: switching the cache off frees its blocks");
  void* off = scratch_alloc(1 << 20);
  scratch_free(before);
  expect(scratch_cached_bytes() == 0, "scratch: with the cache off a freed block is not kept");
  set_scratch_cache(true);
  scratch_free(off);
  expect(scratch_cached_bytes() == 0, "scratch: a block from the cache-off path is never kept");
  release_scratch();
  set_scratch_cache(was_on);
}

// An empty sequence (T = 0): the final state is the initial one (zeros without one), and
// backward passes dhy/dcy through to dh0/dc0 with zero weight and bias gradients.
void check_empty_sequence() {
  for (Cell cell : all_cells())
    for (int64_t P : {int64_t(0), int64_t(2)})
      for (bool with_state : {false, true}) {
        if (P > 0 && !cell_info(cell).projection) continue;
        Problem p{cell, 0, 3, 4, 5, P, false, true, false};
        auto t = make<double>(p, 5);
        const int64_t S = P > 0 ? P : p.H, G = cell_info(cell).gates;
        const std::string tag = describe(p) + (with_state ? " with h0" : " no h0") + " T=0";
        SerialExecutor ex;
        ForwardArgs<double> a;
        a.cell = cell; a.T = 0; a.B = p.B; a.I = p.I; a.H = p.H; a.P = P;
        a.w_ih = t.w_ih.data(); a.w_hh = t.w_hh.data();
        a.b_ih = t.b_ih.data(); a.b_hh = t.b_hh.data();
        a.w_hr = P > 0 ? t.w_hr.data() : nullptr;
        wire_cell_params(a, cell, p.H, t.cw);
        a.h0 = with_state ? t.h0.data() : nullptr;
        a.c0 = with_state && cell_info(cell).cell_state ? t.c0.data() : nullptr;
        std::vector<double> hy(p.B * S, -7), cy(p.B * p.H, -7);
        a.hy = hy.data();
        a.cy = cell_info(cell).cell_state ? cy.data() : nullptr;
        layer_forward(a, ex);
        expect(hy == (with_state ? t.h0 : std::vector<double>(p.B * S, 0.0)), tag + " hy");
        if (cell_info(cell).cell_state)
          expect(cy == (with_state ? t.c0 : std::vector<double>(p.B * p.H, 0.0)), tag + " cy");

        BackwardArgs<double> g;
        g.cell = cell; g.T = 0; g.B = p.B; g.I = p.I; g.H = p.H; g.P = P;
        g.w_ih = t.w_ih.data(); g.w_hh = t.w_hh.data();
        g.w_hr = P > 0 ? t.w_hr.data() : nullptr;
        wire_cell_params(g, cell, p.H, t.cw);
        std::vector<double> dcw(t.cw.size(), -7);
        wire_cell_grads(g, cell, p.H, dcw);
        g.dhy = t.rh.data();
        g.dcy = cell_info(cell).cell_state ? t.rc.data() : nullptr;
        std::vector<double> dh0(p.B * S, -7), dc0(p.B * p.H, -7), dwih(t.w_ih.size(), -7),
            dwhh(t.w_hh.size(), -7), dbih(G * p.H, -7), dbhh(G * p.H, -7),
            dwhr(t.w_hr.size(), -7);
        g.dh0 = dh0.data();
        g.dc0 = cell_info(cell).cell_state ? dc0.data() : nullptr;
        g.dw_ih = dwih.data(); g.dw_hh = dwhh.data();
        g.db_ih = dbih.data(); g.db_hh = dbhh.data();
        g.dw_hr = P > 0 ? dwhr.data() : nullptr;
        layer_backward(g, ex);
        auto zeros = [](const std::vector<double>& v) {
          return std::all_of(v.begin(), v.end(), [](double e) { return e == 0.0; });
        };
        expect(dh0 == t.rh, tag + " dh0 = dhy");
        if (cell_info(cell).cell_state) expect(dc0 == t.rc, tag + " dc0 = dcy");
        expect(zeros(dwih) && zeros(dwhh) && zeros(dbih) && zeros(dbhh) &&
                   (P == 0 || zeros(dwhr)) && zeros(dcw),
               tag + " zero weight and bias gradients");
      }
}

// Denormals: an LSTM with zero weights and biases keeps c_t = c_{t-1} / 2 (f = 1/2, g = 0),
// so cy = c0 / 2^T exactly while c0 is a power of two. From c0 = 2^-1000 after 40 steps that
// is 2^-1040, a float64 denormal, which a float64 call keeps (as torch does); from 2^-100 a
// float32 call flushes it to zero (2^-140 would be a float32 denormal). Neither changes the
// caller's MXCSR (its FTZ/DAZ bits stay as they were, set or not). H = 64 at B = 2 is large
// enough for the threaded executor to split the steps between two threads, whose
// denormal mode is then checked too (every unit of cy).
void check_denormals() {
#if defined(TEST_X86)
  const int64_t T = 40, B = 2, H = 64;
  auto run = [&](auto zero, double c0v, const Executor& ex) {
    using R = decltype(zero);
    std::vector<R> x(T * B), w_ih(4 * H, 0), w_hh(4 * H * H, 0), c0(B * H, R(c0v)), y(T * B * H),
        hy(B * H), cy(B * H);
    ForwardArgs<R> a;
    a.cell = Cell::LSTM; a.T = T; a.B = B; a.I = 1; a.H = H;
    a.x = x.data(); a.w_ih = w_ih.data(); a.w_hh = w_hh.data(); a.c0 = c0.data();
    a.y = y.data(); a.hy = hy.data(); a.cy = cy.data();
    layer_forward(a, ex);
    return cy;
  };
  SerialExecutor serial;
  ThreadExecutor threads(2);
  const unsigned saved = _mm_getcsr();
  for (unsigned caller : {0u, 0x8040u}) {
    for (const Executor* ex : {static_cast<const Executor*>(&serial),
                               static_cast<const Executor*>(&threads)}) {
      const std::string tag = std::string("denormals, caller FTZ/DAZ ") + (caller ? "on" : "off") +
                              (ex == &serial ? " serial" : " threaded");
      _mm_setcsr((saved & ~0x8040u) | caller);
      auto cd = run(double(0), std::ldexp(1.0, -1000), *ex);
      const unsigned after_d = _mm_getcsr() & 0x8040u;
      _mm_setcsr((saved & ~0x8040u) | caller);
      auto cf = run(float(0), std::ldexp(1.0, -100), *ex);
      const unsigned after_f = _mm_getcsr() & 0x8040u;
      _mm_setcsr(saved & ~0x8040u);  // compare without DAZ (it would read want as zero)
      const double want = std::ldexp(1.0, -1040);
      if (caller == 0)
        expect(std::all_of(cd.begin(), cd.end(), [&](double v) { return v == want; }),
               tag + ": float64 keeps a denormal state, 2^-1040 (got 2^" +
                   std::to_string(cd[0] > 0 ? std::log2(cd[0]) : -9999.0) + " in unit 0)");
      expect(std::all_of(cf.begin(), cf.end(), [](float v) { return v == 0.0f; }),
             tag + ": float32 flushes a denormal state to zero");
      expect(after_d == caller && after_f == caller, tag + ": the caller's MXCSR is restored");
    }
  }
  _mm_setcsr(saved);
#endif
}

// The plans: each decision of LayerPlan follows from the shapes and lengths as documented.
void check_plans() {
  auto forward_on = [](int threads, int64_t T, int64_t B, int64_t I, int64_t H,
                       const int64_t* lengths) {
    ForwardArgs<float> a;
    a.cell = Cell::LSTM;
    a.T = T; a.B = B; a.I = I; a.H = H; a.lengths = lengths;
    return plan_forward(a, threads);
  };
  auto forward = [&](int64_t T, int64_t B, int64_t I, int64_t H, const int64_t* lengths) {
    return forward_on(2, T, B, I, H, lengths);
  };
  auto backward = [](int64_t T, int64_t B, int64_t H, const int64_t* lengths) {
    BackwardArgs<float> a;
    a.cell = Cell::GRU;
    a.T = T; a.B = B; a.I = H; a.H = H; a.lengths = lengths;
    return plan_backward(a, 2);
  };
  const LayerPlan few = forward(2, 1, 128, 128, nullptr);
  expect(few.weights_in_place && !few.input_in_steps && !few.packed_panel,
         "plan: 2 steps of 1 row read the weights in place: " + to_string(few));
  expect(to_string(few).find("weights_in_place=1") != std::string::npos,
         "plan: to_string names the decisions: " + to_string(few));
  // A cell's step (one step) reads the weights in place when the rows are long (I and S at
  // least 4 vectors on every path: 256) below the ISA's kInPlaceMaxRows (AVX2: 64; the others
  // have none), and packs them for a large batch of short rows (2), where a dot product would
  // be mostly its horizontal sum.
  const bool packs_from_64 = active_isa() == Isa::Avx2;
  expect(forward(1, 16, 256, 256, nullptr).weights_in_place &&
             forward(1, 63, 256, 256, nullptr).weights_in_place,
         "plan: one step of 16 or 63 long rows reads the weights in place: " +
             to_string(forward(1, 63, 256, 256, nullptr)));
  for (int64_t rows : {64, 128})
    expect(forward(1, rows, 256, 256, nullptr).weights_in_place == !packs_from_64,
           std::string("plan: one step of ") + std::to_string(rows) + " long rows on " +
               isa_name(active_isa()) + (packs_from_64 ? " packs the weights: " : " reads them in place: ") +
               to_string(forward(1, rows, 256, 256, nullptr)));
  expect(!forward(1, 128, 2, 2, nullptr).weights_in_place,
         "plan: one step of 128 short rows packs the weights: " +
             to_string(forward(1, 128, 2, 2, nullptr)));
  const LayerPlan batch = forward(50, 16, 64, 64, nullptr);
  expect(!batch.weights_in_place && batch.packed_panel && batch.parallel && !batch.compact_rows,
         "plan: 50 steps of 16 rows pack the weights and h: " + to_string(batch));
  const LayerPlan small_batch = forward(50, 4, 64, 64, nullptr);
  expect(!small_batch.packed_panel, "plan: 4 rows read h in place: " + to_string(small_batch));
  const LayerPlan long_seq = forward(5000, 8, 64, 64, nullptr);
  expect(long_seq.input_in_steps,
         "plan: a long small-batch call projects the input in the steps: " + to_string(long_seq));
  const int64_t sorted[4] = {5, 4, 2, 1}, unsorted[4] = {2, 5, 1, 4};
  expect(forward(5, 4, 8, 8, sorted).compact_rows,
         "plan: non-increasing lengths compact the input projection");
  expect(!forward(5, 4, 8, 8, unsorted).compact_rows,
         "plan: unsorted lengths project every row forward");
  expect(backward(5, 4, 8, unsorted).compact_rows,
         "plan: backward gathers the active rows for any lengths");
  expect(!backward(5, 4, 8, nullptr).compact_rows, "plan: no lengths, no gather backward");
  expect(backward(3, 16, 8, nullptr).weights_in_place && !backward(4, 16, 8, nullptr).weights_in_place,
         "plan: backward reads the weights in place for up to 3 steps");
  // The row split (one row block per thread, no barrier inside a step; LSTM W_hh is 16 H^2
  // bytes): from 4 rows per thread with W_hh up to 256 KB, from 8 rows up to 1 MB.
  // RNNFAST_ROW_SPLIT=1/0 forces the choice either way (the sizes' choice is checked without it).
  const char* env = std::getenv("RNNFAST_ROW_SPLIT");
  const std::string saved_env = env ? env : "";
  setenv("RNNFAST_ROW_SPLIT", "1", 1);
  expect(forward(50, 4, 64, 64, nullptr).row_split, "plan: RNNFAST_ROW_SPLIT=1 forces the row split");
  setenv("RNNFAST_ROW_SPLIT", "0", 1);
  expect(!forward(50, 16, 64, 64, nullptr).row_split,
         "plan: RNNFAST_ROW_SPLIT=0 forces the strip split");
  unsetenv("RNNFAST_ROW_SPLIT");
  const LayerPlan split = forward(50, 16, 64, 64, nullptr);
  expect(split.row_split && split.row_blocks == 2 && split.block_rows == 8,
         "plan: 16 rows, H = 64, 2 threads: a row block of 8 per thread: " + to_string(split));
  const LayerPlan split3 = forward_on(3, 50, 16, 64, 64, nullptr);
  expect(split3.row_split && split3.row_blocks == 3 && split3.block_rows == 6,
         "plan: 16 rows, 3 threads: row blocks of 6: " + to_string(split3));
  expect(forward(50, 8, 128, 128, nullptr).row_split,
         "plan: row split at 4 rows per thread with 256 KB of W_hh");
  // 8 rows per thread with 1 MB of W_hh: only where it fits in half of a core's L2
  expect(forward(50, 16, 256, 256, nullptr).row_split == (cpu_l2_cache_bytes() >= (2 << 20)),
         "plan: row split with 1 MB of W_hh iff the L2 holds 2 MB (L2 = " +
             std::to_string(cpu_l2_cache_bytes()) + ")");
  // Sorted lengths: row block 0 gets the longest rows; split only if no block has over 1.5x
  // the average work.
  int64_t even[16], uneven[16];
  for (int b = 0; b < 16; ++b) {
    even[b] = b < 8 ? 50 : 20;     // blocks of 400 and 160: busiest = 1.43 x average
    uneven[b] = b < 8 ? 50 : 5;    // 400 vs 40: busiest = 1.82 x average
  }
  expect(forward(50, 16, 64, 64, even).row_split && !forward(50, 16, 64, 64, uneven).row_split,
         "plan: sorted lengths keep the row split only while the row blocks' work is even");
  // above 256 KB of W_hh (GRU H = 256: 768 KB), at most 1.125x the average
  auto gru_fwd = [](int64_t H, const int64_t* lengths) {
    ForwardArgs<float> a;
    a.cell = Cell::GRU;
    a.T = 50; a.B = 16; a.I = H; a.H = H; a.lengths = lengths;
    return plan_forward(a, 2);
  };
  int64_t near[16];
  for (int b = 0; b < 16; ++b) near[b] = b < 8 ? 50 : 45;  // 400 vs 360: 1.05x
  if (cpu_l2_cache_bytes() >= (2 << 20))
    expect(gru_fwd(256, nullptr).row_split && gru_fwd(256, near).row_split &&
               !gru_fwd(256, even).row_split,
           "plan: with 768 KB of W_hh, sorted lengths keep the row split up to 1.125x only");
  int64_t unsorted16[16];
  for (int b = 0; b < 16; ++b) unsorted16[b] = b % 2 ? 50 : 20;  // every step computes all rows
  expect(forward(50, 16, 64, 64, unsorted16).row_split,
         "plan: unsorted lengths (all rows in every step's GEMM) keep the row split");
  expect(!forward(50, 4, 64, 64, nullptr).row_split && !forward(50, 8, 256, 256, nullptr).row_split &&
             !forward(50, 32, 512, 512, nullptr).row_split &&
             !forward(50, 256, 64, 64, nullptr).row_split &&
             !forward_on(1, 50, 16, 64, 64, nullptr).row_split &&
             !forward_on(3, 50, 9, 64, 64, nullptr).row_split,
         "plan: no row split at 2-3 rows per thread, 4 rows with 1 MB of W_hh, 4 MB, over 128 "
         "rows, or one thread: " + to_string(forward(50, 8, 256, 256, nullptr)));
  expect(backward(50, 16, 64, nullptr).row_split && !backward(50, 4, 64, nullptr).row_split &&
             !backward(50, 8, 256, nullptr).row_split,
         "plan: backward splits the rows by the same rule: " +
             to_string(backward(50, 16, 64, nullptr)));
  expect(!forward(2, 16, 64, 64, nullptr).row_split,
         "plan: no row split when the weights are read in place");
  // Layer-normalised cells in training (three barriers per step each way under the strip
  // split) take the row split from 2 rows per thread, with W_hh up to 256 KB.
  alignas(64) static float ws_stub[16];  // a training forward's workspace: only its alignment
                                         // is read
  auto ln_plan = [&](bool backward, bool training, int64_t B, int64_t H) {
    if (backward) {
      BackwardArgs<float> a;
      a.cell = Cell::LSTM_LN;
      a.T = 200; a.B = B; a.I = H; a.H = H;
      return plan_backward(a, 2);
    }
    ForwardArgs<float> a;
    a.cell = Cell::LSTM_LN;
    a.T = 200; a.B = B; a.I = H; a.H = H;
    if (training) a.ws = ws_stub;
    return plan_forward(a, 2);
  };
  expect(ln_plan(false, true, 4, 128).row_split && ln_plan(true, true, 4, 128).row_split &&
             !ln_plan(false, false, 4, 128).row_split && !ln_plan(true, true, 4, 256).row_split &&
             !ln_plan(true, true, 2, 128).row_split && !backward(50, 4, 64, nullptr).row_split,
         "plan: layer norm in training splits 4 rows (256 KB of W_hh) over 2 threads: " +
             to_string(ln_plan(false, true, 4, 128)));
  if (env) setenv("RNNFAST_ROW_SPLIT", saved_env.c_str(), 1);
  // A training forward streams a large workspace with non-temporal stores, only with vectors
  // that fill a cache line (AVX-512; not AVX2 or scalar), whatever the cell; and not under
  // RNNFAST_STREAM_WS=0.
  auto gru_ws = [&](Cell cell) {
    ForwardArgs<float> a;
    a.cell = cell;
    a.T = 200; a.B = 32; a.I = 128; a.H = 128; a.ws = ws_stub;  // GRU: 16 MB
    return plan_forward(a, 2);
  };
  const bool line_wide = active_isa() == Isa::Avx512;  // 16 floats = 64 bytes
  const char* stream_env = std::getenv("RNNFAST_STREAM_WS");
  const std::string saved_stream = stream_env ? stream_env : "";
  unsetenv("RNNFAST_STREAM_WS");
  expect(gru_ws(Cell::GRU).stream_workspace == line_wide &&
             gru_ws(Cell::GRU_LN).stream_workspace == line_wide,
         std::string("plan: workspace streaming on ") + isa_name(active_isa()) + ": GRU " +
             to_string(gru_ws(Cell::GRU)) + "; GRU_LN " + to_string(gru_ws(Cell::GRU_LN)));
  setenv("RNNFAST_STREAM_WS", "0", 1);
  expect(!gru_ws(Cell::GRU).stream_workspace, "plan: RNNFAST_STREAM_WS=0 turns streaming off");
  if (stream_env)
    setenv("RNNFAST_STREAM_WS", saved_stream.c_str(), 1);
  else
    unsetenv("RNNFAST_STREAM_WS");
  const LayerPlan rows = forward(10, 300, 8, 8, nullptr);
  expect(rows.row_blocks * rows.block_rows >= 300 && (rows.row_blocks - 1) * rows.block_rows < 300,
         "plan: the row blocks cover the batch: " + to_string(rows));
}

int main() {
  const Isa initial = active_isa();
  check_scratch_cache();
  check_empty_sequence();
  check_denormals();
  check_gemm_rows();
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})  // (the planner is each path's own)
    if (set_isa(isa)) check_plans();
  set_isa(initial);
  std::printf("CPU supports: avx2=%d avx512=%d; default path %s\n", cpu_supports(Isa::Avx2),
              cpu_supports(Isa::Avx512), isa_name(initial));
  std::vector<Problem> problems;
  for (Cell cell : all_cells())
    for (int variant = 0; variant < 4; ++variant) {
      Problem p{cell, 4, 3, 5, 7, 0, variant % 2 == 1, variant != 2, variant >= 2};
      problems.push_back(p);
      if (cell_info(cell).projection) {
        p.P = 3;
        problems.push_back(p);
      }
    }
  // Zoneout, masks and probabilities, with and without lengths and a projection.
  for (Cell cell : all_cells())
    for (int zoneout : {1, 2}) {
      problems.push_back({cell, 4, 3, 5, 7, 0, zoneout == 2, true, true, false, zoneout});
      if (cell_info(cell).projection)
        problems.push_back({cell, 4, 3, 5, 7, 3, zoneout == 1, true, zoneout == 2, false, zoneout});
    }
  // An empty batch.
  problems.push_back({Cell::LSTM, 3, 0, 4, 5, 2, false, true, true});
  problems.push_back({Cell::GRU, 3, 0, 4, 5, 0, true, true, false});
  // Widths that keep every workspace vector aligned (H = 16 and 32: every SIMD path, float
  // and double), as a workspace over 8 MB needs for its non-temporal stores on AVX-512 (those
  // larger sizes: test_parity.py::test_long_small_batch_input_projection_in_the_steps).
  problems.push_back({Cell::LSTM, 3, 5, 4, 16, 0, false, true, true});
  problems.push_back({Cell::GRU, 3, 13, 4, 32, 0, true, true, true, true});
  // Batches over 128 rows split each step into several row blocks.
  problems.push_back({Cell::LSTM, 2, 131, 3, 5, 0, true, true, true});
  problems.push_back({Cell::GRU, 4, 129, 2, 3, 0, false, true, true});
  // Few steps (T <= 3) take the unpacked dot-product path.
  for (Cell cell : all_cells()) {
    problems.push_back({cell, 2, 3, 5, 7, cell_info(cell).projection ? 3 : 0, true, true, true});
    problems.push_back({cell, 1, 2, 9, 6, 0, false, true, false});
  }
  // Non-increasing lengths: each step's GEMMs skip the inactive rows at the end.
  for (Cell cell : all_cells())
    for (bool reverse : {false, true})
      problems.push_back({cell, 6, 7, 5, 7, cell_info(cell).projection ? 3 : 0, reverse, true, true, true});
  // The packed layout against the padded call with the same lengths.
  {
    SerialExecutor serial;
    ThreadExecutor threads(2);
    for (Cell cell : all_cells())
      for (bool reverse : {false, true})
        for (int64_t P : {int64_t(0), int64_t(3)}) {
          if (P > 0 && !cell_info(cell).projection) continue;
          check_packed({cell, 6, 7, 5, 7, P, reverse, true, true, true}, serial);
          check_packed({cell, 9, 53, 19, 40, P, reverse, true, true, true}, threads);
          check_packed({cell, 2, 5, 4, 6, P, reverse, true, true, true}, serial);  // dot path
          check_packed({cell, 6, 7, 5, 7, P, reverse, true, true, true, 1}, threads);  // zoneout
        }
  }
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!cpu_supports(isa)) continue;
    set_isa(isa);
    for (const auto& p : problems) check_gradients(p);
    double us, ut;
    bool nan_ok;
    activation_errors<float>(&us, &ut, &nan_ok);
    std::printf("%s: sigmoid within %.2f ulp, tanh within %.2f ulp\n", isa_name(isa), us, ut);
    expect(us <= 4.0 && ut <= 4.0 && nan_ok, std::string(isa_name(isa)) + " float sigmoid/tanh error");
    activation_errors<double>(&us, &ut, &nan_ok);
    std::printf("%s: double sigmoid within %.2f ulp, tanh within %.2f ulp\n", isa_name(isa), us, ut);
    expect(us <= 4.0 && ut <= 4.0 && nan_ok,
           std::string(isa_name(isa)) + " double sigmoid/tanh error");
  }
  // Larger shapes: several SIMD strips, row blocks past one micro-tile, odd edges.
  std::vector<Problem> big;
  for (Cell cell : all_cells()) {
    big.push_back({cell, 9, 53, 37, 45, 0, false, true, true});
    big.push_back({cell, 9, 53, 37, 45, cell_info(cell).projection ? 20 : 0, true, true, true, true});
    big.push_back({cell, 6, 1, 129, 70, cell_info(cell).projection ? 33 : 0, true, true, false});
    big.push_back({cell, 1, 5, 37, 45, cell_info(cell).projection ? 20 : 0, false, true, false});
    big.push_back({cell, 3, 8, 64, 33, 0, true, false, true});
    big.push_back({cell, 5, 300, 17, 40, cell_info(cell).projection ? 9 : 0, true, true, true});
    big.push_back({cell, 7, 29, 19, 64, cell_info(cell).projection ? 32 : 0, false, true, true, true});
    big.push_back({cell, 9, 53, 37, 45, cell_info(cell).projection ? 20 : 0, true, true, true,
                   false, 1});
  }
  // The pair schedule, with lengths and zoneout masks, on every path.
  expect(pair_concurrent(2, 64 << 10) && !pair_concurrent(1, 64 << 10) &&
             !pair_concurrent(3, 64 << 10) && !pair_concurrent(2, 8 * cpu_l2_cache_bytes()),
         "pair schedule: concurrent on 2 threads while W_hh fits twice the L2");
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!set_isa(isa)) continue;
    for (Cell cell : all_cells()) {
      check_pair({cell, 9, 53, 37, 45, cell_info(cell).projection ? 20 : 0, false, true, true});
      check_pair({cell, 6, 7, 5, 7, 0, false, true, true, true, 1});
      check_pair({cell, 2, 5, 4, 6, 0, false, true, false});  // the dot-product path
    }
  }
  expect(stack_concurrent(2, 64 << 10, 8, 2) && stack_concurrent(2, 1 << 10, 100, 16) &&
             stack_concurrent(2, 1 << 10, 100, 1) && !stack_concurrent(1, 1 << 10, 100, 8) &&
             !stack_concurrent(3, 1 << 10, 100, 8) &&
             !stack_concurrent(2, (64 << 10) + 8, 100, 8) && !stack_concurrent(2, 1 << 10, 7, 8) &&
             !stack_concurrent(2, 1 << 10, 100, 17),
         "stacked schedule: on 2 threads, W_hh up to 64 KB, up to 16 rows, 8 steps or more");
  // The stacked schedule on every path: every cell (with its projection), zoneout masks and
  // probabilities, and steps that are no multiple of the pieces.
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!set_isa(isa)) continue;
    for (Cell cell : all_cells()) {
      const int64_t P = cell_info(cell).projection ? 6 : 0;
      check_stack<double>({cell, 19, 5, 7, 12, P, false, true, false},
                          {cell, 19, 5, P > 0 ? P : 12, 10, 0, false, true, false});
      check_stack<float>({cell, 16, 9, 20, 16, 0, false, false, false, false, 1},
                         {cell, 16, 9, 16, 24, 0, false, true, false, false, 1});
      check_stack<double>({cell, 8, 3, 4, 8, 0, false, true, false, false, 2},
                          {cell, 8, 3, 8, 8, 0, false, true, false, false, 2});
      check_stack<float>({cell, 12, 1, 5, 9, 0, false, true, false},  // one row
                         {cell, 12, 1, 9, 7, 0, false, true, false});
    }
  }
  for (const auto& p : big) {
    check_isas_and_threads<float>(p, 2e-5);
    check_isas_and_threads<double>(p, 1e-12);
  }
  set_isa(initial);
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
