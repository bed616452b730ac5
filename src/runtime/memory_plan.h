// kite build's memory plan (docs/engine.md): the device memory an engine's limits commit it to
// before the KV cache takes its share of what is left, and whether that fits a GPU at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"
#include "formats/engine_file.h"

namespace kite {

// What the CUDA runtime and the backend's scratch take besides the plan's buffers (the CUDA
// context, cuBLASLt's workspace, split-KV partials, the sampling workspace): a round allowance.
inline constexpr size_t kGpuReserveBytes = size_t(1) << 30;

// The plan of an engine of `config` (model, limits, dtypes) whose weights take `weights_bytes`:
// activations for a step of max_num_tokens tokens with max_batch_size logit rows, and the KV
// cache's bytes per token in its dtype.
MemoryPlan plan_memory(const EngineConfig& config, int64_t weights_bytes);

// "weights 14.96 GiB, activations 1.63 GiB (steps of 8192 tokens), KV cache 128 KiB per token"
std::string describe_memory_plan(const MemoryPlan& plan, const BuildLimits& limits);

// Refuses (out of range) a plan whose weights, activations and one max_seq_len sequence of KV
// cache, with kGpuReserveBytes, exceed `gpu_memory_bytes`, saying which limit to lower.
Status check_memory_plan_fits(const MemoryPlan& plan, const BuildLimits& limits,
                              const std::string& gpu_name, size_t gpu_memory_bytes);

// About how many tokens of KV cache the engine gets on a GPU of `gpu_memory_bytes` with
// `fraction` of the memory left after the plan (the load measures the real free memory).
int64_t estimated_kv_cache_tokens(const MemoryPlan& plan, size_t gpu_memory_bytes, double fraction);

}  // namespace kite
