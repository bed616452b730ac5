// Helpers for the CPU backend tests: tensors in backend memory filled from float values (rounded
// to their dtype), NaN poisoning of outputs, and comparison against double-precision references.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "kernels/cpu/cpu_backend.h"

namespace kite::test {

// A tensor in a backend's memory (host memory for the CPU backend, so tests read it directly).
struct BackendTensor {
  DeviceBuffer buffer;
  DeviceTensor tensor;

  template <typename T>
  T* as() {
    return static_cast<T*>(tensor.data);
  }
};

inline BackendTensor make_tensor(Backend& backend, DType dtype, Shape shape) {
  BackendTensor result;
  result.tensor.dtype = dtype;
  result.tensor.shape = std::move(shape);
  auto buffer = backend.allocate(result.tensor.byte_size());
  EXPECT_TRUE(buffer.is_ok()) << buffer.status().message();
  result.buffer = std::move(buffer).value();
  result.tensor.data = result.buffer.data();
  return result;
}

// The value `value` has once stored as `dtype` (float32, float16 or bfloat16).
inline float round_to(DType dtype, float value) {
  uint8_t stored[4];
  store_float(dtype, stored, 0, value);
  return load_float(dtype, stored, 0);
}

inline std::vector<float> round_all(DType dtype, std::vector<float> values) {
  for (float& value : values) value = round_to(dtype, value);
  return values;
}

inline std::vector<float> random_values(size_t count, uint32_t seed, float scale = 1.0f) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& value : values) value = normal(generator);
  return values;
}

// Stores float values into a float32 / float16 / bfloat16 tensor (rounding to nearest even).
inline void store_floats(DeviceTensor& tensor, const std::vector<float>& values) {
  ASSERT_EQ(int64_t(values.size()), tensor.numel());
  ASSERT_TRUE(tensor.dtype == DType::kF32 || tensor.dtype == DType::kF16 ||
              tensor.dtype == DType::kBF16 || tensor.dtype == DType::kF8E4M3)
      << "store_floats: not a float dtype";
  for (size_t i = 0; i < values.size(); ++i) {
    store_float(tensor.dtype, static_cast<uint8_t*>(tensor.data), i, values[i]);
  }
}

inline std::vector<float> load_floats(const DeviceTensor& tensor) {
  std::vector<float> values(size_t(tensor.numel()));
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = load_float(tensor.dtype, static_cast<const uint8_t*>(tensor.data), i);
  }
  return values;
}

inline BackendTensor tensor_from(Backend& backend, DType dtype, Shape shape,
                                 const std::vector<float>& values) {
  BackendTensor result = make_tensor(backend, dtype, std::move(shape));
  store_floats(result.tensor, values);
  return result;
}

inline BackendTensor int_tensor(Backend& backend, const std::vector<int32_t>& values) {
  BackendTensor result = make_tensor(backend, DType::kI32, {int64_t(values.size())});
  if (!values.empty()) {
    backend.upload(result.tensor.data, values.data(), values.size() * sizeof(int32_t));
  }
  return result;
}

// Fills a float tensor with NaN so that elements an op fails to write show up in comparisons.
inline void poison(DeviceTensor& tensor) {
  store_floats(tensor,
               std::vector<float>(size_t(tensor.numel()), std::numeric_limits<float>::quiet_NaN()));
}

// Expects |actual - expected| <= tolerance * (|expected| + rms(expected)) for every element: a
// relative error, floored at the tensor's scale so that values near zero (from cancellation) are
// judged against the size of their neighbours rather than against themselves.
inline void expect_close(const std::vector<float>& actual, const std::vector<double>& expected,
                         double tolerance, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double sum_of_squares = 0.0;
  for (double value : expected) sum_of_squares += value * value;
  const double rms = expected.empty() ? 0.0 : std::sqrt(sum_of_squares / double(expected.size()));
  int failures = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = std::fabs(double(actual[i]) - expected[i]);
    const double allowed = tolerance * (std::fabs(expected[i]) + rms);
    if (!(error <= allowed)) {  // also catches NaN
      if (++failures <= 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << actual[i] << ", expected "
                      << expected[i] << " (allowed error " << allowed << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << actual.size()
                         << " elements out of tolerance";
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Instruction sets to run each test with: the portable kernels always, AVX2 where the CPU has it.
inline std::vector<cpu::Isa> test_isas() {
  std::vector<cpu::Isa> isas = {cpu::Isa::kScalar};
  if (cpu::detect_isa() == cpu::Isa::kAvx2) isas.push_back(cpu::Isa::kAvx2);
  return isas;
}

inline std::string isa_test_name(const testing::TestParamInfo<cpu::Isa>& info) {
  return std::string(cpu::isa_name(info.param));
}

}  // namespace kite::test
