// kite build's memory plan (runtime/memory_plan.h) for the Llama-3-8B shape in bfloat16: the
// activation and KV cache bytes counted by hand, and the GPU fit check.
#include "runtime/memory_plan.h"

#include <gtest/gtest.h>

#include "formats/model_config.h"
#include "test_util.h"

namespace kite {
namespace {

EngineConfig llama3_8b_engine(int64_t max_num_tokens) {
  EngineConfig config;
  config.device = "cuda";
  config.model =
      read_hf_config(test::source_dir() + "/tests/fixtures/hf_configs/llama-3-8b.json").value();
  config.weight_dtype = DType::kBF16;
  config.kv_cache_dtype = DType::kBF16;
  config.limits = BuildLimits{64, 8192, 8448, 32, max_num_tokens};
  return config;
}

constexpr int64_t kWeightsBytes = 16'060'522'496;  // 8.03 G parameters of 2 bytes
constexpr size_t kGiB = size_t(1) << 30;

TEST(MemoryPlan, CountsActivationsAndKvCacheOfLlama3_8B) {
  const MemoryPlan plan = plan_memory(llama3_8b_engine(8192), kWeightsBytes);
  EXPECT_EQ(plan.weights_bytes, kWeightsBytes);
  // Per token: residual, normed, block_out [4096] each; qkv [4096 + 2 x 1024]; q and attention
  // output [4096] each; gate_up [2 x 14336]; the SwiGLU output [14336]: 69,632 bf16 values.
  // Per logit row (64): the gathered hidden row [4096] and its logits [128256] in bf16, then
  // the logits again in float32.
  const int64_t expected = (8192 * 69'632 + 64 * (4096 + 128'256)) * 2 + 64 * 128'256 * 4;
  EXPECT_EQ(plan.activation_bytes, expected);
  // K and V of 8 heads of 128 in 32 layers, 2 bytes each.
  EXPECT_EQ(plan.kv_cache_bytes_per_token, 32 * 2 * 8 * 128 * 2);
  EXPECT_EQ(describe_memory_plan(plan, llama3_8b_engine(8192).limits),
            "weights 14.96 GiB, activations 1.11 GiB (steps of 8192 tokens), KV cache 128.0 KiB "
            "per token");
}

// A CUDA weight-only engine also holds a 16-bit copy of its largest layer weight (gate/up, 28,672
// x 4,096) for steps past the quantized GEMV's 8 rows; a CPU engine, or steps of at most 8 rows,
// none.
TEST(MemoryPlan, CountsTheDequantizedCopyOfCudaWeightOnlyEngines) {
  const int64_t plain = plan_memory(llama3_8b_engine(8192), kWeightsBytes).activation_bytes;
  EngineConfig quantized = llama3_8b_engine(8192);
  quantized.weight_only = WeightOnlyConfig{WeightOnlyPrecision::kInt4, 128};
  EXPECT_EQ(plan_memory(quantized, kWeightsBytes).activation_bytes,
            plain + int64_t(28'672) * 4096 * 2);
  EngineConfig decode_only = llama3_8b_engine(8);
  decode_only.weight_only = quantized.weight_only;
  EXPECT_EQ(plan_memory(decode_only, kWeightsBytes).activation_bytes,
            plan_memory(llama3_8b_engine(8), kWeightsBytes).activation_bytes);
  EngineConfig cpu = quantized;
  cpu.device = "cpu";
  cpu.weight_dtype = DType::kF32;
  EngineConfig cpu_plain = llama3_8b_engine(8192);
  cpu_plain.device = "cpu";
  cpu_plain.weight_dtype = DType::kF32;
  EXPECT_EQ(plan_memory(cpu, kWeightsBytes).activation_bytes,
            plan_memory(cpu_plain, kWeightsBytes).activation_bytes);
}

TEST(MemoryPlan, FitsAnH100AndRefusesWhatCannotFit) {
  const EngineConfig engine = llama3_8b_engine(8192);
  const MemoryPlan plan = plan_memory(engine, kWeightsBytes);
  EXPECT_TRUE(check_memory_plan_fits(plan, engine.limits, "H100", 80 * kGiB).is_ok());
  // 16 GiB cannot hold 14.96 GiB of weights with the rest: a smaller dtype.
  const Status small_gpu = check_memory_plan_fits(plan, engine.limits, "a 16 GiB GPU", 16 * kGiB);
  EXPECT_EQ(small_gpu.code(), StatusCode::kOutOfRange);
  EXPECT_NE(small_gpu.message().find("has 16.00 GiB"), std::string::npos) << small_gpu.message();
  EXPECT_NE(small_gpu.message().find("smaller dtype"), std::string::npos) << small_gpu.message();
  // Steps of a million tokens need 130 GiB of activations: lower --max_num_tokens.
  const EngineConfig huge_steps = llama3_8b_engine(1 << 20);
  const Status too_many_tokens = check_memory_plan_fits(plan_memory(huge_steps, kWeightsBytes),
                                                        huge_steps.limits, "H100", 80 * kGiB);
  EXPECT_EQ(too_many_tokens.code(), StatusCode::kOutOfRange);
  EXPECT_NE(too_many_tokens.message().find("--max_num_tokens"), std::string::npos)
      << too_many_tokens.message();
}

TEST(MemoryPlan, EstimatesTheKvCacheTokensLeft) {
  const MemoryPlan plan = plan_memory(llama3_8b_engine(8192), kWeightsBytes);
  const double left =
      double(80 * kGiB) - double(kWeightsBytes) - double(plan.activation_bytes) - double(kGiB);
  EXPECT_EQ(estimated_kv_cache_tokens(plan, 80 * kGiB, 0.9), int64_t(left * 0.9 / 131072));
  EXPECT_EQ(estimated_kv_cache_tokens(plan, 8 * kGiB, 0.9), 0);
}

}  // namespace
}  // namespace kite
