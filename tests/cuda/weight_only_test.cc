// The CUDA backend's weight-only quantized linear layer (kernels/cuda/weight_only.h) against its
// CPU twin cpu::linear_weight_only: int8 and int4, per channel and per group, both 16-bit dtypes,
// with and without bias, over token counts on both sides of the GEMV's limit (the GEMV streaming
// the quantized weight, each of its configurations, and the dequantized copy that cuBLASLt
// multiplies) and shapes with odd row counts, K below and past one warp's stride and groups from 16
// columns to all; then a run captured into a CUDA graph.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "formats/quantization.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/linear.h"
#include "kernels/cuda/weight_only.h"

namespace kite {
namespace {

using test::GpuTensor;

struct WeightOnlyCase {
  WeightOnlyPrecision precision;
  int64_t group;  // 0: per channel
  int64_t m, n, k;
  bool bias;
  DType dtype;
};

std::string describe_case(const WeightOnlyCase& c) {
  return std::string(c.precision == WeightOnlyPrecision::kInt4 ? "int4" : "int8") +
         (c.group ? " group " + std::to_string(c.group) : std::string(" per channel")) + " " +
         std::string(dtype_name(c.dtype)) + " M=" + std::to_string(c.m) +
         " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k) + (c.bias ? " +bias" : "");
}

// One problem: random x (exact in the dtype), a random weight quantized as `kite convert
// --use_weight_only` does (scales in the dtype), on the GPU and the host, and the CPU twin's
// float32 output.
struct WeightOnlyProblem {
  WeightOnlyCase c;
  WeightOnlyConfig config;
  QuantizedWeight quantized;
  GpuTensor x, values, scales, bias;
  std::vector<float> bias_values, expected;

  WeightOnlyProblem(const WeightOnlyCase& problem_case, uint32_t seed) : c(problem_case) {
    config.precision = c.precision;
    config.group_size = c.group;
    const std::vector<float> x_values = test::random_values(size_t(c.m * c.k), seed, 1.0f, c.dtype);
    const std::vector<float> weight_values =
        test::random_values(size_t(c.n * c.k), seed + 1, 1.0f / std::sqrt(float(c.k)));
    if (c.bias) bias_values = test::random_values(size_t(c.n), seed + 2, 1.0f, c.dtype);
    const TensorView weight_view{
        DType::kF32, {c.n, c.k}, reinterpret_cast<const uint8_t*>(weight_values.data())};
    quantized = quantize_weight_only(weight_view, c.dtype, config).value();

    x = test::to_gpu(c.dtype, {c.m, c.k}, x_values);
    values = GpuTensor(quantized.values.dtype(), quantized.values.shape());
    EXPECT_EQ(cudaMemcpy(values.tensor.data, quantized.values.data(), quantized.values.byte_size(),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    scales = GpuTensor(quantized.scales.dtype(), quantized.scales.shape());
    EXPECT_EQ(cudaMemcpy(scales.tensor.data, quantized.scales.data(), quantized.scales.byte_size(),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    if (c.bias) bias = test::to_gpu(c.dtype, {c.n}, bias_values);

    LinearWeight host_weight;
    host_weight.weight =
        DeviceTensor{quantized.values.dtype(), quantized.values.shape(), quantized.values.data()};
    host_weight.scales =
        DeviceTensor{quantized.scales.dtype(), quantized.scales.shape(), quantized.scales.data()};
    host_weight.quantization = config;
    std::vector<uint8_t> bias_bytes = test::encode(c.dtype, bias_values);
    const DeviceTensor bias_host{c.dtype, {c.n}, bias_bytes.data()};
    std::vector<float> x_copy = x_values;
    const DeviceTensor x_host{DType::kF32, {c.m, c.k}, x_copy.data()};
    expected.assign(size_t(c.m * c.n), 0.0f);
    DeviceTensor expected_host{DType::kF32, {c.m, c.n}, expected.data()};
    cpu::linear_weight_only(x_host, host_weight, c.bias ? &bias_host : nullptr, expected_host,
                            cpu::detect_isa());
  }

  LinearWeight gpu_weight() const {
    LinearWeight weight;
    weight.weight = values.tensor;
    weight.scales = scales.tensor;
    weight.quantization = config;
    return weight;
  }

  // The bound per element: the output's rounding to the dtype (u |expected|), the float32 sums'
  // order (2^-10 of the output scale, about 1). The dequantized copy, and the GEMV with group
  // scales, round each weight to the dtype before multiplying it (relative u/2 a weight; a sum of
  // K such errors measured up to 2.7 u of the output scale on an H100, bfloat16, int8, M=33,
  // K=512, so 4 u), and cuBLASLt's bias epilogue may round the product before adding the bias (u
  // |product|). A wrong row, a missed chunk of K, a wrong scale or nibble is off by a sizeable
  // fraction of 1.
  // `variant`: the GEMV's (-1: the default), which rounds the weights where it multiplies the
  // group scales into the levels (groups of 16 or 32 columns; variants 2 and 3 for any group).
  void expect_matches(const DeviceTensor& out, bool streamed, const std::string& form,
                      int variant = -1) const {
    const double u = test::unit_roundoff(c.dtype);
    const std::vector<float> actual = test::to_host(out);
    const bool grouped = c.group > 0 && c.group < c.k;
    const bool rounded = !streamed || (grouped && (c.group % 64 != 0 || variant / 2 == 1));
    test::expect_within(
        actual, expected,
        [&](size_t i) {
          double bound = 1.0 / 1024 + u * std::fabs(double(expected[i]));
          if (rounded) bound += 4 * u;
          if (!streamed) {
            const double product = expected[i] - (c.bias ? bias_values[i % size_t(c.n)] : 0.0f);
            bound += u * std::fabs(product);
          }
          return bound;
        },
        describe_case(c) + " (" + form + ")");
  }
};

std::unique_ptr<Backend> weight_only_backend(DType dtype) {
  BackendOptions options;
  options.activation_dtype = dtype;
  auto backend = make_backend(BackendKind::kCuda, options);
  EXPECT_TRUE(backend.is_ok()) << backend.status().message();
  return backend.is_ok() ? std::move(backend).value() : nullptr;
}

TEST(CudaWeightOnly, MatchesCpuTwin) {
  KITE_REQUIRE_GPU();
  struct Shape {
    int64_t n, k;
  };
  // K = 64 leaves most lanes of a warp without a chunk; 1024 + 32 and 4096 take several strides,
  // the first with a tail; N = 1, 7, 13 and 129 end inside a warp's rows.
  const std::vector<Shape> shapes = {{1, 64}, {7, 128}, {13, 1056}, {129, 512}, {64, 4096}};
  const std::vector<int64_t> token_counts = {1, 2, 3, 4, 5, 8, 9, 33};
  uint32_t seed = 1;
  int streamed = 0, copied = 0;
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    std::unique_ptr<Backend> backend = weight_only_backend(dtype);
    ASSERT_TRUE(backend);
    for (const WeightOnlyPrecision precision :
         {WeightOnlyPrecision::kInt8, WeightOnlyPrecision::kInt4}) {
      for (const int64_t group :
           {int64_t(0), int64_t(32), int64_t(64), int64_t(16), int64_t(128)}) {
        for (const Shape& shape : shapes) {
          if (group > 0 && shape.k % group != 0) continue;
          for (const int64_t m : token_counts) {
            const bool with_bias = (seed % 3) == 0;
            const WeightOnlyCase c{precision, group, m, shape.n, shape.k, with_bias, dtype};
            const WeightOnlyProblem problem(c, seed++);
            const LinearWeight weight = problem.gpu_weight();
            const bool gemv = cuda::weight_only_gemv_applies(problem.x.tensor, weight);
            // The GEMV takes up to 8 tokens (K and the groups are multiples of 16 here).
            EXPECT_EQ(gemv, m <= kWeightOnlyGemvMaxTokens) << describe_case(c);
            (gemv ? streamed : copied)++;
            const DeviceTensor* bias = with_bias ? &problem.bias.tensor : nullptr;
            GpuTensor out(dtype, {m, shape.n});
            backend->linear_weight_only(problem.x.tensor, weight, bias, out.tensor);
            ASSERT_EQ(cudaGetLastError(), cudaSuccess);
            problem.expect_matches(out.tensor, gemv, gemv ? "GEMV" : "dequantized copy");
            for (int variant = 0; gemv && variant < cuda::weight_only_gemv_variants(); ++variant) {
              GpuTensor variant_out(dtype, {m, shape.n});
              cuda::weight_only_gemv(problem.x.tensor, weight, bias, variant_out.tensor, nullptr,
                                     variant);
              ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
              problem.expect_matches(variant_out.tensor, true,
                                     "GEMV variant " + std::to_string(variant), variant);
            }
          }
        }
      }
    }
  }
  EXPECT_GT(streamed, 100);
  EXPECT_GT(copied, 50);
}

// The decode step's form: the GEMV captured into a graph, replayed on new inputs.
TEST(CudaWeightOnly, RunsInsideGraphCapture) {
  KITE_REQUIRE_GPU();
  std::unique_ptr<Backend> backend = weight_only_backend(DType::kBF16);
  ASSERT_TRUE(backend);
  const WeightOnlyCase c{WeightOnlyPrecision::kInt4, 128, 1, 256, 1024, true, DType::kBF16};
  const WeightOnlyProblem first(c, 7);
  WeightOnlyProblem second(c, 9);
  const LinearWeight weight = first.gpu_weight();
  GpuTensor x(DType::kBF16, {1, c.k});
  GpuTensor out(DType::kBF16, {1, c.n});
  ASSERT_EQ(cudaMemcpy(x.tensor.data, first.x.tensor.data, first.x.tensor.byte_size(),
                       cudaMemcpyDeviceToDevice),
            cudaSuccess);
  ASSERT_TRUE(backend->begin_graph_capture());
  backend->linear_weight_only(x.tensor, weight, &first.bias.tensor, out.tensor);
  const int64_t graph = backend->end_graph_capture().value();
  backend->replay_graph(graph);
  first.expect_matches(out.tensor, true, "GEMV in a graph");
  // Same weight and bias, new activations: the second problem's x against the first's weight.
  ASSERT_EQ(cudaMemcpy(x.tensor.data, second.x.tensor.data, second.x.tensor.byte_size(),
                       cudaMemcpyDeviceToDevice),
            cudaSuccess);
  backend->replay_graph(graph);
  GpuTensor direct(DType::kBF16, {1, c.n});
  backend->linear_weight_only(x.tensor, weight, &first.bias.tensor, direct.tensor);
  EXPECT_EQ(test::to_host(out.tensor), test::to_host(direct.tensor));
  backend->destroy_graph(graph);
}

}  // namespace
}  // namespace kite
