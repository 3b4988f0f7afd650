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
//   void save(q, V)  block q < kSavedBlocks of the workspace backward reads (no-op in inference)
// Backward:
//   V saved(q)       block q, as saved by forward
//   V h_prev()       h_{t-1}, as saved by the driver
//   V dc(), void set_dc(V)                 dL/dc_t in, dL/dc_{t-1} out (kCellState)
//   void set_dpre(k, V)        dL/d(pre-activation of gate k), for both the x and the h side
//   void set_dpre_apart(k, V)  the h side of a gate in kApartGates: dL/d(recurrent(k))
// backward returns the part of dL/dh_{t-1} that does not go through W_hh (zero for most).
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

// torch's LSTM: gates i, f, g, o.
//   c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)
struct Lstm : CellFacts<Cell::LSTM> {

  template <class V, class Step>
  RNNFAST_HD static V forward(Step& s) {
    const V i = V::sigmoid(s.pre(0)), f = V::sigmoid(s.pre(1));
    const V g = V::tanh(s.pre(2)), o = V::sigmoid(s.pre(3));
    const V c_prev = s.c_prev();
    const V c = V::fmadd(f, c_prev, i * g);
    const V tc = V::tanh(c);
    s.set_c(c);
    s.save(0, i);
    s.save(1, f);
    s.save(2, g);
    s.save(3, o);
    s.save(4, c_prev);
    s.save(5, tc);
    return o * tc;
  }

  template <class V, class Step>
  RNNFAST_HD static V backward(Step& s, V dh) {
    const V i = s.saved(0), f = s.saved(1), g = s.saved(2), o = s.saved(3);
    const V c_prev = s.saved(4), tc = s.saved(5);
    const V one = V::set1(1);
    const V dc = V::fmadd(dh * o, one - tc * tc, s.dc());
    s.set_dc(dc * f);
    s.set_dpre(0, dc * g * i * (one - i));
    s.set_dpre(1, dc * c_prev * f * (one - f));
    s.set_dpre(2, dc * i * (one - g * g));
    s.set_dpre(3, dh * tc * o * (one - o));
    return V::set1(0);
  }
};

// The coupled input-forget gate LSTM (CIFG; Greff et al. 2017, "LSTM: A Search Space Odyssey";
// ONNX LSTM with input_forget=1): gates i, g, o, and f = 1 - i.
//   c_t = (1 - i) * c_{t-1} + i * g = c_{t-1} + i * (g - c_{t-1}),  h_t = o * tanh(c_t)
struct CoupledLstm : CellFacts<Cell::LSTM_COUPLED> {
  template <class V, class Step>
  RNNFAST_HD static V forward(Step& s) {
    const V i = V::sigmoid(s.pre(0)), g = V::tanh(s.pre(1)), o = V::sigmoid(s.pre(2));
    const V c_prev = s.c_prev();
    const V c = V::fmadd(i, g - c_prev, c_prev);
    const V tc = V::tanh(c);
    s.set_c(c);
    s.save(0, i);
    s.save(1, g);
    s.save(2, o);
    s.save(3, c_prev);
    s.save(4, tc);
    return o * tc;
  }

  template <class V, class Step>
  RNNFAST_HD static V backward(Step& s, V dh) {
    const V i = s.saved(0), g = s.saved(1), o = s.saved(2), c_prev = s.saved(3), tc = s.saved(4);
    const V one = V::set1(1);
    const V dc = V::fmadd(dh * o, one - tc * tc, s.dc());
    s.set_dc(dc * (one - i));
    s.set_dpre(0, dc * (g - c_prev) * i * (one - i));
    s.set_dpre(1, dc * i * (one - g * g));
    s.set_dpre(2, dh * tc * o * (one - o));
    return V::set1(0);
  }
};

// torch's GRU: gates r, z, n; n keeps its recurrent product apart, inside r * (...).
//   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}
struct Gru : CellFacts<Cell::GRU> {

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

// torch's RNN (Elman): h_t = tanh(pre) or relu(pre).
template <Cell kId, bool Relu>
struct Elman : CellFacts<kId> {

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
