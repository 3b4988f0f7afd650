// The AVX-512F path. Only this file's own functions are compiled for AVX-512F
// (target pragma after the library headers); the dispatcher calls them only
// on CPUs that report AVX-512F.
#include "kernels_common.h"

#if defined(RNNFAST_X86)

// GCC 12 reports its own AVX-512 intrinsic headers (_mm512_undefined_*) as
// reading uninitialised values; those warnings are not about this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#define RNNFAST_ISA_NS avx512
#define RNNFAST_VEC_HEADER "vec_avx512.h"
#include "kernels_body.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // RNNFAST_X86
