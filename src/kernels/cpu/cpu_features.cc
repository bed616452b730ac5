// Run-time detection of the vector instruction sets the CPU kernels can use.
#include "kernels/cpu/cpu_features.h"

#if KITE_HAS_AVX2_KERNELS
#include <cpuid.h>
#endif

namespace kite::cpu {

Isa detect_isa() {
#if KITE_HAS_AVX2_KERNELS
  static const Isa detected = [] {
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the OS saves the YMM registers; clang's does not know
    // "f16c", so that bit comes from CPUID leaf 1 directly.
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool has_f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    const bool has_avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c;
    return has_avx2 ? Isa::kAvx2 : Isa::kScalar;
  }();
  return detected;
#else
  return Isa::kScalar;
#endif
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
  }
  return "unknown";
}

}  // namespace kite::cpu
