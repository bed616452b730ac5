// Shape printing and dtype conversion of host tensors.
#include "core/tensor.h"

#include "core/half.h"

namespace kite {
namespace {

bool is_floating(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kF8E4M3;
}

}  // namespace

float load_float(DType dtype, const uint8_t* data, size_t index) {
  switch (dtype) {
    case DType::kF32: {
      float value;
      std::memcpy(&value, data + index * 4, 4);
      return value;
    }
    case DType::kF16: {
      uint16_t bits;
      std::memcpy(&bits, data + index * 2, 2);
      return fp16_to_float(bits);
    }
    case DType::kBF16: {
      uint16_t bits;
      std::memcpy(&bits, data + index * 2, 2);
      return bf16_to_float(bits);
    }
    case DType::kF8E4M3:
      return fp8_e4m3_to_float(data[index]);
    default:
      KITE_CHECK(false);
  }
  return 0.0f;
}

void store_float(DType dtype, uint8_t* data, size_t index, float value) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(data + index * 4, &value, 4);
      return;
    case DType::kF16: {
      const uint16_t bits = float_to_fp16(value);
      std::memcpy(data + index * 2, &bits, 2);
      return;
    }
    case DType::kBF16: {
      const uint16_t bits = float_to_bf16(value);
      std::memcpy(data + index * 2, &bits, 2);
      return;
    }
    case DType::kF8E4M3:
      data[index] = float_to_fp8_e4m3(value);
      return;
    default:
      KITE_CHECK(false);
  }
}

std::string shape_to_string(const Shape& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

Result<Tensor> convert_dtype(const TensorView& source, DType target) {
  if (source.dtype == target) return Tensor::copy_of(source);
  if (!is_floating(source.dtype) || !is_floating(target)) {
    return unsupported("cannot convert a " + std::string(dtype_name(source.dtype)) + " tensor to " +
                       std::string(dtype_name(target)));
  }
  Tensor result(target, source.shape);
  const size_t count = size_t(source.numel());
  for (size_t i = 0; i < count; ++i) {
    store_float(target, result.data(), i, load_float(source.dtype, source.data, i));
  }
  return result;
}

Result<std::vector<float>> to_float32(const TensorView& source) {
  if (!is_floating(source.dtype)) {
    return unsupported("cannot read a " + std::string(dtype_name(source.dtype)) +
                       " tensor as float32");
  }
  std::vector<float> values(size_t(source.numel()));
  for (size_t i = 0; i < values.size(); ++i) values[i] = load_float(source.dtype, source.data, i);
  return values;
}

}  // namespace kite
