// The common prologue of every kernels_<isa>.cpp: the standard and intrinsic
// headers, included before any target pragma so that library code is compiled
// for the baseline target and only rnnfast's own code gets the wider ISA.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RNNFAST_X86 1
#endif

#include "../random.h"
#include "../rnn.h"
#include "denormal.h"
#include "env_flag.h"
#include "spin.h"
