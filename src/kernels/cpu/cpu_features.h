// Which vector instructions the CPU kernels may use, decided once at run time so that one kite
// binary runs on any x86-64 machine and uses AVX2 where the machine has it.
#pragma once

#include <string_view>

// Compiles one function for AVX2 + FMA + F16C without raising the baseline of the whole build.
// Only call such a function after detect_isa() said kAvx2.
#if defined(__x86_64__) || defined(__i386__)
#define KITE_HAS_AVX2_KERNELS 1
#define KITE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define KITE_HAS_AVX2_KERNELS 0
#define KITE_TARGET_AVX2
#endif

namespace kite::cpu {

enum class Isa {
  kScalar,  // portable C++ (the compiler may still vectorise it for the baseline target)
  kAvx2,    // AVX2, FMA and F16C intrinsics
};

// The best instruction set this machine supports.
Isa detect_isa();
std::string_view isa_name(Isa isa);

}  // namespace kite::cpu
