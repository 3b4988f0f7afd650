// Portable one-lane "vector": the reference the SIMD paths must agree with.
// Included inside namespace rnnfast::core::<isa> by a kernels_<isa>.cpp.

template <class T>
struct ScalarVec {
  static constexpr int W = 1;
  T v;
  static ScalarVec load(const T* p) { return {*p}; }
  static ScalarVec set1(T x) { return {x}; }
  static ScalarVec zero() { return {T(0)}; }
  void store(T* p) const { *p = v; }
  void stream(T* p) const { *p = v; }
  T hsum() const { return v; }
  ScalarVec operator+(ScalarVec b) const { return {v + b.v}; }
  ScalarVec operator-(ScalarVec b) const { return {v - b.v}; }
  ScalarVec operator*(ScalarVec b) const { return {v * b.v}; }
  static ScalarVec fmadd(ScalarVec a, ScalarVec b, ScalarVec c) { return {a.v * b.v + c.v}; }
  static ScalarVec sigmoid(ScalarVec a) { return {T(1) / (T(1) + std::exp(-a.v))}; }
  static ScalarVec tanh(ScalarVec a) { return {std::tanh(a.v)}; }
  // max(0, x) that keeps NaN, as torch.relu does.
  static ScalarVec relu(ScalarVec a) { return {a.v > T(0) || a.v != a.v ? a.v : T(0)}; }
  // As torch's relu backward: passes d unless h <= 0 (so a NaN h passes d).
  static ScalarVec where_pos(ScalarVec h, ScalarVec d) { return {h.v <= T(0) ? T(0) : d.v}; }
};

struct ScalarIsa {
  static constexpr int MR = 4;  // rows per GEMM register tile
  template <class T>
  using Vec = ScalarVec<T>;
  // Columns per GEMM micro-tile (a multiple of Vec::W).
  template <class T>
  static constexpr int NR = 8;
  // No vectorised operand packing on this path (see vec_avx512.h).
  static constexpr bool kTranspose16 = false;
  static void transpose16(const float* const*, float*, int64_t, int) {}
  // gemm_dot's blocks (see vec_avx2.h)
  static constexpr int kDotRows = 4;
  static constexpr int kDotCols[kDotRows + 1] = {0, 8, 4, 4, 4};
  static constexpr int64_t kInPlaceMaxRows = INT64_MAX;  // see vec_avx2.h; unmeasured here
};
