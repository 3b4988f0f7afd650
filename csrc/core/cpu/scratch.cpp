// Scratch blocks kept across kernel calls (see rnn.h: release_scratch).
//
// A layer call needs a few buffers of hundreds of KB to several MB (the input projection
// of every step, the saved workspace, gate gradients). Fresh ones cost page faults and
// page clearing on every call: malloc hands blocks of this size back to the system when
// they are freed (mmap'd chunks, or a trimmed heap top), so the next call faults them in
// again (69 faults, 8% of a training call at T=200 B=1 H=128); reusing the previous call's
// blocks costs nothing. Blocks from 2 MB are 2 MB-aligned and advised to use huge pages,
// which also spares the steps TLB misses on their rows scattered over many 4 KB pages.
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../rnn.h"

namespace rnnfast {
namespace core {
namespace {

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer every block is exact-sized and freed at once, so that an access
// past a buffer's end or after its call is still reported.
constexpr bool kCacheBlocks = false;
#else
constexpr bool kCacheBlocks = true;
#endif
constexpr size_t kMaxCachedBytes = size_t(256) << 20;  // kept across calls, at most
constexpr size_t kMaxCachedBlocks = 32;

struct Block {
  void* p;
  size_t bytes;
};

struct Cache {
  std::mutex mu;
  std::vector<Block> blocks;  // oldest first
  size_t bytes = 0;
  // The real size of each block handed out: a cached block may serve a request of down to
  // half its size, and must come back with its own size, not the request's.
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

}  // namespace

void* scratch_alloc(size_t bytes) {
  if (!kCacheBlocks) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return p;
  }
  bytes = block_bytes(bytes);
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
      return b.p;
    }
  }
  const bool huge = bytes >= kScratchHugeBytes;
  void* p = std::aligned_alloc(huge ? kScratchHugeBytes : 4096, bytes);
  if (!p) throw std::bad_alloc();
  if (huge) advise_huge_pages(p, bytes);
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    c.out[p] = bytes;
  }
  return p;
}

void scratch_free(void* p) {
  if (!p) return;
  if (!kCacheBlocks) {
    std::free(p);
    return;
  }
  std::vector<void*> drop;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    // every block handed out is in `out`, with its real size
    auto it = c.out.find(p);
    const size_t bytes = it->second;
    c.out.erase(it);
    if (bytes > kMaxCachedBytes) {
      drop.push_back(p);
    } else {
      c.blocks.push_back({p, bytes});
      c.bytes += bytes;
      while (c.bytes > kMaxCachedBytes || c.blocks.size() > kMaxCachedBlocks) {
        drop.push_back(c.blocks.front().p);
        c.bytes -= c.blocks.front().bytes;
        c.blocks.erase(c.blocks.begin());
      }
    }
  }
  for (void* q : drop) std::free(q);
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
  for (const Block& b : blocks) std::free(b.p);
}

}  // namespace core
}  // namespace rnnfast
