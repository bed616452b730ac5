// The floating element types CPU kernels read and write (float32, float16, bfloat16; float8 e4m3
// for KV caches), as tag types: a kernel is written once as a template over the tag and
// dispatch_float_dtype (dispatch_cache_dtype for the KV cache) picks the instance.
#pragma once

#include <array>
#include <cstdint>
#include <utility>

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

// float8 e4m3fn, for KV caches only: read through a table of its 256 values, written rounded to
// nearest (saturating at +-448) with no scale, as vLLM's and TensorRT-LLM's fp8 KV caches without
// calibrated scales.
inline const std::array<float, 256> kFloat8E4M3Values = [] {
  std::array<float, 256> values{};
  for (int bits = 0; bits < 256; ++bits) values[size_t(bits)] = fp8_e4m3_to_float(uint8_t(bits));
  return values;
}();

struct Float8E4M3 {
  using Storage = uint8_t;
  static float load(uint8_t bits) { return kFloat8E4M3Values[bits]; }
  static uint8_t store(float value) { return float_to_fp8_e4m3(value); }
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

// The KV cache's element types: the float dtypes and float8 e4m3.
inline bool is_cpu_cache_dtype(DType dtype) {
  return is_cpu_float_dtype(dtype) || dtype == DType::kF8E4M3;
}

template <typename Function>
decltype(auto) dispatch_cache_dtype(DType dtype, Function&& function) {
  if (dtype == DType::kF8E4M3) return function(Float8E4M3{});
  return dispatch_float_dtype(dtype, std::forward<Function>(function));
}

}  // namespace kite::cpu
