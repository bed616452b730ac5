// Tests of the CPU linear op against a plain double-precision matrix product, over token counts
// (decode and prefill paths), K (with and without a tail past the 8-lane loop), N, weight dtypes
// and biases; plus batch invariance and thread-count determinism.
#include <gtest/gtest.h>
#include <omp.h>

#include "cpu_test_util.h"
#include "formats/quantization.h"
#include "kernels/cpu/linear.h"

namespace kite {
namespace {

using test::BackendTensor;

struct LinearInputs {
  std::vector<float> x, weight, bias;  // weight and bias already rounded to their dtype
};

std::vector<double> reference_linear(const LinearInputs& inputs, int64_t tokens, int64_t k_size,
                                     int64_t n_size) {
  std::vector<double> out(size_t(tokens * n_size));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t n = 0; n < n_size; ++n) {
      double sum = inputs.bias.empty() ? 0.0 : double(inputs.bias[size_t(n)]);
      for (int64_t k = 0; k < k_size; ++k) {
        sum += double(inputs.x[size_t(t * k_size + k)]) *
               double(inputs.weight[size_t(n * k_size + k)]);
      }
      out[size_t(t * n_size + n)] = sum;
    }
  }
  return out;
}

class CpuLinear : public testing::TestWithParam<cpu::Isa> {
 protected:
  // Runs linear on random inputs and returns the output (compared with the reference inside).
  std::vector<float> run_case(int64_t tokens, int64_t k_size, int64_t n_size, DType weight_dtype,
                              bool with_bias, DType bias_dtype, uint32_t seed) {
    CpuBackend backend(GetParam());
    LinearInputs inputs;
    inputs.x = test::random_values(size_t(tokens * k_size), seed);
    inputs.weight =
        test::round_all(weight_dtype, test::random_values(size_t(n_size * k_size), seed + 1));
    if (with_bias) {
      inputs.bias = test::round_all(bias_dtype, test::random_values(size_t(n_size), seed + 2));
    }
    BackendTensor x = test::tensor_from(backend, DType::kF32, {tokens, k_size}, inputs.x);
    BackendTensor weight =
        test::tensor_from(backend, weight_dtype, {n_size, k_size}, inputs.weight);
    BackendTensor bias =
        test::tensor_from(backend, bias_dtype, {n_size},
                          with_bias ? inputs.bias : std::vector<float>(size_t(n_size)));
    BackendTensor out = test::make_tensor(backend, DType::kF32, {tokens, n_size});
    test::poison(out.tensor);
    backend.linear(x.tensor, weight.tensor, with_bias ? &bias.tensor : nullptr, out.tensor);
    const std::vector<float> actual = test::load_floats(out.tensor);
    test::expect_close(actual, reference_linear(inputs, tokens, k_size, n_size), 1e-5,
                       "linear T=" + std::to_string(tokens) + " K=" + std::to_string(k_size) +
                           " N=" + std::to_string(n_size) + " " +
                           std::string(dtype_name(weight_dtype)) + (with_bias ? " +bias" : ""));
    return actual;
  }
};

TEST_P(CpuLinear, MatchesReferenceOverShapesAndDTypes) {
  uint32_t seed = 100;
  for (DType weight_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t tokens : {1, 2, 3, 4, 5, 17, 67, 130}) {
      for (int64_t k_size : {3, 64, 100, 576}) {
        for (int64_t n_size : {1, 5, 97, 200}) {
          run_case(tokens, k_size, n_size, weight_dtype, false, DType::kF32, seed++);
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST_P(CpuLinear, AddsBiasOfAnyFloatDType) {
  uint32_t seed = 500;
  for (DType bias_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t tokens : {1, 9}) {
      run_case(tokens, 64, 37, DType::kBF16, true, bias_dtype, seed++);
    }
  }
}

TEST_P(CpuLinear, SmolLmShapes) {
  run_case(1, 576, 1536, DType::kBF16, false, DType::kF32, 7);
  run_case(1, 1536, 576, DType::kF16, false, DType::kF32, 8);
  run_case(33, 576, 192, DType::kF32, true, DType::kF32, 9);
}

TEST_P(CpuLinear, TokenGetsTheSameOutputAloneOrInABatch) {
  for (DType weight_dtype : {DType::kF32, DType::kBF16}) {
    const int64_t tokens = 70, k_size = 200, n_size = 131;
    const std::vector<float> batch =
        run_case(tokens, k_size, n_size, weight_dtype, false, DType::kF32, 42);
    CpuBackend backend(GetParam());
    const auto x_values = test::random_values(size_t(tokens * k_size), 42);
    const auto weight_values = test::random_values(size_t(n_size * k_size), 43);
    BackendTensor weight =
        test::tensor_from(backend, weight_dtype, {n_size, k_size}, weight_values);
    for (int64_t t : {0, 1, 37, 69}) {
      BackendTensor x = test::tensor_from(
          backend, DType::kF32, {1, k_size},
          std::vector<float>(x_values.begin() + t * k_size, x_values.begin() + (t + 1) * k_size));
      BackendTensor out = test::make_tensor(backend, DType::kF32, {1, n_size});
      backend.linear(x.tensor, weight.tensor, nullptr, out.tensor);
      const std::vector<float> alone = test::load_floats(out.tensor);
      EXPECT_TRUE(test::bitwise_equal(
          alone, std::vector<float>(batch.begin() + t * n_size, batch.begin() + (t + 1) * n_size)))
          << "token " << t << " with " << dtype_name(weight_dtype) << " weights";
    }
  }
}

TEST_P(CpuLinear, SameBitsForAnyThreadCount) {
  const int saved_threads = omp_get_max_threads();
  for (int64_t tokens : {1, 130}) {
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      results.push_back(run_case(tokens, 576, 300, DType::kBF16, true, DType::kF32, 77));
    }
    EXPECT_TRUE(test::bitwise_equal(results[0], results[1])) << "T=" << tokens;
    EXPECT_TRUE(test::bitwise_equal(results[0], results[2])) << "T=" << tokens;
  }
  omp_set_num_threads(saved_threads);
}

// Weight-only quantized weights: the output is linear() of the dequantized float32 weight, bit
// for bit (the dequantization is exact and the dot products run in the same order), over token
// counts of both paths, group sizes, int8 and int4, scale dtypes and biases.
TEST_P(CpuLinear, QuantizedWeightsGiveTheDequantizedWeightsOutputBitForBit) {
  CpuBackend backend(GetParam());
  uint32_t seed = 900;
  for (WeightOnlyPrecision precision : {WeightOnlyPrecision::kInt8, WeightOnlyPrecision::kInt4}) {
    for (int64_t group_size : {0, 32, 64}) {
      for (DType scale_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
        for (int64_t tokens : {1, 2, 3, 4, 70}) {
          const int64_t k_size = 192, n_size = tokens % 2 ? 37 : 100;
          const WeightOnlyConfig config{precision, group_size};
          Tensor dense(DType::kF32, {n_size, k_size});
          const std::vector<float> values = test::random_values(size_t(n_size * k_size), seed++);
          std::memcpy(dense.data(), values.data(), dense.byte_size());
          const QuantizedWeight quantized =
              quantize_weight_only(dense.view(), scale_dtype, config).value();
          const Tensor dequantized =
              dequantize_weight_only(quantized.values.view(), quantized.scales.view(), config);

          LinearWeight weight;
          weight.quantization = config;
          weight.weight = DeviceTensor{quantized.values.dtype(), quantized.values.shape(),
                                       const_cast<uint8_t*>(quantized.values.data())};
          weight.scales = DeviceTensor{quantized.scales.dtype(), quantized.scales.shape(),
                                       const_cast<uint8_t*>(quantized.scales.data())};
          const DeviceTensor reference_weight{
              DType::kF32, {n_size, k_size}, const_cast<uint8_t*>(dequantized.data())};
          BackendTensor x = test::tensor_from(backend, DType::kF32, {tokens, k_size},
                                              test::random_values(size_t(tokens * k_size), seed++));
          BackendTensor bias = test::tensor_from(backend, DType::kBF16, {n_size},
                                                 test::random_values(size_t(n_size), seed++));
          const bool with_bias = tokens == 3;
          BackendTensor out = test::make_tensor(backend, DType::kF32, {tokens, n_size});
          BackendTensor expected = test::make_tensor(backend, DType::kF32, {tokens, n_size});
          test::poison(out.tensor);
          backend.linear_weight_only(x.tensor, weight, with_bias ? &bias.tensor : nullptr,
                                     out.tensor);
          backend.linear(x.tensor, reference_weight, with_bias ? &bias.tensor : nullptr,
                         expected.tensor);
          EXPECT_TRUE(test::bitwise_equal(test::load_floats(out.tensor),
                                          test::load_floats(expected.tensor)))
              << describe_weight_only(config) << " scales " << dtype_name(scale_dtype)
              << " T=" << tokens;
          if (HasFailure()) return;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, CpuLinear, testing::ValuesIn(test::test_isas()),
                         test::isa_test_name);

}  // namespace
}  // namespace kite
