// Element types of tensors stored in Kite's files and held in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace kite {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF8E4M3,  // float8 e4m3fn: no infinities, 0x7f/0xff are NaN, max 448
  kI8,
  kU8,
  kI32,
  kI64,
};

inline constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3,
                                       DType::kI8,  DType::kU8,  DType::kI32,  DType::kI64};

size_t dtype_size(DType dtype);
// The name used on the command line and in config.json: "float32", "bfloat16", ...
std::string_view dtype_name(DType dtype);
// The name used in safetensors headers: "F32", "BF16", ...
std::string_view dtype_safetensors_name(DType dtype);

Result<DType> parse_dtype_name(std::string_view name);
Result<DType> parse_safetensors_dtype(std::string_view name);

}  // namespace kite
