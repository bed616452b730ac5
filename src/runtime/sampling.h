// Choosing the next token from float32 logits on the host, with the semantics of Hugging Face
// transformers' generate() (repetition penalty, then temperature, top-k, top-p, min-p, then a
// draw), and the conditions that end a sequence (end ids, stop words, length).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kite {

struct SamplingConfig {
  float temperature = 1.0f;         // 0: greedy (argmax)
  int64_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off; applies to every token of the prompt and output
  uint64_t seed = 0;
  // OpenAI's (and vLLM's) penalties over the output so far: a token's logit loses
  // count * frequency_penalty + presence_penalty when it occurs count > 0 times. 0: off.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;

  bool greedy() const { return temperature == 0.0f || top_k == 1; }
};

// Whether sampling with `config` reads the sequence so far (a penalty is on).
inline bool needs_history(const SamplingConfig& config) {
  return config.repetition_penalty != 1.0f || config.presence_penalty != 0.0f ||
         config.frequency_penalty != 0.0f;
}

// log(sum_i exp(logits[i])), summed in double around the largest logit (-inf when every logit is
// -inf); and the log softmax of a row in place, logits[i] - log_sum_exp(logits), in the same
// arithmetic (a row of -inf stays -inf).
double log_sum_exp(std::span<const float> logits);
void log_softmax(std::span<float> logits);

// Checks ranges: temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1,
// repetition_penalty > 0, finite presence and frequency penalties. Messages name the option.
Status validate_sampling_config(const SamplingConfig& config);

// One per sequence: the random stream is the sequence's own, so the same seed gives the same
// output whatever else is in the batch.
class Sampler {
 public:
  explicit Sampler(const SamplingConfig& config);

  // The next token given the logits [V] of the last position and every token the sequence has so
  // far (prompt and output), which the repetition penalty looks at; the output starts at
  // previous_tokens[output_start] (the presence and frequency penalties look at it).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> previous_tokens,
                 size_t output_start);

 private:
  // A uniform double in [0, 1) from 53 random bits: the same on every standard library.
  double uniform();

  SamplingConfig config_;
  std::mt19937_64 generator_;
};

// The distribution Sampler::sample draws from, over the whole vocabulary: softmax of the logits
// after the repetition penalty, the presence and frequency penalties (over
// previous_tokens[output_start:]), temperature, top-k, top-p and min-p, with 0 for every token a
// filter removed. A greedy configuration gives 1 at the argmax (the lowest index on ties). The
// reference the GPU sampler is tested against. When every logit is -inf (every token banned),
// Sampler::sample picks token 0, as the GPU sampler does.
std::vector<double> sampling_distribution(std::span<const float> logits,
                                          const SamplingConfig& config,
                                          std::span<const int32_t> previous_tokens,
                                          size_t output_start);

// TensorRT-LLM's bad words (BanWordsLayer): the tokens that may not come next after `sequence`
// (the whole sequence so far, prompt and output). A one-token word is always banned; a longer word
// bans its last token when the sequence ends with the rest of it. Sorted, each once; empty words
// are ignored.
std::vector<int32_t> banned_next_tokens(std::span<const int32_t> sequence,
                                        const std::vector<std::vector<int32_t>>& bad_words);

// HF's RepetitionPenaltyLogitsProcessor: a seen token's logit is divided by the penalty when
// positive and multiplied by it when negative. Applied in place.
void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> previous_tokens,
                              float penalty);

// OpenAI's presence and frequency penalties (vLLM's order: after the repetition penalty): each
// token that occurs count > 0 times in `output_tokens` loses count * frequency + presence, computed
// as (float(count) * frequency) + presence, each operation rounded once. In place.
void apply_presence_frequency_penalties(std::span<float> logits,
                                        std::span<const int32_t> output_tokens, float presence,
                                        float frequency);

enum class FinishReason { kNotFinished, kEndId, kStopWords, kLength };
std::string_view finish_reason_name(FinishReason reason);

struct StopConditions {
  std::vector<int32_t> end_ids;                      // e.g. the tokenizer's EOS ids
  std::vector<std::vector<int32_t>> stop_sequences;  // token sequences that end the output
  std::vector<std::string> stop_texts;               // strings that end the decoded output
  int64_t max_output_len = 100;                      // tokens generated at most
  int64_t min_output_len = 0;  // shorter outputs are never finished (but by max_output_len)
};

struct StopCheck {
  FinishReason reason = FinishReason::kNotFinished;
  // For kStopWords from a stop text: where the text ends once the stop word is cut off;
  // std::string::npos otherwise.
  size_t text_length = std::string::npos;
};

// Whether the output (generated tokens only, and their decoded text) is finished: never while it
// is shorter than min_output_len; then the last token
// is checked against end_ids and the output's tail against stop_sequences; stop_texts are
// searched in the whole text, so a stop word split over several tokens is found. `output_text`
// may be the decoded output from byte `text_offset` on (StopTextScanner::tail), text_length still
// counting from its start.
StopCheck check_stop(const StopConditions& conditions, std::span<const int32_t> output_ids,
                     std::string_view output_text, size_t text_offset = 0);

}  // namespace kite
