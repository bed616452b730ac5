// Tests of the CPU backend's memory functions, make_backend, and the element-wise and row ops
// (embedding, gather_rows, rms_norm, add_rms_norm, silu_mul, convert, add_logit_bias) against plain
// references.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <limits>

#include "core/csv.h"
#include "cpu_test_util.h"
#include "kernels/backend_factory.h"

namespace kite {
namespace {

using test::BackendTensor;

TEST(BackendFactory, MakesTheCpuBackend) {
  auto backend = make_backend(BackendKind::kCpu);
  ASSERT_TRUE(backend.is_ok()) << backend.status().message();
  EXPECT_EQ((*backend)->kind(), BackendKind::kCpu);
  EXPECT_EQ((*backend)->activation_dtype(), DType::kF32);
  EXPECT_EQ(backend_kind_name(BackendKind::kCpu), "cpu");
  EXPECT_EQ(backend_kind_name(BackendKind::kCuda), "cuda");
}

TEST(BackendFactory, RefusesOtherCpuDevicesAndMissingCuda) {
  auto second_cpu = make_backend(BackendKind::kCpu, BackendOptions{.device_index = 1});
  ASSERT_FALSE(second_cpu.is_ok());
  EXPECT_EQ(second_cpu.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second_cpu.status().message().find("device 1"), std::string::npos);
  auto cuda = make_backend(BackendKind::kCuda, BackendOptions{.activation_dtype = DType::kBF16});
#ifdef KITE_WITH_CUDA
  if (cuda.is_ok()) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_EQ(cuda.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(cuda.status().message().find("no CUDA GPU"), std::string::npos)
      << cuda.status().message();
#else
  ASSERT_FALSE(cuda.is_ok());
  EXPECT_EQ(cuda.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(cuda.status().message().find("built without CUDA"), std::string::npos);
#endif
}

// `kite build --tuning_log`: one row per candidate, read back as Python's csv module would, with
// the weight bandwidth each time means (n x k x element bytes / time).
TEST(BackendFactory, TuningLogHasARowPerCandidate) {
  const GemmShape qkv{1, 6144, 4096, true, false, /*normed=*/true};
  const GemmShape down{16, 4096, 14336, false, true};
  const std::string csv = tuning_log_csv({{qkv, "gemv:0", 13.15f, true},
                                          {qkv, "cublaslt:2", 20.0f, false},
                                          {down, "gemv:4", 34.01f, true}},
                                         2);
  const auto rows = parse_csv(csv, "tuning.csv");
  ASSERT_TRUE(rows.is_ok()) << rows.status().message();
  ASSERT_EQ(rows->size(), 4u) << csv;
  EXPECT_EQ((*rows)[0], (CsvRow{"max_tokens", "n", "k", "bias", "gated", "kernel", "microseconds",
                                "weight_gbps", "chosen", "normed"}));
  EXPECT_EQ((*rows)[1],
            (CsvRow{"1", "6144", "4096", "1", "0", "gemv:0", "13.15", "3827.5", "1", "1"}));
  EXPECT_EQ((*rows)[2],
            (CsvRow{"1", "6144", "4096", "1", "0", "cublaslt:2", "20.00", "2516.6", "0", "1"}));
  EXPECT_EQ((*rows)[3],
            (CsvRow{"16", "4096", "14336", "0", "1", "gemv:4", "34.01", "3453.1", "1", "0"}));
  EXPECT_EQ(tuning_log_csv({}, 2),
            "max_tokens,n,k,bias,gated,kernel,microseconds,weight_gbps,chosen,normed\n");
}

// search_decode_choices on a made-up decode step whose time is a sum of per-kernel costs: it tries
// each one-row shape's three fastest runners-up (not the chosen one, not another bucket's, not the
// plain shape's for the gated one), each in turn with the current choices, and keeps a trial only
// when it gains more than min_gain.
TEST(BackendFactory, SearchesDecodeChoicesShapeByShape) {
  constexpr int32_t kCublas = 0, kGemv = 1;
  const std::vector<GemmChoice> tuned = {
      {1, 6144, 4096, kGemv, 4, 18.0f, false},     // QKV
      {1, 4096, 4096, kGemv, 0, 12.0f, false},     // o
      {1, 4096, 14336, kGemv, 1, 40.0f, false},    // down, plain
      {1, 4096, 14336, kGemv, 4, 40.0f, true},     // down with SwiGLU
      {16, 6144, 4096, kCublas, 0, 30.0f, false},  // another bucket: left alone
  };
  auto name = [](int32_t algorithm, int32_t variant) {
    return (algorithm == kGemv ? "gemv:" : "cublaslt:") + std::to_string(variant);
  };
  // Step time: 100 ms plus a cost per (n, gated, kernel) of the one-row choices.
  auto cost = [&](const GemmChoice& c) {
    const std::string kernel = name(c.algorithm, c.variant);
    if (c.n == 6144) {
      if (kernel == "gemv:7") return 9.8;  // 0.2 ms less: under 0.5% of the step
      if (kernel == "gemv:0") return 5.0;  // 5 ms less: kept
      if (kernel == "gemv:2") return 0.0;  // fourth runner-up: never tried
      return 10.0;
    }
    if (c.n == 4096 && c.k == 4096) return kernel == "cublaslt:1" ? 4.0 : 5.0;  // 1 ms: kept
    if (!c.gated) return kernel == "gemv:0" ? 1.0 : 2.0;
    return 3.0;  // the gated shape has no runners-up
  };
  std::vector<std::vector<GemmChoice>> calls;  // the choices of each measurement, in order
  auto decode_ms = [&](const std::vector<GemmChoice>& choices) -> Result<double> {
    double ms = 100.0;
    for (const GemmChoice& c : choices) ms += c.max_tokens == 1 ? cost(c) : 0.0;
    calls.push_back(choices);
    return ms;
  };
  auto row = [&](int64_t n, int64_t k, int32_t algorithm, int32_t variant, bool chosen,
                 int64_t bucket = 1) {
    return GemmCandidateTime{GemmShape{bucket, n, k, false, false, false},
                             name(algorithm, variant),
                             1.0f,
                             chosen,
                             algorithm,
                             variant};
  };
  const std::vector<GemmCandidateTime> timings = {
      row(6144, 4096, kGemv, 4, true),    row(6144, 4096, kGemv, 6, false),
      row(6144, 4096, kGemv, 7, false),   row(6144, 4096, kGemv, 0, false),
      row(6144, 4096, kGemv, 2, false),   row(4096, 4096, kGemv, 0, true),
      row(4096, 4096, kCublas, 1, false), row(4096, 14336, kGemv, 1, true),
      row(4096, 14336, kGemv, 0, false),  row(6144, 4096, kCublas, 3, false, 16),
  };
  std::vector<DecodeTrial> trials;
  const DecodeSearchOptions options;  // 3 candidates, 3 rounds, 0.5%
  Result<std::vector<GemmChoice>> result = search_decode_choices(
      tuned, timings, decode_ms, options, [&](const DecodeTrial& t) { trials.push_back(t); });
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  const std::vector<GemmChoice>& chosen = result.value();
  ASSERT_EQ(chosen.size(), tuned.size());
  EXPECT_EQ(chosen[0].variant, 0);  // QKV: gemv:0
  EXPECT_EQ(chosen[0].algorithm, kGemv);
  EXPECT_EQ(chosen[1].algorithm, kCublas);  // o: cublaslt:1
  EXPECT_EQ(chosen[1].variant, 1);
  EXPECT_EQ(chosen[2].variant, 0);  // plain down: gemv:0
  EXPECT_EQ(chosen[3], tuned[3]);   // gated down: no runner-up of its own
  EXPECT_EQ(chosen[4], tuned[4]);   // bucket 16: not searched

  // QKV: gemv:6, gemv:7, gemv:0 (not the fourth, gemv:2); o: cublaslt:1; plain down: gemv:0.
  ASSERT_EQ(trials.size(), 5u);
  const char* kernels[] = {"gemv:6", "gemv:7", "gemv:0", "cublaslt:1", "gemv:0"};
  const bool kept[] = {false, false, true, true, true};
  for (size_t i = 0; i < trials.size(); ++i) {
    EXPECT_EQ(trials[i].kernel, kernels[i]) << i;
    EXPECT_EQ(trials[i].kept, kept[i]) << i;
  }
  EXPECT_EQ(trials[1].shape.n, 6144);
  EXPECT_NEAR(trials[1].current_ms, 3 * (100.0 + 10 + 5 + 2 + 3), 1e-9);
  EXPECT_NEAR(trials[1].trial_ms, 3 * (100.0 + 9.8 + 5 + 2 + 3), 1e-9);
  // Each trial ran in turn with the choices current then: current, trial, three times.
  ASSERT_EQ(calls.size(), 5u * 2 * 3);
  for (size_t call = 0; call < calls.size(); call += 2) {
    EXPECT_NE(calls[call], calls[call + 1]) << call;
  }
  EXPECT_EQ(calls[0][0].variant, 4);  // the first QKV trial: gemv:4 (current), gemv:6
  EXPECT_EQ(calls[1][0].variant, 6);
  EXPECT_EQ(calls[18][1].variant, 0);  // the o trial runs beside the kept QKV gemv:0
  EXPECT_EQ(calls[18][0].variant, 0);
  EXPECT_EQ(calls[19][1].algorithm, kCublas);

  // A failed measurement ends the search with its error.
  auto failing = [](const std::vector<GemmChoice>&) -> Result<double> {
    return internal_error("the decode step failed");
  };
  EXPECT_FALSE(search_decode_choices(tuned, timings, failing, options, nullptr).is_ok());
}

TEST(CpuBackendMemory, AllocatesAlignedBuffersAndCopies) {
  CpuBackend backend;
  for (size_t bytes : {size_t(0), size_t(1), size_t(63), size_t(4096), size_t(1000003)}) {
    auto buffer = backend.allocate(bytes);
    ASSERT_TRUE(buffer.is_ok());
    EXPECT_NE(buffer->data(), nullptr);
    EXPECT_EQ(buffer->size(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % 64, 0u);
    std::vector<uint8_t> source(bytes), back(bytes);
    for (size_t i = 0; i < bytes; ++i) source[i] = uint8_t(i * 7 + 3);
    backend.upload(buffer->data(), source.data(), bytes);
    backend.download(back.data(), buffer->data(), bytes);
    EXPECT_EQ(source, back);
  }
  auto buffer = backend.allocate(128);
  ASSERT_TRUE(buffer.is_ok());
  DeviceBuffer moved = std::move(buffer).value();
  EXPECT_EQ(moved.size(), 128u);
  moved.reset();
  EXPECT_EQ(moved.data(), nullptr);
}

TEST(CpuBackendMemory, ReportsExhaustionAsAStatus) {
  CpuBackend backend;
  auto huge = backend.allocate(size_t(1) << 62);
  ASSERT_FALSE(huge.is_ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kOutOfRange);
}

TEST(CpuOps, EmbeddingConvertsRowsOfEveryTableDType) {
  CpuBackend backend;
  const int64_t vocabulary = 50, hidden = 37;
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17, 8, 1};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const auto table_values = test::round_all(dtype, test::random_values(vocabulary * hidden, 1));
    BackendTensor table = test::tensor_from(backend, dtype, {vocabulary, hidden}, table_values);
    BackendTensor id_tensor = test::int_tensor(backend, ids);
    BackendTensor out = test::make_tensor(backend, DType::kF32, {int64_t(ids.size()), hidden});
    test::poison(out.tensor);
    backend.embedding(table.tensor, id_tensor.as<int32_t>(), out.tensor);
    const auto actual = test::load_floats(out.tensor);
    for (size_t t = 0; t < ids.size(); ++t) {
      for (int64_t i = 0; i < hidden; ++i) {
        ASSERT_EQ(actual[t * hidden + i], table_values[ids[t] * hidden + i])
            << dtype_name(dtype) << " token " << t << " element " << i;
      }
    }
  }
}

TEST(CpuOps, GatherRowsCopiesTheChosenRows) {
  CpuBackend backend;
  const int64_t rows = 9, cols = 13;
  const auto values = test::random_values(rows * cols, 2);
  BackendTensor x = test::tensor_from(backend, DType::kF32, {rows, cols}, values);
  const std::vector<int32_t> indices = {8, 0, 4, 4};
  BackendTensor index_tensor = test::int_tensor(backend, indices);
  BackendTensor out = test::make_tensor(backend, DType::kF32, {4, cols});
  test::poison(out.tensor);
  backend.gather_rows(x.tensor, index_tensor.as<int32_t>(), out.tensor);
  const auto actual = test::load_floats(out.tensor);
  for (size_t r = 0; r < indices.size(); ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      ASSERT_EQ(actual[r * cols + i], values[indices[r] * cols + i]);
    }
  }
}

std::vector<double> reference_rms_norm(const std::vector<float>& x,
                                       const std::vector<float>& weight, int64_t rows, int64_t cols,
                                       double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t i = 0; i < cols; ++i) sum += double(x[r * cols + i]) * x[r * cols + i];
    const double inverse = 1.0 / std::sqrt(sum / double(cols) + eps);
    for (int64_t i = 0; i < cols; ++i) out[r * cols + i] = x[r * cols + i] * inverse * weight[i];
  }
  return out;
}

TEST(CpuOps, RmsNormMatchesReference) {
  CpuBackend backend;
  for (DType weight_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t rows : {1, 7}) {
      for (int64_t cols : {5, 64, 576}) {
        const auto x_values = test::random_values(rows * cols, 3, 3.0f);
        const auto weight_values = test::round_all(weight_dtype, test::random_values(cols, 4));
        BackendTensor x = test::tensor_from(backend, DType::kF32, {rows, cols}, x_values);
        BackendTensor weight = test::tensor_from(backend, weight_dtype, {cols}, weight_values);
        BackendTensor out = test::make_tensor(backend, DType::kF32, {rows, cols});
        test::poison(out.tensor);
        backend.rms_norm(x.tensor, weight.tensor, 1e-5f, out.tensor);
        test::expect_close(test::load_floats(out.tensor),
                           reference_rms_norm(x_values, weight_values, rows, cols, 1e-5), 1e-5,
                           "rms_norm " + std::string(dtype_name(weight_dtype)));
        // In place (out == x) gives the same result.
        backend.rms_norm(x.tensor, weight.tensor, 1e-5f, x.tensor);
        EXPECT_TRUE(
            test::bitwise_equal(test::load_floats(x.tensor), test::load_floats(out.tensor)));
      }
    }
  }
}

TEST(CpuOps, AddRmsNormUpdatesTheResidualAndNormalizesIt) {
  CpuBackend backend;
  const int64_t rows = 5, cols = 96;
  const auto residual_values = test::random_values(rows * cols, 5);
  const auto x_values = test::random_values(rows * cols, 6);
  const auto weight_values = test::round_all(DType::kBF16, test::random_values(cols, 7));
  std::vector<float> sums(residual_values.size());
  for (size_t i = 0; i < sums.size(); ++i) sums[i] = residual_values[i] + x_values[i];
  const auto expected = reference_rms_norm(sums, weight_values, rows, cols, 1e-6);
  for (bool out_is_x : {false, true}) {
    BackendTensor residual = test::tensor_from(backend, DType::kF32, {rows, cols}, residual_values);
    BackendTensor x = test::tensor_from(backend, DType::kF32, {rows, cols}, x_values);
    BackendTensor weight = test::tensor_from(backend, DType::kBF16, {cols}, weight_values);
    BackendTensor separate_out = test::make_tensor(backend, DType::kF32, {rows, cols});
    test::poison(separate_out.tensor);
    DeviceTensor& out = out_is_x ? x.tensor : separate_out.tensor;
    backend.add_rms_norm(residual.tensor, x.tensor, weight.tensor, 1e-6f, out);
    EXPECT_TRUE(test::bitwise_equal(test::load_floats(residual.tensor), sums));
    test::expect_close(test::load_floats(out), expected, 1e-5,
                       out_is_x ? "add_rms_norm in place" : "add_rms_norm");
  }
}

TEST(CpuOps, SiluMulMatchesReference) {
  CpuBackend backend;
  const int64_t tokens = 3, size = 100;
  const auto values = test::random_values(tokens * 2 * size, 8, 4.0f);
  BackendTensor gate_up = test::tensor_from(backend, DType::kF32, {tokens, 2 * size}, values);
  BackendTensor out = test::make_tensor(backend, DType::kF32, {tokens, size});
  test::poison(out.tensor);
  backend.silu_mul(gate_up.tensor, out.tensor);
  std::vector<double> expected(size_t(tokens * size));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < size; ++i) {
      const double gate = values[t * 2 * size + i];
      const double up = values[t * 2 * size + size + i];
      expected[t * size + i] = gate / (1.0 + std::exp(-gate)) * up;
    }
  }
  test::expect_close(test::load_floats(out.tensor), expected, 1e-5, "silu_mul");
}

TEST(CpuOps, ConvertRoundsToNearestEvenBetweenFloatDTypes) {
  CpuBackend backend;
  auto values = test::random_values(1000, 9, 100.0f);
  values.push_back(1e-6f);  // float16 subnormal
  values.push_back(70000);  // float16 overflow to infinity
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType from : dtypes) {
    const auto source_values = test::round_all(from, values);
    BackendTensor source =
        test::tensor_from(backend, from, {int64_t(values.size())}, source_values);
    for (DType to : dtypes) {
      BackendTensor destination = test::make_tensor(backend, to, {int64_t(values.size())});
      test::poison(destination.tensor);
      backend.convert(source.tensor, destination.tensor);
      const auto actual = test::load_floats(destination.tensor);
      for (size_t i = 0; i < values.size(); ++i) {
        ASSERT_EQ(actual[i], test::round_to(to, source_values[i]))
            << dtype_name(from) << " -> " << dtype_name(to) << " element " << i;
      }
    }
  }
  // Same dtype: any dtype is copied as bytes.
  BackendTensor ints = test::int_tensor(backend, {1, -2, 3});
  BackendTensor copy = test::make_tensor(backend, DType::kI32, {3});
  backend.convert(ints.tensor, copy.tensor);
  EXPECT_EQ(copy.as<int32_t>()[1], -2);
}

TEST(CpuOps, LogitBiasAddsTheFirstCountEntries) {
  CpuBackend backend;
  const int64_t rows = 3, vocab = 11;
  const auto values = test::random_values(rows * vocab, 12);
  // Five entries fit the buffer, three are this step's: the last two must stay untouched.
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const std::vector<LogitBiasEntry> entries = {
      {0, 10, minus_infinity}, {2, 0, 3.5f}, {0, 4, -100.0f}, {1, 7, 1.0f}, {2, 3, 2.0f}};
  for (int32_t count : {0, 1, 3}) {
    BackendTensor logits = test::tensor_from(backend, DType::kF32, {rows, vocab}, values);
    backend.add_logit_bias(logits.tensor, entries.data(), &count, 5);
    std::vector<float> expected = values;
    for (int32_t i = 0; i < count; ++i) {
      expected[size_t(entries[size_t(i)].row * vocab + entries[size_t(i)].token)] +=
          entries[size_t(i)].bias;
    }
    EXPECT_EQ(test::load_floats(logits.tensor), expected) << count << " entries";
  }
}

TEST(CpuOps, RowOpsGiveTheSameBitsForAnyThreadCount) {
  CpuBackend backend;
  const int saved_threads = omp_get_max_threads();
  const int64_t rows = 130, cols = 576;  // large enough to run on several threads
  const auto x_values = test::random_values(rows * cols, 10);
  const auto weight_values = test::random_values(cols, 11);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    BackendTensor residual = test::tensor_from(backend, DType::kF32, {rows, cols}, x_values);
    BackendTensor x = test::tensor_from(backend, DType::kF32, {rows, cols}, x_values);
    BackendTensor weight = test::tensor_from(backend, DType::kF32, {cols}, weight_values);
    BackendTensor normed = test::make_tensor(backend, DType::kF32, {rows, cols});
    BackendTensor activated = test::make_tensor(backend, DType::kF32, {rows, cols / 2});
    backend.add_rms_norm(residual.tensor, x.tensor, weight.tensor, 1e-5f, normed.tensor);
    backend.silu_mul(normed.tensor, activated.tensor);
    auto result = test::load_floats(normed.tensor);
    const auto activated_values = test::load_floats(activated.tensor);
    result.insert(result.end(), activated_values.begin(), activated_values.end());
    results.push_back(result);
  }
  omp_set_num_threads(saved_threads);
  EXPECT_TRUE(test::bitwise_equal(results[0], results[1]));
}

}  // namespace
}  // namespace kite
