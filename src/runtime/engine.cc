// Loading an engine onto its backend, the KV cache block allocator, and the batch generation loop.
#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "core/file.h"
#include "kernels/backend_factory.h"
#include "runtime/stop_text.h"

namespace kite {

Result<KvCache> KvCache::allocate(Backend& backend, const ModelConfig& model, DType dtype,
                                  int64_t block_size, int64_t num_blocks) {
  KvCache cache;
  KvCacheView& view = cache.view_;
  view.dtype = dtype;
  view.num_layers = model.num_hidden_layers;
  view.num_blocks = num_blocks;
  view.num_kv_heads = model.num_key_value_heads;
  view.block_size = block_size;
  view.head_dim = model.head_dim;
  const size_t bytes = size_t(num_blocks) * block_bytes(model, dtype, block_size);
  Result<DeviceBuffer> buffer = backend.allocate(bytes);
  if (!buffer.is_ok()) {
    return buffer.status().with_context("KV cache of " + std::to_string(bytes >> 20) +
                                        " MiB (build the engine with a smaller --max_batch_size "
                                        "or --max_seq_len)");
  }
  cache.buffer_ = std::move(*buffer);
  view.data = cache.buffer_.data();
  // Handed out lowest first.
  for (int64_t block = num_blocks - 1; block >= 0; --block) cache.free_.push_back(int32_t(block));
  return cache;
}

size_t KvCache::block_bytes(const ModelConfig& model, DType dtype, int64_t block_size) {
  return size_t(model.num_hidden_layers * 2 * model.num_key_value_heads * block_size *
                model.head_dim) *
         dtype_size(dtype);
}

Result<std::vector<int32_t>> KvCache::allocate_blocks(int64_t count) {
  if (count > int64_t(free_.size())) {
    return out_of_range("the KV cache has " + std::to_string(free_.size()) + " free blocks, " +
                        std::to_string(count) + " are needed");
  }
  std::vector<int32_t> blocks(free_.end() - count, free_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_.resize(free_.size() - size_t(count));
  return blocks;
}

void KvCache::free_blocks(const std::vector<int32_t>& blocks) {
  free_.insert(free_.end(), blocks.rbegin(), blocks.rend());
}

Engine::Engine(std::string directory, EngineConfig config, std::unique_ptr<Backend> backend,
               Tokenizer tokenizer)
    : directory_(std::move(directory)),
      config_(std::move(config)),
      backend_(std::move(backend)),
      tokenizer_(std::move(tokenizer)) {}

Result<std::unique_ptr<Engine>> Engine::load(const std::string& engine_dir,
                                             const LoadOptions& options) {
  KITE_ASSIGN_OR_RETURN(EngineConfig config, read_engine_config(engine_dir));
  // Engines are tied to the Kite that built them (kernels, tuning tables, weight layouts).
  if (config.kite_version != KITE_VERSION) {
    return unsupported(
        engine_dir + " was built by Kite " +
        (config.kite_version.empty() ? "of an unknown version" : config.kite_version) +
        "; this is Kite " + KITE_VERSION + ": build the engine again with it");
  }
  const BuildLimits& limits = config.limits;
  BackendKind kind = BackendKind::kCpu;
  BackendOptions backend_options;
  if (config.device == "cuda") {
    if (config.kv_cache_dtype != config.weight_dtype) {
      return unsupported(engine_dir + "/config.json: a CUDA engine's KV cache must be in its " +
                         "weights' dtype (" + std::string(dtype_name(config.weight_dtype)) +
                         "), not " + std::string(dtype_name(config.kv_cache_dtype)) +
                         "; build the engine again");
    }
    if (!(options.kv_cache_free_gpu_mem_fraction > 0 &&
          options.kv_cache_free_gpu_mem_fraction < 1)) {
      return invalid_argument("--kv_cache_free_gpu_mem_fraction must be between 0 and 1");
    }
    KITE_ASSIGN_OR_RETURN(GpuIdentity gpu, gpu_identity(options.device_index));
    if (gpu.compute_capability != config.compute_capability) {
      return unsupported(engine_dir + " was built for " + config.gpu_name + " (sm_" +
                         std::to_string(config.compute_capability) + "); this GPU is " + gpu.name +
                         " (sm_" + std::to_string(gpu.compute_capability) +
                         "): build the engine again on this GPU");
    }
    kind = BackendKind::kCuda;
    backend_options = BackendOptions{options.device_index, config.weight_dtype, config.gemm_choices,
                                     options.multi_block_mode.value_or(config.multi_block_mode)};
  }
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, make_backend(kind, backend_options));
  KITE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::from_directory(engine_dir));
  KITE_ASSIGN_OR_RETURN(EngineFile file, EngineFile::open(engine_rank_path(engine_dir, 0)));
  std::unique_ptr<Engine> engine(
      new Engine(engine_dir, config, std::move(backend), std::move(tokenizer)));
  KITE_ASSIGN_OR_RETURN(LlamaWeights weights,
                        load_llama_weights(
                            *engine->backend_, config.model,
                            [&file](const std::string& name) { return file.tensor(name); },
                            file.path(), config.weight_only, config.norm_scales_folded));
  engine->model_ =
      std::make_unique<LlamaModel>(*engine->backend_, config.model, std::move(weights));
  // The largest step: max_num_tokens tokens of up to max_batch_size sequences, a logit row each.
  const int64_t blocks_per_sequence = limits.blocks_per_sequence();
  KITE_RETURN_IF_ERROR(engine->model_->reserve_workspace(
      limits.max_num_tokens, limits.max_batch_size, limits.max_batch_size,
      limits.max_batch_size * blocks_per_sequence));
  const size_t block_bytes =
      KvCache::block_bytes(config.model, config.kv_cache_dtype, limits.tokens_per_block);
  int64_t num_blocks = limits.max_batch_size * blocks_per_sequence;
  if (kind == BackendKind::kCuda) {
    engine->backend_->synchronize();
    KITE_ASSIGN_OR_RETURN(GpuIdentity gpu, gpu_identity(options.device_index));
    const size_t free_bytes = gpu.total_memory_bytes - engine->backend_->memory_in_use_bytes();
    num_blocks =
        int64_t(double(free_bytes) * options.kv_cache_free_gpu_mem_fraction / double(block_bytes));
    if (num_blocks < blocks_per_sequence) {
      return out_of_range("the KV cache gets " + std::to_string(num_blocks) +
                          " blocks, fewer than one sequence of max_seq_len needs (" +
                          std::to_string(blocks_per_sequence) +
                          "); raise --kv_cache_free_gpu_mem_fraction or build with a smaller "
                          "--max_seq_len or --max_batch_size");
    }
  }
  KITE_ASSIGN_OR_RETURN(engine->kv_cache_,
                        KvCache::allocate(*engine->backend_, config.model, config.kv_cache_dtype,
                                          limits.tokens_per_block, num_blocks));
  if (kind == BackendKind::kCuda) {
    const double gib = double(num_blocks) * double(block_bytes) / double(1 << 30);
    std::fprintf(stderr,
                 "kite: KV cache: %lld blocks of %lld tokens (%lld tokens, %.2f GiB, %.0f%% of "
                 "the free GPU memory)\n",
                 static_cast<long long>(num_blocks),
                 static_cast<long long>(limits.tokens_per_block),
                 static_cast<long long>(num_blocks * limits.tokens_per_block), gib,
                 options.kv_cache_free_gpu_mem_fraction * 100);
  }
  return engine;
}

std::vector<int32_t> Engine::default_end_ids() const {
  std::vector<int32_t> ids;
  for (int64_t id : config_.model.eos_token_ids) ids.push_back(int32_t(id));
  Result<std::string> text = read_file(directory_ + "/tokenizer_config.json");
  if (text.is_ok()) {
    try {
      const auto json = nlohmann::json::parse(*text);
      if (json.contains("eos_token") && json.at("eos_token").is_string()) {
        const std::optional<int32_t> id =
            tokenizer_.token_to_id(json.at("eos_token").get<std::string>());
        if (id && std::ranges::find(ids, *id) == ids.end()) ids.push_back(*id);
      }
    } catch (const nlohmann::json::exception&) {
      // The file is optional; a malformed one only means no extra end id.
    }
  }
  return ids;
}

namespace {

struct Sequence {
  std::vector<int32_t> tokens;  // prompt, then output
  size_t prompt_length = 0;
  size_t cached = 0;  // tokens whose keys and values are in the cache
  std::vector<int32_t> blocks;
  Sampler sampler;
  GenerationResult result;
  bool active = true;
  std::optional<StopTextScanner> stop_texts;  // when the request has stop texts
};

// Runs the step and picks each logit row's token: on the backend when it samples (only ids cross
// to the host), else on the host from the downloaded logits.
Result<std::vector<int32_t>> next_tokens(Engine& engine, const StepInput& step,
                                         const SamplingConfig& sampling,
                                         std::vector<Sequence>& sequences,
                                         const std::vector<size_t>& owners) {
  LlamaModel& model = engine.model();
  const KvCacheView& cache = engine.kv_cache().view();
  std::vector<int32_t> tokens(owners.size());
  if (engine.backend().has_sampling()) {
    std::vector<SamplingRow> rows;
    std::vector<std::vector<int32_t>> history;
    for (size_t owner : owners) {
      const Sequence& sequence = sequences[owner];
      rows.push_back(
          SamplingRow{sampling.greedy() ? 0.0f : sampling.temperature, int32_t(sampling.top_k),
                      sampling.top_p, sampling.min_p, sampling.repetition_penalty, sampling.seed,
                      uint64_t(sequence.result.output_ids.size()), sampling.presence_penalty,
                      sampling.frequency_penalty, int32_t(sequence.prompt_length)});
      if (needs_history(sampling)) history.push_back(sequence.tokens);
    }
    return model.forward_and_sample(step, cache, rows, history);
  }
  KITE_ASSIGN_OR_RETURN(std::vector<float> logits, model.forward(step, cache));
  const size_t vocab = size_t(engine.config().model.vocab_size);
  for (size_t row = 0; row < owners.size(); ++row) {
    Sequence& sequence = sequences[owners[row]];
    tokens[row] =
        sequence.sampler.sample(std::span<const float>(logits.data() + row * vocab, vocab),
                                sequence.tokens, sequence.prompt_length);
  }
  return tokens;
}

}  // namespace

Status check_generation_request(const Engine& engine, const GenerationRequest& request) {
  const BuildLimits& limits = engine.config().limits;
  if (request.prompts.empty()) return invalid_argument("no prompt given");
  if (int64_t(request.prompts.size()) > limits.max_batch_size) {
    return out_of_range(std::to_string(request.prompts.size()) + " prompts exceed the engine's " +
                        "max_batch_size " + std::to_string(limits.max_batch_size) +
                        " (build the engine with a larger --max_batch_size)");
  }
  if (request.stop.max_output_len < 1) return invalid_argument("--max_output_len must be >= 1");
  for (size_t i = 0; i < request.prompts.size(); ++i) {
    const int64_t length = int64_t(request.prompts[i].size());
    if (length == 0) return invalid_argument("prompt " + std::to_string(i) + " is empty");
    if (length > limits.max_input_len) {
      return out_of_range("prompt " + std::to_string(i) + " has " + std::to_string(length) +
                          " tokens, more than the engine's max_input_len " +
                          std::to_string(limits.max_input_len));
    }
    if (length + request.stop.max_output_len > limits.max_seq_len) {
      return out_of_range(
          "prompt " + std::to_string(i) + " (" + std::to_string(length) +
          " tokens) + --max_output_len " + std::to_string(request.stop.max_output_len) +
          " exceeds the engine's max_seq_len " + std::to_string(limits.max_seq_len));
    }
  }
  return validate_sampling_config(request.sampling);
}

Result<std::vector<GenerationResult>> generate(Engine& engine, const GenerationRequest& request,
                                               const TokenCallback& on_token,
                                               GenerationStats* stats) {
  KITE_RETURN_IF_ERROR(check_generation_request(engine, request));
  KvCache& cache = engine.kv_cache();
  const int64_t block_size = cache.view().block_size;
  const BuildLimits& limits = engine.config().limits;
  std::vector<Sequence> sequences;
  // Blocks go back to the cache however this function returns.
  struct BlockReturn {
    KvCache& cache;
    std::vector<Sequence>& sequences;
    ~BlockReturn() {
      for (const Sequence& sequence : sequences) cache.free_blocks(sequence.blocks);
    }
  } block_return{cache, sequences};
  for (const std::vector<int32_t>& prompt : request.prompts) {
    const int64_t length = int64_t(prompt.size()) + request.stop.max_output_len;
    KITE_ASSIGN_OR_RETURN(std::vector<int32_t> blocks,
                          cache.allocate_blocks((length + block_size - 1) / block_size));
    sequences.push_back(
        {prompt, prompt.size(), 0, std::move(blocks), Sampler(request.sampling), {}, true, {}});
    if (!request.stop.stop_texts.empty()) {
      sequences.back().stop_texts.emplace(engine.tokenizer(), request.stop.stop_texts);
    }
  }

  auto clock = [] { return std::chrono::steady_clock::now(); };
  // A step takes every active sequence's uncached tokens, up to max_num_tokens in all: prompts
  // longer than what is left are prefilled in chunks over several steps (chunked prefill). A
  // sequence gets a logit row when the step reaches its last token.
  const int64_t token_budget = engine.config().limits.max_num_tokens;
  while (true) {
    StepInput step;
    step.query_start.push_back(0);
    std::vector<size_t> owners;     // sequence of each logit row
    std::vector<size_t> scheduled;  // sequence of each step sequence
    bool prefill = false;
    int64_t budget = token_budget;
    for (size_t s = 0; s < sequences.size() && budget > 0; ++s) {
      Sequence& sequence = sequences[s];
      if (!sequence.active) continue;
      const size_t first = sequence.cached;
      const size_t end = std::min(sequence.tokens.size(), first + size_t(budget));
      prefill = prefill || sequence.cached < sequence.prompt_length;
      for (size_t position = first; position < end; ++position) {
        step.token_ids.push_back(sequence.tokens[position]);
        step.positions.push_back(int32_t(position));
        step.slot_mapping.push_back(sequence.blocks[position / size_t(block_size)] *
                                        int32_t(block_size) +
                                    int32_t(position % size_t(block_size)));
      }
      budget -= int64_t(end - first);
      sequence.cached = end;
      step.query_start.push_back(int32_t(step.token_ids.size()));
      step.context_length.push_back(int32_t(end));
      scheduled.push_back(s);
      if (end == sequence.tokens.size()) {
        step.logit_rows.push_back(int32_t(step.token_ids.size()) - 1);
        owners.push_back(s);
      }
    }
    if (step.token_ids.empty()) break;
    // Each sequence's blocks of its context, in a table as wide as the longest needs.
    const int32_t longest =
        *std::max_element(step.context_length.begin(), step.context_length.end());
    step.max_blocks_per_sequence = limits.block_table_width(longest);
    for (size_t i = 0; i < scheduled.size(); ++i) {
      const std::vector<int32_t>& blocks = sequences[scheduled[i]].blocks;
      const size_t used = size_t((step.context_length[i] + block_size - 1) / block_size);
      step.block_table.insert(step.block_table.end(), blocks.begin(),
                              blocks.begin() + ptrdiff_t(used));
      step.block_table.resize(step.block_table.size() + size_t(step.max_blocks_per_sequence) - used,
                              0);
    }

    const auto started = clock();
    KITE_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                          next_tokens(engine, step, request.sampling, sequences, owners));
    for (size_t row = 0; row < owners.size(); ++row) {
      Sequence& sequence = sequences[owners[row]];
      const int32_t token = tokens[row];
      sequence.tokens.push_back(token);
      sequence.result.output_ids.push_back(token);
      if (on_token) on_token(owners[row], token);
      std::string_view text;
      size_t text_offset = 0;
      if (sequence.stop_texts) {
        sequence.stop_texts->push(token);
        text = sequence.stop_texts->tail();
        text_offset = sequence.stop_texts->tail_offset();
      }
      const StopCheck check =
          check_stop(request.stop, sequence.result.output_ids, text, text_offset);
      if (check.reason != FinishReason::kNotFinished) {
        sequence.active = false;
        sequence.result.finish_reason = check.reason;
        sequence.result.text_length = check.text_length;
      }
    }
    const double seconds = std::chrono::duration<double>(clock() - started).count();
    if (stats) {
      if (prefill) {
        stats->prefill_seconds += seconds;
      } else {
        stats->decode_seconds += seconds;
        stats->decode_tokens += int64_t(owners.size());
      }
    }
  }
  std::vector<GenerationResult> results;
  for (Sequence& sequence : sequences) results.push_back(std::move(sequence.result));
  return results;
}

}  // namespace kite
