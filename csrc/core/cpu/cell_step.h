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
  const Real* const* cell_w;  // the cell's own parameters (ForwardArgs::cell_w)  read
  int params;                 // how many: CellInfo::params()
  // Zoneout of the cell state (ForwardArgs::zoneout): set_c blends c~_t with c_{t-1}.
  bool zone_c;
  const Real* zc;  // [B, H] this step's mask, or null: zc_p everywhere                 read
  Real zc_p;
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

// The forward step accessor of cell_math.h. It takes its row pointers from the step once, at
// construction: the cell's vector stores may alias anything, so reading them from the step
// after a store would reload them.
template <class V, class Real>
struct ForwardUnit {
  ForwardUnit(const FwdStep<Real>& s, int64_t b, int64_t j)
      : H(s.H),
        gx(s.gx + b * s.GH + j),
        bias(s.bias + j),
        rg(s.rg ? s.rg + b * s.GH + j : nullptr),
        b_apart(s.b_apart ? s.b_apart + j : nullptr),
        h(s.h + b * s.S + j),
        c(s.c ? s.c + b * s.H + j : nullptr),
        ws(s.ws ? s.ws + b * s.WS + j : nullptr),
        stream_ws(s.stream_ws),
        zone_c(s.zone_c),
        zc(s.zone_c && s.zc ? s.zc + b * s.H + j : nullptr),
        zc_p(s.zc_p) {
    for (int n = 0; n < s.params; ++n) pw[n] = s.cell_w[n] + j;
  }
  V pre(int k) const { return V::load(gx + k * H) + V::load(bias + k * H); }
  V recurrent(int k) const {
    V r = V::load(rg + k * H);
    return b_apart ? r + V::load(b_apart + k * H) : r;
  }
  V h_prev() const { return V::load(h); }
  V c_prev() const { return V::load(c); }
  // c_t = c~_t, or with zoneout m * c_{t-1} + (1 - m) * c~_t (exactly c_{t-1} for m = 1)
  void set_c(V v) const {
    if (zone_c) {
      const V m = zc ? V::load(zc) : V::set1(zc_p);
      v = V::fmadd(m, V::load(c), (V::set1(1) - m) * v);
    }
    v.store(c);
  }
  V param(int n) const { return V::load(pw[n]); }
  void save(int q, V v) const {
    if (!ws) return;
    if (stream_ws) v.stream(ws + q * H); else v.store(ws + q * H);
  }

 private:
  const int64_t H;
  const Real *const gx, *const bias, *const rg, *const b_apart, *const h;
  Real *const c, *const ws;
  const bool stream_ws;
  const bool zone_c;
  const Real* const zc;
  const Real zc_p;
  const Real* pw[kMaxCellParams];
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
  const Real* const* cell_w;  // the cell's own parameters (BackwardArgs::cell_w)  read
  // The sums of the gradients of the cell's own parameters, per row block of block_rows rows:
  // [row blocks, params, H]; a unit adds its (t, b)'s part to its row block's row.
  Real* dparam_sums;
  int params;
  int64_t block_rows;
  // Zoneout of the cell state (as FwdStep's): the cell sees (1 - m) dc_t, and dc_{t-1} gets
  // m dc_t besides what the cell gives it.
  bool zone_c;
  const Real* zc;
  Real zc_p;
};

// The backward step accessor of cell_math.h (row pointers taken once, as ForwardUnit does).
template <class Math, class V, class Real>
struct BackwardUnit {
  static constexpr bool kSplit = Math::kApartGates != 0;
  BackwardUnit(const BwdStep<Real>& s, int64_t b, int64_t j)
      : H(s.H),
        ws(s.ws + b * s.WS + j),
        hprev(s.ws + b * s.WS + s.hprev_col + j),
        dc_(s.dc ? s.dc + b * s.H + j : nullptr),
        dgx(s.dgx + b * s.GH + j),
        dgh(s.dgh + b * s.GH + j),
        zone_c(s.zone_c),
        zc(s.zone_c && s.zc ? s.zc + b * s.H + j : nullptr),
        zc_p(s.zc_p) {
    for (int n = 0; n < Math::kParams; ++n) {
      pw[n] = s.cell_w[n] + j;
      dpw[n] = s.dparam_sums + ((b / s.block_rows) * s.params + n) * s.H + j;
    }
  }
  V saved(int q) const { return V::load(ws + q * H); }
  V h_prev() const { return V::load(hprev); }
  V dc() const { return zone_c ? (V::set1(1) - mask_c()) * V::load(dc_) : V::load(dc_); }
  // called once, after dc(): dc_ still holds dc_t
  void set_dc(V v) const {
    if (zone_c) v = V::fmadd(mask_c(), V::load(dc_), v);
    v.store(dc_);
  }
  void set_dpre(int k, V v) const {
    v.store(dgx + k * H);
    if (kSplit && !((Math::kApartGates >> k) & 1u)) v.store(dgh + k * H);
  }
  void set_dpre_apart(int k, V v) const { v.store(dgh + k * H); }
  V param(int n) const { return V::load(pw[n]); }
  void add_dparam(int n, V v) const { (V::load(dpw[n]) + v).store(dpw[n]); }

 private:
  const int64_t H;
  const Real *const ws, *const hprev;
  Real *const dc_, *const dgx, *const dgh;
  V mask_c() const { return zc ? V::load(zc) : V::set1(zc_p); }
  const bool zone_c;
  const Real* const zc;
  const Real zc_p;
  const Real* pw[kMaxCellParams];
  Real* dpw[kMaxCellParams];
};
