// The floating element types CPU kernels read and write (float32, float16, bfloat16), as tag types:
// a kernel is written once as a template over the tag and dispatch_float_dtype picks the instance.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/half.h"
#include "core/status.h"

namespace kite::cpu {

struct Float32 {
  using Storage = float;
  static float load(float value) { return value; }
  static float store(float value) { return value; }
};

struct Float16 {
  using Storage = uint16_t;
  static float load(uint16_t bits) { return fp16_to_float(bits); }
  static uint16_t store(float value) { return float_to_fp16(value); }
};

struct BFloat16 {
  using Storage = uint16_t;
  static float load(uint16_t bits) { return bf16_to_float(bits); }
  static uint16_t store(float value) { return float_to_bf16(value); }
};

inline bool is_cpu_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// Calls function(Float32{}), function(Float16{}) or function(BFloat16{}) for `dtype`. Callers check
// is_cpu_float_dtype first, so that a failed check names the op.
template <typename Function>
decltype(auto) dispatch_float_dtype(DType dtype, Function&& function) {
  switch (dtype) {
    case DType::kF16:
      return function(Float16{});
    case DType::kBF16:
      return function(BFloat16{});
    default:
      KITE_CHECK(dtype == DType::kF32);
      return function(Float32{});
  }
}

}  // namespace kite::cpu
