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
  // Layer normalisation of the pre-activations (cells with kLayerNorm; ForwardUnit<.., true>):
  // gx holds x W_ih^T and rg h W_hh^T of every gate, without biases.
  const Real* ln_gain_ih = nullptr;  // [GH] ln_ih_weight
  const Real* ln_gain_hh = nullptr;  // [GH] ln_hh_weight
  const Real* ln_row = nullptr;      // [B, 4] per row: mean and 1/sqrt(var + eps) of x W_ih^T,
                                     //        then of h W_hh^T
  unsigned fold_gates = 0;           // gates whose normalised h side pre(k) adds (not apart)
  int64_t ln_block = 0;              // first of the 2 G saved blocks of normalised values
  int64_t G = 0;
  // Per-unit values a cell with a normalised output carries between its two halves
  // (cell_math.h: stash): [B, stage_cols], block q + 1 of H for stash q.
  Real* stage = nullptr;
  int64_t stage_cols = 0;
};

// A value saved for the backward pass (see FwdStep::stream_ws).
template <class V, class Real>
inline void save_value(const FwdStep<Real>& s, V v, Real* p) {
  if (s.stream_ws) v.stream(p); else v.store(p);
}

// The forward step accessor of cell_math.h. It takes its row pointers from the step once, at
// construction: the cell's vector stores may alias anything, so reading them from the step
// after a store would reload them.
template <class V, class Real, bool kLn = false>
struct ForwardUnit {
  ForwardUnit(const FwdStep<Real>& s, int64_t b, int64_t j)
      : H(s.H),
        G(s.G),
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
        zc_p(s.zc_p),
        stage(s.stage ? s.stage + b * s.stage_cols + j : nullptr) {
    for (int n = 0; n < s.params; ++n) pw[n] = s.cell_w[n] + j;
    if constexpr (kLn) {
      gih = s.ln_gain_ih + j;
      ghh = s.ln_gain_hh + j;
      const Real* row = s.ln_row + b * 4;
      mu_a = row[0], rs_a = row[1], mu_r = row[2], rs_r = row[3];
      fold = s.fold_gates;
      ln_ws = ws ? ws + s.ln_block * s.H : nullptr;
    }
  }
  V pre(int k) const {
    if constexpr (kLn) {  // LN(x W_ih^T) * gain + bias, plus the folded h side
      const V ah = (V::load(gx + k * H) - V::set1(mu_a)) * V::set1(rs_a);
      save(ln_ws, k, ah);
      const V v = V::fmadd(ah, V::load(gih + k * H), V::load(bias + k * H));
      return ((fold >> k) & 1u) ? v + recurrent_ln(k) : v;
    } else {
      return V::load(gx + k * H) + V::load(bias + k * H);
    }
  }
  V recurrent(int k) const {
    V r = kLn ? recurrent_ln(k) : V::load(rg + k * H);
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
  void save(int q, V v) const { save(ws, q, v); }
  void stash(int q, V v) const { v.store(stage + (q + 1) * H); }
  V stashed(int q) const { return V::load(stage + (q + 1) * H); }

 private:
  void save(Real* base, int q, V v) const {
    if (!base) return;
    if (stream_ws) v.stream(base + q * H); else v.store(base + q * H);
  }
  // LN(h W_hh^T) * gain of gate k (saving the normalised value)
  V recurrent_ln(int k) const {
    const V rh = (V::load(rg + k * H) - V::set1(mu_r)) * V::set1(rs_r);
    save(ln_ws, G + k, rh);
    return rh * V::load(ghh + k * H);
  }
  const int64_t H, G;
  const Real *const gx, *const bias, *const rg, *const b_apart, *const h;
  Real *const c, *const ws;
  const bool stream_ws;
  const bool zone_c;
  const Real* const zc;
  const Real zc_p;
  Real* const stage;
  const Real* pw[kMaxCellParams];
  const Real *gih = nullptr, *ghh = nullptr;
  Real mu_a = 0, rs_a = 0, mu_r = 0, rs_r = 0;
  unsigned fold = 0;
  Real* ln_ws = nullptr;
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
  // The sums over the steps of the gradients of the cell's own parameters, per group of
  // group_rows batch rows: [groups, params, H]; a unit adds its (t, b)'s part to its group's
  // (summed over the groups after the loop, in order; see layer_impl.h: the groups do not
  // depend on the thread count).
  Real* dparam_sums;
  int params;
  int64_t group_rows;
  // Zoneout of the cell state (as FwdStep's): the cell sees (1 - m) dc_t, and dc_{t-1} gets
  // m dc_t besides what the cell gives it.
  bool zone_c;
  const Real* zc;
  Real zc_p;
  // As FwdStep's stage (stash q at block q + 1).
  Real* stage = nullptr;
  int64_t stage_cols = 0;
};

// The backward step accessor of cell_math.h (row pointers taken once, as ForwardUnit does).
template <class Math, class V, class Real>
struct BackwardUnit {
  // dgh differs from dgx: apart gates, or a normalised h side
  static constexpr bool kSplit = Math::kApartGates != 0 || Math::kLayerNorm;
  BackwardUnit(const BwdStep<Real>& s, int64_t b, int64_t j)
      : H(s.H),
        ws(s.ws + b * s.WS + j),
        hprev(s.ws + b * s.WS + s.hprev_col + j),
        dc_(s.dc ? s.dc + b * s.H + j : nullptr),
        dgx(s.dgx + b * s.GH + j),
        dgh(s.dgh + b * s.GH + j),
        zone_c(s.zone_c),
        zc(s.zone_c && s.zc ? s.zc + b * s.H + j : nullptr),
        zc_p(s.zc_p),
        stage(s.stage ? s.stage + b * s.stage_cols + j : nullptr) {
    for (int n = 0; n < Math::kParams; ++n) {
      pw[n] = s.cell_w[n] + j;
      dpw[n] = s.dparam_sums + ((b / s.group_rows) * s.params + n) * s.H + j;
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
  void stash(int q, V v) const { v.store(stage + (q + 1) * H); }
  V stashed(int q) const { return V::load(stage + (q + 1) * H); }

 private:
  const int64_t H;
  const Real *const ws, *const hprev;
  Real *const dc_, *const dgx, *const dgh;
  V mask_c() const { return zc ? V::load(zc) : V::set1(zc_p); }
  const bool zone_c;
  const Real* const zc;
  const Real zc_p;
  Real* const stage;
  const Real* pw[kMaxCellParams];
  Real* dpw[kMaxCellParams];
};
