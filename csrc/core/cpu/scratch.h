// Large scratch blocks reused across kernel calls (scratch.cpp). Internal to csrc/core/cpu.
#pragma once
#include <cstddef>

namespace rnnfast {
namespace core {

// Requests of this size and more go through the cache; their blocks are this aligned.
inline constexpr size_t kScratchAlign = size_t(2) << 20;

// A block of at least `bytes` (kScratchAlign-aligned): a cached one, or a new one.
// Under AddressSanitizer: a new exact-sized one, 64-byte aligned, never cached.
void* scratch_alloc(size_t bytes);
// Gives a block from scratch_alloc back, with the size it was asked with.
void scratch_free(void* p, size_t bytes);

}  // namespace core
}  // namespace rnnfast
