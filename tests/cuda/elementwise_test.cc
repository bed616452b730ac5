// The CUDA element-wise ops (embedding, row gather, RMSNorm, residual add + RMSNorm, RoPE + KV
// cache store, SwiGLU, dtype conversion) against their CPU twins, on random float16/bfloat16 inputs
// over a sweep of shapes. The CPU twins compute in float32 from the same rounded inputs; the CUDA
// ops round their outputs to 16 bits, so tolerances are stated in units of that rounding.
#include <gtest/gtest.h>

#include <numeric>

#include "cuda_test_util.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"

namespace kite {
namespace {

using test::GpuTensor;

constexpr DType kHalfDtypes[] = {DType::kBF16, DType::kF16};

// A float32 host tensor for the CPU twins.
DeviceTensor host_view(std::vector<float>& values, Shape shape) {
  return DeviceTensor{DType::kF32, std::move(shape), values.data()};
}

std::string describe(DType dtype, int64_t rows, int64_t cols) {
  return std::string(dtype_name(dtype)) + " [" + std::to_string(rows) + ", " +
         std::to_string(cols) + "]";
}

TEST(CudaElementwise, EmbeddingAndGatherCopyRowsExactly) {
  KITE_REQUIRE_GPU();
  for (DType dtype : kHalfDtypes) {
    for (int64_t hidden : {7, 64, 576, 4096}) {
      const int64_t vocab = 50;
      const auto table_values = test::random_values(size_t(vocab * hidden), 1, 1.0f, dtype);
      GpuTensor table = test::to_gpu(dtype, {vocab, hidden}, table_values);
      const std::vector<int32_t> ids = {3, 49, 0, 3, 17};
      GpuTensor ids_gpu = test::int_to_gpu(ids);
      GpuTensor out(dtype, {int64_t(ids.size()), hidden});
      cuda::embedding(table.tensor, ids_gpu.as<int32_t>(), out.tensor, nullptr);
      std::vector<float> expected;
      for (int32_t id : ids) {
        expected.insert(expected.end(), table_values.begin() + id * hidden,
                        table_values.begin() + (id + 1) * hidden);
      }
      test::expect_close(test::to_host(out.tensor), expected, 0, 0,
                         "embedding " + describe(dtype, vocab, hidden));

      const std::vector<int32_t> rows = {4, 0, 2};
      GpuTensor rows_gpu = test::int_to_gpu(rows);
      GpuTensor gathered(dtype, {int64_t(rows.size()), hidden});
      cuda::gather_rows(out.tensor, rows_gpu.as<int32_t>(), gathered.tensor, nullptr);
      std::vector<float> expected_rows;
      for (int32_t row : rows) {
        expected_rows.insert(expected_rows.end(), expected.begin() + row * hidden,
                             expected.begin() + (row + 1) * hidden);
      }
      test::expect_close(test::to_host(gathered.tensor), expected_rows, 0, 0,
                         "gather_rows " + describe(dtype, 3, hidden));
    }
  }
}

TEST(CudaElementwise, RmsNormMatchesCpu) {
  KITE_REQUIRE_GPU();
  for (DType dtype : kHalfDtypes) {
    const float u = test::unit_roundoff(dtype);
    for (int64_t rows : {1, 3, 17}) {
      for (int64_t hidden : {7, 100, 576, 4096, 8192}) {
        const std::string what = describe(dtype, rows, hidden);
        auto x = test::random_values(size_t(rows * hidden), 2, 3.0f, dtype);
        auto residual = test::random_values(size_t(rows * hidden), 3, 3.0f, dtype);
        std::vector<float> weight(static_cast<size_t>(hidden));
        std::mt19937 generator(4);
        std::uniform_real_distribution<float> uniform(0.5f, 1.5f);
        for (float& value : weight) value = test::round_to(dtype, uniform(generator));
        GpuTensor x_gpu = test::to_gpu(dtype, {rows, hidden}, x);
        GpuTensor residual_gpu = test::to_gpu(dtype, {rows, hidden}, residual);
        GpuTensor weight_gpu = test::to_gpu(dtype, {hidden}, weight);
        GpuTensor out_gpu(dtype, {rows, hidden});

        // Plain RMSNorm: two roundings (the normalised value, then the product): 2u relative.
        std::vector<float> expected(x.size());
        DeviceTensor x_host = host_view(x, {rows, hidden}),
                     out_host = host_view(expected, {rows, hidden});
        DeviceTensor weight_host = host_view(weight, {hidden});
        cpu::rms_norm(x_host, weight_host, 1e-5f, out_host);
        cuda::rms_norm(x_gpu.tensor, weight_gpu.tensor, 1e-5f, out_gpu.tensor, nullptr);
        test::expect_close(test::to_host(out_gpu.tensor), expected, 1e-6f, 2.05f * u,
                           "rms_norm " + what);

        // Without a scale (the scale folded into the next linear layer): one rounding.
        std::vector<float> unscaled(x.size());
        DeviceTensor unscaled_host = host_view(unscaled, {rows, hidden});
        cpu::rms_norm(x_host, DeviceTensor{}, 1e-5f, unscaled_host);
        cuda::rms_norm(x_gpu.tensor, DeviceTensor{}, 1e-5f, out_gpu.tensor, nullptr);
        test::expect_close(test::to_host(out_gpu.tensor), unscaled, 1e-6f, 1.05f * u,
                           "rms_norm without a scale " + what);

        // Residual add: the sum is rounded once (u); the norm of the rounded sum then differs from
        // the float32 one by one more u, plus its own two roundings.
        std::vector<float> residual_expected = residual;
        DeviceTensor residual_host = host_view(residual_expected, {rows, hidden});
        cpu::add_rms_norm(residual_host, x_host, weight_host, 1e-5f, out_host);
        cuda::add_rms_norm(residual_gpu.tensor, x_gpu.tensor, weight_gpu.tensor, 1e-5f,
                           out_gpu.tensor, nullptr);
        test::expect_close(test::to_host(residual_gpu.tensor), residual_expected, 0, 1.01f * u,
                           "add_rms_norm residual " + what);
        test::expect_close(test::to_host(out_gpu.tensor), expected, 1e-5f, 4.1f * u,
                           "add_rms_norm out " + what);
      }
    }
  }
}

TEST(CudaElementwise, SiluMulMatchesCpu) {
  KITE_REQUIRE_GPU();
  for (DType dtype : kHalfDtypes) {
    for (int64_t rows : {1, 5, 33}) {
      for (int64_t width : {3, 96, 1536, 14336}) {
        auto gate_up = test::random_values(size_t(rows * 2 * width), 5, 4.0f, dtype);
        GpuTensor gate_up_gpu = test::to_gpu(dtype, {rows, 2 * width}, gate_up);
        GpuTensor out_gpu(dtype, {rows, width});
        std::vector<float> expected(size_t(rows * width));
        DeviceTensor out_host = host_view(expected, {rows, width});
        cpu::silu_mul(host_view(gate_up, {rows, 2 * width}), out_host);
        cuda::silu_mul(gate_up_gpu.tensor, out_gpu.tensor, nullptr);
        // One rounding of the output, plus float32 exp differences (about 1e-6 relative).
        test::expect_close(test::to_host(out_gpu.tensor), expected, 1e-5f,
                           1.01f * test::unit_roundoff(dtype),
                           "silu_mul " + describe(dtype, rows, width));
      }
    }
  }
}

TEST(CudaElementwise, ConvertRoundsToNearestEven) {
  KITE_REQUIRE_GPU();
  const auto values = test::random_values(10007, 6, 100.0f);
  GpuTensor source = test::to_gpu(DType::kF32, {10007}, values);
  for (DType dtype : kHalfDtypes) {
    GpuTensor narrow(dtype, {10007});
    cuda::convert(source.tensor, narrow.tensor, nullptr);
    std::vector<float> expected(values.size());
    for (size_t i = 0; i < values.size(); ++i) expected[i] = test::round_to(dtype, values[i]);
    test::expect_close(test::to_host(narrow.tensor), expected, 0, 0,
                       "convert to " + std::string(dtype_name(dtype)));
    GpuTensor wide(DType::kF32, {10007});
    cuda::convert(narrow.tensor, wide.tensor, nullptr);
    test::expect_close(test::to_host(wide.tensor), expected, 0, 0, "convert back to float32");
  }
}

// RoPE + cache store for a batch with a decode token at a large position, a prefill chunk and a
// padding token (slot -1), against cpu::rope_and_store_kv on a float32 cache; cos and sin scaled
// (YaRN's attention factor) in some cases.
TEST(CudaElementwise, RopeAndStoreKvMatchesCpu) {
  KITE_REQUIRE_GPU();
  struct Case {
    int64_t head_dim, rotary_dim, kv_heads, group, block_size;
    float attention_scaling;
  };
  for (DType dtype : kHalfDtypes) {
    const float u = test::unit_roundoff(dtype);
    for (const Case& c : {Case{64, 64, 2, 3, 16, 1.0f}, Case{128, 128, 8, 4, 32, 1.1386f},
                          Case{16, 16, 2, 2, 8, 1.0f}, Case{64, 32, 1, 8, 64, 0.9364f}}) {
      const std::string what = std::string(dtype_name(dtype)) + " D=" + std::to_string(c.head_dim) +
                               " R=" + std::to_string(c.rotary_dim) +
                               " scaling=" + std::to_string(c.attention_scaling);
      const int64_t D = c.head_dim, query_heads = c.kv_heads * c.group;
      // Tokens: sequence 0 decodes at position 1500, sequence 1 prefills 9 tokens at 31..39.
      std::vector<int32_t> positions = {1500};
      for (int32_t p = 31; p < 40; ++p) positions.push_back(p);
      positions.push_back(2);  // a padding token
      const int64_t tokens = int64_t(positions.size());
      const int64_t num_blocks = 2048 / c.block_size + 8;
      std::vector<int32_t> slots(positions.size());
      std::vector<int32_t> free_slots(size_t(num_blocks * c.block_size));
      std::iota(free_slots.begin(), free_slots.end(), 0);
      std::shuffle(free_slots.begin(), free_slots.end(), std::mt19937(7));
      for (size_t t = 0; t < slots.size(); ++t) slots[t] = free_slots[t];
      slots.back() = -1;

      const int64_t width = (query_heads + 2 * c.kv_heads) * D;
      auto qkv = test::random_values(size_t(tokens * width), 8, 2.0f, dtype);
      std::vector<float> inv_freq(size_t(c.rotary_dim / 2));
      for (size_t i = 0; i < inv_freq.size(); ++i) {
        inv_freq[i] = 1.0f / std::pow(500000.0f, float(2 * i) / float(c.rotary_dim));
      }
      KvCacheView cache{nullptr, dtype, 2, num_blocks, c.kv_heads, c.block_size, D};
      const int64_t cache_elements = cache.num_layers * cache.layer_elements();

      // CPU twin on a float32 cache.
      std::vector<float> cpu_cache(size_t(cache_elements), 0.0f),
          cpu_q(size_t(tokens * query_heads * D));
      std::vector<int32_t> no_table(1, 0), query_start = {0, int32_t(tokens)}, context = {0};
      AttentionBatch host_batch{tokens,
                                1,
                                1,
                                tokens,
                                0,
                                positions.data(),
                                slots.data(),
                                query_start.data(),
                                context.data(),
                                no_table.data()};
      KvCacheView cpu_cache_view = cache;
      cpu_cache_view.dtype = DType::kF32;
      cpu_cache_view.data = cpu_cache.data();
      DeviceTensor cpu_q_view = host_view(cpu_q, {tokens, query_heads * D});
      cpu::rope_and_store_kv(host_view(qkv, {tokens, width}),
                             RopeParams{inv_freq.data(), c.rotary_dim, c.attention_scaling},
                             host_batch, cpu_cache_view, 1, cpu_q_view);

      GpuTensor qkv_gpu = test::to_gpu(dtype, {tokens, width}, qkv);
      GpuTensor q_gpu(dtype, {tokens, query_heads * D});
      GpuTensor cache_gpu =
          test::to_gpu(dtype, {cache_elements}, std::vector<float>(size_t(cache_elements), 0.0f));
      GpuTensor inv_freq_gpu = test::to_gpu(DType::kF32, {int64_t(inv_freq.size())}, inv_freq);
      GpuTensor positions_gpu = test::int_to_gpu(positions), slots_gpu = test::int_to_gpu(slots);
      AttentionBatch batch = host_batch;
      batch.positions = positions_gpu.as<int32_t>();
      batch.slot_mapping = slots_gpu.as<int32_t>();
      cache.data = cache_gpu.tensor.data;
      cuda::rope_and_store_kv(
          qkv_gpu.tensor, RopeParams{inv_freq_gpu.as<float>(), c.rotary_dim, c.attention_scaling},
          batch, cache, 1, q_gpu.tensor, nullptr);
      // One rounding of each output; angles and cos/sin in float32 on both sides.
      test::expect_close(test::to_host(q_gpu.tensor), cpu_q, 2e-5f, 1.01f * u, "rope q " + what);
      test::expect_close(test::to_host(cache_gpu.tensor), cpu_cache, 2e-5f, 1.01f * u,
                         "rope cache " + what);
    }
  }
}

}  // namespace
}  // namespace kite
