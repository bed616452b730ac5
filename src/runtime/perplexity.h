// Perplexity of an engine over a text file, defined exactly as llama.cpp's llama-perplexity
// computes it (scripts/golden/README.md): the file tokenized whole, cut into chunks that are each
// evaluated alone from an empty cache, the second half of every chunk scored.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

namespace kite {

// A text file tokenized for perplexity: its bytes as they are minus one final "\n", encoded whole
// with the tokens the vocabulary adds (BOS).
struct PerplexityTokens {
  std::vector<int32_t> tokens;
  std::optional<int32_t> bos;  // set when the vocabulary adds a BOS token
  // Special tokens written out in the text itself ("<|endoftext|>"). The tokenizer matches them as
  // Hugging Face tokenizers does, where llama.cpp (parse_special=false) reads them as plain text:
  // when this is not 0, the ids and so the perplexity differ from llama.cpp's.
  int64_t special_tokens_in_text = 0;
};
PerplexityTokens tokenize_for_perplexity(const Tokenizer& tokenizer, std::string_view text);

struct PerplexityOptions {
  int64_t chunk_size = 512;
  int64_t max_tokens = 0;  // use at most this many tokens of the file; 0: all of them
};

// Consecutive chunks of chunk_size tokens (a partial last chunk is dropped); with a BOS-adding
// vocabulary each chunk starts with BOS in place of its first token. Refuses a chunk_size below 3
// (no token would be scored) and fewer tokens than one chunk.
Result<std::vector<std::vector<int32_t>>> perplexity_chunks(const PerplexityTokens& tokens,
                                                            const PerplexityOptions& options);

// The positions of a chunk of `chunk_size` tokens whose logits are scored: chunk_size / 2 to
// chunk_size - 2, each predicting the token after it.
inline int64_t first_scored_position(int64_t chunk_size) {
  return chunk_size / 2;
}
inline int64_t scored_tokens_per_chunk(int64_t chunk_size) {
  return chunk_size - 1 - first_scored_position(chunk_size);
}

// -log softmax(logits)[token], computed in double: log(sum(exp(logit - max))) + max - logit[token].
double token_nll(std::span<const float> logits, int32_t token);

struct ChunkNll {
  double nll_sum = 0;  // over the chunk's scored tokens
  int64_t count = 0;   // scored tokens
};

struct PerplexityResult {
  std::vector<ChunkNll> chunks;
  double nll_sum = 0;
  int64_t scored_tokens = 0;

  double mean_nll() const;
  double perplexity() const;  // exp(mean_nll())
};

// Refuses an engine built with max_input_len or max_seq_len below chunk_size, saying how to rebuild
// it.
Status check_perplexity_engine(const Engine& engine, int64_t chunk_size);

// Called after each forward step with the number of chunks evaluated so far.
using PerplexityProgress = std::function<void(int64_t chunks_done)>;

// Evaluates every chunk (all of one length) with the engine, as many per forward step as its
// max_batch_size and free KV cache blocks allow (check_perplexity_engine first).
Result<PerplexityResult> evaluate_perplexity(Engine& engine,
                                             const std::vector<std::vector<int32_t>>& chunks,
                                             const PerplexityProgress& on_step = {});

}  // namespace kite
