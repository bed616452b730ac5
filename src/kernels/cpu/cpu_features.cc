// Run-time detection of the vector instruction sets the CPU kernels can use.
#include "kernels/cpu/cpu_features.h"

namespace kite::cpu {

Isa detect_isa() {
#if KITE_HAS_AVX2_KERNELS
  static const Isa detected = [] {
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
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
