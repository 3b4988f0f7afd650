// The pointwise math of every cell, written once for the CPU and the CUDA kernels.
//
// A cell's math is a struct with two functions, templated over the value type V and over the
// driver's step accessor (its facts, kGates, kCellState, kApartGates, kSavedBlocks, come from
// its entry in cells.h):
//   forward(step)      -> h_t           from the gate pre-activations of one unit
//   backward(step, dh) -> dh_{t-1} part from dh_t (the gradient w.r.t. the cell's h output)
// V is a SIMD vector on the CPU (several units at once) and one scalar per thread on CUDA;
// it provides + - *, V::fmadd(a, b, c) = a * b + c, V::set1, V::sigmoid, V::tanh, V::relu
// and V::where_pos(h, d) = (h > 0 or NaN) ? d : 0.
//
// The step accessor is the driver's view of one unit j of one batch row at one time step.
// Forward:
//   V pre(k)         pre-activation of gate k: x W_ih^T + b_ih, plus h_{t-1} W_hh^T + b_hh
//                    unless gate k is in kApartGates
//   V recurrent(k)   h_{t-1} W_hh^T + b_hh of a gate in kApartGates (GRU's n)
//   V h_prev()       h_{t-1} (cells without projection; S == H)
//   V c_prev(), void set_c(V)              the cell state (kCellState)
//   V param(n)       unit j of the cell's own parameter n < kParams (cells.h), e.g. a peephole
//   void save(q, V)  block q < kSavedBlocks of the workspace backward reads (no-op in inference)
// Backward:
//   V saved(q)       block q, as saved by forward
//   V h_prev()       h_{t-1}, as saved by the driver
//   V dc(), void set_dc(V)                 dL/dc_t in, dL/dc_{t-1} out (kCellState)
//   void set_dpre(k, V)        dL/d(pre-activation of gate k), for both the x and the h side
//   void set_dpre_apart(k, V)  the h side of a gate in kApartGates: dL/d(recurrent(k))
//   V param(n)                 as in forward
//   void add_dparam(n, V)      adds this (t, b)'s part of dL/d(unit j of own parameter n)
// backward returns the part of dL/dh_{t-1} that does not go through W_hh (zero for most).
//
// A cell whose output stage is layer-normalised (kNormOut) splits each pass in two around the
// normalisation, which reduces over all H units of a row (the driver does that between them):
//   forward(step)          -> v, the value to normalise (the LSTM's c_t)
//   forward_out(step, vh)  -> h_t, from vh = (v - mean(v)) / sqrt(var(v) + eps)
//   backward(step, dh)     -> dL/dvh
//   backward_in(step, dv)  -> the dh_{t-1} part, from dv = dL/dv (through the normalisation)
// reading vh back from saved block kNormedBlock, and carrying kStash values per unit from the
// first half to the second through V stash(q, V) / V stashed(q) of the step accessor.
// Layer normalisation of the gate pre-activations (kLayerNorm) is the driver's: pre(k),
// recurrent(k) and set_dpre(k, .) then see the normalised pre-activations.
//
// What is the drivers' and not the cells': length masking (inactive rows keep their state and
// give zero output and gate gradients), the projection (LSTM proj_size), saving h_{t-1} and
// the projection input, and adding dy and the recurrent gradient into dh.
//
// Workspace row of one (t, b), as both backends lay it out:
//   [cell blocks 0 .. kSavedBlocks-1 (H each) | projection input (H, with P > 0) | h_{t-1} (S)]
//
// Included inside the namespace of each backend (the CPU kernels' per-ISA namespaces, so that
// the math compiles for each instruction set; the CUDA kernels' namespace), after cells.h.
// Each math struct derives its facts from its entry in cells.h (CellFacts).

#if defined(__CUDACC__)
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline
#endif

namespace cells {

// The LSTM family: torch's LSTM, and its variants with a coupled input-forget gate, with
// peephole connections and with layer normalisation. Gates i, f, g, o; with kCoupled, i, g, o
// and f = 1 - i (CIFG: Greff et al. 2017, "LSTM: A Search Space Odyssey"; ONNX LSTM with
// input_forget=1).
//   c_t = f * c_{t-1} + i * g  (coupled: c_{t-1} + i * (g - c_{t-1})),  h_t = o * tanh(c_t)
// With kPeephole (Gers & Schmidhuber 2000; ONNX LSTM's P), the cell's own parameters
// w_ci, w_cf (not coupled), w_co, each [H], add w_ci * c_{t-1} to i's pre-activation,
// w_cf * c_{t-1} to f's, and w_co * c_t to o's.
// With layer normalisation (kNormOut: Ba et al. 2016, as haste's LayerNormLSTM) the driver
// has normalised the gate pre-activations already, and the output stage is
//   h_t = o * tanh(LN(c_t) * ln_c_weight + ln_c_bias)
// Saved blocks: the gate values in gate order, then c_{t-1}, tanh(c_t) (normalised: tanh of
// the shifted LN(c_t)), c_t (peephole), LN(c_t) (kNormOut), then the driver's 2 G blocks of
// normalised pre-activations (kLayerNorm).
template <Cell kId, bool kCoupled, bool kPeephole>
struct LstmFamily : CellFacts<kId> {
  using Facts = CellFacts<kId>;
  static constexpr int kI = 0, kF = 1, kG = kCoupled ? 1 : 2, kO = kCoupled ? 2 : 3;
  static constexpr int kCPrev = kO + 1, kTanhC = kO + 2, kC = kO + 3;  // saved blocks
  static constexpr int kNormedBlock = kTanhC + 1 + (kPeephole ? 1 : 0);  // LN(c_t)
  static constexpr int kWci = 0, kWcf = 1, kWco = kCoupled ? 1 : 2;  // own parameters
  static constexpr int kLnCw = Facts::kLnIh + 2, kLnCb = Facts::kLnIh + 3;
  static constexpr int kStash = Facts::kNormOut ? 1 : 0;  // o forward, dz_o backward
  static_assert(Facts::kLayerNorm == Facts::kNormOut &&
                    Facts::kSavedBlocks == kNormedBlock + (Facts::kNormOut ? 1 + 2 * (kO + 1) : 0) &&
                    Facts::kGates == kO + 1 &&
                    Facts::kParams == (kPeephole ? kWco + 1 : 0) + (Facts::kNormOut ? 4 : 0),
                "the cell's entry in cells.h matches its math");

  // The gates and c_t; returns o. Saves all but tanh(c_t).
  template <class V, class Step>
  RNNFAST_HD static V gates(Step& s, V& c) {
    const V c_prev = s.c_prev();
    V zi = s.pre(kI);
    if constexpr (kPeephole) zi = V::fmadd(s.param(kWci), c_prev, zi);
    const V i = V::sigmoid(zi), g = V::tanh(s.pre(kG));
    c = V::fmadd(i, g - c_prev, c_prev);  // coupled: f = 1 - i
    if constexpr (!kCoupled) {
      V zf = s.pre(kF);
      if constexpr (kPeephole) zf = V::fmadd(s.param(kWcf), c_prev, zf);
      const V f = V::sigmoid(zf);
      c = V::fmadd(f, c_prev, i * g);
      s.save(kF, f);
    }
    V zo = s.pre(kO);
    if constexpr (kPeephole) zo = V::fmadd(s.param(kWco), c, zo);
    const V o = V::sigmoid(zo);
    s.set_c(c);
    s.save(kI, i);
    s.save(kG, g);
    s.save(kO, o);
    s.save(kCPrev, c_prev);
    if constexpr (kPeephole) s.save(kC, c);
    return o;
  }

  // h_t; with kNormOut, c_t (to normalise), and forward_out gives h_t.
  template <class V, class Step>
  RNNFAST_HD static V forward(Step& s) {
    V c;
    const V o = gates<V>(s, c);
    if constexpr (Facts::kNormOut) {
      s.stash(0, o);
      return c;
    } else {
      const V tc = V::tanh(c);
      s.save(kTanhC, tc);
      return o * tc;
    }
  }

  // kNormOut: h_t from chat = LN(c_t) (without gain).
  template <class V, class Step>
  RNNFAST_HD static V forward_out(Step& s, V chat) {
    const V tc = V::tanh(V::fmadd(chat, s.param(kLnCw), s.param(kLnCb)));
    s.save(kTanhC, tc);
    s.save(kNormedBlock, chat);
    return s.stashed(0) * tc;
  }

  // The gate gradients from dc = dL/dc_t (all of it but the incoming zoneout share) and dz_o.
  template <class V, class Step>
  RNNFAST_HD static void gate_grads(Step& s, V dc, V dzo) {
    const V i = s.saved(kI), g = s.saved(kG);
    const V c_prev = s.saved(kCPrev);
    const V one = V::set1(1);
    if constexpr (kPeephole) {
      dc = V::fmadd(dzo, s.param(kWco), dc);
      s.add_dparam(kWco, dzo * s.saved(kC));
    }
    const V dzg = dc * i * (one - g * g);
    if constexpr (kCoupled) {
      const V dzi = dc * (g - c_prev) * i * (one - i);
      V dc_prev = dc * (one - i);
      if constexpr (kPeephole) {
        dc_prev = V::fmadd(dzi, s.param(kWci), dc_prev);
        s.add_dparam(kWci, dzi * c_prev);
      }
      s.set_dc(dc_prev);
      s.set_dpre(kI, dzi);
    } else {
      const V f = s.saved(kF);
      const V dzi = dc * g * i * (one - i), dzf = dc * c_prev * f * (one - f);
      V dc_prev = dc * f;
      if constexpr (kPeephole) {
        dc_prev = V::fmadd(dzf, s.param(kWcf), V::fmadd(dzi, s.param(kWci), dc_prev));
        s.add_dparam(kWci, dzi * c_prev);
        s.add_dparam(kWcf, dzf * c_prev);
      }
      s.set_dc(dc_prev);
      s.set_dpre(kI, dzi);
      s.set_dpre(kF, dzf);
    }
    s.set_dpre(kG, dzg);
    s.set_dpre(kO, dzo);
  }

  // The dh_{t-1} part (zero); with kNormOut, dL/d(LN(c_t)), and backward_in finishes.
  template <class V, class Step>
  RNNFAST_HD static V backward(Step& s, V dh) {
    const V o = s.saved(kO), tc = s.saved(kTanhC);
    const V one = V::set1(1);
    const V dzo = dh * tc * o * (one - o);
    if constexpr (Facts::kNormOut) {
      const V du = dh * o * (one - tc * tc);  // through tanh
      s.add_dparam(kLnCw, du * s.saved(kNormedBlock));
      s.add_dparam(kLnCb, du);
      s.stash(0, dzo);
      return du * s.param(kLnCw);
    } else {
      gate_grads<V>(s, V::fmadd(dh * o, one - tc * tc, s.dc()), dzo);
      return V::set1(0);
    }
  }

  // kNormOut: the rest of backward, from dcn = dL/dc_t through the normalisation.
  template <class V, class Step>
  RNNFAST_HD static V backward_in(Step& s, V dcn) {
    gate_grads<V>(s, s.dc() + dcn, s.stashed(0));
    return V::set1(0);
  }
};
using Lstm = LstmFamily<Cell::LSTM, false, false>;
using CoupledLstm = LstmFamily<Cell::LSTM_COUPLED, true, false>;
using PeepholeLstm = LstmFamily<Cell::LSTM_PEEPHOLE, false, true>;
using CoupledPeepholeLstm = LstmFamily<Cell::LSTM_COUPLED_PEEPHOLE, true, true>;
using LnLstm = LstmFamily<Cell::LSTM_LN, false, false>;
using CoupledLnLstm = LstmFamily<Cell::LSTM_COUPLED_LN, true, false>;
using PeepholeLnLstm = LstmFamily<Cell::LSTM_PEEPHOLE_LN, false, true>;
using CoupledPeepholeLnLstm = LstmFamily<Cell::LSTM_COUPLED_PEEPHOLE_LN, true, true>;

// torch's GRU: gates r, z, n; n keeps its recurrent product apart, inside r * (...).
//   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}
// With layer normalisation (LnGru, as haste's LayerNormGRU) the driver has normalised
// x W_ih^T and h W_hh^T before the biases; the math is the same.
template <Cell kId>
struct GruFamily : CellFacts<kId> {
  static constexpr int kStash = 0;
  static_assert(CellFacts<kId>::kSavedBlocks == 4 + (CellFacts<kId>::kLayerNorm ? 6 : 0) &&
                    !CellFacts<kId>::kNormOut,
                "the cell's entry in cells.h matches its math");

  template <class V, class Step>
  RNNFAST_HD static V forward(Step& s) {
    const V r = V::sigmoid(s.pre(0)), z = V::sigmoid(s.pre(1));
    const V hn = s.recurrent(2);
    const V n = V::tanh(V::fmadd(r, hn, s.pre(2)));
    s.save(0, r);
    s.save(1, z);
    s.save(2, n);
    s.save(3, hn);
    return V::fmadd(z, s.h_prev() - n, n);  // (1 - z) * n + z * h_{t-1}
  }

  template <class V, class Step>
  RNNFAST_HD static V backward(Step& s, V dh) {
    const V r = s.saved(0), z = s.saved(1), n = s.saved(2), hn = s.saved(3);
    const V one = V::set1(1);
    const V dn = dh * (one - z) * (one - n * n);
    const V dr = dn * hn * r * (one - r);
    s.set_dpre(0, dr);
    s.set_dpre(1, dh * (s.h_prev() - n) * z * (one - z));
    s.set_dpre(2, dn);
    s.set_dpre_apart(2, dn * r);
    return dh * z;
  }
};
using Gru = GruFamily<Cell::GRU>;
using LnGru = GruFamily<Cell::GRU_LN>;

// torch's RNN (Elman): h_t = tanh(pre) or relu(pre).
template <Cell kId, bool Relu>
struct Elman : CellFacts<kId> {
  static constexpr int kStash = 0;

  template <class V, class Step>
  RNNFAST_HD static V forward(Step& s) {
    const V h = Relu ? V::relu(s.pre(0)) : V::tanh(s.pre(0));
    s.save(0, h);
    return h;
  }

  template <class V, class Step>
  RNNFAST_HD static V backward(Step& s, V dh) {
    const V h = s.saved(0);
    // relu: as torch, the gradient passes unless h <= 0 (a NaN h passes it)
    s.set_dpre(0, Relu ? V::where_pos(h, dh) : dh * (V::set1(1) - h * h));
    return V::set1(0);
  }
};
using TanhRnn = Elman<Cell::RNN_TANH, false>;
using ReluRnn = Elman<Cell::RNN_RELU, true>;

}  // namespace cells

// Calls f(Math{}) with the math struct of `cell` (the kernels' dispatch).
template <class F>
decltype(auto) visit_cell(Cell cell, F&& f) {
  switch (cell) {
#define RNNFAST_CELL_VISIT(id, math, ...) \
  case Cell::id:                          \
    return f(cells::math{});
    RNNFAST_CELLS(RNNFAST_CELL_VISIT)
#undef RNNFAST_CELL_VISIT
  }
  __builtin_unreachable();  // every enumerator has its case above
}
