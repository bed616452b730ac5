// RMSNorm and residual-add + RMSNorm: one CTA per row, 8 elements (16 bytes) per access when the
// row allows it; the sum of squares in float32 through a block reduction.
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rms_norm.h"

namespace kite::cuda {
namespace {

constexpr int kThreads = 256;

// Vectors of the weight each thread loads before waiting for the previous kernel (PDL): weights
// are never written, so at batch 1 their load overlaps the previous kernel's tail instead of
// adding a dependent round trip after the sum of squares. 256 threads x 4 x 8 covers H <= 8192.
constexpr int kEarlyWeightVectors = 4;

// With kAdd: residual = round(residual + x). Then out = round(weight * round(residual * r)),
// r = 1 / sqrt(mean(residual^2) + eps); out = round(residual * r) without a weight (null).
template <typename T, int kWidth, bool kAdd>
__global__ void rms_norm_kernel(T* residual, const T* x, const T* weight, float eps, T* out,
                                int64_t hidden) {
  __shared__ float scratch[32];
  pdl_launch_dependents();
  using Vector = Pack<T, kWidth>;
  const int64_t vectors = hidden / kWidth;
  const auto* weights = reinterpret_cast<const Vector*>(weight);
  Vector early_weights[kEarlyWeightVectors];
#pragma unroll
  for (int c = 0; c < kEarlyWeightVectors; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < vectors && weights) early_weights[c] = weights[i];
  }
  pdl_wait();
  const int64_t row_offset = int64_t(blockIdx.x) * hidden;
  auto* row = reinterpret_cast<Vector*>(residual + row_offset);
  float sum_of_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    Vector values = row[i];
    if constexpr (kAdd) {
      const Vector added = reinterpret_cast<const Vector*>(x + row_offset)[i];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        values.values[j] = from_float<T>(to_float(values.values[j]) + to_float(added.values[j]));
      }
      row[i] = values;
    }
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      const float value = to_float(values.values[j]);
      sum_of_squares += value * value;
    }
  }
  const float scale = rsqrtf(block_sum(sum_of_squares, scratch) / float(hidden) + eps);
  auto* output = reinterpret_cast<Vector*>(out + row_offset);
  auto normalize = [&](int64_t i, const Vector& scales) {
    const Vector values = row[i];  // this thread's own elements: written above, no sync needed
    Vector result;
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      const float normalized = to_float(from_float<T>(to_float(values.values[j]) * scale));
      result.values[j] =
          from_float<T>(weights ? to_float(scales.values[j]) * normalized : normalized);
    }
    output[i] = result;
  };
#pragma unroll
  for (int c = 0; c < kEarlyWeightVectors; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < vectors) normalize(i, early_weights[c]);
  }
  for (int64_t i = threadIdx.x + int64_t(kEarlyWeightVectors) * blockDim.x; i < vectors;
       i += blockDim.x) {
    normalize(i, weights ? weights[i] : Vector{});
  }
}

template <bool kAdd>
void launch(DeviceTensor& residual, const DeviceTensor* x, const DeviceTensor& weight, float eps,
            DeviceTensor& out, cudaStream_t stream) {
  const int64_t rows = residual.rows(), hidden = residual.cols();
  KITE_CHECK(out.rows() == rows && out.cols() == hidden && out.dtype == residual.dtype);
  KITE_CHECK(!weight.data || (weight.numel() == hidden && weight.dtype == residual.dtype));
  if (kAdd) KITE_CHECK(x->dtype == residual.dtype && x->numel() == residual.numel());
  if (rows == 0) return;
  bool vectorized = hidden % 8 == 0;
  for (const void* pointer : {residual.data, out.data, weight.data, kAdd ? x->data : out.data}) {
    vectorized = vectorized && reinterpret_cast<uintptr_t>(pointer) % 16 == 0;  // null: aligned
  }
  dispatch_half(residual.dtype, [&](auto element) {
    using T = decltype(element);
    auto* residual_data = static_cast<T*>(residual.data);
    const auto* x_data = kAdd ? static_cast<const T*>(x->data) : nullptr;
    const auto* weight_data = static_cast<const T*>(weight.data);
    auto* out_data = static_cast<T*>(out.data);
    if (vectorized) {
      launch_kernel(rms_norm_kernel<T, 8, kAdd>, unsigned(rows), kThreads, 0, stream, residual_data,
                    x_data, weight_data, eps, out_data, hidden);
    } else {
      launch_kernel(rms_norm_kernel<T, 1, kAdd>, unsigned(rows), kThreads, 0, stream, residual_data,
                    x_data, weight_data, eps, out_data, hidden);
    }
  });
}

}  // namespace

void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps, DeviceTensor& out,
              cudaStream_t stream) {
  // The kernel only reads `residual` when it adds nothing.
  DeviceTensor input = x;
  launch<false>(input, nullptr, weight, eps, out, stream);
}

void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                  float eps, DeviceTensor& out, cudaStream_t stream) {
  launch<true>(residual, &x, weight, eps, out, stream);
}

}  // namespace kite::cuda
