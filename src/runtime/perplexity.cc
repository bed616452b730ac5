// Perplexity as llama.cpp's llama-perplexity computes it: tokenizing the file, cutting it into
// chunks, and scoring the second half of each chunk with batched forward steps.
#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace kite {
namespace {

// Float32 logits of one step are kept under this size; more chunks a step gain little once the
// GEMMs are large, and a large vocabulary times many chunks would take gigabytes.
constexpr int64_t kMaxLogitBytesPerStep = int64_t(512) << 20;

// The ids the post-processor puts before and after a text: encode(text, true) is
// before + encode(text, false) + after.
struct AddedIds {
  std::vector<int32_t> before;
  std::vector<int32_t> after;
};

AddedIds added_ids(const Tokenizer& tokenizer) {
  const std::vector<int32_t> with = tokenizer.encode("a", true);
  const std::vector<int32_t> without = tokenizer.encode("a", false);
  AddedIds added;
  for (size_t offset = 0; offset + without.size() <= with.size(); ++offset) {
    if (std::equal(without.begin(), without.end(), with.begin() + int64_t(offset))) {
      added.before.assign(with.begin(), with.begin() + int64_t(offset));
      added.after.assign(with.begin() + int64_t(offset + without.size()), with.end());
      break;
    }
  }
  return added;
}

}  // namespace

PerplexityTokens tokenize_for_perplexity(const Tokenizer& tokenizer, std::string_view text) {
  // llama.cpp drops one trailing newline of the file it reads (a "\r" before it stays).
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  PerplexityTokens result;
  result.tokens = tokenizer.encode(text, /*add_special_tokens=*/true);
  const AddedIds added = added_ids(tokenizer);
  if (added.before.size() == 1) result.bos = added.before.front();
  const size_t text_end = result.tokens.size() - std::min(result.tokens.size(), added.after.size());
  for (size_t i = added.before.size(); i < text_end; ++i) {
    if (tokenizer.is_special(result.tokens[i])) ++result.special_tokens_in_text;
  }
  return result;
}

Result<std::vector<std::vector<int32_t>>> perplexity_chunks(const PerplexityTokens& tokens,
                                                            const PerplexityOptions& options) {
  const int64_t chunk_size = options.chunk_size;
  if (chunk_size < 3) {
    return invalid_argument("--chunk_size " + std::to_string(chunk_size) +
                            " is too small: the second half of a chunk is scored, so it needs at "
                            "least 3 tokens (512 is the usual size)");
  }
  if (options.max_tokens < 0) return invalid_argument("--max_tokens must not be negative");
  int64_t usable = int64_t(tokens.tokens.size());
  if (options.max_tokens > 0) usable = std::min(usable, options.max_tokens);
  const int64_t count = usable / chunk_size;
  if (count == 0) {
    const std::string limit =
        options.max_tokens > 0 && options.max_tokens < int64_t(tokens.tokens.size())
            ? " (--max_tokens " + std::to_string(options.max_tokens) + ")"
            : "";
    return out_of_range("the dataset gives " + std::to_string(usable) + " tokens" + limit +
                        ", fewer than one chunk of " + std::to_string(chunk_size) +
                        ": use a longer text or a smaller --chunk_size");
  }
  std::vector<std::vector<int32_t>> chunks;
  chunks.reserve(size_t(count));
  for (int64_t c = 0; c < count; ++c) {
    const auto begin = tokens.tokens.begin() + c * chunk_size;
    std::vector<int32_t>& chunk = chunks.emplace_back(begin, begin + chunk_size);
    if (tokens.bos) chunk.front() = *tokens.bos;
  }
  return chunks;
}

double token_nll(std::span<const float> logits, int32_t token) {
  KITE_CHECK(token >= 0 && size_t(token) < logits.size());
  const float largest = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float logit : logits) sum += std::exp(logit - largest);
  return std::log(sum) + double(largest) - double(logits[size_t(token)]);
}

double PerplexityResult::mean_nll() const {
  return scored_tokens > 0 ? nll_sum / double(scored_tokens) : 0.0;
}

double PerplexityResult::perplexity() const {
  return std::exp(mean_nll());
}

Status check_perplexity_engine(const Engine& engine, int64_t chunk_size) {
  const BuildLimits& limits = engine.config().limits;
  if (chunk_size <= limits.max_input_len && chunk_size <= limits.max_seq_len) return Status::ok();
  return out_of_range(
      "chunks of " + std::to_string(chunk_size) + " tokens do not fit the engine (max_input_len " +
      std::to_string(limits.max_input_len) + ", max_seq_len " + std::to_string(limits.max_seq_len) +
      "): build it again with --max_input_len " + std::to_string(chunk_size) + " --max_seq_len " +
      std::to_string(chunk_size + 1) + " or more, or use a smaller --chunk_size");
}

Result<PerplexityResult> evaluate_perplexity(Engine& engine,
                                             const std::vector<std::vector<int32_t>>& chunks,
                                             const PerplexityProgress& on_step) {
  if (chunks.empty()) return invalid_argument("no chunk to evaluate");
  const int64_t chunk_size = int64_t(chunks.front().size());
  if (chunk_size < 3) return invalid_argument("chunks need at least 3 tokens");
  for (const std::vector<int32_t>& chunk : chunks) {
    if (int64_t(chunk.size()) != chunk_size)
      return invalid_argument("perplexity chunks must all have the same length");
  }
  KITE_RETURN_IF_ERROR(check_perplexity_engine(engine, chunk_size));
  const BuildLimits& limits = engine.config().limits;

  KvCache& cache = engine.kv_cache();
  const int64_t block_size = cache.view().block_size;
  const int64_t blocks_per_chunk = (chunk_size + block_size - 1) / block_size;
  const int64_t vocab = engine.config().model.vocab_size;
  const int64_t first_scored = first_scored_position(chunk_size);
  const int64_t scored_per_chunk = scored_tokens_per_chunk(chunk_size);
  const int64_t logit_bytes_per_chunk = scored_per_chunk * vocab * int64_t(sizeof(float));
  const int64_t chunks_per_step =
      std::max<int64_t>(1, std::min({limits.max_batch_size, cache.free_blocks() / blocks_per_chunk,
                                     kMaxLogitBytesPerStep / logit_bytes_per_chunk}));

  PerplexityResult result;
  result.chunks.resize(chunks.size());
  const int64_t total = int64_t(chunks.size());
  for (int64_t first = 0; first < total; first += chunks_per_step) {
    const int64_t count = std::min(chunks_per_step, total - first);
    StepBlocks blocks(cache);
    StepInput step;
    step.max_blocks_per_sequence = blocks_per_chunk;
    step.query_start.push_back(0);
    for (int64_t c = first; c < first + count; ++c) {
      const std::vector<int32_t>& chunk = chunks[size_t(c)];
      KITE_ASSIGN_OR_RETURN(const std::vector<int32_t> table, blocks.allocate(blocks_per_chunk));
      const int32_t base = int32_t(step.token_ids.size());
      append_sequence_start(step, std::span(chunk).first(size_t(chunk_size)), table, block_size);
      for (int64_t position = first_scored; position < chunk_size - 1; ++position) {
        step.logit_rows.push_back(base + int32_t(position));
      }
      step.query_start.push_back(int32_t(step.token_ids.size()));
      step.context_length.push_back(int32_t(chunk_size));
      step.block_table.insert(step.block_table.end(), table.begin(), table.end());
    }
    KITE_ASSIGN_OR_RETURN(const std::vector<float> logits,
                          engine.model().forward(step, cache.view()));

    // Row r of chunk c is position first_scored + r and predicts the token after it.
    for (int64_t c = 0; c < count; ++c) {
      const std::vector<int32_t>& chunk = chunks[size_t(first + c)];
      ChunkNll& score = result.chunks[size_t(first + c)];
      for (int64_t r = 0; r < scored_per_chunk; ++r) {
        const float* row = logits.data() + (c * scored_per_chunk + r) * vocab;
        score.nll_sum += token_nll({row, size_t(vocab)}, chunk[size_t(first_scored + r + 1)]);
      }
      score.count = scored_per_chunk;
      result.nll_sum += score.nll_sum;
      result.scored_tokens += score.count;
    }
    if (on_step) on_step(first + count);
  }
  return result;
}

}  // namespace kite
