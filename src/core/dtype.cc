// Sizes and names of element types.
#include "core/dtype.h"

#include <string>

namespace kite {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
    case DType::kI8:
      return 1;
    case DType::kU8:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  KITE_CHECK(false);
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF8E4M3:
      return "float8_e4m3";
    case DType::kI8:
      return "int8";
    case DType::kU8:
      return "uint8";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
  }
  KITE_CHECK(false);
  return "";
}

std::string_view dtype_safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  KITE_CHECK(false);
  return "";
}

Result<DType> parse_dtype_name(std::string_view name) {
  for (DType dtype : kAllDTypes) {
    if (dtype_name(dtype) == name) return dtype;
  }
  return invalid_argument("unknown dtype '" + std::string(name) +
                          "'; use one of float32, float16, bfloat16, float8_e4m3, int8, uint8, "
                          "int32, int64");
}

Result<DType> parse_safetensors_dtype(std::string_view name) {
  for (DType dtype : kAllDTypes) {
    if (dtype_safetensors_name(dtype) == name) return dtype;
  }
  return unsupported("unsupported safetensors dtype '" + std::string(name) +
                     "' (Kite reads F32, F16, BF16, F8_E4M3, I8, U8, I32, I64)");
}

}  // namespace kite
