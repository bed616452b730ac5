// A loaded engine: its config, the backend it runs on, the model with its weights uploaded, the
// paged KV cache with a block allocator, and the tokenizer. Also the generation loop over one
// batch of prompts (prefill all together, then decode step by step).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/engine_file.h"
#include "model/llama.h"
#include "runtime/sampling.h"
#include "tokenizer/tokenizer.h"

namespace kite {

// The KV cache of all layers, carved into fixed-size blocks handed out from a free list.
class KvCache {
 public:
  static Result<KvCache> allocate(Backend& backend, const ModelConfig& model, DType dtype,
                                  int64_t block_size, int64_t num_blocks);
  // Bytes one block takes over all layers.
  static size_t block_bytes(const ModelConfig& model, DType dtype, int64_t block_size);

  const KvCacheView& view() const { return view_; }
  int64_t num_blocks() const { return view_.num_blocks; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  // `count` blocks, or kOutOfRange when fewer are free.
  Result<std::vector<int32_t>> allocate_blocks(int64_t count);
  void free_blocks(const std::vector<int32_t>& blocks);

 private:
  DeviceBuffer buffer_;
  KvCacheView view_;
  std::vector<int32_t> free_;
};

// KV cache blocks lent to the sequences of one forward step (perplexity chunks, MMLU prompts),
// returned to the cache however the step ends.
class StepBlocks {
 public:
  explicit StepBlocks(KvCache& cache) : cache_(cache) {}
  StepBlocks(const StepBlocks&) = delete;
  StepBlocks& operator=(const StepBlocks&) = delete;
  ~StepBlocks() {
    for (const std::vector<int32_t>& blocks : per_sequence_) cache_.free_blocks(blocks);
  }
  Result<std::vector<int32_t>> allocate(int64_t count) {
    KITE_ASSIGN_OR_RETURN(std::vector<int32_t> blocks, cache_.allocate_blocks(count));
    per_sequence_.push_back(blocks);
    return blocks;
  }

 private:
  KvCache& cache_;
  std::vector<std::vector<int32_t>> per_sequence_;
};

// Appends `tokens` to `step` as positions 0, 1, ... of a new sequence whose KV cache blocks (of
// `block_size` tokens) are `table`: their ids, positions and cache slots. The caller closes the
// sequence (query_start, context_length, block_table).
inline void append_sequence_start(StepInput& step, std::span<const int32_t> tokens,
                                  const std::vector<int32_t>& table, int64_t block_size) {
  for (size_t position = 0; position < tokens.size(); ++position) {
    step.token_ids.push_back(tokens[position]);
    step.positions.push_back(int32_t(position));
    step.slot_mapping.push_back(table[position / size_t(block_size)] * int32_t(block_size) +
                                int32_t(position % size_t(block_size)));
  }
}

struct LoadOptions {
  // CUDA engines: the share of the GPU memory left after weights and activations that the KV cache
  // takes (TensorRT-LLM's kv_cache_free_gpu_mem_fraction). CPU engines get max_batch_size x
  // max_seq_len tokens of cache.
  double kv_cache_free_gpu_mem_fraction = 0.9;
  int device_index = 0;
  // CUDA engines: overrides the engine's multi_block_mode (split-KV decode attention) when set.
  std::optional<bool> multi_block_mode;
};

class Engine {
 public:
  // Reads config.json, checks it was built for this device (for CUDA, a GPU of the same compute
  // capability), opens and verifies rank0.engine, uploads the weights, reserves the activations
  // of the largest step the limits allow, and allocates the KV cache.
  static Result<std::unique_ptr<Engine>> load(const std::string& engine_dir,
                                              const LoadOptions& options = {});

  const EngineConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  Backend& backend() { return *backend_; }
  LlamaModel& model() { return *model_; }
  KvCache& kv_cache() { return kv_cache_; }
  const std::string& directory() const { return directory_; }
  // The ids that end a generation by default: the model config's end-of-sequence ids, plus
  // tokenizer_config.json's eos_token (<|im_end|> for ChatML models).
  std::vector<int32_t> default_end_ids() const;

 private:
  Engine(std::string directory, EngineConfig config, std::unique_ptr<Backend> backend,
         Tokenizer tokenizer);

  std::string directory_;
  EngineConfig config_;
  std::unique_ptr<Backend> backend_;
  Tokenizer tokenizer_;
  std::unique_ptr<LlamaModel> model_;
  KvCache kv_cache_;
};

struct GenerationRequest {
  std::vector<std::vector<int32_t>> prompts;  // token ids, one batch
  SamplingConfig sampling;
  StopConditions stop;  // max_output_len, end ids, stop words for every sequence
};

struct GenerationResult {
  std::vector<int32_t> output_ids;  // generated tokens (the end id included when it stopped there)
  FinishReason finish_reason = FinishReason::kNotFinished;
  size_t text_length = std::string::npos;  // where a stop text cut the decoded output
};

struct GenerationStats {
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_tokens = 0;  // tokens produced by decode steps (all sequences)
};

// Called after every step with the sequence index and its new token.
using TokenCallback = std::function<void(size_t sequence, int32_t token)>;

// Checks the request against the engine's limits (empty prompt, too many prompts, prompt longer
// than max_input_len, prompt + max_output_len beyond max_seq_len) and its sampling config, with
// messages naming the option.
Status check_generation_request(const Engine& engine, const GenerationRequest& request);

// Checks the request (check_generation_request), then generates.
Result<std::vector<GenerationResult>> generate(Engine& engine, const GenerationRequest& request,
                                               const TokenCallback& on_token = {},
                                               GenerationStats* stats = nullptr);

}  // namespace kite
