// One generation request as the HTTP handlers see it, whatever API it came through: what to
// generate (GenerationSpec), and the running request (Generation), which turns the Executor's
// token responses into text updates, applies stop texts, and records the request's metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kite/executor.h"
#include "server/response_router.h"
#include "server/server_metrics.h"
#include "server/text_stream.h"

namespace kite::server {

struct GenerationSpec {
  // Prompt ids, max_new_tokens, sampling, return_log_probs. The Generation streams it.
  executor::Request request;
  std::vector<std::string> stop_texts;  // the output ends at the first of these
  bool include_stop_text = false;       // Triton keeps the stop word; OpenAI cuts before it
  bool skip_special_tokens = true;      // special tokens add no text (vLLM's option)
};

struct TokenLogProb {
  int32_t id = 0;
  std::string text;  // the token alone, decoded (may hold U+FFFD for part of a character)
  float log_prob = 0;
  int64_t text_offset = 0;  // characters of output text before this token's
  // The most likely tokens at this position (decoded alone) and their log-probabilities, when
  // the request asked for them; top_ids holds their ids.
  std::vector<std::pair<std::string, float>> top;
  std::vector<int32_t> top_ids;
  int32_t rank = 0;  // a prompt token's rank at its position (1: the most likely); 0: not known
};

// A finished beam of a beam search.
struct BeamText {
  std::string text;
  std::string finish_reason;  // "stop" or "length"
  int64_t tokens = 0;         // its output tokens
};

// What came since the previous update.
struct GenerationUpdate {
  std::string text;
  // Beam search (beam_width > 1), in the finishing update: each finished beam, best first (text
  // holds the best one's).
  std::vector<BeamText> beams;
  std::vector<TokenLogProb> log_probs;  // when the request asked for them
  // With return_prompt_log_probs, in one update (the first with output): every prompt token, the
  // first of which has no log-probability (nothing precedes it: 0 here), text_offset counting the
  // characters of the prompt tokens' texts before it.
  std::vector<TokenLogProb> prompt_log_probs;
  bool finished = false;
  std::string finish_reason;         // when finished without error: "stop" or "length"
  std::optional<std::string> error;  // finished with an error (the server shutting down)
};

class Generation {
 public:
  // Enqueues the request. nullptr when the router is closed (the server is shutting down).
  static std::unique_ptr<Generation> start(ResponseRouter& router, const Tokenizer& tokenizer,
                                           GenerationSpec spec, ServerMetrics& metrics,
                                           Clock::time_point arrival);
  // A generation that has not finished counts as cancelled (its request is cancelled).
  ~Generation();

  // Waits up to `timeout` for output; an update with nothing new when none came. Once an update
  // says finished, later calls return empty finished updates.
  GenerationUpdate next(std::chrono::milliseconds timeout);
  bool finished() const { return finished_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  Generation(std::unique_ptr<RequestStream> stream, const Tokenizer& tokenizer,
             const GenerationSpec& spec, ServerMetrics& metrics, Clock::time_point arrival);
  void add_tokens(const executor::Result& result, Clock::time_point received,
                  GenerationUpdate* update);
  void add_prompt_log_probs(const executor::Result& result, GenerationUpdate* update);
  // A token's text decoded alone, and the most likely tokens' with their log-probabilities.
  TokenLogProb token_log_prob(int32_t id, float log_prob,
                              const std::vector<executor::TopLogProb>* top) const;
  void finish(GenerationUpdate* update, const std::string& reason);

  std::unique_ptr<RequestStream> stream_;
  const Tokenizer& tokenizer_;
  ServerMetrics& metrics_;
  bool skip_special_tokens_;
  std::vector<int32_t> prompt_tail_;  // the prompt's last ids: context for decoding the output
  TextStream text_;
  bool want_log_probs_;
  std::vector<int32_t> prompt_ids_;  // with return_prompt_log_probs, until they are reported
  bool want_prompt_log_probs_;
  Clock::time_point arrival_;
  std::optional<Clock::time_point> last_token_time_;
  int64_t prompt_tokens_;
  int64_t completion_tokens_ = 0;
  bool finished_ = false;
};

// OpenAI's finish_reason for the Executor's: "stop" (end id, stop words) or "length".
std::string openai_finish_reason(executor::FinishReason reason);

// Words as the Executor's token sequences (bad words, a beam search's stop words), as Triton's
// TensorRT-LLM preprocessing makes them: each word tokenized alone, without special tokens; a word
// of no tokens is left out.
std::vector<std::vector<int32_t>> word_token_sequences(const Tokenizer& tokenizer,
                                                       const std::vector<std::string>& words);

}  // namespace kite::server
