// The memory plan kite build records and checks (memory_plan.h).
#include "runtime/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "model/llama.h"
#include "runtime/engine.h"

namespace kite {
namespace {

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", bytes / double(size_t(1) << 30));
  return text;
}

}  // namespace

MemoryPlan plan_memory(const EngineConfig& config, int64_t weights_bytes) {
  const BuildLimits& limits = config.limits;
  const DType activation_dtype = config.device == "cuda" ? config.weight_dtype : DType::kF32;
  MemoryPlan plan;
  plan.weights_bytes = weights_bytes;
  plan.activation_bytes = int64_t(LlamaModel::activation_bytes(
      config.model, limits.max_num_tokens, limits.max_batch_size, activation_dtype));
  // CUDA weight-only engines: steps past the quantized GEMV's sizes multiply a dequantized copy of
  // the largest layer weight (CudaBackend::reserve_weight_only).
  if (config.device == "cuda" && config.weight_only.enabled() &&
      limits.max_num_tokens > kWeightOnlyGemvMaxTokens) {
    const ModelConfig& m = config.model;
    // qkv [q + 2kv, hidden] and gate/up [2 ffn, hidden] hold more than o [hidden, q] and down
    // [hidden, ffn].
    const int64_t largest =
        std::max(m.q_size() + 2 * m.kv_size(), 2 * m.intermediate_size) * m.hidden_size;
    plan.activation_bytes += largest * int64_t(dtype_size(activation_dtype));
  }
  plan.kv_cache_bytes_per_token =
      int64_t(KvCache::block_bytes(config.model, config.kv_cache_dtype, limits.tokens_per_block) /
              size_t(limits.tokens_per_block));
  return plan;
}

std::string describe_memory_plan(const MemoryPlan& plan, const BuildLimits& limits) {
  char kv[32];
  std::snprintf(kv, sizeof kv, "%.1f KiB", double(plan.kv_cache_bytes_per_token) / 1024);
  return "weights " + gib(double(plan.weights_bytes)) + ", activations " +
         gib(double(plan.activation_bytes)) + " (steps of " +
         std::to_string(limits.max_num_tokens) + " tokens), KV cache " + kv + " per token";
}

Status check_memory_plan_fits(const MemoryPlan& plan, const BuildLimits& limits,
                              const std::string& gpu_name, size_t gpu_memory_bytes) {
  const double one_sequence = double(plan.kv_cache_bytes_per_token) *
                              double(limits.blocks_per_sequence() * limits.tokens_per_block);
  const double needed = double(plan.weights_bytes) + double(plan.activation_bytes) + one_sequence +
                        double(kGpuReserveBytes);
  if (needed <= double(gpu_memory_bytes)) return Status::ok();
  std::string advice = "convert the model to a smaller dtype or use a GPU with more memory";
  if (plan.activation_bytes > plan.weights_bytes / 4) {
    advice = "build with a smaller --max_num_tokens (activations grow with it), or " + advice;
  } else if (one_sequence > double(plan.weights_bytes) / 4) {
    advice = "build with a smaller --max_seq_len, or " + advice;
  }
  return out_of_range("the engine needs " + gib(needed) + " (weights " +
                      gib(double(plan.weights_bytes)) + ", activations " +
                      gib(double(plan.activation_bytes)) + ", the KV cache of one " +
                      std::to_string(limits.max_seq_len) + "-token sequence " + gib(one_sequence) +
                      ", " + gib(double(kGpuReserveBytes)) + " for the CUDA runtime) but " +
                      gpu_name + " has " + gib(double(gpu_memory_bytes)) + ": " + advice);
}

int64_t estimated_kv_cache_tokens(const MemoryPlan& plan, size_t gpu_memory_bytes,
                                  double fraction) {
  const double left = double(gpu_memory_bytes) - double(plan.weights_bytes) -
                      double(plan.activation_bytes) - double(kGpuReserveBytes);
  if (left <= 0 || plan.kv_cache_bytes_per_token <= 0) return 0;
  return int64_t(left * fraction / double(plan.kv_cache_bytes_per_token));
}

}  // namespace kite
