// The AVX2 + FMA path. Only this file's own functions are compiled for AVX2 + FMA
// (target pragma after the library headers); the dispatcher calls them only
// on CPUs that report AVX2 + FMA.
#include "kernels_common.h"

#if defined(RNNFAST_X86)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define RNNFAST_ISA_NS avx2
#define RNNFAST_VEC_HEADER "vec_avx2.h"
#include "kernels_body.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // RNNFAST_X86
