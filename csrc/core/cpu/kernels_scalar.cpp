// The portable path: plain C++ compiled for the baseline target. Computes the
// same function as the SIMD paths and is the fallback on any CPU.
#include "kernels_common.h"

#define RNNFAST_ISA_NS scalar
#define RNNFAST_SCALAR_ONLY 1
#include "kernels_body.h"
