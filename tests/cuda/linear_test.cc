// The CUDA linear op (GemmRunner) against its CPU twin cpu::linear: every algorithm over a sweep of
// shapes, both 16-bit dtypes, with and without bias; adding into the residual; the fused SwiGLU
// and normalised-input GEMVs; misaligned views; the candidates of the tuning step; the default
// tactic; a run captured into a CUDA graph.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/linear.h"

namespace kite {
namespace {

using cuda::GemmAlgorithm;
using cuda::GemmRunner;
using cuda::GemmTactic;
using test::GpuTensor;

struct LinearShape {
  int64_t m = 0, n = 0, k = 0;
};

std::string describe(const LinearShape& shape, DType dtype, bool has_bias,
                     const GemmTactic& tactic) {
  return std::string(dtype_name(dtype)) + " M=" + std::to_string(shape.m) +
         " N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) +
         (has_bias ? " +bias " : " ") + cuda::gemm_tactic_name(tactic);
}

// Random inputs of one problem (values exact in the dtype) and the CPU twin's float32 output.
// Weights have standard deviation 1/sqrt(K), so outputs have standard deviation about 1 (plus
// the bias, also of standard deviation 1).
struct LinearProblem {
  LinearShape shape;
  DType dtype = DType::kBF16;
  bool has_bias = false;
  float x_scale = 1.0f;       // standard deviation of x
  float weight_scale = 1.0f;  // standard deviation of the weights: 1/sqrt(K)
  GpuTensor x, weight, bias;
  std::vector<float> bias_values;      // [N] when has_bias
  std::vector<float> expected;         // [M, N]
  std::vector<float> residual_values;  // [M, N] when the product is added to a residual

  LinearProblem(const LinearShape& problem_shape, DType problem_dtype, bool with_bias,
                uint32_t seed)
      : shape(problem_shape), dtype(problem_dtype), has_bias(with_bias) {
    const auto [m, n, k] = shape;
    weight_scale = 1.0f / std::sqrt(float(k));
    std::vector<float> x_values = test::random_values(size_t(m * k), seed, x_scale, dtype);
    std::vector<float> weight_values =
        test::random_values(size_t(n * k), seed + 1, weight_scale, dtype);
    if (with_bias) bias_values = test::random_values(size_t(n), seed + 2, 1.0f, dtype);
    x = test::to_gpu(dtype, {m, k}, x_values);
    weight = test::to_gpu(dtype, {n, k}, weight_values);
    if (with_bias) bias = test::to_gpu(dtype, {n}, bias_values);

    std::vector<uint8_t> weight_bytes = test::encode(dtype, weight_values);
    std::vector<uint8_t> bias_bytes = test::encode(dtype, bias_values);
    const DeviceTensor x_host{DType::kF32, {m, k}, x_values.data()};
    const DeviceTensor weight_host{dtype, {n, k}, weight_bytes.data()};
    const DeviceTensor bias_host{dtype, {n}, bias_bytes.data()};
    expected.assign(size_t(m * n), 0.0f);
    DeviceTensor expected_host{DType::kF32, {m, n}, expected.data()};
    cpu::linear(x_host, weight_host, with_bias ? &bias_host : nullptr, expected_host,
                cpu::detect_isa());
  }

  const DeviceTensor* bias_tensor() const { return has_bias ? &bias.tensor : nullptr; }

  // The bound per element: atol + u * |expected| for the rounding of the output to the dtype
  // (unit roundoff u), atol for accumulation order: the float32 sums of GPU and CPU differ far
  // under 2^-10 of the output scale sqrt(K) * std(x) * std(weight) = 1. Our kernel rounds once;
  // cuBLASLt's bias epilogue may round the product to the dtype before adding the bias (seen on an
  // H100: bfloat16, M=2, N=7, K=576, two units in the last place off), so for it the bound adds
  // u * |expected - bias|; adding to a residual (beta = 1) it rounds the product before the
  // residual too (an H100, bfloat16, M=1, N=96, K=64: one unit of the product off), so the bound
  // adds u * |expected - residual| as well. A wrong row, a missed chunk of K or a missing bias is
  // off by a sizeable fraction of 1.
  void expect_matches(const DeviceTensor& out, bool rounded_once, const std::string& what) const {
    const float output_scale = std::sqrt(float(shape.k)) * x_scale * weight_scale;
    const double atol = output_scale / 1024.0;
    const double u = test::unit_roundoff(dtype);
    const std::vector<float> actual = test::to_host(out);
    ASSERT_EQ(actual.size(), expected.size()) << what;
    size_t failures = 0;
    for (size_t i = 0; i < actual.size(); ++i) {
      const double residual = residual_values.empty() ? 0.0 : residual_values[i];
      const double with_bias = expected[i] - residual;
      const double product = with_bias - (has_bias ? bias_values[i % size_t(shape.n)] : 0.0f);
      double bound = atol + u * std::fabs(double(expected[i]));
      if (!rounded_once) bound += u * (std::fabs(product) + std::fabs(with_bias));
      const double error = std::fabs(double(actual[i]) - double(expected[i]));
      if (!(error <= bound) && failures++ < 5) {
        ADD_FAILURE() << what << ": element " << i << " (token " << i / size_t(shape.n) << ", row "
                      << i % size_t(shape.n) << ") is " << actual[i] << ", expected " << expected[i]
                      << " (bound " << bound << ")";
      }
    }
    EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << actual.size()
                            << " elements off";
  }
};

// Whether `tactic` runs our GEMV kernel on this problem (otherwise linear() runs cuBLASLt).
bool gemv_runs(const LinearProblem& problem, const GemmTactic& tactic) {
  return tactic.algorithm == GemmAlgorithm::kGemv &&
         cuda::gemv_applies(cuda::GemvKind::kPlain, problem.x.tensor, problem.weight.tensor);
}

// Runs `tactic` into a freshly poisoned (NaN) output and compares it with the CPU twin.
void check_tactic(GemmRunner& runner, const LinearProblem& problem, const GemmTactic& tactic) {
  GpuTensor out(problem.dtype, {problem.shape.m, problem.shape.n});
  runner.linear(problem.x.tensor, problem.weight.tensor, problem.bias_tensor(), out.tensor, tactic,
                nullptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  problem.expect_matches(out.tensor, gemv_runs(problem, tactic),
                         describe(problem.shape, problem.dtype, problem.has_bias, tactic));
}

std::vector<GemmTactic> every_tactic() {
  std::vector<GemmTactic> tactics = {{GemmAlgorithm::kCublasLt, 0}};
  for (int32_t variant = 0; variant < cuda::kGemvVariantCount; ++variant) {
    tactics.push_back({GemmAlgorithm::kGemv, variant});
  }
  return tactics;
}

std::unique_ptr<GemmRunner> make_runner() {
  auto runner = GemmRunner::create();
  EXPECT_TRUE(runner.is_ok()) << runner.status().message();
  return runner.is_ok() ? std::move(runner).value() : nullptr;
}

TEST(CudaLinear, TacticNames) {
  EXPECT_EQ(cuda::gemm_tactic_name({GemmAlgorithm::kCublasLt, 3}), "cublaslt:3");
  EXPECT_EQ(cuda::gemm_tactic_name({GemmAlgorithm::kGemv, 1}), "gemv:1");
}

// Every tactic on every shape of the sweep. GEMV tactics on shapes it does not take (M > 16,
// K % 8 != 0) run cuBLASLt instead, which must be just as correct.
class CudaLinearSweep : public testing::TestWithParam<std::tuple<DType, bool>> {};

TEST_P(CudaLinearSweep, EveryTacticMatchesCpu) {
  KITE_REQUIRE_GPU();
  const auto [dtype, has_bias] = GetParam();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  uint32_t seed = 100;
  for (const int64_t m : {1, 2, 3, 5, 8, 16, 33, 128}) {
    for (const int64_t n : {1, 7, 64, 96, 1000}) {
      for (const int64_t k : {8, 64, 576, 1000, 4096}) {
        const LinearProblem problem({m, n, k}, dtype, has_bias, seed += 3);
        for (const GemmTactic& tactic : every_tactic()) {
          check_tactic(*runner, problem, tactic);
          if (HasFailure()) return;  // one broken shape is enough to read
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypesAndBias, CudaLinearSweep,
                         testing::Combine(testing::Values(DType::kBF16, DType::kF16),
                                          testing::Bool()),
                         [](const testing::TestParamInfo<CudaLinearSweep::ParamType>& param_info) {
                           return std::string(dtype_name(std::get<0>(param_info.param))) +
                                  (std::get<1>(param_info.param) ? "_bias" : "_no_bias");
                         });

// Views that start one element into their buffers (2-byte aligned, as a slice of a fused tensor
// can be): GEMV must step aside and cuBLASLt must pick an algorithm for that alignment.
TEST(CudaLinear, MisalignedViews) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    const LinearShape shape{3, 96, 64};
    const LinearProblem problem(shape, dtype, /*has_bias=*/true, 7);
    const size_t element = dtype_size(dtype);
    // Copies of x, weight and bias one element past the start of larger buffers.
    auto shifted_copy = [&](const DeviceTensor& source) {
      Shape bigger = {source.numel() + 1};
      auto buffer = std::make_unique<GpuTensor>(dtype, bigger);
      EXPECT_EQ(cudaMemcpy(static_cast<char*>(buffer->tensor.data) + element, source.data,
                           source.byte_size(), cudaMemcpyDeviceToDevice),
                cudaSuccess);
      return buffer;
    };
    auto x_buffer = shifted_copy(problem.x.tensor);
    auto weight_buffer = shifted_copy(problem.weight.tensor);
    auto bias_buffer = shifted_copy(problem.bias.tensor);
    const DeviceTensor x{
        dtype, {shape.m, shape.k}, static_cast<char*>(x_buffer->tensor.data) + element};
    const DeviceTensor weight{
        dtype, {shape.n, shape.k}, static_cast<char*>(weight_buffer->tensor.data) + element};
    const DeviceTensor bias{
        dtype, {shape.n}, static_cast<char*>(bias_buffer->tensor.data) + element};
    EXPECT_FALSE(cuda::gemv_applies(cuda::GemvKind::kPlain, x, weight));
    for (const GemmTactic& tactic : every_tactic()) {
      GpuTensor out_buffer(dtype, {shape.m * shape.n + 1});
      DeviceTensor out{
          dtype, {shape.m, shape.n}, static_cast<char*>(out_buffer.tensor.data) + element};
      runner->linear(x, weight, &bias, out, tactic, nullptr);
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      problem.expect_matches(out, /*rounded_once=*/false,
                             "misaligned " + describe(shape, dtype, true, tactic));
    }
  }
}

// The tuning step: candidates sorted fastest first, GEMV among them exactly when it applies, and
// every returned tactic correct; the same when the candidates normalise their input (GEMV in its
// normalising form, cuBLASLt after an RMSNorm kernel).
TEST(CudaLinear, TimeCandidatesSortedAndCorrect) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  const std::vector<std::tuple<LinearShape, DType, bool>> cases = {
      {{1, 960, 576}, DType::kBF16, false},   {{5, 1000, 4096}, DType::kF16, true},
      {{16, 64, 64}, DType::kBF16, true},     {{33, 96, 1000}, DType::kBF16, true},
      {{128, 576, 1536}, DType::kF16, false},
  };
  for (const auto& [shape, dtype, has_bias] : cases) {
    for (const bool normed : {false, true}) {
      const std::vector<cuda::GemmTiming> timings = runner->time_candidates(
          shape.m, shape.n, shape.k, dtype, has_bias, /*gated=*/false, normed, nullptr);
      const std::string what = describe(shape, dtype, has_bias, {}) + (normed ? " normed" : "");
      ASSERT_FALSE(timings.empty()) << what;
      int gemv_candidates = 0, cublas_candidates = 0;
      for (size_t i = 0; i < timings.size(); ++i) {
        EXPECT_TRUE(std::isfinite(timings[i].microseconds) && timings[i].microseconds > 0) << what;
        if (i > 0) {
          EXPECT_LE(timings[i - 1].microseconds, timings[i].microseconds) << what;
        }
        (timings[i].tactic.algorithm == GemmAlgorithm::kGemv ? gemv_candidates
                                                             : cublas_candidates)++;
      }
      const bool gemv_applies = shape.m <= cuda::kGemvMaxTokens && shape.k % 8 == 0;
      EXPECT_EQ(gemv_candidates, gemv_applies ? cuda::kGemvVariantCount : 0) << what;
      EXPECT_GE(cublas_candidates, 1) << what;

      const LinearProblem problem(shape, dtype, has_bias, 11);
      for (const cuda::GemmTiming& timing : timings) check_tactic(*runner, problem, timing.tactic);
    }
  }
}

// The build's tuning step: a choice per shape, the fastest of its candidates, and with a
// timings list every candidate's time (kite build --tuning_log), fastest first, the first chosen.
TEST(CudaLinear, TuneGemmsRecordsEveryCandidate) {
  KITE_REQUIRE_GPU();
  const std::vector<GemmShape> shapes = {{1, 960, 576, false, false},
                                         {1, 576, 1536, false, true},
                                         {64, 1000, 4096, true, false},
                                         {1, 1024, 576, true, false, /*normed=*/true},
                                         {64, 1024, 576, false, false, /*normed=*/true}};
  std::vector<GemmCandidateTime> timings;
  const auto choices = tune_gemms(shapes, DType::kBF16, 0, nullptr, &timings);
  ASSERT_TRUE(choices.is_ok()) << choices.status().message();
  ASSERT_EQ(choices->size(), shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    const GemmShape& shape = shapes[i];
    std::vector<const GemmCandidateTime*> rows;
    for (const GemmCandidateTime& timing : timings) {
      if (timing.shape.max_tokens == shape.max_tokens && timing.shape.n == shape.n &&
          timing.shape.k == shape.k && timing.shape.gated == shape.gated &&
          timing.shape.normed == shape.normed) {
        rows.push_back(&timing);
      }
    }
    ASSERT_FALSE(rows.empty()) << i;
    const GemmChoice& choice = (*choices)[i];
    EXPECT_EQ(rows.front()->kernel,
              cuda::gemm_tactic_name({GemmAlgorithm(choice.algorithm), choice.variant}))
        << i;
    EXPECT_FLOAT_EQ(rows.front()->microseconds, choice.microseconds) << i;
    size_t gemv_rows = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      EXPECT_EQ(rows[r]->chosen, r == 0) << i;
      // The row's algorithm and variant (what kite build --tune_decode tries) are its kernel.
      EXPECT_EQ(rows[r]->kernel,
                cuda::gemm_tactic_name({GemmAlgorithm(rows[r]->algorithm), rows[r]->variant}))
          << i;
      if (r > 0) {
        EXPECT_LE(rows[r - 1]->microseconds, rows[r]->microseconds) << i;
      }
      gemv_rows += rows[r]->kernel.starts_with("gemv:");
    }
    // Every small-M configuration at one row (the fused one: those that fit two CTAs an SM);
    // none at 64 rows, where cuBLASLt alone runs.
    if (shape.max_tokens == 1 && !shape.gated) {
      EXPECT_EQ(gemv_rows, size_t(cuda::kGemvVariantCount)) << i;
    }
    if (shape.gated) {
      EXPECT_EQ(gemv_rows, rows.size()) << i;
    }
    if (shape.max_tokens == 64) {
      EXPECT_EQ(gemv_rows, 0u) << i;
    }
  }
}

TEST(CudaLinear, DefaultTacticIsCorrect) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  for (const LinearShape& shape : std::vector<LinearShape>{
           {1, 4096, 4096}, {8, 960, 576}, {16, 3072, 576}, {17, 576, 1536}, {2, 100, 1000}}) {
    const GemmTactic tactic = runner->default_tactic(shape.m, shape.n, shape.k);
    const bool small = shape.m <= cuda::kGemvMaxTokens && shape.k % 8 == 0;
    EXPECT_EQ(tactic.algorithm, small ? GemmAlgorithm::kGemv : GemmAlgorithm::kCublasLt)
        << describe(shape, DType::kBF16, false, tactic);
    const LinearProblem problem(shape, DType::kBF16, /*has_bias=*/true, 23);
    check_tactic(*runner, problem, tactic);
  }
}

// linear() allocates nothing, so a decode step can be captured into a CUDA graph; the shapes are
// new to the runner, so the cuBLASLt plans are made during the capture.
TEST(CudaLinear, RunsInsideGraphCapture) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  const LinearProblem small(LinearShape{2, 200, 512}, DType::kBF16, /*has_bias=*/true, 31);
  const LinearProblem large(LinearShape{40, 72, 136}, DType::kF16, /*has_bias=*/true, 37);
  GpuTensor small_out(DType::kBF16, {2, 200});
  GpuTensor large_out(DType::kF16, {40, 72});
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  runner->linear(small.x.tensor, small.weight.tensor, small.bias_tensor(), small_out.tensor,
                 {GemmAlgorithm::kGemv, 0}, stream);
  runner->linear(large.x.tensor, large.weight.tensor, large.bias_tensor(), large_out.tensor,
                 {GemmAlgorithm::kCublasLt, 0}, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t executable = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&executable, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(executable, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  small.expect_matches(small_out.tensor, /*rounded_once=*/true, "graph gemv");
  large.expect_matches(large_out.tensor, /*rounded_once=*/false, "graph cublaslt");
  cudaGraphExecDestroy(executable);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The down projection with SwiGLU fused into its input, adding into the residual stream
// (linear_silu_mul_add): bit for bit the result of the SwiGLU kernel followed by the same GEMV
// configuration adding, and close to the CPU twins; calls it does not take (M > 8, cuBLASLt
// tactics) are refused so that the caller runs the two apart.
TEST(CudaLinear, SiluMulFusedIntoGemvMatchesSeparateOps) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  uint32_t seed = 300;
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    for (const int64_t m : {1, 2, 5, 8, 9}) {
      for (const int64_t n : {7, 96, 1000}) {
        for (const int64_t k : {8, 576, 1000, 4096}) {
          const std::string what = std::string(dtype_name(dtype)) + " M=" + std::to_string(m) +
                                   " N=" + std::to_string(n) + " K=" + std::to_string(k);
          const auto gate_up_values = test::random_values(size_t(m * 2 * k), seed++, 2.0f, dtype);
          const auto weight_values =
              test::random_values(size_t(n * k), seed++, 1.0f / std::sqrt(float(k)), dtype);
          const auto residual_values = test::random_values(size_t(m * n), seed++, 4.0f, dtype);
          GpuTensor gate_up = test::to_gpu(dtype, {m, 2 * k}, gate_up_values);
          GpuTensor weight = test::to_gpu(dtype, {n, k}, weight_values);
          GpuTensor hidden(dtype, {m, k});
          cuda::silu_mul(gate_up.tensor, hidden.tensor, nullptr);

          // The CPU twins: SwiGLU in float32, the GPU's rounding of it, then the product, added.
          std::vector<float> hidden_cpu(size_t(m * k));
          DeviceTensor hidden_host{DType::kF32, {m, k}, hidden_cpu.data()};
          std::vector<float> gate_up_copy = gate_up_values;
          cpu::silu_mul(DeviceTensor{DType::kF32, {m, 2 * k}, gate_up_copy.data()}, hidden_host);
          for (float& value : hidden_cpu) value = test::round_to(dtype, value);
          std::vector<uint8_t> weight_bytes = test::encode(dtype, weight_values);
          std::vector<float> expected(size_t(m * n));
          DeviceTensor expected_host{DType::kF32, {m, n}, expected.data()};
          cpu::linear(hidden_host, DeviceTensor{dtype, {n, k}, weight_bytes.data()}, nullptr,
                      expected_host, cpu::detect_isa());
          for (size_t i = 0; i < expected.size(); ++i) expected[i] += residual_values[i];

          for (int32_t variant = 0; variant < cuda::kGemvVariantCount; ++variant) {
            const GemmTactic tactic{GemmAlgorithm::kGemv, variant};
            GpuTensor fused = test::to_gpu(dtype, {m, n}, residual_values);
            const bool ran = runner->linear_silu_mul_add(gate_up.tensor, weight.tensor,
                                                         fused.tensor, tactic, nullptr);
            ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;
            ASSERT_EQ(ran, m <= 8) << what;
            if (!ran) continue;
            GpuTensor separate = test::to_gpu(dtype, {m, n}, residual_values);
            runner->linear(hidden.tensor, weight.tensor, nullptr, separate.tensor, tactic, nullptr,
                           /*add=*/true);
            const std::vector<float> fused_values = test::to_host(fused.tensor);
            EXPECT_EQ(fused_values, test::to_host(separate.tensor))
                << what << " gemv:" << variant << " differs from silu_mul + linear";
            // Product scale ~1, residual ~4: atol for the accumulation order and for the few
            // hidden values whose rounding differs by one unit (the GPU's exp is not the CPU's),
            // rtol for the output's rounding. A wrong chunk or row, or a missed add, is off by
            // about 1.
            test::expect_close(fused_values, expected, 1.0f / 128, test::unit_roundoff(dtype),
                               what + " gemv:" + std::to_string(variant) + " vs CPU");
          }
          GpuTensor unused(dtype, {m, n});
          EXPECT_FALSE(runner->linear_silu_mul_add(gate_up.tensor, weight.tensor, unused.tensor,
                                                   {GemmAlgorithm::kCublasLt, 0}, nullptr))
              << what;
          if (HasFailure()) return;
        }
      }
    }
  }
}

// linear() adding into out (the o and down projections adding to the residual stream): every
// tactic, GEMV (kAdd) and cuBLASLt (beta = 1), against the CPU twin's product plus the residual,
// rounded once.
TEST(CudaLinear, AddsIntoTheResidual) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  uint32_t seed = 500;
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    for (const bool has_bias : {false, true}) {
      for (const LinearShape& shape : std::vector<LinearShape>{
               {1, 96, 64}, {3, 1000, 576}, {8, 7, 1000}, {16, 64, 4096}, {33, 96, 576}}) {
        LinearProblem problem(shape, dtype, has_bias, seed += 3);
        problem.residual_values =
            test::random_values(size_t(shape.m * shape.n), seed + 7, 4.0f, dtype);
        for (size_t i = 0; i < problem.expected.size(); ++i) {
          problem.expected[i] += problem.residual_values[i];
        }
        for (const GemmTactic& tactic : every_tactic()) {
          GpuTensor out = test::to_gpu(dtype, {shape.m, shape.n}, problem.residual_values);
          runner->linear(problem.x.tensor, problem.weight.tensor, problem.bias_tensor(), out.tensor,
                         tactic, nullptr, /*add=*/true);
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          problem.expect_matches(out.tensor, gemv_runs(problem, tactic),
                                 "add " + describe(shape, dtype, has_bias, tactic));
          if (HasFailure()) return;
        }
      }
    }
  }
}

// linear_normed (the QKV and gate/up projections reading the residual stream, their RMSNorm's
// scale folded into the weight): each GEMV configuration against the CPU twins, RMSNorm without a
// scale then the product, over token counts of one and two token tiles; cuBLASLt tactics and
// M > 16 are refused so that the caller normalises apart.
TEST(CudaLinear, NormalisedInputMatchesCpu) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  uint32_t seed = 700;
  const float eps = 1e-5f;
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    for (const bool has_bias : {false, true}) {
      for (const int64_t m : {1, 2, 7, 8, 9, 16, 17}) {
        for (const LinearShape& sizes :
             std::vector<LinearShape>{{0, 96, 64}, {0, 1000, 576}, {0, 7, 4096}}) {
          const LinearShape shape{m, sizes.n, sizes.k};
          // x of standard deviation 3: normalising changes its scale, so a skipped or wrong
          // normalisation is off by a factor.
          const auto x_values = test::random_values(size_t(m * shape.k), seed++, 3.0f, dtype);
          const auto weight_values = test::random_values(size_t(shape.n * shape.k), seed++,
                                                         1.0f / std::sqrt(float(shape.k)), dtype);
          std::vector<float> bias_values;
          if (has_bias) bias_values = test::random_values(size_t(shape.n), seed++, 1.0f, dtype);
          GpuTensor x = test::to_gpu(dtype, {m, shape.k}, x_values);
          GpuTensor weight = test::to_gpu(dtype, {shape.n, shape.k}, weight_values);
          GpuTensor bias(dtype, {shape.n});
          if (has_bias) bias = test::to_gpu(dtype, {shape.n}, bias_values);

          std::vector<float> normed(x_values.size()), expected(size_t(m * shape.n));
          std::vector<float> x_copy = x_values;
          DeviceTensor normed_host{DType::kF32, {m, shape.k}, normed.data()};
          cpu::rms_norm(DeviceTensor{DType::kF32, {m, shape.k}, x_copy.data()}, DeviceTensor{}, eps,
                        normed_host);
          std::vector<uint8_t> weight_bytes = test::encode(dtype, weight_values);
          std::vector<uint8_t> bias_bytes = test::encode(dtype, bias_values);
          const DeviceTensor bias_host{dtype, {shape.n}, bias_bytes.data()};
          DeviceTensor expected_host{DType::kF32, {m, shape.n}, expected.data()};
          cpu::linear(normed_host, DeviceTensor{dtype, {shape.n, shape.k}, weight_bytes.data()},
                      has_bias ? &bias_host : nullptr, expected_host, cpu::detect_isa());

          const std::string what = "normed " + describe(shape, dtype, has_bias, {});
          for (int32_t variant = 0; variant < cuda::kGemvVariantCount; ++variant) {
            GpuTensor out(dtype, {m, shape.n});
            const bool ran =
                runner->linear_normed(x.tensor, weight.tensor, has_bias ? &bias.tensor : nullptr,
                                      eps, out.tensor, {GemmAlgorithm::kGemv, variant}, nullptr);
            ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;
            ASSERT_EQ(ran, m <= cuda::kGemvMaxTokens) << what;
            if (!ran) continue;
            // Output scale ~1 (plus the bias): atol for the accumulation order, rtol for the
            // output's rounding.
            test::expect_close(test::to_host(out.tensor), expected, 1.0f / 1024,
                               test::unit_roundoff(dtype),
                               what + " gemv:" + std::to_string(variant));
          }
          GpuTensor unused(dtype, {m, shape.n});
          EXPECT_FALSE(runner->linear_normed(x.tensor, weight.tensor, nullptr, eps, unused.tensor,
                                             {GemmAlgorithm::kCublasLt, 0}, nullptr))
              << what;
          if (HasFailure()) return;
        }
      }
    }
  }
}

// The tuning step for the SwiGLU-fused down projection: the GEMV configurations that fit two CTAs
// an SM, timed on the fused kernel where it applies (M <= 8), sorted, and nothing where it does
// not.
TEST(CudaLinear, TimeCandidatesOfTheFusedKernel) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  for (const int64_t m : {1, 8, 16}) {
    const std::vector<cuda::GemmTiming> timings =
        runner->time_candidates(m, 1000, 576, DType::kBF16, false, /*gated=*/true, false, nullptr);
    const std::string what = "M=" + std::to_string(m);
    size_t sharing = 0;
    for (int32_t variant = 0; variant < cuda::kGemvVariantCount; ++variant) {
      sharing += cuda::gemv_gated_ctas_per_multiprocessor(DType::kBF16, variant, m) >= 2;
    }
    const size_t expected = sharing > 0 ? sharing : size_t(cuda::kGemvVariantCount);
    ASSERT_EQ(timings.size(), m <= 8 ? expected : 0) << what;
    std::set<int32_t> variants;
    for (size_t i = 0; i < timings.size(); ++i) {
      EXPECT_EQ(timings[i].tactic.algorithm, GemmAlgorithm::kGemv) << what;
      if (sharing > 0) {
        EXPECT_GE(
            cuda::gemv_gated_ctas_per_multiprocessor(DType::kBF16, timings[i].tactic.variant, m), 2)
            << what;
      }
      variants.insert(timings[i].tactic.variant);
      EXPECT_TRUE(std::isfinite(timings[i].microseconds) && timings[i].microseconds > 0) << what;
      if (i > 0) {
        EXPECT_LE(timings[i - 1].microseconds, timings[i].microseconds) << what;
      }
    }
    EXPECT_EQ(variants.size(), timings.size()) << what;
  }
}

TEST(CudaLinear, EmptyBatchWritesNothing) {
  KITE_REQUIRE_GPU();
  auto runner = make_runner();
  ASSERT_TRUE(runner);
  const LinearProblem problem(LinearShape{1, 8, 16}, DType::kBF16, false, 41);
  const DeviceTensor no_tokens{DType::kBF16, {0, 16}, problem.x.tensor.data};
  GpuTensor out(DType::kBF16, {1, 8});
  DeviceTensor empty_out{DType::kBF16, {0, 8}, out.tensor.data};
  for (const GemmTactic& tactic : every_tactic()) {
    runner->linear(no_tokens, problem.weight.tensor, nullptr, empty_out, tactic, nullptr);
  }
  for (const float value : test::to_host(out.tensor)) EXPECT_TRUE(std::isnan(value));
}

}  // namespace
}  // namespace kite
