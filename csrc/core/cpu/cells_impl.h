// The cell math: the only part that differs between LSTM, GRU and RNN.
// Each cell gives its gate count, its workspace layout and two pointwise
// functions over W consecutive hidden units (j .. j+W-1) of one batch row b:
//   fwd: from the input projection gx and the recurrent projection (summed
//        into gx, or apart in rg: see FwdStep), compute the new state and save
//        what backward needs;
//   bwd: from dh (gradient w.r.t. the cell's h output) and the saved
//        workspace, compute the gate pre-activation gradients, and return the
//        part of dh_{t-1} that does not go through W_hh.
// Included inside namespace rnnfast::core::<isa>.

// Pointers of one forward step (time t), rows indexed by batch b.
template <class T>
struct FwdStep {
  int64_t H, P, S, GH, WS;
  // gx: x_t W_ih^T, onto which the step's GEMM has added h_{t-1} W_hh^T for the
  // gates where Cell::sums_into_gx; rg: h_{t-1} W_hh^T of the other gates (GRU's n).
  T* gx;          // [B, GH]  see above                                   read
  const T* bias;  // [GH]     b_ih + the part of b_hh that folds in (GRU: not b_hn)  read
  const T* rg;    // [B, GH]  see above (only the columns of its gates)   read
  const T* h;     // [B, S]   h_{t-1}                                     read
  T* c;           // [B, H]   LSTM cell state, c_{t-1} in, c_t out        read/written
  T* hout;        // [B, H]   h_t (LSTM with P: o*tanh(c_t)), stride ld_hout  written
  int64_t ld_hout;
  T* y;           // [B, S]   y_t, or null (LSTM with P writes y later)   written
  T* ws;          // [B, WS]  saved for backward, or null                 written
  // Write ws with non-temporal stores (save below): it is read again only by the backward
  // pass, so it should neither take a read for ownership nor evict the weights from L2.
  // Needs every vector's address in ws aligned to its size.
  bool ws_nt;
  const T* b_hn;  // [H]      GRU b_hn, or null                           read
};

// A value saved for the backward pass (see FwdStep::ws_nt).
template <class V, class T>
inline void save(const FwdStep<T>& s, V v, T* p) {
  if (s.ws_nt) v.stream(p); else v.store(p);
}

// Pointers of one backward step.
template <class T>
struct BwdStep {
  int64_t H, S, GH, WS;
  const T* ws;    // [B, WS]  read
  T* dc;          // [B, H]   LSTM dc_t in, dc_{t-1} out    read/written
  T* dgx;         // [B, GH]  d(pre-activation), x side     written
  T* dgh;         // [B, GH]  d(pre-activation), h side     written (== dgx unless GRU)
};

struct LstmCell {
  static constexpr int G = 4;
  static constexpr bool kHasC = true;
  static constexpr bool kSplitGrad = false;
  // H-wide blocks before h_{t-1}: i f g o c_{t-1} tanh(c_t) [o*tanh(c_t) if P]
  static int64_t hblocks(int64_t P) { return P > 0 ? 7 : 6; }
  static bool fold_hh_bias(int64_t, int64_t) { return true; }
  // Every gate's recurrent product adds onto gx (no separate rg).
  static constexpr bool kUsesRg = false;
  static bool sums_into_gx(int64_t) { return true; }

  template <class V, class T>
  static void fwd(const FwdStep<T>& s, int64_t b, int64_t j) {
    const int64_t H = s.H;
    const T* gx = s.gx + b * s.GH + j;
    const T* bs = s.bias + j;
    V i = V::sigmoid(V::load(gx) + V::load(bs));
    V f = V::sigmoid(V::load(gx + H) + V::load(bs + H));
    V g = V::tanh(V::load(gx + 2 * H) + V::load(bs + 2 * H));
    V o = V::sigmoid(V::load(gx + 3 * H) + V::load(bs + 3 * H));
    T* cp = s.c + b * H + j;
    V c_prev = V::load(cp);
    V c = V::fmadd(f, c_prev, i * g);
    V tc = V::tanh(c);
    V h = o * tc;
    c.store(cp);
    h.store(s.hout + b * s.ld_hout + j);
    if (s.y) h.store(s.y + b * s.S + j);
    if (s.ws) {
      T* w = s.ws + b * s.WS + j;
      save(s, i, w);
      save(s, f, w + H);
      save(s, g, w + 2 * H);
      save(s, o, w + 3 * H);
      save(s, c_prev, w + 4 * H);
      save(s, tc, w + 5 * H);
      if (s.P > 0) save(s, h, w + 6 * H);  // projection input, for dW_hr
    }
  }

  template <class V, class T>
  static V bwd(const BwdStep<T>& s, int64_t b, int64_t j, V dh) {
    const int64_t H = s.H;
    const T* w = s.ws + b * s.WS + j;
    V i = V::load(w), f = V::load(w + H), g = V::load(w + 2 * H), o = V::load(w + 3 * H);
    V c_prev = V::load(w + 4 * H), tc = V::load(w + 5 * H);
    const V one = V::set1(T(1));
    T* dcp = s.dc + b * H + j;
    V dc = V::fmadd(dh * o, one - tc * tc, V::load(dcp));
    V d_o = dh * tc;
    V d_i = dc * g, d_g = dc * i, d_f = dc * c_prev;
    (dc * f).store(dcp);
    T* d = s.dgx + b * s.GH + j;
    (d_i * i * (one - i)).store(d);
    (d_f * f * (one - f)).store(d + H);
    (d_g * (one - g * g)).store(d + 2 * H);
    (d_o * o * (one - o)).store(d + 3 * H);
    return V::zero();
  }
};

struct GruCell {
  static constexpr int G = 3;
  static constexpr bool kHasC = false;
  static constexpr bool kSplitGrad = true;
  // H-wide blocks before h_{t-1}: r z n (W_hn h + b_hn)
  static int64_t hblocks(int64_t) { return 4; }
  // b_hn stays inside r * (W_hn h + b_hn); b_hr and b_hz fold into the x side.
  static bool fold_hh_bias(int64_t col, int64_t H) { return col < 2 * H; }
  // r and z add their recurrent products onto gx; n keeps W_hn h apart in rg.
  static constexpr bool kUsesRg = true;
  static bool sums_into_gx(int64_t gate) { return gate < 2; }

  template <class V, class T>
  static void fwd(const FwdStep<T>& s, int64_t b, int64_t j) {
    const int64_t H = s.H;
    const T* gx = s.gx + b * s.GH + j;
    const T* rg = s.rg + b * s.GH + j;
    const T* bs = s.bias + j;
    V r = V::sigmoid(V::load(gx) + V::load(bs));
    V z = V::sigmoid(V::load(gx + H) + V::load(bs + H));
    V hn = V::load(rg + 2 * H);
    if (s.b_hn) hn = hn + V::load(s.b_hn + j);
    V n = V::tanh(V::fmadd(r, hn, V::load(gx + 2 * H) + V::load(bs + 2 * H)));
    V hp = V::load(s.h + b * s.S + j);
    V h = V::fmadd(z, hp - n, n);  // (1 - z) * n + z * h_{t-1}
    h.store(s.hout + b * s.ld_hout + j);
    if (s.y) h.store(s.y + b * s.S + j);
    if (s.ws) {
      T* w = s.ws + b * s.WS + j;
      save(s, r, w);
      save(s, z, w + H);
      save(s, n, w + 2 * H);
      save(s, hn, w + 3 * H);
    }
  }

  template <class V, class T>
  static V bwd(const BwdStep<T>& s, int64_t b, int64_t j, V dh) {
    const int64_t H = s.H;
    const T* w = s.ws + b * s.WS + j;
    V r = V::load(w), z = V::load(w + H), n = V::load(w + 2 * H), hn = V::load(w + 3 * H);
    V hp = V::load(w + 4 * H);  // h_{t-1}
    const V one = V::set1(T(1));
    V dn = dh * (one - z);
    V dz = dh * (hp - n);
    V dnp = dn * (one - n * n);
    V drp = dnp * hn * r * (one - r);
    V dzp = dz * z * (one - z);
    T* dx = s.dgx + b * s.GH + j;
    T* dhh = s.dgh + b * s.GH + j;
    drp.store(dx);
    dzp.store(dx + H);
    dnp.store(dx + 2 * H);
    drp.store(dhh);
    dzp.store(dhh + H);
    (dnp * r).store(dhh + 2 * H);
    return dh * z;
  }
};

template <bool Relu>
struct ElmanCell {
  static constexpr int G = 1;
  static constexpr bool kHasC = false;
  static constexpr bool kSplitGrad = false;
  // H-wide blocks before h_{t-1}: h_t
  static int64_t hblocks(int64_t) { return 1; }
  static bool fold_hh_bias(int64_t, int64_t) { return true; }
  static constexpr bool kUsesRg = false;
  static bool sums_into_gx(int64_t) { return true; }

  template <class V, class T>
  static void fwd(const FwdStep<T>& s, int64_t b, int64_t j) {
    V pre = V::load(s.gx + b * s.GH + j) + V::load(s.bias + j);
    V h = Relu ? V::relu(pre) : V::tanh(pre);
    h.store(s.hout + b * s.ld_hout + j);
    if (s.y) h.store(s.y + b * s.S + j);
    if (s.ws) save(s, h, s.ws + b * s.WS + j);
  }

  template <class V, class T>
  static V bwd(const BwdStep<T>& s, int64_t b, int64_t j, V dh) {
    V h = V::load(s.ws + b * s.WS + j);
    V d = Relu ? V::where_pos(h, dh) : dh * (V::set1(T(1)) - h * h);
    d.store(s.dgx + b * s.GH + j);
    return V::zero();
  }
};
