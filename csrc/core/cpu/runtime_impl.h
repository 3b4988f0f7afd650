// The CPU kernels' runtime: integer helpers, per-call scratch buffers, the denormal mode of a
// call, and the thread runtime (parallel loops, the team that runs a time loop, its barrier).
// No arithmetic of the layers here: the GEMM is gemm_impl.h, the drivers layer_impl.h.
// Included inside namespace rnnfast::core::<isa> by kernels_body.h.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// 64-byte aligned scratch memory owned by one kernel call. Blocks of 64 KB and up come
// from the cross-call cache (rnn.h: scratch_alloc): no page faults when a call reuses the
// previous call's blocks, and huge-page backed from 2 MB.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  // cached = false: always from malloc (small per-thread buffers, which would otherwise take
  // cache slots from the large per-call blocks the cache is for).
  explicit Buffer(int64_t n, bool cached = true) { reset(n, cached); }
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void reset(int64_t n, bool cached = true) {
    release();
    if (n <= 0) return;
    size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
    if (cached && bytes >= kScratchMinBytes) {
      p_ = static_cast<T*>(scratch_alloc(bytes));
      from_cache_ = true;
      return;
    }
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
    debug_fill_nan(p_, bytes);  // (scratch_alloc fills its blocks itself)
  }
  T* get() const { return p_; }
  // Hands the block over to the caller (null if none): *from_cache says how to free it
  // (scratch_free, else std::free).
  T* detach(bool* from_cache) {
    T* p = p_;
    *from_cache = from_cache_;
    p_ = nullptr;
    from_cache_ = false;
    return p;
  }

 private:
  void release() {
    if (from_cache_) scratch_free(p_); else std::free(p_);
    p_ = nullptr;
    from_cache_ = false;
  }
  T* p_ = nullptr;
  bool from_cache_ = false;
};

// The mode an entry point runs a call of element type T in.
template <class T>
inline unsigned call_denormal_mode() {
  return std::is_same<T, float>::value ? kFlushDenormals : denormal_mode();
}

// Orders this thread's earlier non-temporal stores before its later stores (the barrier
// that hands the data to another thread, or the end of the kernel).
inline void store_fence() {
#if defined(RNNFAST_X86)
  _mm_sfence();
#endif
}

// Runs f(begin, end) over [0, n) on the executor; on the calling thread alone
// when the work is too small to pay for a fork.
template <class F>
void parallel_for(const Executor& ex, int64_t n, bool worth_it, F&& f) {
  if (n <= 0) return;
  if (n == 1 || !worth_it || ex.num_threads() <= 1) {
    f(int64_t(0), n);
    return;
  }
  using Fn = typename std::remove_reference<F>::type;
  struct Ctx {
    Fn* f;
    unsigned mode;
  } ctx{&f, denormal_mode()};
  ex.run(
      n,
      [](void* c, int64_t b, int64_t e) {
        const Ctx& x = *static_cast<const Ctx*>(c);
        DenormalGuard g(x.mode);
        (*x.f)(b, e);
      },
      &ctx);
}

// A reusable barrier for the threads of one team; waits as spin.h's spin_pause says.
class SpinBarrier {
 public:
  void join(int n) { n_.store(n, std::memory_order_relaxed); }
  void wait() {
    const int n = n_.load(std::memory_order_relaxed);
    if (n <= 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) spin_pause(spins);
  }

 private:
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> gen_{0};
  alignas(64) std::atomic<int> n_{1};
};

// One thread's view of a team running a time loop: its share of each step's
// tasks, and the barrier that ends each parallel phase of a step.
struct TeamSlot {
  int tid = 0, nth = 1;
  SpinBarrier* bar = nullptr;
  // This thread's contiguous share [*b, *e) of n tasks: the same share every
  // step, so each thread keeps working on the same weights (weight-stationary).
  void share(int64_t n, int64_t* b, int64_t* e) const {
    *b = n * tid / nth;
    *e = n * (tid + 1) / nth;
  }
  void sync() const {
    if (bar) bar->wait();
  }
};

// Runs body(step, slot) for step = 0 .. nsteps-1. In parallel, one team of
// threads runs the whole loop, with a barrier between phases, instead of a fork
// and a join per step.
template <class Body>
void run_steps(const Executor& ex, int64_t nsteps, bool parallel, Body&& body) {
  if (!parallel || ex.num_threads() <= 1) {
    TeamSlot slot;
    for (int64_t step = 0; step < nsteps; ++step) body(step, slot);
    return;
  }
  SpinBarrier bar;
  const unsigned mode = denormal_mode();
  auto member = [&](int tid, int nth) {
    DenormalGuard g(mode);
    bar.join(nth);
    TeamSlot slot;
    slot.tid = tid;
    slot.nth = nth;
    slot.bar = nth > 1 ? &bar : nullptr;
    for (int64_t step = 0; step < nsteps; ++step) body(step, slot);
  };
  using M = decltype(member);
  ex.run_team(
      ex.num_threads(),
      [](void* ctx, int tid, int nth) { (*static_cast<M*>(ctx))(tid, nth); }, &member);
}

