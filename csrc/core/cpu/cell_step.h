// The CPU drivers' side of the shared cell math (../cell_math.h): per-step pointers, and the
// step accessors through which a cell's forward and backward read and write W consecutive
// hidden units (j .. j+W-1) of one batch row b.
// Included inside namespace rnnfast::core::<isa>.

// Pointers of one forward step (time t), rows indexed by batch b.
template <class Real>
struct FwdStep {
  int64_t H, P, S, GH, WS;
  // gx: x_t W_ih^T, onto which the step's GEMM has added h_{t-1} W_hh^T for the gates that
  // are not apart (cell_math.h); rg: h_{t-1} W_hh^T of the gates that are.
  Real* gx;             // [B, GH]  see above                                   read
  const Real* bias;     // [GH]     b_ih + the part of b_hh that folds in       read
  const Real* rg;       // [B, GH]  see above (only the columns of apart gates) read
  const Real* b_apart;  // [GH]     b_hh, read for the apart gates only; or null read
  const Real* h;        // [B, S]   h_{t-1}                                     read
  Real* c;              // [B, H]   cell state, c_{t-1} in, c_t out             read/written
  Real* ws;             // [B, WS]  saved for backward, or null                 written
  // Write ws with non-temporal stores (save_value below): it is read again only by the
  // backward pass, so it should neither take a read for ownership nor evict the weights from
  // L2. Needs every vector's address in ws aligned to its size.
  bool stream_ws;
};

// A value saved for the backward pass (see FwdStep::stream_ws).
template <class V, class Real>
inline void save_value(const FwdStep<Real>& s, V v, Real* p) {
  if (s.stream_ws) v.stream(p); else v.store(p);
}

// The forward step accessor of cell_math.h.
template <class V, class Real>
struct ForwardUnit {
  const FwdStep<Real>& s;
  int64_t b, j;
  V pre(int k) const {
    return V::load(s.gx + b * s.GH + k * s.H + j) + V::load(s.bias + k * s.H + j);
  }
  V recurrent(int k) const {
    V r = V::load(s.rg + b * s.GH + k * s.H + j);
    return s.b_apart ? r + V::load(s.b_apart + k * s.H + j) : r;
  }
  V h_prev() const { return V::load(s.h + b * s.S + j); }
  V c_prev() const { return V::load(s.c + b * s.H + j); }
  void set_c(V c) const { c.store(s.c + b * s.H + j); }
  void save(int q, V v) const {
    if (s.ws) save_value(s, v, s.ws + b * s.WS + q * s.H + j);
  }
};

// Pointers of one backward step.
template <class Real>
struct BwdStep {
  int64_t H, S, GH, WS;
  int64_t hprev_col;  // column of h_{t-1} in a workspace row
  const Real* ws;        // [B, WS]  read
  Real* dc;              // [B, H]   dc_t in, dc_{t-1} out            read/written
  Real* dgx;             // [B, GH]  d(pre-activation), x side        written
  Real* dgh;             // [B, GH]  d(pre-activation), h side        written (== dgx unless the
                      //          cell has apart gates)
};

// The backward step accessor of cell_math.h.
template <class Math, class V, class Real>
struct BackwardUnit {
  static constexpr bool kSplit = Math::kApartGates != 0;
  const BwdStep<Real>& s;
  int64_t b, j;
  V saved(int q) const { return V::load(s.ws + b * s.WS + q * s.H + j); }
  V h_prev() const { return V::load(s.ws + b * s.WS + s.hprev_col + j); }
  V dc() const { return V::load(s.dc + b * s.H + j); }
  void set_dc(V v) const { v.store(s.dc + b * s.H + j); }
  void set_dpre(int k, V v) const {
    v.store(s.dgx + b * s.GH + k * s.H + j);
    if (kSplit && !((Math::kApartGates >> k) & 1u)) v.store(s.dgh + b * s.GH + k * s.H + j);
  }
  void set_dpre_apart(int k, V v) const { v.store(s.dgh + b * s.GH + k * s.H + j); }
};
