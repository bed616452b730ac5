// RMS normalisation: out = x * (1 / sqrt(mean(x^2) + eps)) * weight, with the sum of squares kept
// in double so the CPU reference is as close to exact as it is cheap to be.
#include "kernels/cpu/rms_norm.h"

#include <cmath>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {
namespace {

template <typename Element>
void normalize_row(const float* row, const typename Element::Storage* weight, int64_t size,
                   float eps, float* out_row) {
  double sum_of_squares = 0.0;
  for (int64_t i = 0; i < size; ++i) sum_of_squares += double(row[i]) * double(row[i]);
  // Hugging Face: variance in float32, then hidden * rsqrt(variance + eps), then weight * hidden.
  const float variance = float(sum_of_squares / double(size));
  const float inverse_rms = float(1.0 / std::sqrt(double(variance + eps)));
  for (int64_t i = 0; i < size; ++i) {
    const float scale = weight ? Element::load(weight[i]) : 1.0f;
    out_row[i] = scale * (row[i] * inverse_rms);
  }
}

void check_shapes(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor& out) {
  KITE_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kF32);
  KITE_CHECK(out.rows() == x.rows() && out.cols() == x.cols());
  if (!weight.data) return;  // no scale
  KITE_CHECK(is_cpu_float_dtype(weight.dtype));
  KITE_CHECK(weight.numel() == x.cols());
}

}  // namespace

void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps, DeviceTensor& out) {
  check_shapes(x, weight, out);
  const int64_t rows = x.rows();
  const int64_t size = x.cols();
  const auto* input = static_cast<const float*>(x.data);
  auto* output = static_cast<float*>(out.data);
  dispatch_float_dtype(weight.dtype, [&](auto element) {
    using Element = decltype(element);
    const auto* weights = static_cast<const typename Element::Storage*>(weight.data);
#pragma omp parallel for schedule(static) if (rows * size >= kMinParallelWork)
    for (int64_t row = 0; row < rows; ++row) {
      normalize_row<Element>(input + row * size, weights, size, eps, output + row * size);
    }
  });
}

void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                  float eps, DeviceTensor& out) {
  check_shapes(x, weight, out);
  KITE_CHECK(residual.dtype == DType::kF32);
  KITE_CHECK(residual.rows() == x.rows() && residual.cols() == x.cols());
  KITE_CHECK(out.data != residual.data);
  const int64_t rows = x.rows();
  const int64_t size = x.cols();
  auto* sums = static_cast<float*>(residual.data);
  const auto* input = static_cast<const float*>(x.data);
  auto* output = static_cast<float*>(out.data);
  dispatch_float_dtype(weight.dtype, [&](auto element) {
    using Element = decltype(element);
    const auto* weights = static_cast<const typename Element::Storage*>(weight.data);
#pragma omp parallel for schedule(static) if (rows * size >= kMinParallelWork)
    for (int64_t row = 0; row < rows; ++row) {
      float* sum_row = sums + row * size;
      const float* input_row = input + row * size;
      // The whole row is added before out is written, so out may alias x.
      for (int64_t i = 0; i < size; ++i) sum_row[i] += input_row[i];
      normalize_row<Element>(sum_row, weights, size, eps, output + row * size);
    }
  });
}

void scale_columns(DeviceTensor& weight, const DeviceTensor& scale) {
  KITE_CHECK(weight.shape.size() == 2 && scale.numel() == weight.cols());
  KITE_CHECK(is_cpu_float_dtype(weight.dtype) && scale.dtype == weight.dtype);
  const int64_t rows = weight.rows(), columns = weight.cols();
  dispatch_float_dtype(weight.dtype, [&](auto element) {
    using Element = decltype(element);
    auto* values = static_cast<typename Element::Storage*>(weight.data);
    const auto* scales = static_cast<const typename Element::Storage*>(scale.data);
#pragma omp parallel for schedule(static) if (rows * columns >= kMinParallelWork)
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t column = 0; column < columns; ++column) {
        auto& value = values[row * columns + column];
        value = Element::store(Element::load(value) * Element::load(scales[column]));
      }
    }
  });
}

Result<std::optional<Tensor>> fold_norm_scale(const WeightLookup& lookup, const std::string& name) {
  const std::string norm_name = folded_norm_of(name);
  if (norm_name.empty()) return std::optional<Tensor>();
  KITE_ASSIGN_OR_RETURN(const TensorView weight, lookup(name));
  KITE_ASSIGN_OR_RETURN(const TensorView norm, lookup(norm_name));
  if (weight.shape.size() != 2 || norm.shape != Shape{weight.shape[1]} ||
      weight.dtype != norm.dtype || !is_cpu_float_dtype(weight.dtype)) {
    return unsupported("cannot fold " + norm_name + " (" + std::string(dtype_name(norm.dtype)) +
                       " " + shape_to_string(norm.shape) + ") into the columns of " + name + " (" +
                       std::string(dtype_name(weight.dtype)) + " " + shape_to_string(weight.shape) +
                       ")");
  }
  Tensor folded = Tensor::copy_of(weight);
  DeviceTensor columns{folded.dtype(), folded.shape(), folded.data()};
  scale_columns(columns, DeviceTensor{norm.dtype, norm.shape, const_cast<uint8_t*>(norm.data)});
  return std::optional<Tensor>(std::move(folded));
}

}  // namespace kite::cpu
