// Helpers for the CUDA kernel tests: skip without a GPU, device buffers filled from float values
// (rounded to their dtype), downloads back to float, and the comparison with a CPU twin's output.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "kernels/cuda/device.h"
#include "model/backend.h"

namespace kite::test {

// Skips the test when the machine has no usable GPU (cudaGetDeviceCount fails with 35 or 100).
#define KITE_REQUIRE_GPU()                                              \
  do {                                                                  \
    auto kite_devices_ = ::kite::cuda_devices();                        \
    ASSERT_TRUE(kite_devices_.is_ok()) << kite_devices_.status().message(); \
    if (kite_devices_->empty()) GTEST_SKIP() << "no GPU on this machine"; \
  } while (0)

// GPU memory owned by a test.
struct GpuTensor {
  DeviceTensor tensor;
  GpuTensor() = default;
  GpuTensor(DType dtype, Shape shape) {
    tensor.dtype = dtype;
    tensor.shape = std::move(shape);
    const size_t bytes = std::max<size_t>(tensor.byte_size(), 1);
    EXPECT_EQ(cudaMalloc(&tensor.data, bytes), cudaSuccess);
    // NaN poison (0xff bytes) so that an element a kernel forgets to write shows.
    EXPECT_EQ(cudaMemset(tensor.data, 0xff, bytes), cudaSuccess);
  }
  GpuTensor(GpuTensor&& other) noexcept : tensor(other.tensor) { other.tensor.data = nullptr; }
  GpuTensor& operator=(GpuTensor&& other) noexcept {
    std::swap(tensor, other.tensor);
    return *this;
  }
  GpuTensor(const GpuTensor&) = delete;
  ~GpuTensor() {
    if (tensor.data) cudaFree(tensor.data);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(tensor.data);
  }
};

// Host bytes of `values` stored as `dtype` (float32, float16, bfloat16 or int32).
inline std::vector<uint8_t> encode(DType dtype, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else if (dtype == DType::kI32) {
      const int32_t value = int32_t(values[i]);
      std::memcpy(bytes.data() + 4 * i, &value, 4);
    } else {
      const uint16_t bits =
          dtype == DType::kF16 ? float_to_fp16(values[i]) : float_to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &bits, 2);
    }
  }
  return bytes;
}

inline std::vector<float> decode(DType dtype, const uint8_t* bytes, size_t count) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&values[i], bytes + 4 * i, 4);
    } else if (dtype == DType::kI32) {
      int32_t value;
      std::memcpy(&value, bytes + 4 * i, 4);
      values[i] = float(value);
    } else {
      uint16_t bits;
      std::memcpy(&bits, bytes + 2 * i, 2);
      values[i] = dtype == DType::kF16 ? fp16_to_float(bits) : bf16_to_float(bits);
    }
  }
  return values;
}

inline GpuTensor to_gpu(DType dtype, Shape shape, const std::vector<float>& values) {
  GpuTensor result(dtype, std::move(shape));
  EXPECT_EQ(size_t(result.tensor.numel()), values.size());
  const std::vector<uint8_t> bytes = encode(dtype, values);
  EXPECT_EQ(cudaMemcpy(result.tensor.data, bytes.data(), bytes.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  return result;
}

inline GpuTensor int_to_gpu(const std::vector<int32_t>& values) {
  GpuTensor result(DType::kI32, {int64_t(values.size())});
  EXPECT_EQ(cudaMemcpy(result.tensor.data, values.data(), values.size() * 4,
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  return result;
}

inline std::vector<float> to_host(const DeviceTensor& tensor) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> bytes(tensor.byte_size());
  EXPECT_EQ(cudaMemcpy(bytes.data(), tensor.data, bytes.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return decode(tensor.dtype, bytes.data(), size_t(tensor.numel()));
}

// The value `value` has once stored as `dtype`.
inline float round_to(DType dtype, float value) {
  if (dtype == DType::kF16) return fp16_to_float(float_to_fp16(value));
  if (dtype == DType::kBF16) return bf16_to_float(float_to_bf16(value));
  return value;
}

inline std::vector<float> random_values(size_t count, uint32_t seed, float scale = 1.0f,
                                        DType round = DType::kF32) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& value : values) value = round_to(round, normal(generator));
  return values;
}

// Relative tolerance of one rounding to `dtype` (bf16: 2^-8, fp16: 2^-11, f32: 2^-24).
inline float unit_roundoff(DType dtype) {
  if (dtype == DType::kBF16) return 1.0f / 256.0f;
  if (dtype == DType::kF16) return 1.0f / 2048.0f;
  return 1.0f / 16777216.0f;
}

// Expects |actual[i] - expected[i]| <= bound(i) everywhere, and no NaN; names the first elements
// that are off and the largest error.
template <typename Bound>
void expect_within(const std::vector<float>& actual, const std::vector<float>& expected,
                   const Bound& bound, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t failures = 0;
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = std::fabs(double(actual[i]) - double(expected[i]));
    const double limit = bound(i);
    if (!(error <= limit)) {
      if (failures++ < 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << actual[i] << ", expected "
                      << expected[i] << " (bound " << limit << ")";
      }
    }
    if (std::isfinite(error)) worst = std::max(worst, error);
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                          << " elements off; largest error " << worst;
}

// Expects |actual - expected| <= atol + rtol * |expected| everywhere, and no NaN.
inline void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                         float atol, float rtol, const std::string& what) {
  expect_within(
      actual, expected,
      [&](size_t i) { return double(atol) + double(rtol) * std::fabs(double(expected[i])); },
      what);
}

}  // namespace kite::test
