// Scratch blocks kept across kernel calls (see rnn.h: release_scratch).
//
// A layer call needs a few buffers of hundreds of KB to several MB (the input projection
// of every step, the saved workspace, gate gradients). Fresh ones cost page faults and
// page clearing on every call: malloc hands blocks of this size back to the system when
// they are freed (mmap'd chunks, or a trimmed heap top), so the next call faults them in
// again; reusing the previous call's blocks costs nothing. Blocks from 2 MB are 2 MB-aligned and advised to use huge pages,
// which also spares the steps TLB misses on their rows scattered over many 4 KB pages.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../rnn.h"
#include "env_flag.h"

#if defined(__SANITIZE_ADDRESS__)
#define RNNFAST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RNNFAST_ASAN 1
#endif
#endif
#if defined(RNNFAST_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace rnnfast {
namespace core {
namespace {

#if defined(RNNFAST_ASAN)
// Under AddressSanitizer the cache is off by default: every block is exact-sized and freed at
// once, so that an access past a buffer's end or after its call is reported by ASan's own
// redzones and quarantine. With the cache on (to test it sanitized), the poisoning below
// keeps both visible.
constexpr bool kCacheByDefault = false;
void poison(const void* p, size_t n) { ASAN_POISON_MEMORY_REGION(p, n); }
void unpoison(const void* p, size_t n) { ASAN_UNPOISON_MEMORY_REGION(p, n); }
#else
constexpr bool kCacheByDefault = true;
void poison(const void*, size_t) {}
void unpoison(const void*, size_t) {}
#endif
constexpr size_t kMaxCachedBytes = size_t(256) << 20;  // kept across calls, at most
constexpr size_t kMaxCachedBlocks = 32;

std::atomic<bool>& cache_on() {
  static std::atomic<bool> on{env_flag("RNNFAST_SCRATCH_CACHE", kCacheByDefault)};
  return on;
}

struct Block {
  void* p;
  size_t bytes;
};

struct Cache {
  std::mutex mu;
  std::vector<Block> blocks;  // oldest first
  size_t bytes = 0;
  // The real size of each block handed out while the cache was on: a cached block may serve
  // a request of down to half its size, and must come back with its own size, not the
  // request's. A block missing here came from the cache-off path.
  std::unordered_map<void*, size_t> out;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: kernels may run during static teardown
  return *c;
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: a refusal changes nothing
#else
  (void)p;
  (void)bytes;
#endif
}

// Cached blocks come in powers of two from kScratchMinBytes, then whole multiples of
// kScratchHugeBytes.
size_t block_bytes(size_t bytes) {
  if (bytes >= kScratchHugeBytes)
    return (bytes + kScratchHugeBytes - 1) / kScratchHugeBytes * kScratchHugeBytes;
  size_t b = kScratchMinBytes;
  while (b < bytes) b *= 2;
  return b;
}

// Frees blocks taken out of the cache (their memory was poisoned while kept).
void free_blocks(const std::vector<Block>& blocks) {
  for (const Block& b : blocks) {
    unpoison(b.p, b.bytes);
    std::free(b.p);
  }
}

}  // namespace

bool debug_nan_scratch() {
  static const bool on = env_flag("RNNFAST_DEBUG_NAN_SCRATCH", false);
  return on;
}

void debug_fill_nan(void* p, size_t bytes) {
  if (p && bytes && debug_nan_scratch()) std::memset(p, 0xFF, bytes);
}

bool scratch_cache_enabled() { return cache_on().load(std::memory_order_relaxed); }

void set_scratch_cache(bool on) {
  cache_on().store(on);
  if (!on) release_scratch();
}

void* scratch_alloc(size_t bytes) {
  if (!scratch_cache_enabled()) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    debug_fill_nan(p, bytes);
    return p;
  }
  const size_t want = bytes;
  bytes = block_bytes(bytes);
  void* p = nullptr;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    // The smallest cached block that fits, if it wastes no more than the request.
    size_t best = c.blocks.size();
    for (size_t i = 0; i < c.blocks.size(); ++i) {
      const size_t b = c.blocks[i].bytes;
      if (b >= bytes && b <= 2 * bytes && (best == c.blocks.size() || b < c.blocks[best].bytes))
        best = i;
    }
    if (best < c.blocks.size()) {
      const Block b = c.blocks[best];
      c.bytes -= b.bytes;
      c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(best));
      c.out[b.p] = b.bytes;
      p = b.p;
    }
  }
  if (p) {  // the whole block is poisoned while cached: open the request's bytes only
    unpoison(p, want);
    debug_fill_nan(p, want);
    return p;
  }
  const bool huge = bytes >= kScratchHugeBytes;
  p = std::aligned_alloc(huge ? kScratchHugeBytes : 4096, bytes);
  if (!p) throw std::bad_alloc();
  if (huge) advise_huge_pages(p, bytes);
  poison(static_cast<char*>(p) + want, bytes - want);  // the tail past the request
  debug_fill_nan(p, want);
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    c.out[p] = bytes;
  }
  return p;
}

void scratch_free(void* p) {
  if (!p) return;
  std::vector<Block> drop;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.out.find(p);
    if (it == c.out.end()) {  // from the cache-off path: exact-sized, never kept
      drop.push_back({p, 0});
    } else {
      const size_t bytes = it->second;
      c.out.erase(it);
      if (bytes > kMaxCachedBytes || !scratch_cache_enabled()) {
        drop.push_back({p, bytes});
      } else {
        poison(p, bytes);
        c.blocks.push_back({p, bytes});
        c.bytes += bytes;
        while (c.bytes > kMaxCachedBytes || c.blocks.size() > kMaxCachedBlocks) {
          drop.push_back(c.blocks.front());
          c.bytes -= c.blocks.front().bytes;
          c.blocks.erase(c.blocks.begin());
        }
      }
    }
  }
  free_blocks(drop);
}

size_t scratch_cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.bytes;
}

void release_scratch() {
  std::vector<Block> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    blocks.swap(c.blocks);
    c.bytes = 0;
  }
  free_blocks(blocks);
}

}  // namespace core
}  // namespace rnnfast
